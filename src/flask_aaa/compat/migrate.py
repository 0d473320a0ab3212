"""Inspect a Flask-User database and link it to Flask-AAA's tables, beside the app's own.

Nothing here changes a row of the app's tables: the plan adds Flask-AAA's tables (the
shipped migrations) and, for each app user, a Flask-AAA account with the same id, its
password hash as it is (bcrypt hashes are upgraded to argon2id at the next sign-in), its
roles and, when the app has them, its roles' permissions. No Flask here (a service).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import Engine, MetaData, Table, inspect, select
from sqlalchemy.orm import Session

from .. import migrations
from ..services.actors import RequestFacts
from . import sync


@dataclasses.dataclass(frozen=True, slots=True)
class Layout:
    """Where a Flask-User app keeps its users, roles and permissions."""

    users: str
    roles: str | None = None
    user_roles: str | None = None
    permissions: str | None = None
    role_permissions: str | None = None


@dataclasses.dataclass(slots=True)
class Plan:
    layout: Layout
    needs_tables: bool
    users: list[sync.AppAccount]
    catalogue: list[str]
    already_linked: int

    def steps(self) -> list[str]:
        out = []
        if self.needs_tables:
            out.append("create Flask-AAA's tables (aaa_*) beside the app's own")
        todo = len(self.users) - self.already_linked
        out.append(
            f"link {todo} of {len(self.users)} users of table {self.layout.users!r} to "
            "Flask-AAA accounts with the same ids (password hashes kept as they are)"
        )
        if self.catalogue:
            out.append(f"mirror {len(self.catalogue)} roles: {', '.join(self.catalogue)}")
        if self.layout.permissions:
            out.append(f"mirror the roles' permissions from table {self.layout.permissions!r}")
        return out


def _columns(meta: MetaData, name: str) -> set[str]:
    return {c.name for c in meta.tables[name].columns}


def find_layout(meta: MetaData) -> Layout:
    """Guess the app's tables: a user table (password with username or email), an
    association table pointing at it and at a table with ``name`` (roles), and the same
    again from roles to permissions."""
    users = next(
        (
            t.name
            for t in meta.sorted_tables
            if not t.name.startswith("aaa_")
            and "password" in _columns(meta, t.name)
            and _columns(meta, t.name) & {"username", "email"}
        ),
        None,
    )
    if users is None:
        raise LookupError("no Flask-User user table (with password and username or email)")
    roles = user_roles = permissions = role_permissions = None
    for table in meta.sorted_tables:
        targets = {fk.column.table.name: fk.parent.name for fk in table.foreign_keys}
        if users in targets and len(targets) == 2:
            other = next(n for n in targets if n != users)
            if "name" in _columns(meta, other):
                roles, user_roles = other, table.name
    if roles is not None:
        for table in meta.sorted_tables:
            linked = {fk.column.table.name for fk in table.foreign_keys}
            if roles in linked and users not in linked and len(linked) == 2:
                other = next(n for n in linked if n != roles)
                if "name" in _columns(meta, other):
                    permissions, role_permissions = other, table.name
    return Layout(users, roles, user_roles, permissions, role_permissions)


def _fk(table: Table, target: str) -> str:
    return next(fk.parent.name for fk in table.foreign_keys if fk.column.table.name == target)


def inspect_database(engine: Engine) -> Plan:
    """Read the app's tables and what Flask-AAA already has; change nothing."""
    meta = MetaData()
    meta.reflect(engine)
    layout = find_layout(meta)
    needs_tables = "aaa_users" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        users_t = meta.tables[layout.users]
        role_names: dict[Any, str] = {}
        held: dict[Any, set[str]] = {}
        perms: dict[str, frozenset[str]] | None = None
        if layout.roles and layout.user_roles:
            roles_t, ur = meta.tables[layout.roles], meta.tables[layout.user_roles]
            role_names = {r.id: r.name for r in conn.execute(select(roles_t.c.id, roles_t.c.name))}
            uid, rid = _fk(ur, layout.users), _fk(ur, layout.roles)
            for row in conn.execute(select(ur.c[uid], ur.c[rid])):
                held.setdefault(row[0], set()).add(role_names[row[1]])
            if layout.permissions and layout.role_permissions:
                perm_t, rp = meta.tables[layout.permissions], meta.tables[layout.role_permissions]
                perm_names = {
                    p.id: p.name for p in conn.execute(select(perm_t.c.id, perm_t.c.name))
                }
                found: dict[str, set[str]] = {n: set() for n in role_names.values()}
                r_col, p_col = _fk(rp, layout.roles), _fk(rp, layout.permissions)
                for row in conn.execute(select(rp.c[r_col], rp.c[p_col])):
                    found[role_names[row[0]]].add(perm_names[row[1]])
                perms = {k: frozenset(v) for k, v in found.items()}
        cols = _columns(meta, layout.users)
        accounts = []
        for record in conn.execute(select(users_t)).mappings():
            user_row: Any = record
            accounts.append(
                sync.AppAccount(
                    id=int(user_row["id"]),
                    username=user_row.get("username"),
                    email=user_row.get("email"),
                    password=user_row["password"] or None,
                    active=bool(
                        user_row["is_active"]
                        if "is_active" in cols
                        else user_row.get("active", True)
                    ),
                    email_confirmed_at=user_row.get("email_confirmed_at"),
                    roles={
                        name: (perms.get(name, frozenset()) if perms is not None else None)
                        for name in sorted(held.get(user_row["id"], set()))
                    },
                )
            )
        linked = 0
        if not needs_tables:
            ids = {a.id for a in accounts}
            aaa = Table("aaa_users", MetaData(), autoload_with=conn)
            linked = len(ids & {r[0] for r in conn.execute(select(aaa.c.id))})
    return Plan(layout, needs_tables, accounts, sorted(role_names.values()), linked)


def apply(engine: Engine, plan: Plan, *, facts: RequestFacts) -> int:
    """Carry out ``plan``: the tables, then every link and role, in one transaction.
    Returns how many users were linked or changed."""
    if plan.needs_tables:
        migrations.upgrade(engine)
    changed = 0
    with Session(engine) as db:
        for account in plan.users:
            _, did = sync.sync(db, account, facts=facts)
            changed += did
        db.commit()
    return changed
