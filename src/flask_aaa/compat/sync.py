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

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import Conflict, InvalidInput
from ..models import Role, User
from ..services import accounts, audit, rbac
from ..services.actors import Actor, RequestFacts

_log = logging.getLogger("flask_aaa")

#: The actor of changes the app made in its own tables and the link mirrors.
SYNC_ACTOR = Actor.system("flask-user-app")


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


def _identifiers(db: Session, account: AppAccount) -> dict[str, str | None]:
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
        **_identifiers(db, account),
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
    catalogue: Iterable[str],
    facts: RequestFacts | None,
) -> tuple[User, bool]:
    """Bring the Flask-AAA account of ``account`` in line with the app's tables: identifiers,
    a confirmation (never undone), the enabled state, and the roles named in ``catalogue``
    (every role the app defines) with their permissions. Password hashes are copied when
    the link is made; later changes are mirrored at flush time by the web layer. Roles
    that exist only in Flask-AAA are left alone. Returns the account and whether anything
    changed (all audited)."""
    user = db.get(User, account.id)
    created = user is None
    user = link(db, account, facts=facts)
    changed = created | _sync_fields(db, user, account, facts)
    if user.active != account.active:
        try:
            changed |= accounts.set_active(
                db, actor=SYNC_ACTOR, user=user, active=account.active, facts=facts
            )
        except Conflict:
            _log.warning("flask-user link: user %s is the last administrator; kept", user.id)
    changed |= _sync_roles(db, user, account, frozenset(catalogue), facts)
    return user, changed


def _sync_fields(db: Session, user: User, account: AppAccount, facts: RequestFacts | None) -> bool:
    fields: list[str] = []
    idents = _identifiers(db, account)
    for name in ("username", "email"):
        if idents[f"{name}_key"] != getattr(user, f"{name}_key"):
            setattr(user, name, idents[name])
            setattr(user, f"{name}_key", idents[f"{name}_key"])
            fields.append(name)
    if account.email_confirmed_at is not None and user.email_confirmed_at is None:
        # Confirmation only ever moves forward: a link confirmed in Flask-AAA stays.
        user.email_confirmed_at = _aware(account.email_confirmed_at)
        fields.append("email_confirmed_at")
    if not fields:
        return False
    audit.record(
        db,
        action="flask_user.synced",
        actor=SYNC_ACTOR,
        target=user,
        facts=facts,
        details={"fields": fields},
    )
    return True


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


def _role(db: Session, name: str, facts: RequestFacts | None) -> Role:
    role = db.scalar(select(Role).where(Role.name == name))
    if role is None:
        role = rbac.create_role(
            db, actor=SYNC_ACTOR, name=name, description="Flask-User role", facts=facts
        )
    return role


def sync_role(
    db: Session, name: str, permissions: Iterable[str] | None, *, facts: RequestFacts | None
) -> tuple[Role, bool]:
    """The Flask-AAA role ``name``, created if missing, with exactly ``permissions`` (left
    alone when None)."""
    role = _role(db, name, facts)
    if permissions is None:
        return role, False
    wanted = _valid(permissions, rbac.validate_permission_name, "permission")
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
    catalogue: frozenset[str],
    facts: RequestFacts | None,
) -> bool:
    changed = False
    wanted = _valid(account.roles, rbac.validate_role_name, "role")
    for name in sorted(wanted):
        role, role_changed = sync_role(db, name, account.roles[name], facts=facts)
        changed |= role_changed
        changed |= rbac.grant_role(db, actor=SYNC_ACTOR, user=user, role=role, facts=facts)
    for role in list(user.roles):
        if role.name in catalogue and role.name not in wanted:
            try:
                changed |= rbac.revoke_role(db, actor=SYNC_ACTOR, user=user, role=role, facts=facts)
            except Conflict:
                _log.warning(
                    "flask-user link: user %s keeps %r (last administrator)", user.id, role.name
                )
    return changed


def is_in_sync(user: User, account: AppAccount, catalogue: Iterable[str]) -> bool:
    """A cheap check, with no writes, that :func:`sync` would change nothing about who the
    user is and what they hold (run on each request; a difference triggers a sync)."""
    if user.active != account.active:
        return False
    names = set(catalogue)
    held = {r.name for r in user.roles if r.name in names}
    if held != set(account.roles) & {r for r in account.roles if _ok_role(r)}:
        return False
    for role in user.roles:
        perms = account.roles.get(role.name)
        if perms is not None and {p.name for p in role.permissions} != {
            p for p in perms if _ok_permission(p)
        }:
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
        rbac.validate_permission_name(name)
    except InvalidInput:
        return False
    return True
