"""Personal access tokens: minted (and shown) once, stored as a SHA-256, narrowed by scopes.

A token reads ``<prefix><40 random base62 characters><6-character checksum>``, e.g.
``aaa_pat_3kT...``: the fixed prefix lets secret scanners find leaked tokens, and the CRC-32
checksum lets them (and us, before any query) tell a real token from a random string.

Its scopes are permission strings. At minting they must be covered by what the minter holds
(a token minted through a token can never be wider than its parent); at every request the
token may do only what its scopes AND its owner's current grants both allow, so a role taken
from the owner takes effect on the token's next request. Two self-service scopes exist for
the owner's own account, which no role grants: ``account:read`` (profile, sessions, tokens,
activity) and ``account:write`` (revoke sessions, mint and revoke tokens).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets
import unicodedata
import zlib
from collections.abc import Iterable, Sequence

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from ..config import Settings
from ..db import note_activity, utcnow
from ..errors import Conflict, InvalidInput, NotFound, TokenRejected
from ..models import ApiToken, AuthzState, User
from . import audit, rbac
from .actors import Actor, RequestFacts, token_digest

#: Scopes for the owner's own account. No role grants them; any token may carry them.
SELF_SCOPES: dict[str, str] = {
    "account:read": "Read your profile, sessions, tokens and activity.",
    "account:write": "Revoke your sessions; mint and revoke your tokens.",
}
#: Most scopes one token may carry.
MAX_SCOPES = 32

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LENGTH = 40  # 40 base62 characters: 238 bits
_CHECKSUM_LENGTH = 6
_HINT_EXTRA = 4


class ScopedGrants(rbac.Grants):
    """The grants of a request made with a token: its owner's, narrowed to its scopes.

    A permission is allowed only if a scope covers it and the owner holds it now; the self
    scopes need only the scope. Roles are never carried by a token: a role check made for a
    token request fails (guard token-accepting views with permissions)."""

    __slots__ = ("owner",)

    def __init__(self, owner: rbac.Grants, scopes: Iterable[str]) -> None:
        super().__init__((), scopes)
        self.owner = owner

    def allows(self, wanted: str) -> bool:
        answer = self._answers.get(wanted)
        if answer is None:
            answer = rbac.permission_matches(self.permissions, wanted) and (
                wanted in SELF_SCOPES or self.owner.allows(wanted)
            )
            self._answers[wanted] = answer
        return answer


@dataclasses.dataclass(frozen=True, slots=True)
class Minted:
    """A new token: the row, and the secret, which exists nowhere else and is shown once."""

    token: ApiToken
    secret: str


@dataclasses.dataclass(frozen=True, slots=True)
class Authenticated:
    """A token that authenticated a request, with its owner and the authz version read in
    the same query (for the grants cache)."""

    token: ApiToken
    user: User
    authz_version: int


# -- the token format --


def _checksum(body: str) -> str:
    value = zlib.crc32(body.encode())
    digits = []
    for _ in range(_CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits))


def generate(prefix: str) -> str:
    """A new random token with ``prefix`` and its checksum."""
    body = "".join(secrets.choice(_BASE62) for _ in range(_BODY_LENGTH))
    return f"{prefix}{body}{_checksum(body)}"


def well_formed(prefix: str, value: str) -> bool:
    """Prefix, length, alphabet and checksum: checked before any database query."""
    expected = len(prefix) + _BODY_LENGTH + _CHECKSUM_LENGTH
    if len(value) != expected or not value.startswith(prefix):
        return False
    rest = value[len(prefix) :]
    if not all(ch in _BASE62 for ch in rest):
        return False
    body, check = rest[:_BODY_LENGTH], rest[_BODY_LENGTH:]
    return secrets.compare_digest(_checksum(body), check)


def pattern(prefix: str) -> str:
    """A regular expression that matches tokens with ``prefix`` (for secret scanners)."""
    return rf"{re.escape(prefix)}[0-9A-Za-z]{{{_BODY_LENGTH + _CHECKSUM_LENGTH}}}"


# -- input --


def validate_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidInput({"name": "Give the token a name."})
    name = unicodedata.normalize("NFKC", name).strip()
    if not 1 <= len(name) <= 64 or any(unicodedata.category(ch)[0] == "C" for ch in name):
        raise InvalidInput({"name": "Use 1 to 64 printable characters."})
    return name


def validate_scopes(scopes: Iterable[object]) -> list[str]:
    """Well-formed, de-duplicated, sorted permission strings; at least one."""
    seen: set[str] = set()
    for scope in scopes:
        if not isinstance(scope, str):
            raise InvalidInput({"scopes": "Scopes are permission strings."})
        try:
            seen.add(rbac.validate_permission_name(scope))
        except InvalidInput:
            raise InvalidInput({"scopes": f"{scope[:64]!r} is not a permission string."}) from None
    if not seen:
        raise InvalidInput({"scopes": "Choose at least one scope."})
    if len(seen) > MAX_SCOPES:
        raise InvalidInput({"scopes": f"A token may carry at most {MAX_SCOPES} scopes."})
    return sorted(seen)


def validate_days(days: object, settings: Settings) -> int:
    if days is None or days == "":
        return settings.token_default_days
    try:
        value = int(str(days)) if not isinstance(days, bool) else -1
    except ValueError:
        value = -1
    if not 1 <= value <= settings.token_max_days:
        raise InvalidInput(
            {"expires_in_days": f"Choose between 1 and {settings.token_max_days} days."}
        )
    return value


def _covers(grants: rbac.Grants, scope: str) -> bool:
    """May a principal with ``grants`` hand ``scope`` on? A signed-in person holds the self
    scopes implicitly; a token only if it carries them."""
    if scope in SELF_SCOPES and not isinstance(grants, ScopedGrants):
        return True
    return grants.allows(scope)


# -- life cycle --


def mint(
    db: Session,
    owner: User,
    *,
    actor: Actor,
    name: object,
    scopes: Iterable[object],
    days: object = None,
    settings: Settings,
    facts: RequestFacts,
) -> Minted:
    """Mint a token for ``owner`` and record ``token.created``. The caller commits.

    ``actor`` is the owner, or an administrator (``aaa:users:write``) minting for someone
    else, typically a service account. Every scope must be covered by the actor's grants
    and by the owner's: a token is never wider than the one who made it or the one it acts
    for. Refusals are :class:`PermissionDenied` (audited) or :class:`InvalidInput`."""
    name = validate_name(name)
    wanted = validate_scopes(scopes)
    lifetime = validate_days(days, settings)
    if not owner.active:
        raise Conflict("This account is disabled.")
    own = actor.user_id == owner.id
    if not own:
        rbac.check(db, actor, [rbac.MANAGE_USERS], facts=facts, target=owner)
    if not actor.is_system and actor.user is not None:
        beyond = [s for s in wanted if not _covers(actor.user.grants, s)]
        if beyond:
            rbac.deny(db, actor, " and ".join(beyond), facts=facts, target=owner)
    if not own:
        owner_grants = rbac.load_grants(db, owner.id)
        beyond = [s for s in wanted if s not in SELF_SCOPES and not owner_grants.allows(s)]
        if beyond:
            raise InvalidInput(
                {"scopes": f"{owner.label} does not hold {', '.join(beyond)}."},
            )
    now = utcnow()
    live = db.scalar(
        select(func.count())
        .select_from(ApiToken)
        .where(
            ApiToken.user_id == owner.id,
            ApiToken.revoked_at.is_(None),
            ApiToken.expires_at > now,
        )
    )
    if (live or 0) >= settings.token_limit_per_user:
        raise Conflict(
            f"This account already has {settings.token_limit_per_user} live tokens; "
            "revoke one first."
        )
    secret = generate(settings.token_prefix)
    token = ApiToken(
        user_id=owner.id,
        name=name,
        token_hash=token_digest(secret),
        hint=secret[: len(settings.token_prefix) + _HINT_EXTRA],
        scopes=" ".join(wanted),
        created_at=now,
        created_by=actor.user_id,
        expires_at=now + dt.timedelta(days=lifetime),
    )
    db.add(token)
    db.flush()
    audit.record(
        db,
        action="token.created",
        actor=actor,
        target=owner,
        facts=facts,
        details={
            "pat_id": token.id,
            "name": name,
            "scopes": wanted,
            "expires_at": token.expires_at.isoformat(),
        },
    )
    return Minted(token, secret)


#: The one query of a token request: the token, its owner and the authz version.
_AUTHENTICATE = (
    select(
        ApiToken,
        User,
        select(AuthzState.version).where(AuthzState.id == 1).scalar_subquery(),
    )
    .join(User, User.id == ApiToken.user_id)
    .where(ApiToken.token_hash == bindparam("token_hash"))
)


def authenticate(
    db: Session, value: str, *, settings: Settings, facts: RequestFacts
) -> Authenticated:
    """Find the live token for ``value`` with one query, or raise :class:`TokenRejected`.

    Malformed values are refused before the database is asked. A known token that is
    revoked, expired, or whose owner is disabled is refused and the attempt recorded apart
    (a leaked token being tried is worth knowing about); random values are not recorded."""
    if not well_formed(settings.token_prefix, value):
        raise TokenRejected("malformed")
    digest = token_digest(value)
    row = db.execute(_AUTHENTICATE, {"token_hash": digest}).first()
    if row is None or not secrets.compare_digest(row[0].token_hash, digest):
        raise TokenRejected("unknown")
    token, user, authz_version = row
    reason = None
    if token.revoked_at is not None:
        reason = "revoked"
    elif utcnow() >= token.expires_at:
        reason = "expired"
    elif not user.active:
        reason = "owner_disabled"
    if reason is not None:
        audit.record_apart(
            db,
            action="token.rejected",
            actor=Actor.anonymous(),
            outcome="denied",
            target=user,
            facts=facts,
            details={"pat_id": token.id, "reason": reason},
        )
        raise TokenRejected(reason)
    return Authenticated(token, user, authz_version or 0)


def touch(db: Session, token: ApiToken, *, settings: Settings, facts: RequestFacts) -> None:
    """Record when and from where the token was last used, at most once per touch interval
    (best effort; see :func:`~flask_aaa.db.note_activity`)."""
    now = utcnow()
    last = token.last_used_at
    if last is not None and (now - last).total_seconds() < settings.token_touch_interval:
        return
    note_activity(
        db,
        update(ApiToken)
        .where(ApiToken.id == token.id)
        .values(last_used_at=now, last_used_ip=facts.ip)
        .execution_options(synchronize_session=False),
        "token use",
    )


def tokens_of(db: Session, owner: User) -> Sequence[ApiToken]:
    """All of ``owner``'s tokens, newest first (revoked and expired ones included)."""
    return db.scalars(
        select(ApiToken)
        .where(ApiToken.user_id == owner.id)
        .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    ).all()


def get(db: Session, token_id: int, *, owner: User | None = None) -> ApiToken:
    """The token ``token_id`` (of ``owner``, if given), else :class:`NotFound`: another
    user's token id is indistinguishable from a missing one."""
    token = db.get(ApiToken, token_id)
    if token is None or (owner is not None and token.user_id != owner.id):
        raise NotFound("No such token.")
    return token


def revoke(db: Session, token: ApiToken, *, actor: Actor, facts: RequestFacts) -> bool:
    """Revoke ``token`` and record ``token.revoked``; False if it was already revoked.

    Its owner may revoke it; anyone else needs ``aaa:users:write`` (denial audited)."""
    owner = db.get(User, token.user_id)
    if actor.user_id != token.user_id:
        rbac.check(db, actor, [rbac.MANAGE_USERS], facts=facts, target=owner)
    if token.revoked_at is not None:
        return False
    token.revoked_at = utcnow()
    token.revoked_by = actor.user_id
    audit.record(
        db,
        action="token.revoked",
        actor=actor,
        target=owner,
        facts=facts,
        details={"pat_id": token.id, "name": token.name},
    )
    return True


def status(token: ApiToken, now: dt.datetime | None = None) -> str:
    """``active``, ``expired`` or ``revoked``."""
    if token.revoked_at is not None:
        return "revoked"
    if (now or utcnow()) >= token.expires_at:
        return "expired"
    return "active"


def describe(token: ApiToken) -> dict[str, object]:
    """What may be shown of a token: everything but its secret (which is not kept)."""
    return {
        "id": token.id,
        "name": token.name,
        "hint": token.hint,
        "scopes": token.scope_list,
        "created_at": token.created_at.isoformat(),
        "expires_at": token.expires_at.isoformat(),
        "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
        "last_used_ip": token.last_used_ip,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
        "status": status(token),
    }
