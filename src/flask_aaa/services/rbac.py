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

import dataclasses
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import String, delete, func, insert, literal, select, union_all, update
from sqlalchemy.orm import Session, selectinload

from ..errors import Conflict, InvalidInput, NotFound, PermissionDenied
from ..models import (
    AuthzState,
    Permission,
    Role,
    User,
    role_parents,
    role_permissions,
    user_permissions,
    user_roles,
)
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
#: Act as another user (impersonation); never a user holding rights the actor lacks.
IMPERSONATE = "aaa:users:impersonate"

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
    def of_user(cls, user: User) -> Grants:
        """Resolve through the ORM (no cache): the user's roles and every role they inherit
        from, with their permissions, and the user's direct permissions."""
        roles = _closure(user.roles)
        return cls(
            (r.name for r in roles),
            [p.name for r in roles for p in r.permissions] + [p.name for p in user.permissions],
        )

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


def _closure(roles: Iterable[Role]) -> list[Role]:
    """``roles`` and every role they inherit from, each once (cycles cannot loop)."""
    seen: dict[int, Role] = {}
    todo = list(roles)
    while todo:
        role = todo.pop()
        if role.id not in seen:
            seen[role.id] = role
            todo.extend(role.parents)
    return list(seen.values())


def _held_roles(user_id: int) -> Any:
    """A recursive CTE of the ids of the roles ``user_id`` has, directly or inherited."""
    held = (
        select(user_roles.c.role_id.label("role_id"))
        .where(user_roles.c.user_id == user_id)
        .cte("aaa_held_roles", recursive=True)
    )
    return held.union(
        select(role_parents.c.parent_id).join(held, role_parents.c.role_id == held.c.role_id)
    )


def load_grants(db: Session, user_id: int) -> Grants:
    """Resolve a user's roles (inherited ones included) and permissions (from every role and
    granted directly) with one query."""
    held = _held_roles(user_id)
    through_roles = (
        select(Role.name, Permission.name)
        .select_from(held)
        .join(Role, Role.id == held.c.role_id)
        .outerjoin(role_permissions, role_permissions.c.role_id == Role.id)
        .outerjoin(Permission, Permission.id == role_permissions.c.permission_id)
    )
    direct = (
        select(literal(None, String).label("role"), Permission.name)
        .select_from(user_permissions)
        .join(Permission, Permission.id == user_permissions.c.permission_id)
        .where(user_permissions.c.user_id == user_id)
    )
    rows = db.execute(union_all(through_roles, direct)).all()
    return Grants({r for r, _ in rows if r is not None}, {p for _, p in rows if p is not None})


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
    deny(db, actor, requirement, facts=facts, target=target, reason=_why(db, actor, missing[0]))


def _why(db: Session, actor: Actor, permission: str) -> str | None:
    """The reason of a denial, for the audit trail (see :func:`explain`)."""
    if actor.user is None:
        return None
    grants = actor.user.grants
    owner = getattr(grants, "owner", None)  # a token's grants: scopes over its owner's
    if owner is not None and owner.allows(permission):
        return f"denied: the token's scopes do not cover {permission}"
    return explain(db, actor.user, permission).reason


def deny(
    db: Session,
    actor: Actor,
    requirement: str,
    *,
    facts: RequestFacts | None = None,
    target: object | None = None,
    message: str | None = None,
    reason: str | None = None,
) -> None:
    """Audit a denial in its own transaction and raise :class:`PermissionDenied`.
    ``reason`` (what :func:`explain` says) is recorded with it."""
    details = {"requirement": requirement}
    if reason:
        details["reason"] = reason
    audit.record_apart(
        db,
        action="authz.denied",
        actor=actor,
        outcome="denied",
        target=target,
        details=details,
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
    before = sorted(p.name for p in role.permissions)
    keeping_an_admin(db, lambda: role.permissions.remove(perm))
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
    require_holds_all(db, actor, effective_permissions(role), facts, "grant a role", user)
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
    require_holds_all(db, actor, effective_permissions(role), facts, "revoke a role", user)
    if role not in user.roles:
        return False
    before = sorted(r.name for r in user.roles)
    keeping_an_admin(
        db,
        lambda: db.execute(
            delete(user_roles).where(
                user_roles.c.user_id == user.id, user_roles.c.role_id == role.id
            )
        ),
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


def superuser_count(db: Session, *, excluding_user: int | None = None) -> int:
    """Active users holding ``*``: through a role that has it, a role inheriting from one,
    or directly."""
    star_roles = (
        select(role_permissions.c.role_id.label("role_id"))
        .join(Permission, Permission.id == role_permissions.c.permission_id)
        .where(Permission.name == SUPERUSER)
        .cte("aaa_star_roles", recursive=True)
    )
    star_roles = star_roles.union(
        select(role_parents.c.role_id).join(
            star_roles, role_parents.c.parent_id == star_roles.c.role_id
        )
    )
    via_roles = select(user_roles.c.user_id).join(
        star_roles, user_roles.c.role_id == star_roles.c.role_id
    )
    direct = (
        select(user_permissions.c.user_id)
        .join(Permission, Permission.id == user_permissions.c.permission_id)
        .where(Permission.name == SUPERUSER)
    )
    stmt = (
        select(func.count())
        .select_from(User)
        .where(User.id.in_(via_roles.union(direct)), User.active.is_(True))
    )
    if excluding_user is not None:
        stmt = stmt.where(User.id != excluding_user)
    return db.scalar(stmt) or 0


def keeping_an_admin(db: Session, change: Callable[[], object]) -> None:
    """Apply ``change`` unless it leaves nobody with full administration where somebody had
    it: the change runs in a savepoint and is undone (:class:`Conflict`) if the count of
    active ``*`` holders falls to zero. One rule for every path: a revoked role, a removed
    permission or parent, a deleted role, a disabled user."""
    before = superuser_count(db)
    nested = db.begin_nested()
    try:
        change()
        db.flush()
        lost = before > 0 and superuser_count(db) == 0
    except BaseException:
        nested.rollback()
        raise
    if lost:
        nested.rollback()
        raise Conflict("this would leave nobody with full administration")
    nested.commit()


def holds_superuser(db: Session, user: User) -> bool:
    """Does ``user`` hold ``*`` (through a role, inherited, or directly)?"""
    return SUPERUSER in load_grants(db, user.id).permissions


def admins_remain_without(db: Session, user: User) -> bool:
    """Used when a user is disabled or deleted: would full administration survive?"""
    return superuser_count(db, excluding_user=user.id) > 0


def is_superuser(grants: Grants) -> bool:
    return SUPERUSER in grants.permissions


# -- inheritance --


def effective_permissions(role: Role) -> list[str]:
    """The permissions of ``role`` and of every role it inherits from, sorted."""
    return sorted({p.name for r in _closure([role]) for p in r.permissions})


def ancestors(role: Role) -> list[Role]:
    """Every role ``role`` inherits from, directly or not (itself excluded)."""
    return [r for r in _closure(role.parents) if r.id != role.id]


def add_parent(
    db: Session, *, actor: Actor, role: Role, parent: Role, facts: RequestFacts | None = None
) -> bool:
    """Make ``role`` inherit from ``parent``. False if it did already. A cycle (``parent`` is
    ``role`` or inherits from it) is refused; so is handing on permissions one lacks."""
    check(db, actor, [MANAGE_ROLES], facts=facts, target=role)
    if parent.id == role.id or any(r.id == role.id for r in ancestors(parent)):
        chain = " → ".join(_path_to(parent, role) or [parent.name, role.name])
        raise InvalidInput(
            {"parent": f"{role.name} cannot inherit from {parent.name}: a cycle ({chain})."}
        )
    require_holds_all(db, actor, effective_permissions(parent), facts, "extend a role", role)
    if parent in role.parents:
        return False
    before = [r.name for r in role.parents]
    role.parents.append(parent)
    bump_version(db)
    audit.record(
        db,
        action="role.parent_added",
        actor=actor,
        target=role,
        facts=facts,
        details={"parent": parent.name, "before": before, "after": sorted([*before, parent.name])},
    )
    return True


def remove_parent(
    db: Session, *, actor: Actor, role: Role, parent: Role, facts: RequestFacts | None = None
) -> bool:
    """``role`` stops inheriting from ``parent``. False if it did not."""
    check(db, actor, [MANAGE_ROLES], facts=facts, target=role)
    require_holds_all(db, actor, effective_permissions(parent), facts, "narrow a role", role)
    if parent not in role.parents:
        return False
    before = [r.name for r in role.parents]
    keeping_an_admin(db, lambda: role.parents.remove(parent))
    bump_version(db)
    audit.record(
        db,
        action="role.parent_removed",
        actor=actor,
        target=role,
        facts=facts,
        details={
            "parent": parent.name,
            "before": before,
            "after": [n for n in before if n != parent.name],
        },
    )
    return True


def _path_to(start: Role, goal: Role) -> list[str] | None:
    """Role names from ``start`` up its parents to ``goal`` (breadth first), if any."""
    todo: list[tuple[Role, list[str]]] = [(start, [start.name])]
    seen: set[int] = set()
    while todo:
        role, path = todo.pop(0)
        if role.id == goal.id:
            return path
        if role.id in seen:
            continue
        seen.add(role.id)
        todo.extend((parent, [*path, parent.name]) for parent in role.parents)
    return None


def delete_role(
    db: Session, *, actor: Actor, role: Role, facts: RequestFacts | None = None
) -> None:
    """Delete ``role``: its users lose it and roles inheriting from it stop doing so."""
    check(db, actor, [MANAGE_ROLES], facts=facts, target=role)
    require_holds_all(db, actor, effective_permissions(role), facts, "delete a role", role)
    holders = sorted(u.label for u in role.users)
    children = [r.name for r in role.children]
    for user in role.users:
        sessions.mark_for_rotation(db, user)
    audit.record(
        db,
        action="role.deleted",
        actor=actor,
        target=role,
        facts=facts,
        details={
            "permissions": [p.name for p in role.permissions],
            "parents": [r.name for r in role.parents],
            "children": children,
            "users": holders[:100],
        },
    )
    keeping_an_admin(db, lambda: db.delete(role))
    bump_version(db)


# -- permissions granted to users directly --


def grant_permission(
    db: Session, *, actor: Actor, user: User, permission: str, facts: RequestFacts | None = None
) -> bool:
    """Give ``user`` a permission directly (outside any role). False if they had it."""
    check(db, actor, [ASSIGN_ROLES], facts=facts, target=user)
    name = validate_permission_name(permission)
    require_holds_all(db, actor, [name], facts, "grant a permission", user)
    perm = ensure_permission(db, name)
    if perm in user.permissions:
        return False
    before = [p.name for p in user.permissions]
    user.permissions.append(perm)
    bump_version(db)
    sessions.mark_for_rotation(db, user)
    audit.record(
        db,
        action="user.permission_granted",
        actor=actor,
        target=user,
        facts=facts,
        details={"permission": name, "before": before, "after": sorted([*before, name])},
    )
    return True


def revoke_permission(
    db: Session, *, actor: Actor, user: User, permission: str, facts: RequestFacts | None = None
) -> bool:
    """Take a directly granted permission from ``user``. False if they did not have it."""
    check(db, actor, [ASSIGN_ROLES], facts=facts, target=user)
    name = validate_permission_name(permission)
    require_holds_all(db, actor, [name], facts, "revoke a permission", user)
    perm = find_permission(db, name)
    if perm is None or perm not in user.permissions:
        return False
    before = [p.name for p in user.permissions]
    keeping_an_admin(db, lambda: user.permissions.remove(perm))
    bump_version(db)
    sessions.mark_for_rotation(db, user)
    audit.record(
        db,
        action="user.permission_revoked",
        actor=actor,
        target=user,
        facts=facts,
        details={"permission": name, "before": before, "after": [n for n in before if n != name]},
    )
    return True


# -- explain --


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """One way a user holds a permission: through a chain of roles (the role they have
    first, then each parent up to the role that holds ``grant``), or directly."""

    via: tuple[str, ...]  # role names; empty for a direct grant
    grant: str  # the held permission that covers the wanted one (maybe a wildcard)

    def describe(self) -> str:
        if not self.via:
            return f"granted directly as {self.grant}"
        chain = " → ".join(self.via)
        inherited = f" (inherited: {chain})" if len(self.via) > 1 else ""
        return f"role {self.via[0]}{inherited} holds {self.grant}"


@dataclasses.dataclass(frozen=True, slots=True)
class Explanation:
    """Why ``user`` may or may not use ``permission``."""

    user: str
    permission: str
    allowed: bool
    grants: tuple[Grant, ...]
    reason: str
    #: Held permissions of the same resource, to show what the user has instead.
    near: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "user": self.user,
            "permission": self.permission,
            "allowed": self.allowed,
            "reason": self.reason,
            "grants": [{"via": list(g.via), "grant": g.grant} for g in self.grants],
            "near": list(self.near),
        }


def explain(db: Session, user: User, permission: str) -> Explanation:
    """Which roles (and inheritance paths) or direct grants give ``user`` ``permission``,
    or what is missing. Not a hot path: it walks the role graph through the ORM."""
    wanted = validate_permission_name(permission)
    found: list[Grant] = []
    todo: list[tuple[Role, tuple[str, ...]]] = [(role, (role.name,)) for role in user.roles]
    seen: set[int] = set()
    held: set[str] = set()
    while todo:
        role, via = todo.pop(0)
        if role.id in seen:
            continue
        seen.add(role.id)
        for perm in role.permissions:
            held.add(perm.name)
            if permission_matches(frozenset({perm.name}), wanted):
                found.append(Grant(via, perm.name))
        todo.extend((parent, (*via, parent.name)) for parent in role.parents)
    for perm in user.permissions:
        held.add(perm.name)
        if permission_matches(frozenset({perm.name}), wanted):
            found.append(Grant((), perm.name))
    resource = wanted.split(":", 1)[0]
    near = tuple(sorted(p for p in held if p.split(":", 1)[0] == resource and p != wanted))
    if not user.active:
        reason = "denied: the account is disabled"
        return Explanation(user.label, wanted, False, tuple(found), reason, near)
    if found:
        return Explanation(user.label, wanted, True, tuple(found), found[0].describe())
    reason = f"denied: no role and no direct grant covers {wanted}"
    if near:
        reason += f" (holds {', '.join(near)})"
    elif not user.roles:
        reason += " (the user has no role)"
    return Explanation(user.label, wanted, False, (), reason, near)
