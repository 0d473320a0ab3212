"""Accounts: identifiers, registration, authentication, password change, enable/disable.

Identifiers are normalized (NFKC, trimmed; casefolded for lookup and uniqueness) before
anything else: ``Alice``, ``ALICE`` and its full-width form are one account and one
throttling key.
Authentication does the same work and gives the same answer whether the login is unknown,
the password wrong or the account disabled; only the audit trail knows which.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import TypeVar

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from ..config import Settings
from ..db import utcnow
from ..errors import AuthenticationFailed, Conflict, InvalidInput
from ..models import PERSON, SERVICE, ExternalIdentity, LoginSession, Passkey, Role, User
from . import audit, lockout, rbac, sessions
from .actors import Actor, RequestFacts
from .passwords import PasswordService

T = TypeVar("T")

USERNAME_MIN, USERNAME_MAX = 3, 32
EMAIL_MAX = 254
#: Longest login identifier looked at; anything longer cannot match and is refused early.
LOGIN_MAX = EMAIL_MAX


@dataclasses.dataclass(frozen=True, slots=True)
class Identifier:
    """A normalized identifier: ``display`` as typed (NFKC, trimmed), ``key`` for lookups."""

    display: str
    key: str


def _clean(value: str) -> str:
    value = unicodedata.normalize("NFKC", value).strip()
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in value):
        raise InvalidInput({"login": "Control characters are not allowed."})
    return value


def normalize_username(value: str) -> Identifier:
    try:
        value = _clean(value)
    except InvalidInput:
        raise InvalidInput({"username": "Control characters are not allowed."}) from None
    if not USERNAME_MIN <= len(value) <= USERNAME_MAX:
        raise InvalidInput({"username": f"Use {USERNAME_MIN} to {USERNAME_MAX} characters."})
    if not all(ch.isalnum() or ch in "._-" for ch in value) or "@" in value:
        raise InvalidInput({"username": "Use letters, digits, '.', '_' and '-' only."})
    return Identifier(value, value.casefold())


def normalize_email(value: str) -> Identifier:
    try:
        value = _clean(value)
    except InvalidInput:
        raise InvalidInput({"email": "Control characters are not allowed."}) from None
    if len(value) > EMAIL_MAX:
        raise InvalidInput({"email": "This email address is too long."})
    try:
        info = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput({"email": str(exc)}) from None
    return Identifier(info.normalized, info.normalized.casefold())


def login_key(value: str) -> str:
    """The normalized form of whatever a user typed into the login field (for lookups and
    per-account throttling). Never raises: junk normalizes to junk that matches nothing."""
    value = unicodedata.normalize("NFKC", value[: LOGIN_MAX + 1]).strip().casefold()
    return value


def find_by_login(db: Session, settings: Settings, login: str) -> User | None:
    key = login_key(login)
    if not key or len(key) > LOGIN_MAX or "\x00" in key:
        return None  # cannot match a stored name (and PostgreSQL refuses NUL in text)
    clauses = []
    if settings.enable_email and "@" in key:
        clauses.append(User.email_key == key)
    if settings.enable_username and "@" not in key:
        clauses.append(User.username_key == key)
    if not clauses:
        return None
    return db.scalar(select(User).where(or_(*clauses)))


# -- creating accounts --


def _identifiers(
    db: Session,
    settings: Settings,
    username: str | None,
    email: str | None,
    *,
    hide_taken_email: bool = False,
) -> tuple[Identifier | None, Identifier | None, User | None]:
    """The normalized identifiers, or :class:`InvalidInput` naming each bad field.

    With ``hide_taken_email`` a taken address is not an error: its owner is returned third,
    and the caller answers as if the address were free (no enumeration of addresses)."""
    errors: dict[str, str] = {}
    uname = mail = None
    if settings.enable_username:
        if not username:
            errors["username"] = "A username is required."
        else:
            try:
                uname = normalize_username(username)
            except InvalidInput as exc:
                errors.update(exc.errors)
    if settings.enable_email:
        if not email:
            errors["email"] = "An email address is required."
        else:
            try:
                mail = normalize_email(email)
            except InvalidInput as exc:
                errors.update(exc.errors)
    if errors:
        raise InvalidInput(errors)
    if uname and db.scalar(select(User.id).where(User.username_key == uname.key)) is not None:
        errors["username"] = "This username is taken."
    owner = db.scalar(select(User).where(User.email_key == mail.key)) if mail else None
    if owner is not None and not hide_taken_email:
        errors["email"] = "This email address cannot be used."
    if errors:
        raise InvalidInput(errors)
    return uname, mail, owner if hide_taken_email else None


def _checked(
    db: Session,
    *,
    settings: Settings,
    passwords: PasswordService,
    username: str | None,
    email: str | None,
    password: str,
    hide_taken_email: bool,
) -> tuple[Identifier | None, Identifier | None, User | None, str]:
    """Every check of a new account, reading only: the identifiers (and the owner of a
    taken address, with ``hide_taken_email``) and the password, normalized."""
    passwords.check_length(password)
    uname, mail, owner = _identifiers(
        db, settings, username, email, hide_taken_email=hide_taken_email
    )
    password = passwords.check_policy(
        password, identifiers=[uname.display if uname else None, mail.display if mail else None]
    )
    return uname, mail, owner, password


def prepare_quiet_registration(
    db: Session,
    *,
    settings: Settings,
    passwords: PasswordService,
    username: str | None,
    email: str | None,
    password: str,
) -> str:
    """The checks and the hashing work of :func:`register_quietly`, without a write; returns
    the password's hash, for ``register_quietly(..., password_hash=...)``. Raises
    :class:`InvalidInput` for a bad field, never for a taken address. For a caller that
    answers before it registers, so that the answer's time cannot tell whether the address
    has an account: it costs the same for every address, and a full hashing pool is still a
    503 to the client, not a registration lost afterwards."""
    *_, normalized = _checked(
        db,
        settings=settings,
        passwords=passwords,
        username=username,
        email=email,
        password=password,
        hide_taken_email=True,
    )
    return passwords.hash(normalized)


def _new_user(
    db: Session,
    *,
    settings: Settings,
    passwords: PasswordService,
    username: str | None,
    email: str | None,
    password: str,
    hide_taken_email: bool = False,
    email_confirmed: bool = False,
    password_hash: str | None = None,
) -> tuple[User | None, User | None]:
    """Create the account (flushed, not committed): ``(user, None)``. With
    ``hide_taken_email`` and an address that has an account: ``(None, owner)``, after the
    same checks and the same hashing work as a real registration. ``password_hash``, from
    :func:`prepare_quiet_registration` for this password, saves hashing it again."""
    uname, mail, owner, password = _checked(
        db,
        settings=settings,
        passwords=passwords,
        username=username,
        email=email,
        password=password,
        hide_taken_email=hide_taken_email,
    )
    if password_hash is None:
        password_hash = passwords.hash(password)
    if owner is not None:
        return None, owner
    now = utcnow()
    user = User(
        username=uname.display if uname else None,
        username_key=uname.key if uname else None,
        email=mail.display if mail else None,
        email_key=mail.key if mail else None,
        password_hash=password_hash,
        password_changed_at=now,
        email_confirmed_at=now if email_confirmed and mail else None,
        active=True,
    )
    try:
        # A savepoint: a concurrent registration of the same name loses cleanly, without
        # aborting the caller's transaction.
        with db.begin_nested():
            db.add(user)
            db.flush()
    except IntegrityError:
        if hide_taken_email and mail is not None:
            owner = db.scalar(select(User).where(User.email_key == mail.key))
            if owner is not None:
                return None, owner
        raise InvalidInput({"username": "This username or email address cannot be used."}) from None
    return user, None


def _created(user: User | None) -> User:
    if user is None:  # only callers that hide a taken address get no user
        raise InvalidInput({"email": "This email address cannot be used."})
    return user


def welcome(db: Session, *, settings: Settings, user: User, facts: RequestFacts) -> None:
    """What every self-service sign-up gets: the default role and ``user.registered``."""
    if settings.default_role:
        role = db.scalar(select(Role).where(Role.name == settings.default_role))
        if role is None:
            role = Role(name=rbac.validate_role_name(settings.default_role))
            db.add(role)
            db.flush()
            audit.record(db, action="role.created", actor=Actor.of(user), target=role, facts=facts)
        user.roles.append(role)
        rbac.bump_version(db)
    audit.record(
        db,
        action="user.registered",
        actor=Actor.of(user),
        target=user,
        facts=facts,
        details={"roles": [r.name for r in user.roles]},
    )


def register(
    db: Session,
    *,
    settings: Settings,
    passwords: PasswordService,
    username: str | None,
    email: str | None,
    password: str,
    facts: RequestFacts,
    email_confirmed: bool = False,
) -> User:
    """Self-service sign-up. Gives the configured default role; audited as the new user.
    ``email_confirmed`` marks the address as confirmed (an invitation mailed to it)."""
    user, _ = _new_user(
        db,
        settings=settings,
        passwords=passwords,
        username=username,
        email=email,
        password=password,
        email_confirmed=email_confirmed,
    )
    user = _created(user)
    welcome(db, settings=settings, user=user, facts=facts)
    return user


def register_quietly(
    db: Session,
    *,
    settings: Settings,
    passwords: PasswordService,
    username: str | None,
    email: str | None,
    password: str,
    facts: RequestFacts,
    password_hash: str | None = None,
) -> tuple[User | None, User | None]:
    """Sign-up that does not tell whether the address has an account (with email
    confirmation, A01): ``(new_user, None)``, or ``(None, owner)`` when the address belongs
    to ``owner`` -- after the same checks and the same hashing work. Errors on the other
    fields (a taken username, a weak password) are still raised. ``password_hash``: see
    :func:`prepare_quiet_registration`."""
    user, owner = _new_user(
        db,
        settings=settings,
        passwords=passwords,
        username=username,
        email=email,
        password=password,
        hide_taken_email=True,
        password_hash=password_hash,
    )
    if user is not None:
        welcome(db, settings=settings, user=user, facts=facts)
    return user, owner


def create_user(
    db: Session,
    *,
    actor: Actor,
    settings: Settings,
    passwords: PasswordService,
    username: str | None,
    email: str | None,
    password: str,
    roles: Sequence[Role] = (),
    facts: RequestFacts | None = None,
) -> User:
    """An administrator (or the CLI) creates an account, optionally with roles."""
    rbac.check(db, actor, [rbac.MANAGE_USERS], facts=facts)
    user, _ = _new_user(
        db,
        settings=settings,
        passwords=passwords,
        username=username,
        email=email,
        password=password,
    )
    user = _created(user)
    audit.record(db, action="user.created", actor=actor, target=user, facts=facts)
    for role in roles:
        rbac.grant_role(db, actor=actor, user=user, role=role, facts=facts)
    return user


def create_service_account(
    db: Session,
    *,
    actor: Actor,
    name: str,
    roles: Sequence[Role] = (),
    facts: RequestFacts | None = None,
) -> User:
    """An administrator creates a service account: a non-human user named ``name``, with
    no password and no email, that never signs in interactively and acts only through API
    tokens an administrator mints for it. Its roles bound what those tokens may do."""
    rbac.check(db, actor, [rbac.MANAGE_USERS], facts=facts)
    uname = normalize_username(name)
    user = User(
        username=uname.display,
        username_key=uname.key,
        password_hash=None,
        kind=SERVICE,
        active=True,
    )
    try:
        with db.begin_nested():
            db.add(user)
            db.flush()
    except IntegrityError:
        raise InvalidInput({"username": "This username cannot be used."}) from None
    audit.record(
        db,
        action="user.created",
        actor=actor,
        target=user,
        facts=facts,
        details={"kind": SERVICE},
    )
    for role in roles:
        rbac.grant_role(db, actor=actor, user=user, role=role, facts=facts)
    return user


# -- signing in --


def authenticate(
    db: Session,
    *,
    settings: Settings,
    passwords: PasswordService,
    login: str,
    password: str,
    facts: RequestFacts,
) -> User:
    """Check a login and password (one step, no second factor, no session). On success
    update the login statistics (and upgrade a legacy hash) in ``db`` and record
    ``auth.login.succeeded``; the caller commits. On failure see :func:`verify_credentials`."""
    user, upgraded = verify_credentials(
        db, settings=settings, passwords=passwords, login=login, password=password, facts=facts
    )
    _succeed(db, user, facts=facts, details={"hash_upgraded": True} if upgraded else {})
    return user


def verify_credentials(
    db: Session,
    *,
    settings: Settings,
    passwords: PasswordService,
    login: str,
    password: str,
    facts: RequestFacts,
) -> tuple[User, bool]:
    """The password step of every sign-in path. Returns the user and whether a legacy hash
    was upgraded (in ``db``, uncommitted); records nothing on success.

    On failure (unknown login, wrong password, disabled, locked or unconfirmed account) it
    records ``auth.login.failed`` with the reason, counts the failure towards a lockout,
    commits that apart, and raises :class:`AuthenticationFailed`, identical for every cause.
    The hasher runs exactly once whatever the cause, so time tells nothing either."""
    passwords.check_length(password)
    user = find_by_login(db, settings, login)
    ok, new_hash = passwords.verify(password, user.password_hash if user else None)
    reason = _refusal(settings, user, ok)
    if reason is not None:
        # Every refusal does the same work, whatever its cause (A02): one hash (above), one
        # event and one counting statement, which counts for no account unless the password
        # was wrong for a real one. The account is described before ``apart`` rolls back and
        # expires ``user``: reading it afterwards would be a query for known logins only.
        account = audit.Target.of(user) if user is not None else None
        with audit.apart(db):
            # The attempt is by an unknown party; the account, if any, is its target, so
            # that its owner sees it among their own activity.
            audit.record(
                db,
                action="auth.login.failed",
                actor=Actor.anonymous(),
                outcome="failure",
                facts=facts,
                target=account,
                details={"reason": reason},
            )
            counted = account if reason == "bad_password" else None
            lockout.register_failure(db, counted, settings=settings, facts=facts)
        raise AuthenticationFailed(reason)
    user = assert_user(user)
    if new_hash is not None:
        user.password_hash = new_hash
    lockout.clear(user)
    return user, new_hash is not None


def check_may_sign_in(
    db: Session, user: User, *, settings: Settings, facts: RequestFacts, method: str
) -> None:
    """The account policy of sign-ins without a password (third-party provider, passkey):
    a disabled, locked or unconfirmed account, or a service account, is refused exactly as
    a password sign-in would be: ``auth.login.failed`` recorded apart (with ``method``), then
    :class:`AuthenticationFailed`."""
    reason = _refusal(settings, user, ok=True)
    if reason is None:
        return
    with audit.apart(db):
        audit.record(
            db,
            action="auth.login.failed",
            actor=Actor.anonymous(),
            outcome="failure",
            facts=facts,
            target=user,
            details={"reason": reason, "method": method},
        )
    raise AuthenticationFailed(reason)


def _refusal(settings: Settings, user: User | None, ok: bool) -> str | None:
    if user is None:
        return "unknown_login"
    if not ok:
        return "bad_password"
    if user.kind == SERVICE:
        return "service_account"
    if not user.active:
        return "disabled"
    if lockout.is_locked(user):
        return "locked"
    if settings.confirm_email and user.email_confirmed_at is None:
        return "unconfirmed"
    return None


def assert_user(user: User | None) -> User:
    if user is None:  # unreachable after a refusal check, but says so to the type checker
        raise AuthenticationFailed("unknown_login")
    return user


def _succeed(
    db: Session,
    user: User,
    *,
    facts: RequestFacts,
    details: dict[str, object],
    session: LoginSession | None = None,
) -> None:
    user.last_login_at = utcnow()
    user.last_login_ip = facts.ip
    # In SQL, not in Python: concurrent sign-ins of one account must not lose a count.
    user.login_count = User.login_count + 1
    if session is not None:
        facts = dataclasses.replace(facts, session_hash=session.token_hash)
    audit.record(
        db,
        action="auth.login.succeeded",
        actor=Actor.of(user),
        target=user,
        facts=facts,
        details=details,
    )


def open_session(
    db: Session,
    user: User,
    *,
    settings: Settings,
    facts: RequestFacts,
    replaces: LoginSession | None = None,
    details: dict[str, object] | None = None,
    password_checked: bool = True,
) -> tuple[str, LoginSession]:
    """Complete a sign-in whose every step passed: end ``replaces`` (the browser's previous
    session, if any), open a new server session, update the statistics and record
    ``auth.login.succeeded`` naming the new session. Returns the raw token and the record.

    ``password_checked`` is False for sign-ins without a password (remember-me): such a
    session is not "fresh" for actions that need a recent password."""
    if replaces is not None:
        sessions.revoke(db, replaces, reason="replaced")
    token, record = sessions.create(db, user, settings=settings, facts=facts)
    if password_checked:
        record.reauthenticated_at = record.created_at
    _succeed(db, user, facts=facts, details=details or {}, session=record)
    return token, record


def sign_in(
    db: Session,
    *,
    settings: Settings,
    passwords: PasswordService,
    login: str,
    password: str,
    facts: RequestFacts,
    replaces: LoginSession | None = None,
) -> tuple[User, str, LoginSession]:
    """Password sign-in for accounts without a second factor: :func:`verify_credentials`
    then :func:`open_session`. The caller commits."""
    user, upgraded = verify_credentials(
        db, settings=settings, passwords=passwords, login=login, password=password, facts=facts
    )
    token, record = open_session(
        db,
        user,
        settings=settings,
        facts=facts,
        replaces=replaces,
        details={"hash_upgraded": True} if upgraded else {},
    )
    return user, token, record


def reauthenticate(
    db: Session,
    *,
    settings: Settings,
    passwords: PasswordService,
    user: User,
    password: str,
    session: LoginSession,
    facts: RequestFacts,
) -> None:
    """The signed-in user confirms their password before a sensitive action. Success marks
    the session fresh (the caller then rotates its id); a wrong password is audited apart
    and counts towards the lockout like any other."""
    confirm_password(
        db,
        user,
        settings=settings,
        passwords=passwords,
        password=password,
        action="auth.reauth.failed",
        facts=facts,
        honour_lock=True,
    )
    session.reauthenticated_at = utcnow()
    audit.record(db, action="auth.reauthenticated", actor=Actor.of(user), target=user, facts=facts)


def logout(db: Session, *, user: User, session: LoginSession, facts: RequestFacts) -> None:
    sessions.revoke(db, session, reason="logout")
    audit.record(db, action="auth.logout", actor=Actor.of(user), target=user, facts=facts)


def change_password(
    db: Session,
    *,
    settings: Settings,
    passwords: PasswordService,
    user: User,
    current: str,
    new: str,
    session: LoginSession | None,
    facts: RequestFacts,
) -> int:
    """Change ``user``'s password after checking the current one. Every other session of
    the user ends; returns how many. The caller rotates the current session."""
    for_field("new_password", passwords.check_length, new)
    confirm_password(
        db,
        user,
        settings=settings,
        passwords=passwords,
        password=current,
        action="auth.password.change_failed",
        facts=facts,
        field="current_password",
        reason="bad_current_password",
        count_failure=False,
    )
    new = check_new_password(settings, passwords, user, new, field="new_password")
    user.password_hash = passwords.hash(new)
    user.password_changed_at = utcnow()
    ended = sessions.revoke_all(db, user, reason="password_changed", keep=session)
    audit.record(
        db,
        action="auth.password.changed",
        actor=Actor.of(user),
        target=user,
        facts=facts,
        details={"other_sessions_ended": ended},
    )
    return ended


def for_field(field: str, check: Callable[[str], T], value: str) -> T:
    """Run a password check, reporting its error under the form's own field name."""
    try:
        return check(value)
    except InvalidInput as exc:
        raise InvalidInput({field: " ".join(exc.errors.values())}) from None


def confirm_password(
    db: Session,
    user: User,
    *,
    settings: Settings,
    passwords: PasswordService,
    password: str,
    action: str,
    facts: RequestFacts,
    field: str = "password",
    reason: str = "bad_password",
    count_failure: bool = True,
    honour_lock: bool = False,
) -> None:
    """A sensitive step needs the user's current password. A wrong one is recorded apart
    as ``action`` (with ``reason``), counts towards the lockout when ``count_failure``, and
    raises :class:`InvalidInput` on ``field``. With ``honour_lock`` a locked account gets the
    same answer even with the right password, so guessing there gains nothing."""
    for_field(field, passwords.check_length, password)
    ok, _ = passwords.verify(password, user.password_hash)
    locked = honour_lock and lockout.is_locked(user)
    if ok and not locked:
        return
    # The same counting statement whether or not this failure counts, so a locked account's
    # right password takes as long as a wrong one (``honour_lock``).
    account = audit.Target.of(user)
    with audit.apart(db):
        audit.record(
            db,
            action=action,
            actor=Actor.of(user),
            outcome="failure",
            target=account,
            facts=facts,
            details={"reason": reason if ok is False else "locked"},
        )
        counted = account if not ok and count_failure else None
        lockout.register_failure(db, counted, settings=settings, facts=facts)
    raise InvalidInput({field: "The password is not correct."})


def check_new_password(
    settings: Settings, passwords: PasswordService, user: User, new: str, *, field: str
) -> str:
    """Check a new password for ``user`` against the policy (8 characters suffice with a
    second factor, per NIST SP 800-63B) and return its normalized form."""
    return for_field(
        field,
        lambda value: passwords.check_policy(
            value,
            identifiers=[user.username, user.email],
            min_length=settings.password_min_length_mfa if user.mfa_enabled else None,
        ),
        new,
    )


def set_active(
    db: Session, *, actor: Actor, user: User, active: bool, facts: RequestFacts | None = None
) -> bool:
    """Enable or disable an account. Disabling ends its sessions; the last full
    administrator cannot be disabled. False if nothing changed."""
    rbac.check(db, actor, [rbac.MANAGE_USERS], facts=facts, target=user)
    # No delegation beyond one's own rights: only someone holding everything the account
    # holds may switch it off (or on).
    rbac.require_holds_all(
        db,
        actor,
        rbac.load_grants(db, user.id).permissions,
        facts,
        "change an account",
        user,
    )
    if user.active == active:
        return False
    if not active and rbac.holds_superuser(db, user) and not rbac.admins_remain_without(db, user):
        raise Conflict("this would leave nobody with full administration")
    user.active = active
    ended = 0 if active else sessions.revoke_all(db, user, reason="account_disabled")
    audit.record(
        db,
        action="user.enabled" if active else "user.disabled",
        actor=actor,
        target=user,
        facts=facts,
        details={} if active else {"sessions_ended": ended},
    )
    return True


def find_user(db: Session, settings: Settings, name: str) -> User | None:
    """Look a user up by username, email or ``#id`` (CLI and admin pages)."""
    if re.fullmatch(r"#[0-9]{1,18}", name):
        return db.get(User, int(name[1:]))
    return find_by_login(
        db, dataclasses.replace(settings, enable_username=True, enable_email=True), name
    )


def has_other_way_in(db: Session, user: User, *, besides: ExternalIdentity | Passkey) -> bool:
    """Can ``user`` still sign in without ``besides``: with a password, a linked
    third-party account or a passkey other than it? (The last way in is never removed.)"""
    if user.password_hash:
        return True
    identities = select(ExternalIdentity.id).where(ExternalIdentity.user_id == user.id)
    passkeys = select(Passkey.id).where(Passkey.user_id == user.id)
    if isinstance(besides, ExternalIdentity):
        identities = identities.where(ExternalIdentity.id != besides.id)
    else:
        passkeys = passkeys.where(Passkey.id != besides.id)
    return db.scalar(identities.limit(1)) is not None or db.scalar(passkeys.limit(1)) is not None


#: ``User.kind`` values, for filters.
KINDS = (PERSON, SERVICE)


def list_users(
    db: Session,
    *,
    limit: int,
    after: int | None = None,
    q: str | None = None,
    active: bool | None = None,
    role: str | None = None,
    kind: str | None = None,
) -> tuple[list[User], int | None]:
    """One page of users in id order (keyset pagination): the users and the ``after`` for
    the next page (None on the last).

    ``q`` matches a part of the username or email, ignoring case (as lookups do); ``role``
    names a role the user holds directly. Every value is bound as a parameter."""
    if kind is not None and kind not in KINDS:
        raise InvalidInput({"kind": f"Use one of {', '.join(KINDS)}."})
    stmt = select(User).options(selectinload(User.roles)).order_by(User.id)
    if after is not None:
        stmt = stmt.where(User.id > after)
    if q:
        try:
            key = _clean(q).casefold()
        except InvalidInput:
            raise InvalidInput({"q": "Control characters are not allowed."}) from None
        stmt = stmt.where(
            or_(
                User.username_key.contains(key, autoescape=True),
                User.email_key.contains(key, autoescape=True),
            )
        )
    if active is not None:
        stmt = stmt.where(User.active.is_(active))
    if kind is not None:
        stmt = stmt.where(User.kind == kind)
    if role is not None:
        stmt = stmt.where(User.roles.any(Role.name == role))
    rows = list(db.scalars(stmt.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)
