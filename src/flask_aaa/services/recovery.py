"""The mail-based account flows: email confirmation, password reset, change of address and
invitations.

Each function changes the database (and records its audit event) in the caller's
transaction and returns what must be mailed -- an :class:`Outgoing`, with the raw token for
the link -- but never sends anything itself: the web layer sends after the response.

Requests that name an address (a reset, a new confirmation link) give the same answer and
cost the same work whether the address has an account or not: for an unknown address a
throw-away token is made, an event is recorded, and nothing is returned to send (A01/A02).
Failed uses of a link (unknown, used, expired, bound to an old state) are recorded apart, in
a transaction of their own, as every failed attempt is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..config import Settings
from ..db import utcnow
from ..errors import InvalidInput, InvalidToken, InvitationRequired
from ..models import OneTimeToken, User
from . import accounts, audit, lockout, onetime, rbac, sessions
from .actors import Actor, RequestFacts
from .audit import Target
from .passwords import PasswordService

#: The permission to invite people by email.
INVITE_USERS = "aaa:users:invite"


@dataclasses.dataclass(frozen=True, slots=True)
class Outgoing:
    """A mail for the web layer to send.

    ``template`` names ``aaa/mail/<template>.*``; ``token`` is the raw token for the
    template's link (None for a notice); ``context`` holds extra, non-secret template values.
    """

    template: str
    to: str
    token: str | None = None
    user: User | None = None
    context: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Registered:
    """The outcome of a self-service registration.

    ``user`` is None when the address already had an account (hidden from the caller);
    ``must_confirm`` means the answer is "check your email" in both cases."""

    user: User | None
    mail: Outgoing | None
    must_confirm: bool


@dataclasses.dataclass(frozen=True, slots=True)
class ResetDone:
    """A completed password reset: whose, how many sessions ended, and the notice to mail."""

    user: User
    sessions_ended: int
    mail: Outgoing


def _find_by_email(db: Session, email: str) -> User | None:
    """The account of an address, or None. Input that is not an address at all is a field
    error (:class:`InvalidInput`): that says nothing about which accounts exist."""
    key = accounts.normalize_email(email).key
    return db.scalar(select(User).where(User.email_key == key))


def _use(
    db: Session,
    *,
    purpose: str,
    raw: str,
    action: str,
    facts: RequestFacts,
    binding_of: Callable[[OneTimeToken], str | None] | None = None,
    needs_user: bool = True,
) -> tuple[OneTimeToken, User | None]:
    """Consume a token; on any failure record ``action`` (outcome failure, with the reason)
    in a transaction of its own and raise. The token's account, when there is one, must
    still exist and be active."""
    try:
        row = onetime.consume(db, purpose=purpose, raw=raw, binding_of=binding_of)
        user = db.get(User, row.user_id) if row.user_id is not None else None
        if needs_user and (user is None or not user.active):
            raise InvalidToken("account_unavailable", user_id=row.user_id)
    except InvalidToken as exc:
        target = db.get(User, exc.user_id) if exc.user_id is not None else None
        audit.record_apart(
            db,
            action=action,
            actor=Actor.anonymous(),
            outcome="failure",
            target=target,
            facts=facts,
            details={"error": exc.code, "reason": exc.reason},
        )
        raise
    return row, user


def _bound_to(kind: Callable[[User], str], db: Session) -> Callable[[OneTimeToken], str | None]:
    def binding_of(row: OneTimeToken) -> str | None:
        user = db.get(User, row.user_id) if row.user_id is not None else None
        return kind(user) if user is not None else None

    return binding_of


# -- email confirmation --


def send_confirmation(
    db: Session, user: User, *, settings: Settings, facts: RequestFacts, reason: str
) -> Outgoing:
    """Issue a confirmation link for ``user``'s address (the older ones die) and record
    ``auth.confirm.sent``."""
    if user.email is None:
        raise InvalidInput({"email": "This account has no email address."})
    raw = onetime.issue(
        db,
        purpose=onetime.CONFIRM,
        ttl=settings.confirm_ttl,
        user=user,
        email=user.email,
        binding=onetime.email_binding(user),
    )
    audit.record(
        db,
        action="auth.confirm.sent",
        actor=Actor.anonymous() if reason == "resend" else Actor.of(user),
        target=user,
        facts=facts,
        details={"reason": reason},
    )
    return Outgoing("confirm", user.email, token=raw, user=user)


def request_confirmation(
    db: Session, *, settings: Settings, email: str, facts: RequestFacts
) -> Outgoing | None:
    """ "Send me the confirmation link again": only an active, unconfirmed account gets one.
    Every other case does the same work, records ``auth.confirm.not_sent`` with the reason,
    and returns None; the caller answers the same either way."""
    user = _find_by_email(db, email)
    if user is not None and user.active and user.email_confirmed_at is None:
        return send_confirmation(db, user, settings=settings, facts=facts, reason="resend")
    if user is None:
        reason = "unknown_address"
    else:
        reason = "disabled" if not user.active else "already_confirmed"
    onetime.throwaway()
    audit.record(
        db,
        action="auth.confirm.not_sent",
        actor=Actor.anonymous(),
        outcome="failure",
        target=user,
        facts=facts,
        details={"reason": reason},
    )
    return None


def confirm_email(db: Session, *, raw: str, facts: RequestFacts) -> User:
    """Use a confirmation link: the account's address is confirmed. The link must be for the
    address the account has now. Records ``auth.confirm.succeeded`` (or, apart,
    ``auth.confirm.failed``). Nobody is signed in."""
    _, user = _use(
        db,
        purpose=onetime.CONFIRM,
        raw=raw,
        action="auth.confirm.failed",
        facts=facts,
        binding_of=_bound_to(onetime.email_binding, db),
    )
    user = accounts.assert_user(user)
    first = user.email_confirmed_at is None
    if first:
        user.email_confirmed_at = utcnow()
    audit.record(
        db,
        action="auth.confirm.succeeded",
        actor=Actor.of(user),
        target=user,
        facts=facts,
        details={} if first else {"already_confirmed": True},
    )
    return user


# -- registration --


def answers_before_registering(settings: Settings, invitation: str | None) -> bool:
    """Whether a registration gets one answer whatever happens ("check your email"): with
    ``AAA_CONFIRM_EMAIL``, without an invitation, when registration is open to all. Then
    the answer says nothing of the outcome, and a caller may give it first and register
    after (see :func:`accounts.prepare_quiet_registration`)."""
    return invitation is None and settings.confirm_email and not settings.invite_only


def register(
    db: Session,
    *,
    settings: Settings,
    passwords: PasswordService,
    username: str | None,
    email: str | None,
    password: str,
    facts: RequestFacts,
    invitation: str | None = None,
    password_hash: str | None = None,
) -> Registered:
    """Self-service registration, in its three forms.

    - With an ``invitation`` token: the invited address is used (whatever ``email`` says)
      and counts as confirmed; records ``user.invitation_accepted``.
    - With ``AAA_CONFIRM_EMAIL``: the account is created unconfirmed and a confirmation link
      is returned. An address that already has an account gets the same answer; its owner
      is sent a notice instead, and ``user.registration_refused`` is recorded (A01).
    - Otherwise: plain registration (a taken address is a field error, as before).

    ``AAA_INVITE_ONLY`` refuses registration without an invitation. ``password_hash`` (the
    second form only) comes from :func:`accounts.prepare_quiet_registration`."""
    if invitation is not None:
        row, _ = _use(
            db,
            purpose=onetime.INVITE,
            raw=invitation,
            action="user.invitation_failed",
            facts=facts,
            needs_user=False,
        )
        user = accounts.register(
            db,
            settings=settings,
            passwords=passwords,
            username=username,
            email=row.email,
            password=password,
            facts=facts,
            email_confirmed=True,
        )
        audit.record(
            db,
            action="user.invitation_accepted",
            actor=Actor.of(user),
            target=user,
            facts=facts,
            details={"invited_by": row.created_by},
        )
        return Registered(user, None, must_confirm=False)
    if settings.invite_only:
        raise InvitationRequired()
    if not settings.confirm_email:
        user = accounts.register(
            db,
            settings=settings,
            passwords=passwords,
            username=username,
            email=email,
            password=password,
            facts=facts,
        )
        return Registered(user, None, must_confirm=False)
    new, owner = accounts.register_quietly(
        db,
        settings=settings,
        passwords=passwords,
        username=username,
        email=email,
        password=password,
        facts=facts,
        password_hash=password_hash,
    )
    if new is not None:
        mail = send_confirmation(db, new, settings=settings, facts=facts, reason="registration")
        return Registered(new, mail, must_confirm=True)
    owner = accounts.assert_user(owner)
    onetime.throwaway()
    audit.record(
        db,
        action="user.registration_refused",
        actor=Actor.anonymous(),
        outcome="failure",
        target=owner,
        facts=facts,
        details={"reason": "email_in_use"},
    )
    return Registered(
        None, Outgoing("address_in_use", owner.email or "", user=owner), must_confirm=True
    )


def invitation(db: Session, *, raw: str) -> OneTimeToken:
    """The live invitation for ``raw`` (to show the registration form), without using it."""
    return onetime.find(db, purpose=onetime.INVITE, raw=raw)


# -- forgotten password --


def request_reset(
    db: Session, *, settings: Settings, email: str, facts: RequestFacts
) -> Outgoing | None:
    """ "I forgot my password": an active account with this address gets a reset link, bound
    to its current password (any change of the password kills it). Unknown addresses and
    disabled accounts cost the same work and get nothing; ``auth.reset.requested`` is
    recorded either way (outcome failure with the reason for those)."""
    user = _find_by_email(db, email)
    if user is None or not user.active or user.email is None:
        onetime.throwaway()
        audit.record(
            db,
            action="auth.reset.requested",
            actor=Actor.anonymous(),
            outcome="failure",
            target=user,
            facts=facts,
            details={"reason": "unknown_address" if user is None else "disabled"},
        )
        return None
    raw = onetime.issue(
        db,
        purpose=onetime.RESET,
        ttl=settings.reset_ttl,
        user=user,
        email=user.email,
        binding=onetime.password_binding(user),
    )
    audit.record(
        db, action="auth.reset.requested", actor=Actor.anonymous(), target=user, facts=facts
    )
    return Outgoing("reset", user.email, token=raw, user=user)


def reset_password(
    db: Session,
    *,
    settings: Settings,
    passwords: PasswordService,
    raw: str,
    new: str,
    facts: RequestFacts,
) -> ResetDone:
    """Set a new password through a reset link.

    The new password must pass the policy (the caller rolls back on :class:`InvalidInput`,
    which gives the link back). Every session and remember-me series of the user ends, a
    lockout is lifted (A08), and the address counts as confirmed (the link reached it).
    Nobody is signed in: a user with two-factor authentication still needs it at the next
    sign-in (A22). Records ``auth.reset.succeeded``, or apart ``auth.reset.failed``."""
    accounts.for_field("password", passwords.check_length, new)
    _, found = _use(
        db,
        purpose=onetime.RESET,
        raw=raw,
        action="auth.reset.failed",
        facts=facts,
        binding_of=_bound_to(onetime.password_binding, db),
    )
    user = accounts.assert_user(found)
    checked = accounts.check_new_password(settings, passwords, user, new, field="password")
    now = utcnow()
    user.password_hash = passwords.hash(checked)
    user.password_changed_at = now
    was_locked = lockout.is_locked(user) or bool(user.failed_logins)
    lockout.clear(user)
    confirmed = user.email_confirmed_at is None
    if confirmed:
        user.email_confirmed_at = now
    ended = sessions.revoke_all(db, user, reason="password_reset")
    audit.record(
        db,
        action="auth.reset.succeeded",
        actor=Actor.of(user),
        target=user,
        facts=facts,
        details={
            "sessions_ended": ended,
            "lockout_cleared": was_locked,
            "email_confirmed": confirmed,
        },
    )
    notice = Outgoing(
        "password_reset", user.email or "", user=user, context={"sessions_ended": str(ended)}
    )
    return ResetDone(user, ended, notice)


# -- change of email address --


def request_email_change(
    db: Session,
    *,
    settings: Settings,
    passwords: PasswordService,
    user: User,
    password: str,
    new_email: str,
    facts: RequestFacts,
) -> Outgoing:
    """Ask to move ``user`` to ``new_email``: needs the current password; nothing changes
    until the link mailed to the new address is used. Records
    ``user.email_change_requested`` (a wrong password: ``user.email_change_failed``, apart).

    If the new address already has an account, the caller gets the same answer; that
    account's owner is sent a notice and no link exists. This is
    :func:`check_email_change` then :func:`issue_email_change`, which a caller may run
    apart: the second is where an address with an account costs less."""
    new = check_email_change(
        db,
        settings=settings,
        passwords=passwords,
        user=user,
        password=password,
        new_email=new_email,
        facts=facts,
    )
    return issue_email_change(db, settings=settings, user=user, new=new, facts=facts)


def check_email_change(
    db: Session,
    *,
    settings: Settings,
    passwords: PasswordService,
    user: User,
    password: str,
    new_email: str,
    facts: RequestFacts,
) -> accounts.Identifier:
    """The checks of an email change: a new address, and the current password (a wrong one
    is recorded apart and raises :class:`InvalidInput`). The same work whether or not the
    address has an account. Returns the new address, normalized."""
    accounts.for_field("password", passwords.check_length, password)
    new = accounts.normalize_email(new_email)
    if user.email_key is not None and new.key == user.email_key:
        raise InvalidInput({"email": "This is already your address."})
    accounts.confirm_password(
        db,
        user,
        settings=settings,
        passwords=passwords,
        password=password,
        action="user.email_change_failed",
        facts=facts,
        count_failure=False,
    )
    return new


def issue_email_change(
    db: Session, *, settings: Settings, user: User, new: accounts.Identifier, facts: RequestFacts
) -> Outgoing:
    """The rest of :func:`request_email_change`, once :func:`check_email_change` passed:
    ``user.email_change_requested``, and the link for the new address or, when it has an
    account, the notice for that account's owner."""
    owner = db.scalar(select(User).where(User.email_key == new.key))
    audit.record(
        db,
        action="user.email_change_requested",
        actor=Actor.of(user),
        target=user,
        facts=facts,
        details={"new_email": new.display},
    )
    if owner is not None:
        onetime.throwaway()
        return Outgoing("address_in_use", owner.email or new.display, user=owner)
    raw = onetime.issue(
        db,
        purpose=onetime.EMAIL_CHANGE,
        ttl=settings.confirm_ttl,
        user=user,
        email=new.display,
        binding=onetime.email_binding(user),
    )
    return Outgoing("email_change", new.display, token=raw, user=user)


def email_change(db: Session, *, raw: str) -> tuple[str, str]:
    """The account label and the new address of a live email-change link, without using it
    (the page names both before its button). Raises :class:`InvalidToken`."""
    row = onetime.find(db, purpose=onetime.EMAIL_CHANGE, raw=raw)
    user = db.get(User, row.user_id) if row.user_id is not None else None
    if user is None or not user.active:
        raise InvalidToken("account_unavailable", user_id=row.user_id)
    return user.label, row.email or ""


def confirm_email_change(
    db: Session, *, raw: str, facts: RequestFacts
) -> tuple[User, Outgoing | None]:
    """Use the link sent to the new address: the account moves to it (confirmed), every
    other outstanding link of the account dies, and the old address is told. Records
    ``user.email_changed`` (or, apart, ``user.email_change_failed``)."""
    row, found = _use(
        db,
        purpose=onetime.EMAIL_CHANGE,
        raw=raw,
        action="user.email_change_failed",
        facts=facts,
        binding_of=_bound_to(onetime.email_binding, db),
    )
    user = accounts.assert_user(found)
    new = accounts.normalize_email(row.email or "")
    taken = InvalidInput({"email": "This email address cannot be used."})
    if db.scalar(select(User.id).where(User.email_key == new.key, User.id != user.id)):
        raise taken  # another account took the address after the link was sent
    old = user.email
    user.email = new.display
    user.email_key = new.key
    user.email_confirmed_at = utcnow()
    try:
        db.flush()
    except IntegrityError:
        raise taken from None  # ... or at this very moment (the caller rolls back)
    onetime.revoke_all(db, user)
    audit.record(
        db,
        action="user.email_changed",
        actor=Actor.of(user),
        target=user,
        facts=facts,
        details={"old_email": old, "new_email": new.display},
    )
    notice = (
        Outgoing("email_changed", old, user=user, context={"new_email": new.display})
        if old
        else None
    )
    return user, notice


# -- invitations --


def invite(
    db: Session, *, settings: Settings, actor: Actor, email: str, facts: RequestFacts
) -> Outgoing | None:
    """Invite ``email`` to register (``aaa:users:invite``; a denial is audited). The link is
    single use and expires after ``AAA_INVITE_TTL``; a new invitation to the same address
    replaces the old one. An address that already has an account gets nothing, and the
    inviter the same answer; ``user.invited`` is recorded either way."""
    rbac.check(db, actor, [INVITE_USERS], facts=facts)
    address = accounts.normalize_email(email)
    audit.record(
        db,
        action="user.invited",
        actor=actor,
        target=Target("email", None, address.display),
        facts=facts,
        details={"email": address.display},
    )
    if db.scalar(select(User.id).where(User.email_key == address.key)) is not None:
        onetime.throwaway()
        return None
    raw = onetime.issue(
        db,
        purpose=onetime.INVITE,
        ttl=settings.invite_ttl,
        email=address.display,
        created_by=actor.user_id,
    )
    context = {"invited_by": actor.name} if actor.name else {}
    return Outgoing("invite", address.display, token=raw, context=context)
