"""Roles and permissions: matching, resolution, caching, and the audited changes.

A permission is a string ``resource:action`` (more segments are allowed:
``aaa:users:write``). A final ``*`` segment matches everything below it (``notes:*``), and
``*`` alone matches every permission: holding ``*`` is full administration.

A user's effective grants are resolved with one query and cached per process, keyed by a
version stored in ``aaa_authz_state``. Every change bumps that version in the same
transaction, and the web layer reads it in the same query that loads the session, so every
worker sees a change on its very next request with no extra round trip.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence

from sqlalchemy import and_, delete, func, insert, not_, select, update
from sqlalchemy.orm import Session, selectinload

from ..errors import Conflict, InvalidInput, NotFound, PermissionDenied
from ..models import AuthzState, Permission, Role, User, role_permissions, user_roles
from . import audit, sessions
from .actors import Actor, RequestFacts

#: Full administration. The last active holder of it can never lose it.
SUPERUSER = "*"

#: Permissions that guard the library's own administration.
MANAGE_USERS = "aaa:users:write"
READ_USERS = "aaa:users:read"
ASSIGN_ROLES = "aaa:roles:assign"
MANAGE_ROLES = "aaa:roles:write"
READ_AUDIT = "aaa:audit:read"

_PERMISSION_RE = re.compile(r"^(\*|[a-z0-9_.-]+(:[a-z0-9_.-]+)*(:\*)?)$")
_ROLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Grants:
    """The effective roles and permissions of one user, with O(1) wildcard-aware checks."""

    __slots__ = ("_answers", "permissions", "roles")

    def __init__(self, roles: Iterable[str], permissions: Iterable[str]) -> None:
        self.roles = frozenset(roles)
        self.permissions = frozenset(permissions)
        self._answers: dict[str, bool] = {}

    @classmethod
    def from_roles(cls, roles: Sequence[Role]) -> Grants:
        return cls((r.name for r in roles), (p.name for r in roles for p in r.permissions))

    def allows(self, wanted: str) -> bool:
        """Does any held permission (exact or wildcard) cover ``wanted``?"""
        answer = self._answers.get(wanted)
        if answer is None:
            answer = self._answers[wanted] = permission_matches(self.permissions, wanted)
        return answer

    def __repr__(self) -> str:
        return f"Grants(roles={sorted(self.roles)}, permissions={sorted(self.permissions)})"


def permission_matches(held: frozenset[str], wanted: str) -> bool:
    if wanted in held or SUPERUSER in held:
        return True
    parts = wanted.split(":")
    return any(":".join(parts[:i]) + ":*" in held for i in range(1, len(parts)))


class GrantsCache:
    """Per-process cache of :class:`Grants` by user id, valid for one authz version."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: dict[int, tuple[int, Grants]] = {}
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, db: Session, user_id: int, version: int) -> Grants:
        entry = self._entries.get(user_id)
        if entry is not None and entry[0] == version:
            return entry[1]
        grants = load_grants(db, user_id)
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[user_id] = (version, grants)
        return grants

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def load_grants(db: Session, user_id: int) -> Grants:
    """Resolve a user's roles and permissions with one query."""
    rows = db.execute(
        select(Role.name, Permission.name)
        .select_from(user_roles)
        .join(Role, Role.id == user_roles.c.role_id)
        .outerjoin(role_permissions, role_permissions.c.role_id == Role.id)
        .outerjoin(Permission, Permission.id == role_permissions.c.permission_id)
        .where(user_roles.c.user_id == user_id)
    ).all()
    return Grants({r for r, _ in rows}, {p for _, p in rows if p is not None})


def current_version(db: Session) -> int:
    return db.scalar(select(AuthzState.version).where(AuthzState.id == 1)) or 0


def bump_version(db: Session) -> None:
    db.execute(update(AuthzState).where(AuthzState.id == 1).values(version=AuthzState.version + 1))


# -- checks --


def check(
    db: Session,
    actor: Actor,
    permissions: Sequence[str],
    *,
    mode: str = "all",
    facts: RequestFacts | None = None,
    target: object | None = None,
) -> None:
    """Raise :class:`PermissionDenied` (and audit the denial) unless ``actor`` holds all
    (``mode="all"``) or any (``mode="any"``) of ``permissions``."""
    if actor.is_system:
        return
    held = actor.user.grants if actor.user is not None else None
    results = [held is not None and held.allows(p) for p in permissions]
    if (all if mode == "all" else any)(results):
        return
    missing = [p for p, ok in zip(permissions, results, strict=True) if not ok]
    requirement = " and ".join(missing) if mode == "all" else " or ".join(permissions)
    deny(db, actor, requirement, facts=facts, target=target)


def deny(
    db: Session,
    actor: Actor,
    requirement: str,
    *,
    facts: RequestFacts | None = None,
    target: object | None = None,
    message: str | None = None,
) -> None:
    """Audit a denial in its own transaction and raise :class:`PermissionDenied`."""
    audit.record_apart(
        db,
        action="authz.denied",
        actor=actor,
        outcome="denied",
        target=target,
        details={"requirement": requirement},
        facts=facts,
    )
    raise PermissionDenied(requirement, message)


def require_holds_all(
    db: Session,
    actor: Actor,
    names: Iterable[str],
    facts: RequestFacts | None,
    what: str,
    target: object | None = None,
) -> None:
    """No delegation beyond one's own rights: the actor must hold what it hands out."""
    if actor.is_system:
        return
    lacking = [n for n in names if not (actor.user and actor.user.grants.allows(n))]
    if lacking:
        deny(
            db,
            actor,
            " and ".join(lacking),
            facts=facts,
            target=target,
            message=f"You cannot {what} with permissions you do not hold: {', '.join(lacking)}.",
        )


# -- names --


def validate_permission_name(name: str) -> str:
    name = name.strip()
    if len(name) > 128 or not _PERMISSION_RE.match(name):
        raise InvalidInput(
            {"permission": "Use lowercase 'resource:action' (a-z, 0-9, _ . -); may end in ':*'."}
        )
    return name


def validate_role_name(name: str) -> str:
    name = name.strip()
    if not _ROLE_RE.match(name):
        raise InvalidInput(
            {"role": "Use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit."}
        )
    return name


def find_role(db: Session, name: str) -> Role:
    role = db.scalar(select(Role).where(Role.name == name.strip()))
    if role is None:
        raise NotFound(f"no role named {name!r}")
    return role


def find_permission(db: Session, name: str) -> Permission | None:
    return db.scalar(select(Permission).where(Permission.name == name.strip()))


def list_roles(
    db: Session, *, limit: int, after: str | None = None
) -> tuple[list[Role], str | None]:
    """One page of roles in name order (keyset pagination), with their permissions loaded:
    the roles and the ``after`` for the next page (None on the last)."""
    stmt = select(Role).options(selectinload(Role.permissions)).order_by(Role.name)
    if after is not None:
        stmt = stmt.where(Role.name > after)
    rows = list(db.scalars(stmt.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].name if more and rows else None)


def list_permissions(
    db: Session, *, limit: int, after: str | None = None
) -> tuple[list[Permission], str | None]:
    """One page of the known permissions in name order, with the roles holding them."""
    stmt = select(Permission).options(selectinload(Permission.roles)).order_by(Permission.name)
    if after is not None:
        stmt = stmt.where(Permission.name > after)
    rows = list(db.scalars(stmt.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].name if more and rows else None)


# -- changes (each audited, none committed) --


def create_role(
    db: Session,
    *,
    actor: Actor,
    name: str,
    description: str = "",
    facts: RequestFacts | None = None,
) -> Role:
    check(db, actor, [MANAGE_ROLES], facts=facts)
    name = validate_role_name(name)
    if db.scalar(select(Role.id).where(Role.name == name)) is not None:
        raise Conflict(f"a role named {name!r} exists already")
    role = Role(name=name, description=description.strip()[:255])
    db.add(role)
    db.flush()
    audit.record(db, action="role.created", actor=actor, target=role, facts=facts)
    return role


def ensure_permission(db: Session, name: str) -> Permission:
    name = validate_permission_name(name)
    permission = find_permission(db, name)
    if permission is None:
        permission = Permission(name=name)
        db.add(permission)
        db.flush()
    return permission


def add_permission(
    db: Session, *, actor: Actor, role: Role, permission: str, facts: RequestFacts | None = None
) -> bool:
    """Give ``role`` a permission (created on first use). False if it had it already."""
    check(db, actor, [MANAGE_ROLES], facts=facts, target=role)
    name = validate_permission_name(permission)
    require_holds_all(db, actor, [name], facts, "grant a permission", role)
    perm = ensure_permission(db, name)
    if perm in role.permissions:
        return False
    before = sorted(p.name for p in role.permissions)
    role.permissions.append(perm)
    bump_version(db)
    audit.record(
        db,
        action="role.permission_added",
        actor=actor,
        target=role,
        facts=facts,
        details={"permission": name, "before": before, "after": sorted([*before, name])},
    )
    return True


def remove_permission(
    db: Session, *, actor: Actor, role: Role, permission: str, facts: RequestFacts | None = None
) -> bool:
    """Take a permission from ``role``. False if it did not have it."""
    check(db, actor, [MANAGE_ROLES], facts=facts, target=role)
    name = validate_permission_name(permission)
    require_holds_all(db, actor, [name], facts, "remove a permission", role)
    perm = find_permission(db, name)
    if perm is None or perm not in role.permissions:
        return False
    if name == SUPERUSER and not _admins_remain(db, exclude_role=role.id):
        raise Conflict("this would leave nobody with full administration")
    before = sorted(p.name for p in role.permissions)
    role.permissions.remove(perm)
    bump_version(db)
    audit.record(
        db,
        action="role.permission_removed",
        actor=actor,
        target=role,
        facts=facts,
        details={"permission": name, "before": before, "after": [p for p in before if p != name]},
    )
    return True


def grant_role(
    db: Session, *, actor: Actor, user: User, role: Role, facts: RequestFacts | None = None
) -> bool:
    """Give ``user`` a role. False if they had it already."""
    check(db, actor, [ASSIGN_ROLES], facts=facts, target=user)
    require_holds_all(db, actor, [p.name for p in role.permissions], facts, "grant a role", user)
    if role in user.roles:
        return False
    before = sorted(r.name for r in user.roles)
    db.execute(insert(user_roles).values(user_id=user.id, role_id=role.id))
    db.expire(user, ["roles"])
    bump_version(db)
    sessions.mark_for_rotation(db, user)
    audit.record(
        db,
        action="role.granted",
        actor=actor,
        target=user,
        facts=facts,
        details={"role": role.name, "before": before, "after": sorted([*before, role.name])},
    )
    return True


def revoke_role(
    db: Session, *, actor: Actor, user: User, role: Role, facts: RequestFacts | None = None
) -> bool:
    """Take a role from ``user``. False if they did not have it."""
    check(db, actor, [ASSIGN_ROLES], facts=facts, target=user)
    require_holds_all(db, actor, [p.name for p in role.permissions], facts, "revoke a role", user)
    if role not in user.roles:
        return False
    if any(p.name == SUPERUSER for p in role.permissions) and not _admins_remain(
        db, exclude_pair=(user.id, role.id)
    ):
        raise Conflict("this would leave nobody with full administration")
    before = sorted(r.name for r in user.roles)
    db.execute(
        delete(user_roles).where(user_roles.c.user_id == user.id, user_roles.c.role_id == role.id)
    )
    db.expire(user, ["roles"])
    bump_version(db)
    sessions.mark_for_rotation(db, user)
    audit.record(
        db,
        action="role.revoked",
        actor=actor,
        target=user,
        facts=facts,
        details={
            "role": role.name,
            "before": before,
            "after": [r for r in before if r != role.name],
        },
    )
    return True


def _admins_remain(
    db: Session,
    *,
    exclude_user: int | None = None,
    exclude_role: int | None = None,
    exclude_pair: tuple[int, int] | None = None,
) -> bool:
    """Would an active holder of ``*`` remain after the excluded grant is gone?"""
    stmt = (
        select(func.count())
        .select_from(user_roles)
        .join(User, User.id == user_roles.c.user_id)
        .join(role_permissions, role_permissions.c.role_id == user_roles.c.role_id)
        .join(Permission, Permission.id == role_permissions.c.permission_id)
        .where(Permission.name == SUPERUSER, User.active.is_(True))
    )
    if exclude_user is not None:
        stmt = stmt.where(user_roles.c.user_id != exclude_user)
    if exclude_role is not None:
        stmt = stmt.where(user_roles.c.role_id != exclude_role)
    if exclude_pair is not None:
        stmt = stmt.where(
            not_(
                and_(
                    user_roles.c.user_id == exclude_pair[0], user_roles.c.role_id == exclude_pair[1]
                )
            )
        )
    return bool(db.scalar(stmt))


def holds_superuser(db: Session, user: User) -> bool:
    """Does ``user`` hold ``*`` through any of their roles (whether active or not)?"""
    stmt = (
        select(func.count())
        .select_from(user_roles)
        .join(role_permissions, role_permissions.c.role_id == user_roles.c.role_id)
        .join(Permission, Permission.id == role_permissions.c.permission_id)
        .where(Permission.name == SUPERUSER, user_roles.c.user_id == user.id)
    )
    return bool(db.scalar(stmt))


def admins_remain_without(db: Session, user: User) -> bool:
    """Used when a user is disabled or deleted: would full administration survive?"""
    return _admins_remain(db, exclude_user=user.id)


def is_superuser(grants: Grants) -> bool:
    return SUPERUSER in grants.permissions
