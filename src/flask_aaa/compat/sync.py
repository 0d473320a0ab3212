"""Linking a Flask-User app's own users, roles and permissions to Flask-AAA's tables.

The app's models stay the source of truth. Each app user has a Flask-AAA account with the
same primary key (its *link*), created on migration, at registration, or at the first
sign-in; Flask-AAA keeps the credentials' life (sessions, lockout, 2FA, the trail) there.
Every sync applies the differences through the audited services, with a system actor, in
the caller's transaction. Like every service, nothing here imports Flask or commits.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Mapping

from sqlalchemy import delete, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, object_session

from ..db import utcnow
from ..errors import Conflict, InvalidInput
from ..models import ApiToken, ExternalIdentity, Passkey, RecoveryCode, Role, User
from ..services import accounts, audit, rbac, sessions, tokens
from ..services.actors import Actor, RequestFacts

_log = logging.getLogger("flask_aaa")

#: The actor of changes the app made in its own tables and the link mirrors.
SYNC_ACTOR = Actor.system("flask-user-app")

#: The description of the Flask-AAA roles the link made for the app's roles. Only these
#: roles are granted and revoked from the app's tables: a Flask-AAA role an operator made
#: (console, CLI) is never handed out by writing into the app's ``user_roles``, even when
#: the app has a role of the same name.
APP_ROLE = "Flask-User role"

#: Why a Flask-User app user cannot sign in although Flask-AAA's account could.
APP_DISABLED = "disabled"


@dataclasses.dataclass(frozen=True, slots=True)
class AppAccount:
    """What the app's own tables say about one user, read by the web layer.

    ``roles`` maps each of the user's role names to the names of that role's permissions,
    or to None when the app has no permission table (then Flask-AAA's own permissions of
    the role are left alone)."""

    id: int
    username: str | None
    email: str | None
    password: str | None
    active: bool = True
    email_confirmed_at: dt.datetime | None = None
    roles: Mapping[str, frozenset[str] | None] = dataclasses.field(default_factory=dict)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # Flask-User apps store naive UTC (datetime.utcnow()); Flask-AAA stores aware UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def _free_key(db: Session, column: object, key: str | None, user_id: int) -> bool:
    if key is None:
        return False
    owner = db.scalar(select(User.id).where(column == key))  # type: ignore[arg-type]
    return owner is None or owner == user_id


def identifiers(db: Session, account: AppAccount) -> dict[str, str | None]:
    """The account's username and email in Flask-AAA's normalized form. One that Flask-AAA
    cannot use (a name with a space, a key another account holds) is left out and logged:
    the user then signs in with the other one."""
    out: dict[str, str | None] = {
        "username": None,
        "username_key": None,
        "email": None,
        "email_key": None,
    }
    checks = (
        ("username", account.username, accounts.normalize_username, User.username_key),
        ("email", account.email, accounts.normalize_email, User.email_key),
    )
    for field, value, normalize, column in checks:
        if not value:
            continue
        try:
            ident = normalize(value)
        except InvalidInput:
            _log.warning("flask-user link: %s of user %s is not usable here", field, account.id)
            continue
        if not _free_key(db, column, ident.key, account.id):
            _log.warning("flask-user link: %s of user %s is taken here", field, account.id)
            continue
        out[field], out[f"{field}_key"] = ident.display, ident.key
    return out


def link(
    db: Session, account: AppAccount, *, actor: Actor = SYNC_ACTOR, facts: RequestFacts | None
) -> User:
    """The Flask-AAA account of ``account``, created (same id) if missing; recorded as
    ``flask_user.linked``. Nothing else is changed (see :func:`sync`)."""
    user = db.get(User, account.id)
    if user is not None:
        return user
    user = User(
        id=account.id,
        password_hash=account.password or None,
        active=account.active,
        email_confirmed_at=_aware(account.email_confirmed_at),
        **identifiers(db, account),
    )
    try:
        with db.begin_nested():
            db.add(user)
            db.flush()
    except IntegrityError:
        raise Conflict(f"user {account.id} could not be linked") from None
    _advance_sequence(db)
    audit.record(
        db,
        action="flask_user.linked",
        actor=actor,
        target=user,
        facts=facts,
        details={"roles": sorted(account.roles)},
    )
    return user


def _advance_sequence(db: Session) -> None:
    # An explicit id does not move PostgreSQL's sequence; the next registration must not
    # be handed an id that is taken. (SQLite takes max(id) + 1 by itself.)
    if db.get_bind().dialect.name == "postgresql":
        db.execute(
            text(
                "SELECT setval(pg_get_serial_sequence('aaa_users', 'id'), "
                "(SELECT max(id) FROM aaa_users))"
            )
        )


def link_missing(db: Session, found: Iterable[AppAccount], *, facts: RequestFacts | None) -> int:
    """Link every app user of ``found`` that has no Flask-AAA account yet; how many."""
    wanted = {a.id: a for a in found}
    if not wanted:
        return 0
    have = set(db.scalars(select(User.id).where(User.id.in_(wanted))))
    for user_id in sorted(set(wanted) - have):
        link(db, wanted[user_id], facts=facts)
    return len(set(wanted) - have)


def sync(
    db: Session,
    account: AppAccount,
    *,
    facts: RequestFacts | None,
) -> tuple[User, bool]:
    """Bring the Flask-AAA account of ``account`` in line with the app's tables: identifiers,
    a confirmation (never undone), the password hash, the enabled state, and the app's roles
    with their permissions. A password hash that differs is the app's (it wrote its own
    ``password`` column without this flush-time mirror: SQL, another process, a new user
    with a reused id): it replaces Flask-AAA's and every session and remember-me series of
    the account ends. Only the roles the link made (:data:`APP_ROLE`) are granted and
    revoked; the others are Flask-AAA's own and left alone. Returns the account and whether
    anything changed (all audited)."""
    user = db.get(User, account.id)
    created = user is None
    user = link(db, account, facts=facts)
    changed = created | _sync_fields(db, user, account, facts)
    if user.active != account.active:
        changed |= set_active(db, user, account.active, facts=facts)
    changed |= _sync_roles(db, user, account, facts)
    return user, changed


def set_active(db: Session, user: User, active: bool, *, facts: RequestFacts | None) -> bool:
    """The app enabled or disabled its user: so does Flask-AAA (``user.enabled`` /
    ``user.disabled``, sessions ended). Flask-AAA keeps its last full administrator enabled
    (its own invariant); that account's sessions still end, and the compatibility layer
    refuses it at sign-in and on every request while the app says it is disabled."""
    try:
        return accounts.set_active(db, actor=SYNC_ACTOR, user=user, active=active, facts=facts)
    except Conflict:
        _log.warning("flask-user link: user %s is the last administrator; kept enabled", user.id)
        if not active:
            sessions.revoke_all(db, user, reason="account_disabled")
        return False


def _sync_fields(db: Session, user: User, account: AppAccount, facts: RequestFacts | None) -> bool:
    fields: list[str] = []
    details: dict[str, object] = {}
    idents = identifiers(db, account)
    for name in ("username", "email"):
        if idents[f"{name}_key"] != getattr(user, f"{name}_key"):
            setattr(user, name, idents[name])
            setattr(user, f"{name}_key", idents[f"{name}_key"])
            fields.append(name)
    if account.email_confirmed_at is not None and user.email_confirmed_at is None:
        # Confirmation only ever moves forward: a link confirmed in Flask-AAA stays.
        user.email_confirmed_at = _aware(account.email_confirmed_at)
        fields.append("email_confirmed_at")
    if account.password and account.password != user.password_hash:
        user.password_hash = account.password
        user.password_changed_at = utcnow()
        fields.append("password")
        details["sessions_ended"] = sessions.revoke_all(db, user, reason="password_changed")
    if not fields:
        return False
    audit.record(
        db,
        action="flask_user.synced",
        actor=SYNC_ACTOR,
        target=user,
        facts=facts,
        details={"fields": fields, **details},
    )
    return True


def same_identifiers(user: User, account: AppAccount) -> bool:
    """Do the account's username and email say what the app's row says (a cheap check: the
    normalized form is computed only when the texts differ)?"""
    for value, held, normalize in (
        (account.username, user.username_key, accounts.normalize_username),
        (account.email, user.email_key, accounts.normalize_email),
    ):
        if not value:
            if held is not None:
                return False
            continue
        if held is not None and value.casefold() == held:
            continue
        try:
            key = normalize(value).key
        except InvalidInput:
            key = None  # not usable here: the link leaves it out
        if key != held and not (key is not None and held is None):
            return False
    return True


def same_identifier(name: str, account: AppAccount, value: str) -> bool:
    """Does the app's ``name`` (username or email) already say ``value``, up to case and
    normalization?"""
    current = getattr(account, name)
    if not current:
        return False
    normalize = accounts.normalize_username if name == "username" else accounts.normalize_email
    try:
        return normalize(current).key == normalize(value).key
    except InvalidInput:
        return False


def _valid(names: Iterable[str], check: object, what: str) -> set[str]:
    out = set()
    for name in names:
        try:
            out.add(check(name))  # type: ignore[operator]
        except InvalidInput:
            _log.warning(
                "flask-user link: %s %r is not a valid Flask-AAA name; skipped", what, name
            )
    return out


def app_permission(name: str) -> str:
    """A permission of the app's tables that the link mirrors; :class:`InvalidInput` for
    malformed names and for Flask-AAA's own rights (``*``, ``aaa:...``), which are granted
    through Flask-AAA (delegation checked, the administrator on the trail), never by
    writing into the app's tables."""
    name = rbac.validate_permission_name(name)
    if name in {"*", "aaa"} or name.startswith("aaa:"):
        raise InvalidInput({"permission": "Flask-AAA's own permissions are not the app's."})
    return name


def is_app_role(role: Role) -> bool:
    """Was this Flask-AAA role made by the link for one of the app's roles?"""
    return role.description == APP_ROLE


def _role(db: Session, name: str, facts: RequestFacts | None) -> Role | None:
    role = db.scalar(select(Role).where(Role.name == name))
    if role is None:
        return rbac.create_role(db, actor=SYNC_ACTOR, name=name, description=APP_ROLE, facts=facts)
    if not is_app_role(role):
        _log.warning(
            "flask-user link: Flask-AAA already has its own role %r; the app's role of that "
            "name is not mirrored (rename one of them)",
            name,
        )
        return None
    return role


def sync_role(
    db: Session, name: str, permissions: Iterable[str] | None, *, facts: RequestFacts | None
) -> tuple[Role | None, bool]:
    """The Flask-AAA role ``name``, created if missing, with exactly ``permissions`` (left
    alone when None). None when Flask-AAA has a role of its own by that name."""
    role = _role(db, name, facts)
    if role is None or permissions is None:
        return role, False
    wanted = _valid(permissions, app_permission, "permission")
    held = {p.name for p in role.permissions}
    changed = False
    for perm in sorted(wanted - held):
        changed |= rbac.add_permission(
            db, actor=SYNC_ACTOR, role=role, permission=perm, facts=facts
        )
    for perm in sorted(held - wanted):
        try:
            changed |= rbac.remove_permission(
                db, actor=SYNC_ACTOR, role=role, permission=perm, facts=facts
            )
        except Conflict:
            _log.warning("flask-user link: %r keeps %r (last administrator)", name, perm)
    return role, changed


def _sync_roles(
    db: Session,
    user: User,
    account: AppAccount,
    facts: RequestFacts | None,
) -> bool:
    changed = False
    wanted = _valid(account.roles, rbac.validate_role_name, "role")
    granted: set[str] = set()
    for name in sorted(wanted):
        role, role_changed = sync_role(db, name, account.roles[name], facts=facts)
        changed |= role_changed
        if role is not None:
            granted.add(name)
            changed |= rbac.grant_role(db, actor=SYNC_ACTOR, user=user, role=role, facts=facts)
    for role in list(user.roles):
        # A role the link made that the app no longer gives this user (or no longer has).
        if is_app_role(role) and role.name not in granted:
            try:
                changed |= rbac.revoke_role(db, actor=SYNC_ACTOR, user=user, role=role, facts=facts)
            except Conflict:
                _log.warning(
                    "flask-user link: user %s keeps %r (last administrator)", user.id, role.name
                )
    return changed


def is_in_sync(user: User, account: AppAccount) -> bool:
    """A cheap check, with no writes, that :func:`sync` would change nothing about who the
    user is, how they sign in and what they hold (run on each request; a difference
    triggers a sync)."""
    if user.active != account.active:
        return False
    if account.password and account.password != user.password_hash:
        return False
    if not same_identifiers(user, account):
        return False
    wanted = {r for r in account.roles if _ok_role(r)}
    held = {r.name for r in user.roles if is_app_role(r)}
    if held - wanted:
        return False
    missing = wanted - held - {r.name for r in user.roles}
    if missing:
        # Only names Flask-AAA has roles of its own for may stay ungranted (one query, on
        # this path only).
        db = object_session(user)
        native = set(
            db.scalars(
                select(Role.name).where(Role.name.in_(missing), Role.description != APP_ROLE)
            )
            if db is not None
            else ()
        )
        if missing - native:
            return False
    for role in user.roles:
        perms = account.roles.get(role.name)
        if not is_app_role(role) or perms is None:
            continue
        if {p.name for p in role.permissions} != {p for p in perms if _ok_permission(p)}:
            return False
    return True


def _ok_role(name: str) -> bool:
    try:
        rbac.validate_role_name(name)
    except InvalidInput:
        return False
    return True


def _ok_permission(name: str) -> bool:
    try:
        app_permission(name)
    except InvalidInput:
        return False
    return True


def forget(db: Session, user: User, *, facts: RequestFacts | None) -> bool:
    """The app's user is gone (deleted): its Flask-AAA account must not be a way in for
    anyone, nor pass anything on to a user the app later creates with the same id. The
    account is disabled (``user.disabled``; every session and remember-me series ends),
    its API tokens are revoked (``token.revoked``), and its credentials and bindings are
    removed: password, identifiers, second factor, recovery codes, passkeys and linked
    third-party accounts (one ``flask_user.synced`` event, ``"fields": ["deleted"]``).
    The account row stays, as the audit trail names it. False if there was nothing left to
    remove. Flask-AAA's last full administrator is only signed out (see :func:`set_active`).
    """
    disabled = set_active(db, user, False, facts=facts)
    if user.active:
        return disabled  # the last administrator: signed out, credentials kept
    revoked = 0
    for token in db.scalars(
        select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
    ):
        revoked += tokens.revoke(db, token, actor=SYNC_ACTOR, facts=facts or RequestFacts())
    removed = {
        "identities": _delete(db, ExternalIdentity, user.id),
        "passkeys": _delete(db, Passkey, user.id),
    }
    second_factor = user.totp_secret is not None
    _delete(db, RecoveryCode, user.id)
    had = (
        user.password_hash is not None
        or user.username_key is not None
        or user.email_key is not None
        or second_factor
    )
    if not (had or revoked or any(removed.values())):
        return disabled
    # Recorded first: the event names the account as it was. (Key names must not look
    # like secrets to the trail: "pats" are personal access tokens.)
    audit.record(
        db,
        action="flask_user.synced",
        actor=SYNC_ACTOR,
        target=user,
        facts=facts,
        details={
            "fields": ["deleted"],
            "pats_revoked": revoked,
            "mfa_removed": second_factor,
            **removed,
        },
    )
    user.password_hash = None
    user.username = user.username_key = user.email = user.email_key = None
    user.totp_secret = None
    user.totp_last_step = None
    user.mfa_enabled_at = None
    return True


def _delete(
    db: Session, model: type[ExternalIdentity | Passkey | RecoveryCode], user_id: int
) -> int:
    result = db.execute(
        delete(model).where(model.user_id == user_id).execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
