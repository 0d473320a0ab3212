"""External identities: accounts at third-party providers, linked to local accounts.

An identity is keyed by the provider's ``(issuer, subject)``, never by an email address: an
address says nothing about who holds it now, and some providers let anyone type any address.
So a third-party sign-in finds the account *linked* to that identity, or (with
``AAA_OIDC_REGISTRATION``) creates a new one; it never attaches itself to an existing account
because the addresses match. Linking is something a signed-in user does (:func:`link`), and
undoes (:func:`unlink`).

A new account gets the provider's address only when the provider says it verified it, the
provider is trusted to say so (``trusted_email``), and no other account uses it. A verified
address that another account already uses stops the sign-up with a message (the person
proved they hold the address, so it tells them nothing new): they should sign in to that
account and link the provider there. An unverified address is not recorded at all; with
``AAA_CONFIRM_EMAIL`` (every account needs a confirmed address) the sign-up is refused.
"""

from __future__ import annotations

import secrets
import unicodedata

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..config import Settings
from ..db import utcnow
from ..errors import AAAError, Conflict, IdentityNotLinked, InvalidInput, NotFound
from ..models import ExternalIdentity, User
from . import accounts, audit
from .accounts import USERNAME_MAX, USERNAME_MIN
from .actors import Actor, RequestFacts
from .oidc import ExternalAccount


def find(db: Session, issuer: str, subject: str) -> ExternalIdentity | None:
    return db.scalar(
        select(ExternalIdentity).where(
            ExternalIdentity.issuer == issuer, ExternalIdentity.subject == subject
        )
    )


def for_user(db: Session, user: User) -> list[ExternalIdentity]:
    """The user's linked identities, oldest first."""
    return list(
        db.scalars(
            select(ExternalIdentity)
            .where(ExternalIdentity.user_id == user.id)
            .order_by(ExternalIdentity.id)
        )
    )


def _refuse(
    db: Session,
    error: AAAError,
    *,
    account: ExternalAccount,
    reason: str,
    facts: RequestFacts,
    actor: Actor | None = None,
    target: User | None = None,
) -> AAAError:
    audit.record_apart(
        db,
        action="auth.oidc.failed",
        actor=actor or Actor.anonymous(),
        outcome="failure",
        target=target,
        facts=facts,
        details={"provider": account.provider, "reason": reason},
    )
    return error


def sign_in(
    db: Session, account: ExternalAccount, *, settings: Settings, facts: RequestFacts, label: str
) -> tuple[User, bool]:
    """The local user a third-party sign-in is for, and whether it was just created.

    A linked identity gives its user, if that account may sign in
    (:func:`.accounts.check_may_sign_in`: disabled, locked, unconfirmed and service accounts
    are refused and audited). An unknown
    identity creates an account when ``AAA_OIDC_REGISTRATION`` allows it, and is refused
    (:class:`IdentityNotLinked`) otherwise. The session is opened by the caller."""
    identity = find(db, account.issuer, account.subject)
    if identity is not None:
        user = identity.user
        accounts.check_may_sign_in(db, user, settings=settings, facts=facts, method="oidc")
        identity.last_login_at = utcnow()
        identity.email = account.email
        return user, False
    if not settings.oidc_registration:
        raise _refuse(
            db, IdentityNotLinked(label), account=account, reason="not_linked", facts=facts
        )
    return _create(db, account, settings=settings, facts=facts, label=label), True


def _create(
    db: Session, account: ExternalAccount, *, settings: Settings, facts: RequestFacts, label: str
) -> User:
    email = None
    if settings.enable_email and account.email and account.email_verified:
        try:
            email = accounts.normalize_email(account.email)
        except InvalidInput:
            email = None
        if email is not None and db.scalar(select(User.id).where(User.email_key == email.key)):
            raise _refuse(
                db,
                Conflict(
                    f"An account here already uses the email address of your {label} account. "
                    f"Sign in to that account, then link {label} from its page."
                ),
                account=account,
                reason="email_in_use",
                facts=facts,
            )
    if settings.confirm_email and email is None:
        raise _refuse(
            db,
            Conflict(
                f"{label} did not confirm an email address for you, and this site needs one. "
                "Please register with your email address instead."
            ),
            account=account,
            reason="email_not_verified",
            facts=facts,
        )
    now = utcnow()
    for attempt in range(2):
        username = _free_username(db, account, random_suffix=attempt > 0)
        user = User(
            username=username.display if username and settings.enable_username else None,
            username_key=username.key if username and settings.enable_username else None,
            email=email.display if email else None,
            email_key=email.key if email else None,
            password_hash=None,
            email_confirmed_at=now if email else None,
            active=True,
        )
        try:
            # A savepoint: a concurrent sign-up taking the same name loses cleanly.
            with db.begin_nested():
                db.add(user)
                db.flush()
            break
        except IntegrityError:
            continue
    else:
        raise Conflict("The account could not be created. Please try again.")
    # The default role and ``user.registered``, as for every self-service sign-up.
    accounts.welcome(db, settings=settings, user=user, facts=facts)
    _add(db, user, account, facts=facts, created=True)
    return user


def _slug(value: str) -> str:
    value = unicodedata.normalize("NFKC", value)
    out = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in value)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("._-")[: USERNAME_MAX - 7]


def _free_username(
    db: Session, account: ExternalAccount, *, random_suffix: bool
) -> accounts.Identifier | None:
    """A valid username not yet taken, from what the provider said (its user name, the
    address's local part, the name), else from the provider's name."""
    hints = [account.username, (account.email or "").split("@")[0], account.name]
    base = next((s for s in (_slug(h) for h in hints if h) if len(s) >= USERNAME_MIN), "")
    base = base or _slug(f"{account.provider}-user")
    suffixes = [f"-{secrets.token_hex(3)}"]
    if not random_suffix:
        suffixes = ["", *(f"-{n}" for n in range(2, 10)), *suffixes]
    for suffix in suffixes:
        try:
            candidate = accounts.normalize_username(base + suffix)
        except InvalidInput:  # a name of letters the username rules refuse
            candidate = accounts.normalize_username(f"user{suffix}")
        if db.scalar(select(User.id).where(User.username_key == candidate.key)) is None:
            return candidate
    return None


def _add(
    db: Session, user: User, account: ExternalAccount, *, facts: RequestFacts, created: bool
) -> ExternalIdentity:
    identity = ExternalIdentity(
        user_id=user.id,
        provider=account.provider,
        issuer=account.issuer,
        subject=account.subject,
        email=account.email,
        created_at=utcnow(),
        last_login_at=utcnow() if created else None,
    )
    db.add(identity)
    db.flush()
    audit.record(
        db,
        action="account.identity.linked",
        actor=Actor.of(user),
        target=user,
        facts=facts,
        details={
            "provider": account.provider,
            "issuer": account.issuer,
            "subject": account.subject,
            "identity_id": identity.id,
            "new_account": created,
        },
    )
    return identity


def link(
    db: Session, *, user: User, account: ExternalAccount, facts: RequestFacts, label: str
) -> tuple[ExternalIdentity, bool]:
    """Link an external identity to the signed-in ``user`` (who began the flow after a
    fresh sign-in). Returns it and whether it is new. An identity linked to someone else is
    refused (:class:`Conflict`), audited apart."""
    identity = find(db, account.issuer, account.subject)
    if identity is not None:
        if identity.user_id != user.id:
            raise _refuse(
                db,
                Conflict(f"This {label} account is already linked to another account here."),
                account=account,
                reason="linked_to_another",
                facts=facts,
                actor=Actor.of(user),
                target=user,
            )
        identity.email = account.email
        return identity, False
    return _add(db, user, account, facts=facts, created=False), True


def unlink(db: Session, *, user: User, identity_id: int, facts: RequestFacts) -> ExternalIdentity:
    """Remove one of ``user``'s identities. The last way to sign in (no password, no other
    identity, no passkey) cannot be removed."""
    identity = db.get(ExternalIdentity, identity_id)
    if identity is None or identity.user_id != user.id:
        raise NotFound("No such linked account.")
    if not accounts.has_other_way_in(db, user, besides=identity):
        raise Conflict(
            "This is the only way you can sign in. Set a password (with 'Forgot your "
            "password?') or link another account first."
        )
    db.delete(identity)
    audit.record(
        db,
        action="account.identity.unlinked",
        actor=Actor.of(user),
        target=user,
        facts=facts,
        details={
            "provider": identity.provider,
            "issuer": identity.issuer,
            "subject": identity.subject,
            "identity_id": identity.id,
        },
    )
    return identity
