"""Case 3: a warm permission check, with the same roles, permissions and inheritance for all.

The role graph: ``roles`` roles, each holding ``permissions / roles`` permissions of its own
(``res<i>:act<j>``); role ``i`` inherits from roles ``10i+1 .. 10i+10`` (a tree three levels
deep at 1,000 roles). The user holds the root role only, so through inheritance they hold
every permission: the most a check can have to look through. Each operation checks three
permissions: one of the root role, one of the deepest role, and one nobody holds.

- set lookup (the floor): ``wanted in effective_permissions`` (a frozenset).
- Flask-AAA: the role graph in its database, resolved once by ``load_grants`` (the recursive
  CTE) into the per-process ``GrantsCache``; each check is what a request does: the cache
  lookup for the user at the current authz version, then ``Grants.allows``.
- Flask-Security-Too: ``User.has_permission`` on a user loaded with its roles. It has no role
  inheritance, so the user is given the flattened closure (every role) directly.
- pycasbin: an RBAC model with ``g`` (role links, inheritance included) and one ``p`` line per
  permission; ``Enforcer.enforce(user, resource, action)``, and ``FastEnforcer`` with its
  policy filter on (resource, action).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from ..runner import Case, Contender, Target, at_most, faster_by, format_time, repeated

FANOUT = 10
FULL_SIZES = ((10, 100), (1_000, 100_000))
SHORT_SIZES = ((10, 100), (100, 10_000))

CASBIN_MODEL = """\
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act
"""

USER = "alice"
FLOOR = "set lookup (floor)"
OURS = "Flask-AAA"
FS_TOO = "Flask-Security-Too has_permission"
CASBIN = "pycasbin Enforcer"
CASBIN_FAST = "pycasbin FastEnforcer"


@dataclasses.dataclass(frozen=True)
class RoleGraph:
    roles: int
    permissions: int

    @property
    def per_role(self) -> int:
        return self.permissions // self.roles

    @property
    def label(self) -> str:
        return f"{self.roles:,} roles / {self.permissions:,} permissions"

    def role(self, i: int) -> str:
        return f"role{i}"

    def perms_of(self, i: int) -> list[tuple[str, str]]:
        return [(f"res{i}", f"act{j}") for j in range(self.per_role)]

    def parents_of(self, i: int) -> range:
        """The roles that role ``i`` inherits from."""
        return range(FANOUT * i + 1, min(FANOUT * i + FANOUT + 1, self.roles))

    def all_perms(self) -> list[str]:
        return [f"{r}:{a}" for i in range(self.roles) for r, a in self.perms_of(i)]

    @property
    def wanted(self) -> tuple[tuple[str, str, bool], ...]:
        """(resource, action, held?) of the three checks of one operation."""
        last = self.roles - 1
        return (("res0", "act0", True), (f"res{last}", f"act{self.per_role - 1}", True),
                ("other", "act0", False))  # fmt: skip


def _check_answers(name: str, allows: Any, graph: RoleGraph) -> None:
    for resource, action, held in graph.wanted:
        got = allows(resource, action)
        if got != held:
            raise AssertionError(f"{name} answered {got} for {resource}:{action}")


# -- contenders --


def floor(graph: RoleGraph) -> Contender:
    held = frozenset(graph.all_perms())
    wanted = [f"{r}:{a}" for r, a, _ in graph.wanted]
    a, b, c = wanted
    _check_answers(FLOOR, lambda r, x: f"{r}:{x}" in held, graph)

    def op() -> None:
        _ = a in held
        _ = b in held
        _ = c in held

    return Contender(FLOOR, repeated(op, 3))


def flask_aaa(graph: RoleGraph, workdir: Path) -> tuple[Contender, float]:
    """Our contender, and the time of the cold resolution (one ``load_grants``)."""
    from sqlalchemy import create_engine, insert
    from sqlalchemy.orm import Session

    from flask_aaa.db import configure_engine
    from flask_aaa.models import (
        Base,
        Permission,
        Role,
        User,
        role_parents,
        role_permissions,
        user_roles,
    )
    from flask_aaa.services import rbac

    engine = create_engine(f"sqlite:///{workdir / f'rbac-{graph.roles}.db'}")
    configure_engine(engine)
    Base.metadata.create_all(engine)
    names = graph.all_perms()
    with engine.begin() as db:
        db.execute(insert(Role), [{"id": i + 1, "name": graph.role(i)} for i in range(graph.roles)])
        db.execute(insert(Permission), [{"id": n + 1, "name": p} for n, p in enumerate(names)])
        db.execute(
            insert(role_permissions),
            [
                {"role_id": n // graph.per_role + 1, "permission_id": n + 1}
                for n in range(len(names))
            ],
        )
        links = [(i, p) for i in range(graph.roles) for p in graph.parents_of(i)]
        if links:
            db.execute(
                insert(role_parents), [{"role_id": i + 1, "parent_id": p + 1} for i, p in links]
            )
        db.execute(insert(User), [{"id": 1, "username": USER, "username_key": USER}])
        db.execute(insert(user_roles), [{"user_id": 1, "role_id": 1}])
    session = Session(engine)
    version = rbac.current_version(session)
    start = time.perf_counter()
    cold = rbac.load_grants(session, 1)
    cold_seconds = time.perf_counter() - start
    if len(cold.permissions) != graph.permissions:
        raise AssertionError(f"load_grants found {len(cold.permissions)} permissions")
    cache = rbac.GrantsCache()
    cache.get(session, 1, version)
    _check_answers(OURS, lambda r, a: cache.get(session, 1, version).allows(f"{r}:{a}"), graph)
    a, b, c = (f"{r}:{x}" for r, x, _ in graph.wanted)

    def op() -> None:
        grants = cache.get(session, 1, version)
        grants.allows(a)
        grants.allows(b)
        grants.allows(c)

    return Contender(OURS, repeated(op, 3)), cold_seconds


def flask_security(graph: RoleGraph) -> Contender:
    from flask import Flask
    from sqlalchemy.orm import selectinload

    from ..peers import fs_models

    fs = fs_models()
    app = Flask("fs-bench")
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    fs.db.init_app(app)
    with app.app_context():
        fs.db.create_all()
        roles = [
            fs.Role(name=graph.role(i), permissions=[f"{r}:{a}" for r, a in graph.perms_of(i)])
            for i in range(graph.roles)
        ]
        # No inheritance in Flask-Security-Too: the user gets the whole closure directly.
        user = fs.User(email="alice@example.org", fs_uniquifier="alice", active=True, roles=roles)
        fs.db.session.add(user)
        fs.db.session.commit()
        fs.db.session.expunge_all()
        user = fs.db.session.scalars(
            fs.db.select(fs.User).options(selectinload(fs.User.roles))
        ).one()
        _ = [r.permissions for r in user.roles]
    _check_answers(FS_TOO, lambda r, a: user.has_permission(f"{r}:{a}"), graph)
    a, b, c = (f"{r}:{x}" for r, x, _ in graph.wanted)

    def op() -> None:
        user.has_permission(a)
        user.has_permission(b)
        user.has_permission(c)

    return Contender(FS_TOO, repeated(op, 3))


def pycasbin(graph: RoleGraph, workdir: Path, *, fast: bool) -> Contender:
    import casbin

    model = workdir / "rbac_model.conf"
    model.write_text(CASBIN_MODEL)
    if fast:
        enforcer = casbin.FastEnforcer(str(model), None, cache_key_order=[1, 2])
    else:
        enforcer = casbin.Enforcer(str(model))
    enforcer.add_policies(
        [[graph.role(i), r, a] for i in range(graph.roles) for r, a in graph.perms_of(i)]
    )
    links = [[USER, graph.role(0)]]
    links += [
        [graph.role(i), graph.role(p)] for i in range(graph.roles) for p in graph.parents_of(i)
    ]
    enforcer.add_grouping_policies(links)
    name = CASBIN_FAST if fast else CASBIN
    _check_answers(name, lambda r, a: enforcer.enforce(USER, r, a), graph)
    (r1, a1, _), (r2, a2, _), (r3, a3, _) = graph.wanted

    def op() -> None:
        enforcer.enforce(USER, r1, a1)
        enforcer.enforce(USER, r2, a2)
        enforcer.enforce(USER, r3, a3)

    return Contender(name, repeated(op, 3))


# -- the cases --


def build_size(graph: RoleGraph, workdir: Path, *, peers: bool) -> tuple[Case, Contender]:
    ours, cold = flask_aaa(graph, workdir)
    contenders = [floor(graph), ours]
    targets: list[Target] = [at_most(OURS, FLOOR, 10, "at most 10x the set-lookup floor")]
    if peers:
        contenders += [
            flask_security(graph),
            pycasbin(graph, workdir, fast=False),
            pycasbin(graph, workdir, fast=True),
        ]
        targets += [
            faster_by(OURS, FS_TOO, 3, "at least 3x faster than Flask-Security-Too"),
            faster_by(OURS, CASBIN, 20, "at least 20x faster than pycasbin Enforcer (issue 5)"),
            faster_by(OURS, CASBIN_FAST, 50, "at least 50x faster than pycasbin FastEnforcer"),
        ]
    case = Case(
        title=f"Warm permission check, {graph.label} (per check)",
        contenders=contenders,
        ours=OURS,
        floor=FLOOR,
        targets=targets,
        notes=[
            f"Cold resolution of the user's grants (one `load_grants`, {graph.permissions:,} "
            f"permissions through {graph.roles:,} roles): {format_time(cold)}, once per user "
            "and authz version per worker.",
        ],
    )
    return case, ours


def build(options: Any) -> list[Case]:
    from ..peers import available

    sizes = options.sizes(FULL_SIZES, SHORT_SIZES)
    missing = available("flask_security", "casbin")
    cases: list[Case] = []
    ours_by_size: list[tuple[RoleGraph, Contender]] = []
    for roles, permissions in sizes:
        graph = RoleGraph(roles, permissions)
        case, ours = build_size(graph, options.workdir, peers=missing is None)
        if missing:
            case.notes.append(f"Peers skipped ({missing}).")
        cases.append(case)
        ours_by_size.append((graph, ours))
    (small, ours_small), (large, ours_large) = ours_by_size[0], ours_by_size[-1]
    small_name, large_name = f"{OURS} at {small.label}", f"{OURS} at {large.label}"
    cases.append(
        Case(
            title="Warm permission check: cost against the number of roles (per check)",
            contenders=[
                Contender(small_name, ours_small.sample),
                Contender(large_name, ours_large.sample),
            ],
            ours=large_name,
            floor=small_name,
            targets=[at_most(large_name, small_name, 1.25, "the same cost at both sizes (±25%)")],
        )
    )
    return cases
