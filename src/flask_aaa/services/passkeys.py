"""Passkeys (WebAuthn): register one, sign in with one (first or second factor), list,
rename and remove them. Needs the ``passkeys`` extra (py_webauthn).

Every ceremony is two requests. The first returns options with a fresh challenge, stored by
:mod:`.challenges` (single use, bound to the browser, short-lived). The second carries the
authenticator's answer; the challenge is read back out of its ``clientDataJSON`` and spent
with :func:`spend_challenge` *before* anything is verified, so a failed answer cannot be
retried with the same challenge. The caller commits that, then calls :func:`register` or
:func:`authenticate`, which verify (origin, relying-party id hash, signature, user handle,
signature counter) and change nothing unless everything passed.

Failures are recorded apart (``auth.passkey.failed``, ``auth.passkey.clone_suspected``,
``account.passkey.removed`` denied) and raise :class:`PasskeyRejected` (or
:class:`InvalidToken` for a bad challenge, :class:`InvalidInput` for malformed input). No
secret exists to leak here: credential public keys are public; the audit trail still names
a passkey only by its row id and name.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import secrets
import unicodedata
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import bytes_to_base64url, options_to_json_dict
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from ..config import Settings
from ..db import utcnow
from ..errors import Conflict, InvalidInput, InvalidToken, NotFound, PasskeyRejected
from ..models import Passkey, User
from . import accounts, audit, challenges
from .actors import Actor, RequestFacts

#: The kind of challenge (:mod:`.challenges`) every passkey ceremony uses.
KIND = "webauthn"
#: Challenge purposes: add a passkey, sign in with one, use one as the second factor.
REGISTER, LOGIN, MFA = "register", "login", "mfa"

#: Passkeys one account may hold: enough for every device a person owns, few enough that
#: the list (and the allow list sent at the second step) stays small.
MAX_PER_USER = 20
#: Longest passkey name, in characters (the column's size).
NAME_MAX = 64
#: Random bytes of a WebAuthn challenge and of a user handle.
CHALLENGE_BYTES = 32
HANDLE_BYTES = 32
#: Longest credential id accepted, base64url (the column's size; real ones are far shorter).
CREDENTIAL_ID_MAX = 1400
#: Longest base64url field of an authenticator's answer (attestation objects are the largest).
FIELD_MAX = 16 * 1024

_TRANSPORTS = frozenset(t.value for t in AuthenticatorTransport)
_BASE64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


@dataclasses.dataclass(frozen=True, slots=True)
class RelyingParty:
    """Who the passkeys are for: the relying-party id (a domain), the origin browsers report,
    the name authenticators show, and how long a ceremony may take (seconds)."""

    id: str
    origin: str
    name: str
    timeout: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RelyingParty:
        if not settings.passkey_rp_id or not settings.passkey_origin:
            raise RuntimeError("passkeys are not configured (see AAA_PASSKEY_RP_ID)")
        return cls(
            id=settings.passkey_rp_id,
            origin=settings.passkey_origin,
            name=settings.app_name,
            timeout=settings.passkey_timeout,
        )


# -- reading what the browser sent --


def credential_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``credential`` object of a request body, checked for shape before any library
    sees it: strings where strings belong, nothing absurdly long. :class:`InvalidInput`
    otherwise (a clear 400, never a 500 from deep inside a parser)."""
    credential = body.get("credential")
    if not isinstance(credential, dict):
        raise InvalidInput({"credential": "Send the passkey's answer as an object."})
    response = credential.get("response")
    cred_id = credential.get("id")
    if (
        not isinstance(cred_id, str)
        or not 0 < len(cred_id) <= CREDENTIAL_ID_MAX
        or credential.get("rawId") != cred_id
        or credential.get("type") != "public-key"
        or not isinstance(response, dict)
    ):
        raise InvalidInput({"credential": "The passkey's answer is malformed."})
    for name, value in response.items():
        if name == "transports":
            if not isinstance(value, list) or len(value) > 10:
                raise InvalidInput({"credential": "The passkey's answer is malformed."})
            continue
        if value is None and name == "userHandle":
            continue
        if not isinstance(value, str) or len(value) > FIELD_MAX or not _is_base64url(value):
            raise InvalidInput({"credential": "The passkey's answer is malformed."})
    if not isinstance(response.get("clientDataJSON"), str):
        raise InvalidInput({"credential": "The passkey's answer is malformed."})
    return credential


def _is_base64url(value: str) -> bool:
    try:
        _b64decode(value)
    except (binascii.Error, ValueError):
        return False
    return True


def _b64decode(value: str) -> bytes:
    """Strict base64url without padding (what browsers send): any other character fails."""
    if not _BASE64URL_RE.fullmatch(value):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def challenge_in(credential: Mapping[str, Any]) -> str | None:
    """The challenge an answer claims to respond to (base64url), read from its
    ``clientDataJSON``; None if that cannot be read. Verification compares it again."""
    try:
        client_data = json.loads(_b64decode(credential["response"]["clientDataJSON"]))
    except (KeyError, TypeError, ValueError, binascii.Error, RecursionError):
        return None
    value = client_data.get("challenge") if isinstance(client_data, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


def clean_name(value: str | None, *, fallback: str) -> str:
    """A passkey's name: NFKC, trimmed, 1 to :data:`NAME_MAX` characters, no control
    characters; ``fallback`` when none is given."""
    value = unicodedata.normalize("NFKC", value or "").strip()
    if not value:
        return fallback
    if len(value) > NAME_MAX:
        raise InvalidInput({"name": f"Use at most {NAME_MAX} characters."})
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in value):
        raise InvalidInput({"name": "Control characters are not allowed."})
    return value


# -- reading what is stored --


def list_for(db: Session, user: User) -> list[Passkey]:
    """The user's passkeys, oldest first."""
    return list(
        db.scalars(select(Passkey).where(Passkey.user_id == user.id).order_by(Passkey.created_at))
    )


def count_for(db: Session, user: User) -> int:
    return int(db.scalar(select(func.count(Passkey.id)).where(Passkey.user_id == user.id)) or 0)


def find_own(db: Session, user: User, passkey_id: int) -> Passkey:
    """One of the user's own passkeys; another user's is as unknown as a missing one."""
    passkey = db.get(Passkey, passkey_id)
    if passkey is None or passkey.user_id != user.id:
        raise NotFound("No such passkey.")
    return passkey


def _descriptors(passkeys: list[Passkey]) -> list[PublicKeyCredentialDescriptor]:
    return [
        PublicKeyCredentialDescriptor(
            id=_b64decode(p.credential_id),
            transports=[AuthenticatorTransport(t) for t in p.transports.split() if t in _TRANSPORTS]
            or None,
        )
        for p in passkeys
    ]


# -- the first request of each ceremony --


def registration_options(
    db: Session, user: User, *, rp: RelyingParty, browser: str
) -> dict[str, Any]:
    """Options for ``navigator.credentials.create()`` (JSON-ready). The user's existing
    passkeys are excluded (one authenticator, one passkey per account); a discoverable
    credential (resident key) is preferred so it can sign in without a username. Gives the
    user a random WebAuthn user handle on their first passkey. The caller commits."""
    existing = list_for(db, user)
    if len(existing) >= MAX_PER_USER:
        raise Conflict(f"You already have {MAX_PER_USER} passkeys. Remove one to add another.")
    if user.passkey_handle is None:
        # Random, never the primary key: a handle says nothing about the account.
        user.passkey_handle = bytes_to_base64url(secrets.token_bytes(HANDLE_BYTES))
    challenge = secrets.token_bytes(CHALLENGE_BYTES)
    options = generate_registration_options(
        rp_id=rp.id,
        rp_name=rp.name,
        user_id=_b64decode(user.passkey_handle),
        user_name=user.email or user.label,
        user_display_name=user.label,
        challenge=challenge,
        timeout=rp.timeout * 1000,
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
        exclude_credentials=_descriptors(existing),
    )
    challenges.begin(
        db,
        kind=KIND,
        purpose=REGISTER,
        browser=browser,
        ttl=rp.timeout,
        user_id=user.id,
        value=bytes_to_base64url(challenge),
    )
    return options_to_json_dict(options)


def authentication_options(
    db: Session, *, rp: RelyingParty, browser: str, user: User | None = None
) -> dict[str, Any]:
    """Options for ``navigator.credentials.get()`` (JSON-ready).

    Without ``user`` (first factor): an empty allow list, so the browser offers the
    discoverable passkeys it holds for this site and nothing reveals which accounts exist;
    user verification (PIN, biometrics) is required, because the passkey is the whole
    sign-in. With ``user`` (second factor, after a password): that user's passkeys; user
    presence is enough, the password being the other factor. The caller commits."""
    allow: list[PublicKeyCredentialDescriptor] = []
    if user is not None:
        allow = _descriptors(list_for(db, user))
        if not allow:
            raise NotFound("You have no passkey.")
    challenge = secrets.token_bytes(CHALLENGE_BYTES)
    options = generate_authentication_options(
        rp_id=rp.id,
        challenge=challenge,
        timeout=rp.timeout * 1000,
        allow_credentials=allow,
        user_verification=(
            UserVerificationRequirement.REQUIRED
            if user is None
            else UserVerificationRequirement.PREFERRED
        ),
    )
    challenges.begin(
        db,
        kind=KIND,
        purpose=LOGIN if user is None else MFA,
        browser=browser,
        ttl=rp.timeout,
        user_id=user.id if user is not None else None,
        value=bytes_to_base64url(challenge),
    )
    return options_to_json_dict(options)


# -- the second request: spend the challenge, then verify --


def spend_challenge(
    db: Session,
    credential: Mapping[str, Any],
    *,
    purpose: str,
    browser: str,
    actor: Actor,
    target: User | None,
    facts: RequestFacts,
) -> challenges.Taken:
    """Use up the challenge the answer responds to: it must exist, be unused and unexpired,
    come from this browser, and have been issued for ``purpose`` (and, when it names one,
    to ``target``). On failure ``auth.passkey.failed`` is recorded apart and
    :class:`InvalidToken` raised. The caller commits the spent challenge before verifying."""
    try:
        taken = challenges.consume(db, kind=KIND, value=challenge_in(credential), browser=browser)
        if taken.purpose != purpose:
            raise InvalidToken("wrong_purpose", message=challenges.MESSAGE)
        if target is not None and taken.user_id is not None and taken.user_id != target.id:
            raise InvalidToken("other_user", message=challenges.MESSAGE)
    except InvalidToken as exc:
        _fail(db, actor=actor, target=target, stage=purpose, reason=exc.reason, facts=facts)
        raise
    return taken


def register(
    db: Session,
    user: User,
    credential: Mapping[str, Any],
    *,
    taken: challenges.Taken,
    rp: RelyingParty,
    name: str,
    facts: RequestFacts,
) -> Passkey:
    """Verify a ``navigator.credentials.create()`` answer to the spent challenge ``taken``
    and store the passkey as ``name``, recording ``account.passkey.added``. The caller
    commits. A bad answer: ``auth.passkey.failed`` recorded apart, :class:`PasskeyRejected`
    (400)."""
    actor = Actor.of(user)

    def reject(reason: str) -> PasskeyRejected:
        _fail(db, actor=actor, target=user, stage=REGISTER, reason=reason, facts=facts)
        return PasskeyRejected(reason, status=400)

    if taken.purpose != REGISTER or taken.user_id != user.id:
        raise reject("other_user")
    if count_for(db, user) >= MAX_PER_USER:
        raise Conflict(f"You already have {MAX_PER_USER} passkeys. Remove one to add another.")
    try:
        verified = verify_registration_response(
            credential=dict(credential),
            expected_challenge=_b64decode(_taken_value(credential)),
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
        )
    except Exception as exc:  # the library raises many kinds on malformed CBOR and keys
        raise reject(_reason(exc)) from None
    credential_id = bytes_to_base64url(verified.credential_id)
    if len(credential_id) > CREDENTIAL_ID_MAX:
        raise reject("credential_id_too_long")
    if db.scalar(select(Passkey.id).where(Passkey.credential_id == credential_id)) is not None:
        raise reject("already_registered")
    transports = credential["response"].get("transports") or []
    passkey = Passkey(
        user_id=user.id,
        name=name,
        credential_id=credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        transports=" ".join(t for t in transports if isinstance(t, str) and t in _TRANSPORTS),
        aaguid=verified.aaguid,
        backed_up=verified.credential_backed_up,
        created_at=utcnow(),
    )
    try:
        with db.begin_nested():  # a concurrent registration of the same credential loses
            db.add(passkey)
            db.flush()
    except IntegrityError:
        raise reject("already_registered") from None
    audit.record(
        db,
        action="account.passkey.added",
        actor=actor,
        target=user,
        facts=facts,
        details={
            "passkey": passkey.id,
            "name": passkey.name,
            "aaguid": passkey.aaguid,
            "backed_up": passkey.backed_up,
            "user_verified": verified.user_verified,
        },
    )
    return passkey


def authenticate(
    db: Session,
    credential: Mapping[str, Any],
    *,
    taken: challenges.Taken,
    rp: RelyingParty,
    facts: RequestFacts,
    expected_user: User | None = None,
) -> tuple[User, Passkey]:
    """Verify a ``navigator.credentials.get()`` answer to the spent challenge ``taken``.

    The credential is looked up by its id; with ``expected_user`` (the second factor) it
    must be theirs. The signature must verify with the stored key over this relying party's
    id hash and this origin; a first-factor answer must say the user was verified and carry
    the owner's user handle (a second-factor one may omit it, never name another). A
    signature counter that did not grow (unless it is always 0) means two authenticators
    hold the key: ``auth.passkey.clone_suspected`` is recorded and the sign-in refused.
    On success the counter and the last-use time are updated (uncommitted); the caller
    checks the account may sign in and completes the sign-in."""
    stage = taken.purpose
    first_factor = stage == LOGIN
    passkey = db.scalar(select(Passkey).where(Passkey.credential_id == credential["id"]))
    owner = passkey.user if passkey is not None else None
    target = expected_user or owner

    def reject(reason: str, **details: object) -> PasskeyRejected:
        _fail(
            db,
            actor=Actor.anonymous(),
            target=target,
            stage=stage,
            reason=reason,
            facts=facts,
            **details,
        )
        return PasskeyRejected(reason)

    if passkey is None or owner is None:
        raise reject("unknown_credential")
    if expected_user is not None and owner.id != expected_user.id:
        raise reject("other_user", passkey_owner=owner.id)
    if taken.user_id is not None and taken.user_id != owner.id:
        raise reject("other_user", passkey_owner=owner.id)
    try:
        verified = verify_authentication_response(
            credential=dict(credential),
            expected_challenge=_b64decode(_taken_value(credential)),
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
            credential_public_key=passkey.public_key,
            # The counter is checked below, after the signature, so that a regression is
            # reported as what it is (and only for a genuine signature).
            credential_current_sign_count=0,
            require_user_verification=first_factor,
        )
    except Exception as exc:  # the library raises many kinds on malformed input
        raise reject(_reason(exc), passkey=passkey.id) from None
    handle = credential["response"].get("userHandle")
    if (first_factor and not handle) or (
        handle
        and (
            owner.passkey_handle is None
            or not secrets.compare_digest(str(handle), owner.passkey_handle)
        )
    ):
        raise reject("user_handle_mismatch", passkey=passkey.id)
    stored, received = passkey.sign_count, verified.new_sign_count
    if (stored > 0 or received > 0) and received <= stored:
        audit.record_apart(
            db,
            action="auth.passkey.clone_suspected",
            actor=Actor.anonymous(),
            outcome="denied",
            target=owner,
            facts=facts,
            details={
                "passkey": passkey.id,
                "name": passkey.name,
                "stored_count": stored,
                "received_count": received,
                "stage": stage,
            },
        )
        raise PasskeyRejected("sign_count_regression")
    passkey.sign_count = received
    passkey.backed_up = verified.credential_backed_up
    passkey.last_used_at = utcnow()
    return owner, passkey


def _taken_value(credential: Mapping[str, Any]) -> str:
    # spend_challenge already proved this is the challenge that was issued and spent.
    value = challenge_in(credential)
    if value is None:
        raise InvalidToken("missing", message=challenges.MESSAGE)
    return value


def _reason(exc: Exception) -> str:
    """A short, stable reason for the audit trail (never the raw input)."""
    text = str(exc).lower()
    for needle, reason in (
        ("origin", "wrong_origin"),
        ("rp id hash", "wrong_rp_id"),
        ("signature", "bad_signature"),
        ("user verification", "user_not_verified"),
        ("user presence", "user_not_present"),
        ("not present", "user_not_present"),
        ("challenge", "wrong_challenge"),
        ("client data type", "wrong_type"),
    ):
        if needle in text:
            return reason
    return "malformed_response"


def _fail(
    db: Session,
    *,
    actor: Actor,
    target: User | None,
    stage: str,
    reason: str,
    facts: RequestFacts,
    **details: object,
) -> None:
    audit.record_apart(
        db,
        action="auth.passkey.failed",
        actor=actor,
        outcome="failure",
        target=target,
        facts=facts,
        details={"stage": stage, "reason": reason, **details},
    )


# -- managing them --


def rename(db: Session, user: User, passkey_id: int, *, name: str, facts: RequestFacts) -> Passkey:
    """Give one of the user's passkeys a new name (``account.passkey.renamed``)."""
    passkey = find_own(db, user, passkey_id)
    name = clean_name(name, fallback="")
    if not name:
        raise InvalidInput({"name": "A name is required."})
    old, passkey.name = passkey.name, name
    audit.record(
        db,
        action="account.passkey.renamed",
        actor=Actor.of(user),
        target=user,
        facts=facts,
        details={"passkey": passkey.id, "old_name": old, "name": name},
    )
    return passkey


def remove(db: Session, user: User, passkey_id: int, *, facts: RequestFacts) -> Passkey:
    """Remove one of the user's passkeys (``account.passkey.removed``). Refused, and the
    refusal recorded apart, when it is the account's only way in. The caller has checked a
    recent sign-in (re-authentication) and commits."""
    passkey = find_own(db, user, passkey_id)
    details = {"passkey": passkey.id, "name": passkey.name}
    if not accounts.has_other_way_in(db, user, besides=passkey):
        audit.record_apart(
            db,
            action="account.passkey.removed",
            actor=Actor.of(user),
            outcome="denied",
            target=user,
            facts=facts,
            details={**details, "reason": "only_way_in"},
        )
        raise Conflict(
            "This passkey is the only way into your account. Add another way to sign in first."
        )
    db.delete(passkey)
    audit.record(
        db,
        action="account.passkey.removed",
        actor=Actor.of(user),
        target=user,
        facts=facts,
        details=details,
    )
    return passkey


def has_passkeys(db: Session, user: User) -> bool:
    return db.scalar(select(Passkey.id).where(Passkey.user_id == user.id).limit(1)) is not None
