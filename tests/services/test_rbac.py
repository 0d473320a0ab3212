"""Roles and permissions: matching, names, delegation limits (Z02), the last administrator,
the authz version and the grants cache, and the audit details of every change."""

from __future__ import annotations

import json
from unittest import mock

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from flask_aaa.db import writing
from flask_aaa.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from flask_aaa.models import AuditEvent, Role, User
from flask_aaa.services import rbac
from flask_aaa.services.actors import Actor, RequestFacts
from tests.conftest import SYSTEM

FACTS = RequestFacts(ip="192.0.2.44", request_id="rbac")


def events(engine, action: str) -> list[AuditEvent]:
    with Session(engine) as other:
        return list(
            other.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            )
        )


def role_names(engine, user: User) -> list[str]:
    """The user's roles as committed, read apart from the test's session."""
    with Session(engine) as other:
        return [r.name for r in other.get(User, user.id).roles]


def permission_names(engine, role: Role) -> list[str]:
    with Session(engine) as other:
        return [p.name for p in other.get(Role, role.id).permissions]


# -- matching --


@pytest.mark.parametrize(
    ("held", "wanted", "expected"),
    [
        ({"notes:read"}, "notes:read", True),
        ({"notes:read"}, "notes:write", False),
        ({"notes:read"}, "notes", False),
        ({"notes:read"}, "notes:read:own", False),
        ({"notes:*"}, "notes:read", True),
        ({"notes:*"}, "notes:read:own", True),
        ({"notes:*"}, "notes", False),  # a final '*' covers what is below, not the node
        ({"notes:read:*"}, "notes:read", False),
        ({"notes:*"}, "notesx:read", False),
        ({"notes:*"}, "other:read", False),
        ({"notes:*"}, "aaa:notes:read", False),
        ({"*"}, "notes:read", True),
        ({"*"}, "aaa:users:write", True),
        ({"aaa:*"}, "aaa:users:write", True),
        ({"aaa:*"}, "aaa:roles:assign", True),
        ({"aaa:users:*"}, "aaa:users:write", True),
        ({"aaa:users:*"}, "aaa:roles:assign", False),
        ({"aaa:users:write"}, "aaa:users:read", False),
        (set(), "notes:read", False),
        ({"notes:read", "tasks:*"}, "tasks:close", True),
    ],
)
def test_permission_matching(held, wanted, expected):
    assert rbac.permission_matches(frozenset(held), wanted) is expected
    assert rbac.Grants(["r"], held).allows(wanted) is expected


def test_grants_answers_are_cached_but_correct():
    grants = rbac.Grants(["editor"], ["notes:*"])
    assert grants.allows("notes:read") is True
    assert grants.allows("notes:read") is True
    assert grants.allows("tasks:read") is False
    assert grants.roles == frozenset({"editor"})


def test_user_grants_reflect_roles(session, world):
    editor = world.role("editor", "notes:*")
    alice = world.user("alice", editor)
    session.expire_all()
    user = session.get(User, alice.id)
    assert user.has_role("editor")
    assert not user.has_role("editor", "admin")
    assert user.has_permission("notes:read", "notes:delete")
    assert not user.has_permission("notes:read", "tasks:read")
    assert Actor.of(user).allows("notes:write")
    assert not Actor.anonymous().allows("notes:read")
    assert SYSTEM.allows("anything:at:all")


# -- names --


@pytest.mark.parametrize(
    "name",
    [
        "",
        " ",
        "Notes:Read",
        "notes::read",
        "notes:*:read",
        "*:read",
        "notes:**",
        "notes read",
        "notes:read;drop",
        ":read",
        "notes:",
        "notes:read\x00",
        "notes:\u0280ead",
        "a" * 129,
    ],
)
def test_invalid_permission_names_refused(name):
    with pytest.raises(InvalidInput) as info:
        rbac.validate_permission_name(name)
    assert set(info.value.errors) == {"permission"}


def test_add_permission_refuses_invalid_names(session, engine, world):
    role = world.role("editor")
    version = rbac.current_version(session)
    for name in ("Notes:Read", "notes:*:read", "*:read", "notes:read;drop"):
        with writing(), pytest.raises(InvalidInput):
            rbac.add_permission(session, actor=SYSTEM, role=role, permission=name)
        session.rollback()
    assert permission_names(engine, role) == []
    assert rbac.current_version(session) == version


@pytest.mark.parametrize("name", ["*", "notes:read", "aaa:users:write", "notes:*", "a.b-c_d:e"])
def test_valid_permission_names(name):
    assert rbac.validate_permission_name(f" {name} ") == name


@pytest.mark.parametrize(
    "name", ["", " ", "-admin", ".admin", "has space", "a" * 65, "ad\nmin", "ad/min", "rôle"]
)
def test_invalid_role_names_refused(name):
    with pytest.raises(InvalidInput) as info:
        rbac.validate_role_name(name)
    assert set(info.value.errors) == {"role"}


def test_create_role_refuses_invalid_names(session):
    for name in ("-admin", "has space", "ad\nmin"):
        with writing(), pytest.raises(InvalidInput):
            rbac.create_role(session, actor=SYSTEM, name=name)
        session.rollback()
    assert session.scalars(select(Role)).all() == []


def test_duplicate_role_is_a_conflict(session, world):
    world.role("editor")
    with writing(), pytest.raises(Conflict):
        rbac.create_role(session, actor=SYSTEM, name="editor")


def test_find_role(session, world):
    world.role("editor")
    assert rbac.find_role(session, " editor ").name == "editor"
    with pytest.raises(NotFound):
        rbac.find_role(session, "nope")


# -- Z02: delegation --


def test_Z02_user_without_roles_assign_cannot_grant_a_role(session, engine, world):
    """A plain user grants itself admin: refused, audited, and nothing changes."""
    admin = world.role("admin", "*")
    mallory = world.user("mallory", world.role("reader", "notes:read"))
    version = rbac.current_version(session)
    with writing(), pytest.raises(PermissionDenied) as info:
        rbac.grant_role(session, actor=Actor.of(mallory), user=mallory, role=admin, facts=FACTS)
    assert info.value.requirement == rbac.ASSIGN_ROLES
    assert role_names(engine, mallory) == ["reader"]
    [denied] = events(engine, "authz.denied")
    assert (denied.actor_id, denied.outcome, denied.ip) == (mallory.id, "denied", FACTS.ip)
    assert denied.target_id == str(mallory.id)
    assert json.loads(denied.details) == {
        "requirement": rbac.ASSIGN_ROLES,
        "reason": "denied: no role and no direct grant covers aaa:roles:assign",
    }
    assert all(json.loads(e.details)["role"] != "admin" for e in events(engine, "role.granted"))
    assert rbac.current_version(session) == version


def test_Z02_delegated_admin_cannot_grant_a_role_beyond_its_rights(session, engine, world):
    delegate = world.user("delegate", world.role("helpdesk", rbac.ASSIGN_ROLES, "notes:read"))
    deleter = world.role("deleter", "notes:read", "notes:delete")
    target = world.user("target")
    with writing(), pytest.raises(PermissionDenied) as info:
        rbac.grant_role(session, actor=Actor.of(delegate), user=target, role=deleter)
    assert info.value.requirement == "notes:delete"
    assert "notes:delete" in info.value.message
    assert role_names(engine, target) == []
    [denied] = events(engine, "authz.denied")
    assert json.loads(denied.details) == {"requirement": "notes:delete"}


def test_Z02_delegated_admin_cannot_grant_a_superuser_role(session, engine, world):
    delegate = world.user("delegate", world.role("helpdesk", rbac.ASSIGN_ROLES, "notes:*"))
    admin = world.role("admin", "*")
    with writing(), pytest.raises(PermissionDenied):
        rbac.grant_role(session, actor=Actor.of(delegate), user=delegate, role=admin)
    assert role_names(engine, delegate) == ["helpdesk"]


def test_Z02_delegated_admin_may_grant_what_it_holds(session, engine, world):
    """Holding ``notes:*`` covers a role with ``notes:delete``: delegation within one's rights."""
    delegate = world.user("delegate", world.role("helpdesk", rbac.ASSIGN_ROLES, "notes:*"))
    deleter = world.role("deleter", "notes:read", "notes:delete")
    target = world.user("target")
    with writing():
        assert rbac.grant_role(session, actor=Actor.of(delegate), user=target, role=deleter)
        session.commit()
    assert role_names(engine, target) == ["deleter"]


def test_Z02_delegated_admin_cannot_revoke_a_role_beyond_its_rights(session, engine, world):
    delegate = world.user("delegate", world.role("helpdesk", rbac.ASSIGN_ROLES))
    target = world.user("target", world.role("deleter", "notes:delete"))
    with writing(), pytest.raises(PermissionDenied):
        rbac.revoke_role(session, actor=Actor.of(delegate), user=target, role=target.roles[0])
    assert role_names(engine, target) == ["deleter"]


def test_Z02_cannot_add_a_permission_it_does_not_hold(session, engine, world):
    delegate = world.user("delegate", world.role("roler", rbac.MANAGE_ROLES, "notes:read"))
    editor = world.role("editor", "notes:read")
    version = rbac.current_version(session)
    for permission in ("notes:delete", "notes:*", "*"):
        with writing(), pytest.raises(PermissionDenied):
            rbac.add_permission(
                session, actor=Actor.of(delegate), role=editor, permission=permission
            )
    assert permission_names(engine, editor) == ["notes:read"]
    assert len(events(engine, "authz.denied")) == 3
    assert rbac.current_version(session) == version


def test_Z02_cannot_add_a_permission_to_its_own_role(session, engine, world):
    """A role manager who can edit the role it holds still cannot widen it."""
    roler = world.role("roler", rbac.MANAGE_ROLES)
    delegate = world.user("delegate", roler)
    with writing(), pytest.raises(PermissionDenied):
        rbac.add_permission(session, actor=Actor.of(delegate), role=roler, permission="*")
    assert permission_names(engine, roler) == [rbac.MANAGE_ROLES]


def test_Z02_role_changes_need_roles_write(session, engine, world):
    plain = world.user("plain", world.role("reader", "notes:read"))
    with writing(), pytest.raises(PermissionDenied) as info:
        rbac.create_role(session, actor=Actor.of(plain), name="mine")
    assert info.value.requirement == rbac.MANAGE_ROLES
    assert session.scalar(select(Role).where(Role.name == "mine")) is None


def test_Z02_anonymous_actor_is_denied(session, engine, world):
    target = world.user("target")
    admin = world.role("admin", "*")
    with writing(), pytest.raises(PermissionDenied):
        rbac.grant_role(session, actor=Actor.anonymous(), user=target, role=admin)
    [denied] = events(engine, "authz.denied")
    assert denied.actor_type == "anonymous"


def test_check_any_and_all_modes(session, engine, world):
    reader = world.user("reader", world.role("reader", "notes:read"))
    actor = Actor.of(reader)
    rbac.check(session, actor, ["notes:read"])
    rbac.check(session, actor, ["notes:read", "notes:write"], mode="any")
    with pytest.raises(PermissionDenied) as info:
        rbac.check(session, actor, ["notes:read", "notes:write"])
    assert info.value.requirement == "notes:write"
    with pytest.raises(PermissionDenied) as info:
        rbac.check(session, actor, ["tasks:read", "notes:write"], mode="any")
    assert info.value.requirement == "tasks:read or notes:write"
    assert len(events(engine, "authz.denied")) == 2


# -- the last administrator --


def test_revoking_the_only_superuser_role_is_a_conflict(session, engine, world):
    admin = world.role("admin", "*")
    root = world.user("root", admin)
    with writing(), pytest.raises(Conflict):
        rbac.revoke_role(session, actor=SYSTEM, user=root, role=admin)
    session.rollback()
    assert role_names(engine, root) == ["admin"]


def test_removing_star_from_the_only_admin_role_is_a_conflict(session, engine, world):
    admin = world.role("admin", "*")
    world.user("root", admin)
    with writing(), pytest.raises(Conflict):
        rbac.remove_permission(session, actor=SYSTEM, role=admin, permission="*")
    session.rollback()
    assert permission_names(engine, admin) == ["*"]


def test_with_two_admins_one_can_lose_the_role(session, engine, world):
    admin = world.role("admin", "*")
    root = world.user("root", admin)
    other = world.user("other", admin)
    with writing():
        assert rbac.revoke_role(session, actor=Actor.of(root), user=other, role=admin)
        session.commit()
    assert role_names(engine, other) == []
    with writing(), pytest.raises(Conflict):
        rbac.revoke_role(session, actor=Actor.of(root), user=root, role=admin)


def test_star_can_leave_a_role_when_another_role_keeps_an_admin(session, engine, world):
    admin = world.role("admin", "*")
    owners = world.role("owners", "*")
    world.user("root", admin)
    world.user("owner", owners)
    with writing():
        assert rbac.remove_permission(session, actor=SYSTEM, role=admin, permission="*")
        session.commit()
    assert permission_names(engine, admin) == []


def test_inactive_admins_do_not_count(session, world):
    admin = world.role("admin", "*")
    root = world.user("root", admin)
    sleeper = world.user("sleeper", admin)
    with writing():
        sleeper.active = False
        session.commit()
    with writing(), pytest.raises(Conflict):
        rbac.revoke_role(session, actor=SYSTEM, user=root, role=admin)


def test_admins_remain_without(session, world):
    admin = world.role("admin", "*")
    root = world.user("root", admin)
    assert rbac.admins_remain_without(session, root) is False
    other = world.user("other", admin)
    assert rbac.admins_remain_without(session, root) is True
    assert rbac.admins_remain_without(session, other) is True
    assert rbac.is_superuser(rbac.load_grants(session, root.id))


# -- the authz version --


def test_every_change_bumps_the_authz_version(session, world):
    editor = world.role("editor")
    alice = world.user("alice")
    changes = [
        lambda: rbac.add_permission(session, actor=SYSTEM, role=editor, permission="notes:read"),
        lambda: rbac.grant_role(session, actor=SYSTEM, user=alice, role=editor),
        lambda: rbac.remove_permission(session, actor=SYSTEM, role=editor, permission="notes:read"),
        lambda: rbac.revoke_role(session, actor=SYSTEM, user=alice, role=editor),
    ]
    for change in changes:
        before = rbac.current_version(session)
        with writing():
            assert change() is True
            session.commit()
        assert rbac.current_version(session) == before + 1


def test_no_op_changes_do_not_bump_the_version(session, world):
    editor = world.role("editor", "notes:read")
    alice = world.user("alice", editor)
    before = rbac.current_version(session)
    with writing():
        assert (
            rbac.add_permission(session, actor=SYSTEM, role=editor, permission="notes:read")
            is False
        )
        assert rbac.grant_role(session, actor=SYSTEM, user=alice, role=editor) is False
        assert rbac.remove_permission(session, actor=SYSTEM, role=editor, permission="x:y") is False
        session.commit()
    assert rbac.current_version(session) == before
    assert rbac.revoke_role(session, actor=SYSTEM, user=world.user("bob"), role=editor) is False


def test_a_rolled_back_change_leaves_the_version(session, world):
    editor = world.role("editor")
    before = rbac.current_version(session)
    with writing():
        rbac.add_permission(session, actor=SYSTEM, role=editor, permission="notes:read")
        session.rollback()
    assert rbac.current_version(session) == before


# -- the grants cache --


def test_grants_cache_serves_the_same_version_without_loading(session, world):
    alice = world.user("alice", world.role("editor", "notes:read"))
    cache = rbac.GrantsCache()
    version = rbac.current_version(session)
    first = cache.get(session, alice.id, version)
    with mock.patch.object(rbac, "load_grants", wraps=rbac.load_grants) as load:
        again = cache.get(session, alice.id, version)
    assert again is first
    load.assert_not_called()
    assert first.allows("notes:read")


def test_grants_cache_reloads_on_a_new_version(session, world):
    editor = world.role("editor", "notes:read")
    alice = world.user("alice", editor)
    cache = rbac.GrantsCache()
    old = cache.get(session, alice.id, rbac.current_version(session))
    with writing():
        rbac.add_permission(session, actor=SYSTEM, role=editor, permission="notes:write")
        session.commit()
    assert cache.get(session, alice.id, rbac.current_version(session) - 1) is old
    new = cache.get(session, alice.id, rbac.current_version(session))
    assert new is not old
    assert new.allows("notes:write") and not old.allows("notes:write")


def test_grants_cache_is_per_user_and_can_be_cleared(session, world):
    alice = world.user("alice", world.role("editor", "notes:read"))
    bob = world.user("bob")
    cache = rbac.GrantsCache(max_entries=1)
    version = rbac.current_version(session)
    assert cache.get(session, alice.id, version).roles == {"editor"}
    assert cache.get(session, bob.id, version).roles == frozenset()
    first = cache.get(session, alice.id, version)
    cache.clear()
    assert cache.get(session, alice.id, version) is not first


def test_load_grants_includes_roles_without_permissions(session, world):
    alice = world.user("alice", world.role("empty"), world.role("editor", "notes:*"))
    grants = rbac.load_grants(session, alice.id)
    assert grants.roles == {"empty", "editor"}
    assert grants.permissions == {"notes:*"}


# -- audit details --


def test_role_changes_record_before_and_after(session, engine, world):
    editor = world.role("editor", "notes:read")
    reader = world.role("reader")
    alice = world.user("alice", reader)
    with writing():
        rbac.add_permission(session, actor=SYSTEM, role=editor, permission="notes:write")
        rbac.grant_role(session, actor=SYSTEM, user=alice, role=editor, facts=FACTS)
        rbac.remove_permission(session, actor=SYSTEM, role=editor, permission="notes:read")
        rbac.revoke_role(session, actor=SYSTEM, user=alice, role=reader)
        session.commit()
    added = events(engine, "role.permission_added")[-1]
    assert json.loads(added.details) == {
        "permission": "notes:write",
        "before": ["notes:read"],
        "after": ["notes:read", "notes:write"],
    }
    assert (added.target_type, added.target_label) == ("role", "editor")
    granted = events(engine, "role.granted")[-1]
    assert json.loads(granted.details) == {
        "role": "editor",
        "before": ["reader"],
        "after": ["editor", "reader"],
    }
    assert (granted.target_type, granted.target_id, granted.ip) == (
        "user",
        str(alice.id),
        FACTS.ip,
    )
    removed = events(engine, "role.permission_removed")[-1]
    assert json.loads(removed.details) == {
        "permission": "notes:read",
        "before": ["notes:read", "notes:write"],
        "after": ["notes:write"],
    }
    revoked = events(engine, "role.revoked")[-1]
    assert json.loads(revoked.details) == {
        "role": "reader",
        "before": ["editor", "reader"],
        "after": ["editor"],
    }
    assert role_names(engine, alice) == ["editor"]


def test_role_created_is_audited(session, engine):
    with writing():
        rbac.create_role(session, actor=SYSTEM, name="editor", description="  Edits  ")
        session.commit()
    [event] = events(engine, "role.created")
    assert (event.actor_type, event.actor_name, event.target_label) == ("system", "tests", "editor")
    assert rbac.find_role(session, "editor").description == "Edits"
