"""Role inheritance, permissions granted to users directly, the last administrator across
every path, and explain: which role (and which inheritance path) decides, or what is missing."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from flask_aaa.db import writing
from flask_aaa.errors import Conflict, InvalidInput, PermissionDenied
from flask_aaa.models import Role, User
from flask_aaa.services import rbac
from flask_aaa.services.actors import Actor
from tests.services.test_rbac import FACTS, events

pytestmark = pytest.mark.usefixtures("world")


def inherit(session, role, parent, actor=None):
    with writing():
        changed = rbac.add_parent(
            session, actor=actor or Actor.system("t"), role=role, parent=parent, facts=FACTS
        )
        session.commit()
    return changed


def grants(session, user) -> rbac.Grants:
    session.expire_all()
    return rbac.load_grants(session, user.id)


# -- inheritance --


def test_a_role_inherits_its_parents_permissions_transitively(session, world):
    reader = world.role("reader", "notes:read")
    editor = world.role("editor", "notes:write")
    chief = world.role("chief", "notes:delete")
    inherit(session, editor, reader)
    inherit(session, chief, editor)
    carol = world.user("carol", chief)
    held = grants(session, carol)
    assert held.roles == {"chief", "editor", "reader"}
    assert held.permissions == {"notes:read", "notes:write", "notes:delete"}
    assert held.allows("notes:read")
    # The ORM walk (used when no cache is at hand) agrees with the one-query resolution.
    session.expire_all()
    orm = rbac.Grants.of_user(session.get(User, carol.id))
    assert (orm.roles, orm.permissions) == (held.roles, held.permissions)


def test_inheritance_is_one_way(session, world):
    reader = world.role("reader", "notes:read")
    editor = world.role("editor", "notes:write")
    inherit(session, editor, reader)
    rita = world.user("rita", reader)
    assert grants(session, rita).permissions == {"notes:read"}


@pytest.mark.parametrize("length", [1, 2, 4])
def test_cycles_are_refused_with_the_path(session, world, length):
    roles = [world.role(f"r{i}", f"p:{i}") for i in range(length)]
    for child, parent in itertools.pairwise(roles):
        inherit(session, child, parent)
    with pytest.raises(InvalidInput) as caught:
        inherit(session, roles[-1], roles[0])
    assert "cycle" in caught.value.errors["parent"]
    session.rollback()
    assert all(len(r.parents) <= 1 for r in session.scalars(select(Role)))


def test_inheritance_changes_are_audited_with_before_and_after(session, world, engine):
    reader = world.role("reader", "notes:read")
    editor = world.role("editor")
    assert inherit(session, editor, reader)
    assert not inherit(session, editor, reader)  # already
    with writing():
        assert rbac.remove_parent(
            session, actor=Actor.system("t"), role=editor, parent=reader, facts=FACTS
        )
        session.commit()
    added, removed = events(engine, "role.parent_added"), events(engine, "role.parent_removed")
    assert json.loads(added[0].details) == {"parent": "reader", "before": [], "after": ["reader"]}
    assert json.loads(removed[0].details)["after"] == []


def test_z02_nobody_extends_a_role_with_permissions_they_lack(session, world):
    manager = world.role("manager", "aaa:roles:write")
    vault = world.role("vault", "secrets:read")
    target = world.role("target")
    mia = world.user("mia", manager)
    with pytest.raises(PermissionDenied):
        inherit(session, target, vault, actor=Actor.of(mia))
    session.rollback()
    assert session.get(Role, target.id).parents == []


def test_z02_granting_a_role_checks_its_inherited_permissions(session, world):
    assigner = world.role("assigner", "aaa:roles:assign", "notes:read")
    base = world.role("base", "secrets:read")
    friendly = world.role("friendly", "notes:read")
    inherit(session, friendly, base)  # looks harmless, inherits secrets:read
    ann = world.user("ann", assigner)
    bob = world.user("bob")
    with writing(), pytest.raises(PermissionDenied) as caught:
        rbac.grant_role(session, actor=Actor.of(ann), user=bob, role=friendly, facts=FACTS)
    assert "secrets:read" in caught.value.requirement


def test_a_change_in_a_parent_bumps_the_version_and_reaches_the_cache(session, world):
    reader = world.role("reader", "notes:read")
    editor = world.role("editor")
    eve = world.user("eve", editor)
    cache = rbac.GrantsCache()
    version = rbac.current_version(session)
    assert not cache.get(session, eve.id, version).allows("notes:read")
    inherit(session, editor, reader)
    version = rbac.current_version(session)
    assert cache.get(session, eve.id, version).allows("notes:read")


# -- direct permissions --


def test_a_permission_granted_directly_counts_and_is_audited(session, world, engine):
    dan = world.user("dan")
    with writing():
        assert rbac.grant_permission(
            session, actor=Actor.system("t"), user=dan, permission="reports:read", facts=FACTS
        )
        session.commit()
    assert grants(session, dan).allows("reports:read")
    with writing():
        assert rbac.revoke_permission(
            session, actor=Actor.system("t"), user=dan, permission="reports:read", facts=FACTS
        )
        session.commit()
    assert not grants(session, dan).allows("reports:read")
    assert [e.action for e in events(engine, "user.permission_granted")] == [
        "user.permission_granted"
    ]


def test_z02_nobody_grants_directly_what_they_lack(session, world):
    assigner = world.role("assigner", "aaa:roles:assign")
    ann = world.user("ann", assigner)
    bob = world.user("bob")
    with writing(), pytest.raises(PermissionDenied):
        rbac.grant_permission(session, actor=Actor.of(ann), user=bob, permission="*", facts=FACTS)
    assert grants(session, bob).permissions == frozenset()


# -- the last administrator, whatever the path --


@pytest.fixture
def admin_chain(session, world):
    """root has role 'ops', which inherits full administration from 'super'."""
    sup = world.role("super", "*")
    ops = world.role("ops")
    inherit(session, ops, sup)
    root = world.user("root", ops)
    return sup, ops, root


def test_z02_the_last_admin_keeps_an_inherited_superuser(session, admin_chain):
    sup, ops, root = admin_chain
    system = Actor.system("t")
    with writing(), pytest.raises(Conflict):
        rbac.remove_parent(session, actor=system, role=ops, parent=sup, facts=FACTS)
    session.rollback()
    with writing(), pytest.raises(Conflict):
        rbac.revoke_role(session, actor=system, user=root, role=ops, facts=FACTS)
    session.rollback()
    with writing(), pytest.raises(Conflict):
        rbac.remove_permission(session, actor=system, role=sup, permission="*", facts=FACTS)
    session.rollback()
    with writing(), pytest.raises(Conflict):
        rbac.delete_role(session, actor=system, role=sup, facts=FACTS)
    session.rollback()
    assert grants(session, root).allows("anything:at:all")


def test_z02_the_last_admin_keeps_a_direct_superuser(session, world):
    root = world.user("root")
    system = Actor.system("t")
    with writing():
        rbac.grant_permission(session, actor=system, user=root, permission="*", facts=FACTS)
        session.commit()
    with writing(), pytest.raises(Conflict):
        rbac.revoke_permission(session, actor=system, user=root, permission="*", facts=FACTS)
    session.rollback()
    assert rbac.superuser_count(session) == 1


def test_a_second_admin_lets_the_first_go(session, world, admin_chain):
    sup, ops, root = admin_chain
    world.user("deputy", sup)
    with writing():
        assert rbac.revoke_role(session, actor=Actor.system("t"), user=root, role=ops)
        session.commit()
    assert rbac.superuser_count(session) == 1


def test_changes_without_any_admin_are_not_blocked(session, world):
    editor = world.role("editor", "notes:write")
    eve = world.user("eve", editor)
    assert rbac.superuser_count(session) == 0
    with writing():
        assert rbac.revoke_role(session, actor=Actor.system("t"), user=eve, role=editor)
        session.commit()


def test_deleting_a_role_takes_it_from_users_and_children(session, world, engine):
    reader = world.role("reader", "notes:read")
    editor = world.role("editor", "notes:write")
    inherit(session, editor, reader)
    eve = world.user("eve", editor)
    with writing():
        rbac.delete_role(session, actor=Actor.system("t"), role=reader, facts=FACTS)
        session.commit()
    assert grants(session, eve).permissions == {"notes:write"}
    [deleted] = events(engine, "role.deleted")
    assert json.loads(deleted.details)["children"] == ["editor"]


# -- explain --


def test_explain_names_the_inheritance_path(session, world):
    reader = world.role("reader", "notes:*")
    editor = world.role("editor")
    chief = world.role("chief")
    inherit(session, editor, reader)
    inherit(session, chief, editor)
    carl = world.user("carl", chief)
    answer = rbac.explain(session, carl, "notes:write")
    assert answer.allowed
    assert answer.grants[0].via == ("chief", "editor", "reader")
    assert answer.grants[0].grant == "notes:*"
    assert "chief" in answer.reason and "reader" in answer.reason


def test_explain_says_what_is_missing(session, world):
    reader = world.role("reader", "notes:read")
    rita = world.user("rita", reader)
    answer = rbac.explain(session, rita, "notes:delete")
    assert not answer.allowed
    assert answer.near == ("notes:read",)
    assert "notes:delete" in answer.reason
    nobody = world.user("nobody")
    assert "no role" in rbac.explain(session, nobody, "notes:read").reason


def test_explain_a_direct_grant_and_a_disabled_account(session, world):
    dan = world.user("dan")
    with writing():
        rbac.grant_permission(session, actor=Actor.system("t"), user=dan, permission="x:y")
        dan.active = False
        session.commit()
    answer = rbac.explain(session, dan, "x:y")
    assert not answer.allowed
    assert answer.grants[0].via == ()
    assert "disabled" in answer.reason


def test_denials_record_the_reason(session, world, engine):
    reader = world.role("reader", "notes:read")
    rita = world.user("rita", reader)
    with writing(), pytest.raises(PermissionDenied):
        rbac.check(session, Actor.of(rita), ["notes:write"], facts=FACTS)
    [denied] = events(engine, "authz.denied")
    assert json.loads(denied.details)["reason"].startswith("denied: no role")


# -- the one-query resolution agrees with a plain walk, for any role graph --


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(
    edges=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=12),
    held=st.sets(st.integers(0, 5), max_size=3),
)
def test_resolution_matches_a_walk_of_any_acyclic_graph(engine, edges, held):
    with Session(engine) as session, writing():
        for table in ("aaa_user_roles", "aaa_role_parents", "aaa_role_permissions"):
            session.execute(rbac.user_roles.metadata.tables[table].delete())
        session.execute(User.__table__.delete())
        session.execute(Role.__table__.delete())
        roles = [Role(name=f"g{i}") for i in range(6)]
        session.add_all(roles)
        session.flush()
        for i, role in enumerate(roles):
            role.permissions.append(rbac.ensure_permission(session, f"p:{i}"))
        for child, parent in edges:
            if child < parent and roles[parent] not in roles[child].parents:  # acyclic
                roles[child].parents.append(roles[parent])
        user = User(username="u", username_key="u")
        user.roles = [roles[i] for i in held]
        session.add(user)
        session.commit()
        expected = {f"p:{r.id - roles[0].id}" for r in rbac._closure(user.roles)}
        assert rbac.load_grants(session, user.id).permissions == expected
