"""Black-box tests of the administration pages: function-level checks (Z07), no delegation
beyond one's own rights and the last administrator (Z02), CSRF and methods (Z05), the audit
trail listing, export and verification, SQL injection (L01) and escaping (L02) in it, and
the audit trail failing closed (L08)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask, url_for
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import OperationalError

import flask_aaa.services.audit as audit_service
from flask_aaa.db import writing
from flask_aaa.models import AuditEvent, Role, User
from tests.conftest import csrf_token, ensure_role, fresh, login, post, post_json

JSON = {"Accept": "application/json"}

#: Every admin endpoint and the permission that guards it.
ADMIN_ENDPOINTS = {
    "aaa_admin.users": "aaa:users:read",
    "aaa_admin.user_detail": "aaa:users:read",
    "aaa_admin.grant_role": "aaa:roles:assign",
    "aaa_admin.revoke_role": "aaa:roles:assign",
    "aaa_admin.set_active": "aaa:users:write",
    "aaa_admin.roles": "aaa:users:read",
    "aaa_admin.create_role": "aaa:roles:write",
    "aaa_admin.add_permission": "aaa:roles:write",
    "aaa_admin.remove_permission": "aaa:roles:write",
    "aaa_admin.audit_trail": "aaa:audit:read",
    "aaa_admin.audit_export": "aaa:audit:read",
    "aaa_admin.audit_export_csv": "aaa:audit:read",
    "aaa_admin.audit_verify": "aaa:audit:read",
    "aaa_admin.revoke_sessions": "aaa:users:write",
    "aaa_admin.unlock": "aaa:users:write",
    "aaa_admin.reset_mfa": "aaa:users:write",
    "aaa_admin.create_service_account": "aaa:users:write",
    "aaa_admin.mint_token": "aaa:users:write",
    "aaa_admin.revoke_token": "aaa:users:write",
    "aaa_admin.dashboard": "aaa:audit:read",
    "aaa_admin.create_user": "aaa:users:write",
    "aaa_admin.grant_permission": "aaa:roles:assign",
    "aaa_admin.revoke_permission": "aaa:roles:assign",
    "aaa_admin.revoke_session": "aaa:users:write",
    "aaa_admin.role_detail": "aaa:users:read",
    "aaa_admin.add_parent": "aaa:roles:write",
    "aaa_admin.remove_parent": "aaa:roles:write",
    "aaa_admin.delete_role": "aaa:roles:write",
    "aaa_admin.permissions": "aaa:users:read",
    "aaa_admin.explain": "aaa:users:read",
    "aaa_admin.audit_event": "aaa:audit:read",
}

#: Fields that would make each POST endpoint change something if it were allowed.
POST_FIELDS = {
    "aaa_admin.revoke_sessions": {},
    "aaa_admin.unlock": {},
    "aaa_admin.reset_mfa": {},
    "aaa_admin.grant_role": {"role": "admin"},
    "aaa_admin.revoke_role": {"role": "editor"},
    "aaa_admin.set_active": {"active": "0"},
    "aaa_admin.create_role": {"name": "intruders", "description": "x"},
    "aaa_admin.add_permission": {"permission": "notes:read"},
    "aaa_admin.remove_permission": {"permission": "notes:write"},
    "aaa_admin.audit_verify": {},
    "aaa_admin.create_service_account": {"name": "intruder-bot"},
    "aaa_admin.mint_token": {"name": "stolen", "scopes": "notes:read"},
    "aaa_admin.revoke_token": {},
    "aaa_admin.create_user": {"username": "intruder", "password": "plum-harbor-violin-42"},
    "aaa_admin.grant_permission": {"permission": "*"},
    "aaa_admin.revoke_permission": {"permission": "notes:read"},
    "aaa_admin.revoke_session": {},
    "aaa_admin.add_parent": {"parent": "admin"},
    "aaa_admin.remove_parent": {"parent": "admin"},
    "aaa_admin.delete_role": {"confirm": "editor"},
}

POST_ONLY_PATHS = [
    "/admin/users/{id}/roles",
    "/admin/users/{id}/roles/revoke",
    "/admin/users/{id}/active",
    "/admin/roles/editor/permissions",
    "/admin/roles/editor/permissions/remove",
    "/admin/audit/verify",
    "/admin/users/{id}/sessions/revoke",
    "/admin/users/{id}/unlock",
    "/admin/users/{id}/mfa/reset",
    "/admin/service-accounts",
    "/admin/users/{id}/tokens",
    "/admin/tokens/1/revoke",
    "/admin/users",
    "/admin/users/{id}/permissions",
    "/admin/users/{id}/permissions/revoke",
    "/admin/users/{id}/sessions/1/revoke",
    "/admin/roles/editor/parents",
    "/admin/roles/editor/parents/remove",
    "/admin/roles/editor/delete",
]


# -- helpers --


def events(db: Any, action: str | None = None, *, after: int = 0) -> list[AuditEvent]:
    """Events (oldest first), optionally of one action and after seq ``after``."""
    stmt = select(AuditEvent).where(AuditEvent.seq > after).order_by(AuditEvent.seq)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == action)
    return list(fresh(db).scalars(stmt))


def event_count(db: Any) -> int:
    return int(fresh(db).scalar(select(func.count()).select_from(AuditEvent)) or 0)


def last_seq(db: Any) -> int:
    """The newest event's seq: a mark to ignore what the fixtures recorded."""
    return int(fresh(db).scalar(select(func.max(AuditEvent.seq))) or 0)


def roles_of(db: Any, username: str) -> list[str]:
    user = fresh(db).scalar(select(User).where(User.username == username))
    return sorted(r.name for r in user.roles)


def perms_of(db: Any, role: str) -> list[str]:
    found = fresh(db).scalar(select(Role).where(Role.name == role))
    return sorted(p.name for p in found.permissions)


def is_active(db: Any, username: str) -> bool:
    return bool(fresh(db).scalar(select(User.active).where(User.username == username)))


def snapshot(db: Any) -> Any:
    """Everything an admin endpoint could change, for before/after comparisons."""
    session = fresh(db)
    users = [
        (u.username, u.active, sorted(r.name for r in u.roles))
        for u in session.scalars(select(User).order_by(User.id))
    ]
    roles = [
        (r.name, r.description, sorted(p.name for p in r.permissions))
        for r in session.scalars(select(Role).order_by(Role.name))
    ]
    return users, roles


def details(event_: AuditEvent) -> dict[str, Any]:
    return json.loads(event_.details)


def admin_urls(app: Flask, user_id: int, role: str = "editor") -> list[tuple[str, str, str]]:
    """(endpoint, method, url) of every rule of the admin blueprint."""
    out = []
    with app.test_request_context():
        for rule in app.url_map.iter_rules():
            if not rule.endpoint.startswith("aaa_admin."):
                continue
            args = {"user_id": user_id, "name": role, "token_id": 1, "session_id": 1, "seq": 1}
            url = url_for(rule.endpoint, **{k: args[k] for k in rule.arguments})
            method = "GET" if "GET" in (rule.methods or ()) else "POST"
            out.append((rule.endpoint, method, url))
    return out


@pytest.fixture
def world(make_user: Any, admin: User) -> dict[str, User]:
    """An administrator (root), a plain user (mallory), and bob, an editor who can write."""
    return {
        "root": admin,
        "mallory": make_user("mallory"),
        "bob": make_user("bob", roles=["editor"], perms={"editor": ["notes:read", "notes:write"]}),
    }


def as_admin(client: Any) -> None:
    assert login(client, "root").status_code == 303


# -- Z07: every admin endpoint checks the caller's function-level rights --


def test_Z07_admin_endpoint_list_is_the_one_tested(app):
    """A new admin endpoint must be added to ADMIN_ENDPOINTS (and so to the tests below)."""
    found = {
        rule.endpoint for rule in app.url_map.iter_rules() if rule.endpoint.startswith("aaa_admin.")
    }
    assert found == set(ADMIN_ENDPOINTS)


def test_Z07_plain_user_is_refused_on_every_admin_endpoint_and_each_denial_is_audited(
    app, client, db, world
):
    """Each admin endpoint, as a browser and as a JSON client: 403, one ``authz.denied``
    event per call naming the endpoint's permission, and nothing changed."""
    assert login(client, "mallory").status_code == 303
    before_state = snapshot(db)
    for endpoint, method, url in admin_urls(app, world["bob"].id):
        mark = last_seq(db)
        if method == "GET":
            responses = [client.get(url), client.get(url, headers=JSON)]
        else:
            fields = POST_FIELDS[endpoint]
            responses = [post(client, url, fields), post_json(client, url, fields)]
        assert [r.status_code for r in responses] == [403, 403], url
        assert responses[0].mimetype == "text/html"
        assert responses[1].get_json()["error"] == "permission_denied"
        denied = events(db, after=mark)
        assert [e.action for e in denied] == ["authz.denied", "authz.denied"], url
        assert {e.outcome for e in denied} == {"denied"}
        assert {e.actor_id for e in denied} == {world["mallory"].id}
        assert {details(e)["requirement"] for e in denied} == {ADMIN_ENDPOINTS[endpoint]}, url
    assert snapshot(db) == before_state


def test_Z07_holding_one_admin_permission_opens_only_its_pages(client, db, make_user, world):
    make_user("auditor", roles=["auditors"], perms={"auditors": ["aaa:audit:read"]})
    assert login(client, "auditor").status_code == 303
    assert client.get("/admin/audit", headers=JSON).status_code == 200
    assert client.get("/admin/", headers=JSON).status_code == 403
    assert client.get("/admin/roles", headers=JSON).status_code == 403
    assert (
        post(client, f"/admin/users/{world['bob'].id}/active", {"active": "0"}).status_code == 403
    )
    assert is_active(db, "bob")


def test_Z07_anonymous_is_sent_to_login_on_every_admin_endpoint(app, client, db, world):
    before = event_count(db)
    token = csrf_token(client)
    for endpoint, method, url in admin_urls(app, world["bob"].id):
        if method == "GET":
            response = client.get(url)
            assert response.status_code == 303, url
            assert urlsplit(response.headers["Location"]).path == "/auth/login"
            response = client.get(url, headers=JSON)
        else:
            response = client.post(url, data={**POST_FIELDS[endpoint], "csrf_token": token})
            assert response.status_code == 303, url
            assert urlsplit(response.headers["Location"]).path == "/auth/login"
            response = client.post(
                url, json=POST_FIELDS[endpoint], headers={**JSON, "X-CSRFToken": token}
            )
        assert response.status_code == 401, (url, response.status_code)
        assert response.get_json()["error"] == "login_required"
    assert event_count(db) == before


# -- Z02: no delegation beyond one's own rights; the last administrator is kept --


@pytest.fixture
def delegate(make_user: Any, world: dict[str, User]) -> User:
    """May assign roles and write roles, and reads notes, but does not hold ``*``."""
    return make_user(
        "deleg",
        roles=["helpdesk"],
        perms={"helpdesk": ["aaa:roles:assign", "aaa:roles:write", "aaa:users:read", "notes:read"]},
    )


def test_Z02_delegate_cannot_grant_admin_to_self(client, db, delegate):
    assert login(client, "deleg").status_code == 303
    mark = last_seq(db)
    url = f"/admin/users/{delegate.id}/roles"
    assert post(client, url, {"role": "admin"}).status_code == 403
    response = post_json(client, url, {"role": "admin"})
    assert response.status_code == 403
    assert response.get_json()["error"] == "permission_denied"
    assert roles_of(db, "deleg") == ["helpdesk"]
    assert events(db, "role.granted", after=mark) == []
    denied = events(db, "authz.denied", after=mark)
    assert len(denied) == 2
    assert all(details(e)["requirement"] == "*" for e in denied)


def test_Z02_delegate_cannot_grant_admin_to_others(client, db, delegate, world):
    assert login(client, "deleg").status_code == 303
    mark = last_seq(db)
    url = f"/admin/users/{world['mallory'].id}/roles"
    assert post(client, url, {"role": "admin"}).status_code == 403
    assert post_json(client, url, {"role": "admin"}).status_code == 403
    assert roles_of(db, "mallory") == []
    assert events(db, "role.granted", after=mark) == []


def test_Z02_delegate_cannot_grant_a_role_with_a_permission_they_lack(client, db, delegate):
    """``editor`` holds notes:write, which the delegate does not."""
    assert login(client, "deleg").status_code == 303
    mark = last_seq(db)
    url = f"/admin/users/{delegate.id}/roles"
    assert post(client, url, {"role": "editor"}).status_code == 403
    assert roles_of(db, "deleg") == ["helpdesk"]
    (denied,) = events(db, "authz.denied", after=mark)
    assert details(denied)["requirement"] == "notes:write"


def test_Z02_delegate_can_grant_a_role_within_own_rights(client, db, delegate, world):
    """The control: the refusals above are about rights, not about the endpoint."""
    with writing():
        session = fresh(db)
        ensure_role(session, "reader", ["notes:read"])
        session.commit()
    assert login(client, "deleg").status_code == 303
    response = post(client, f"/admin/users/{world['mallory'].id}/roles", {"role": "reader"})
    assert response.status_code == 303
    assert roles_of(db, "mallory") == ["reader"]


def test_Z02_delegate_cannot_revoke_the_admin_role(client, db, delegate, world):
    assert login(client, "deleg").status_code == 303
    response = post(client, f"/admin/users/{world['root'].id}/roles/revoke", {"role": "admin"})
    assert response.status_code == 403
    assert roles_of(db, "root") == ["admin"]


def test_Z02_delegate_cannot_add_a_permission_they_do_not_hold(client, db, delegate):
    assert login(client, "deleg").status_code == 303
    mark = last_seq(db)
    for permission in ("notes:delete", "*", "aaa:users:write", "notes:*"):
        for role in ("helpdesk", "editor"):
            url = f"/admin/roles/{role}/permissions"
            assert post(client, url, {"permission": permission}).status_code == 403
            assert post_json(client, url, {"permission": permission}).status_code == 403
    assert perms_of(db, "editor") == ["notes:read", "notes:write"]
    assert perms_of(db, "helpdesk") == sorted(
        ["aaa:roles:assign", "aaa:roles:write", "aaa:users:read", "notes:read"]
    )
    assert events(db, "role.permission_added", after=mark) == []
    assert len(events(db, "authz.denied", after=mark)) == 16


def test_Z02_delegate_can_add_a_permission_they_hold(client, db, delegate):
    assert login(client, "deleg").status_code == 303
    response = post(client, "/admin/roles/editor/permissions", {"permission": "aaa:users:read"})
    assert response.status_code == 303
    assert "aaa:users:read" in perms_of(db, "editor")


def test_Z02_last_admin_cannot_be_revoked(client, db, world):
    as_admin(client)
    mark = last_seq(db)
    url = f"/admin/users/{world['root'].id}/roles/revoke"
    response = post_json(client, url, {"role": "admin"})
    assert response.status_code == 409
    assert response.get_json()["error"] == "conflict"
    assert post(client, url, {"role": "admin"}).status_code == 409
    assert roles_of(db, "root") == ["admin"]
    assert events(db, "role.revoked", after=mark) == []
    assert client.get("/admin/", headers=JSON).status_code == 200


def test_Z02_last_admin_cannot_be_disabled(client, db, world):
    as_admin(client)
    mark = last_seq(db)
    url = f"/admin/users/{world['root'].id}/active"
    assert post(client, url, {"active": "0"}).status_code == 409
    assert post_json(client, url, {"active": "0"}).status_code == 409
    assert is_active(db, "root")
    assert events(db, "user.disabled", after=mark) == []
    assert client.get("/admin/", headers=JSON).status_code == 200


def test_Z02_superuser_permission_cannot_be_removed_from_the_last_admin_role(client, db, world):
    as_admin(client)
    response = post(client, "/admin/roles/admin/permissions/remove", {"permission": "*"})
    assert response.status_code == 409
    assert perms_of(db, "admin") == ["*"]


def test_Z02_an_admin_can_be_revoked_while_another_remains(client, db, make_user, world):
    make_user("root2", roles=["admin"])
    as_admin(client)
    response = post(client, f"/admin/users/{world['root'].id}/roles/revoke", {"role": "admin"})
    assert response.status_code == 303
    assert roles_of(db, "root") == []
    # the change applies to the very next request of the (former) administrator
    assert client.get("/admin/", headers=JSON).status_code == 403


def test_Z02_admin_grants_a_role_through_the_form(client, db, world):
    as_admin(client)
    mark = last_seq(db)
    user_id = world["mallory"].id
    response = post(client, f"/admin/users/{user_id}/roles", {"role": "editor"})
    assert response.status_code == 303
    assert urlsplit(response.headers["Location"]).path == f"/admin/users/{user_id}"
    assert roles_of(db, "mallory") == ["editor"]
    (granted,) = events(db, "role.granted", after=mark)
    assert granted.outcome == "success"
    assert granted.actor_id == world["root"].id
    assert granted.target_type == "user"
    assert granted.target_id == str(user_id)
    assert details(granted) == {"role": "editor", "before": [], "after": ["editor"]}


def test_Z02_admin_grants_a_role_through_the_json_api(client, db, world):
    as_admin(client)
    mark = last_seq(db)
    response = post_json(client, f"/admin/users/{world['bob'].id}/roles", {"role": "admin"})
    assert response.status_code == 200
    assert response.get_json()["ok"] is True
    assert roles_of(db, "bob") == ["admin", "editor"]
    (granted,) = events(db, "role.granted", after=mark)
    assert details(granted) == {"role": "admin", "before": ["editor"], "after": ["admin", "editor"]}


def test_Z02_granting_a_held_role_again_changes_nothing(client, db, world):
    as_admin(client)
    mark = last_seq(db)
    response = post_json(client, f"/admin/users/{world['bob'].id}/roles", {"role": "editor"})
    assert response.status_code == 200
    assert roles_of(db, "bob") == ["editor"]
    assert events(db, "role.granted", after=mark) == []


def test_Z02_admin_revokes_a_role_and_the_event_records_before_after(client, db, world):
    as_admin(client)
    mark = last_seq(db)
    response = post(client, f"/admin/users/{world['bob'].id}/roles/revoke", {"role": "editor"})
    assert response.status_code == 303
    assert roles_of(db, "bob") == []
    (revoked,) = events(db, "role.revoked", after=mark)
    assert details(revoked) == {"role": "editor", "before": ["editor"], "after": []}


def test_admin_disables_a_user_whose_next_request_is_anonymous(app, client, db, world):
    bob = app.test_client()
    assert login(bob, "bob").status_code == 303
    assert bob.get("/notes").status_code == 200
    as_admin(client)
    mark = last_seq(db)
    response = post(client, f"/admin/users/{world['bob'].id}/active", {"active": "0"})
    assert response.status_code == 303
    assert not is_active(db, "bob")
    assert bob.get("/notes", headers=JSON).status_code == 401
    (disabled,) = events(db, "user.disabled", after=mark)
    assert disabled.actor_id == world["root"].id


def test_admin_unknown_user_and_role_are_404(client, db, world):
    as_admin(client)
    assert client.get("/admin/users/9999", headers=JSON).status_code == 404
    response = post_json(client, "/admin/users/9999/roles", {"role": "editor"})
    assert response.status_code == 404
    response = post_json(client, f"/admin/users/{world['bob'].id}/roles", {"role": "nope"})
    assert response.status_code == 404
    assert (
        post_json(client, "/admin/roles/nope/permissions", {"permission": "a:b"}).status_code == 404
    )


BAD_FIELDS = [
    ("/admin/users/{id}/active", {"active": "yes"}, "active"),
    ("/admin/users/{id}/active", {"active": 1}, "active"),
    ("/admin/users/{id}/roles", {}, "role"),
    ("/admin/users/{id}/roles", {"role": ["admin"]}, "role"),
    ("/admin/roles", {"name": "bad name!"}, "role"),
    ("/admin/roles/editor/permissions", {"permission": "Notes:READ"}, "permission"),
]


def test_admin_bad_fields_are_400_with_field_errors(client, db, world):
    as_admin(client)
    before = snapshot(db)
    for url, body, field in BAD_FIELDS:
        response = post_json(client, url.format(id=world["bob"].id), body)
        assert response.status_code == 400, (url, body)
        assert field in response.get_json()["fields"], (url, body)
    assert snapshot(db) == before


def test_admin_creates_a_role_once(client, db, world):
    as_admin(client)
    mark = last_seq(db)
    assert (
        post(client, "/admin/roles", {"name": "auditors", "description": "read"}).status_code == 303
    )
    assert post_json(client, "/admin/roles", {"name": "auditors"}).status_code == 409
    (created,) = events(db, "role.created", after=mark)
    assert created.target_label == "auditors"


# -- Z05: CSRF and methods --


def _post_only_urls(world: dict[str, User]) -> list[tuple[str, dict[str, str]]]:
    bob = world["bob"].id
    return [
        (f"/admin/users/{bob}/roles", {"role": "admin"}),
        (f"/admin/users/{bob}/roles/revoke", {"role": "editor"}),
        (f"/admin/users/{bob}/active", {"active": "0"}),
        ("/admin/roles", {"name": "sneaky"}),
        ("/admin/roles/editor/permissions", {"permission": "aaa:users:write"}),
        ("/admin/roles/editor/permissions/remove", {"permission": "notes:write"}),
        ("/admin/audit/verify", {}),
    ]


def test_Z05_admin_posts_without_csrf_are_400_and_change_nothing(client, db, world):
    as_admin(client)
    before_state, before_events = snapshot(db), event_count(db)
    for url, fields in _post_only_urls(world):
        for response in (
            client.post(url, data=fields),
            client.post(url, data={**fields, "csrf_token": "not-the-token"}),
            client.post(url, json=fields, headers=JSON),
            client.post(url, json=fields, headers={**JSON, "X-CSRFToken": "forged"}),
        ):
            assert response.status_code == 400, (url, response.status_code)
        assert client.post(url, json=fields, headers=JSON).get_json()["error"] == "csrf_failed"
    assert snapshot(db) == before_state
    assert event_count(db) == before_events


def test_Z05_csrf_token_of_another_session_is_refused(app, client, db, world):
    other = app.test_client()
    foreign = csrf_token(other)
    as_admin(client)
    before = snapshot(db)
    url = f"/admin/users/{world['mallory'].id}/roles"
    assert client.post(url, data={"role": "admin", "csrf_token": foreign}).status_code == 400
    assert snapshot(db) == before


def test_Z05_csrf_token_from_before_login_is_refused_after_login(client, db, world):
    """Login starts a fresh cookie session, so a token planted before it is worthless."""
    planted = csrf_token(client)
    as_admin(client)
    url = f"/admin/users/{world['mallory'].id}/roles"
    response = client.post(url, json={"role": "admin"}, headers={"X-CSRFToken": planted})
    assert response.status_code == 400
    assert roles_of(db, "mallory") == []


def test_Z05_get_on_a_post_only_admin_endpoint_is_405(client, db, world):
    as_admin(client)
    before = snapshot(db)
    for path in POST_ONLY_PATHS:
        url = path.format(id=world["bob"].id)
        assert client.get(url).status_code == 405, url
        response = client.get(url, headers=JSON)
        assert response.status_code == 405, url
        assert response.get_json()["error"] == "method_not_allowed"
        assert "POST" in response.headers.get("Allow", "")
    assert snapshot(db) == before


# -- the audit trail: filters, pagination, export, verification --


@pytest.fixture
def trail(app: Flask, client: Any, world: dict[str, User]) -> dict[str, User]:
    """Logins of mallory and bob, a denial of mallory, a note by bob, a failed sign-in on
    bob's account, then the admin signed in on ``client``."""
    for name in ("mallory", "bob"):
        other = app.test_client()
        assert login(other, name).status_code == 303
        if name == "mallory":
            assert other.get("/notes", headers=JSON).status_code == 403
        else:
            assert post(other, "/notes").status_code == 201
    assert login(app.test_client(), "bob", "wrong-password-123456").status_code == 401
    as_admin(client)
    return world


def audit_json(client: Any, **query: str) -> dict[str, Any]:
    response = client.get("/admin/audit", query_string=query, headers=JSON)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return response.get_json()


def test_admin_audit_lists_newest_first(client, db, trail):
    seqs = [e["seq"] for e in audit_json(client)["events"]]
    assert seqs == sorted(seqs, reverse=True)
    assert len(seqs) == event_count(db)


@pytest.mark.parametrize("by", ["username", "id"])
def test_admin_audit_filter_by_user(client, db, trail, by):
    bob = trail["bob"]
    value = "bob" if by == "username" else f"#{bob.id}"
    got = audit_json(client, user=value)["events"]
    expected = [e.seq for e in events(db) if e.actor_id == bob.id]
    assert [e["seq"] for e in got] == sorted(expected, reverse=True)
    assert [e["action"] for e in got] == ["notes.created", "auth.login.succeeded"]
    assert {e["actor_id"] for e in got} == {bob.id}


def test_admin_audit_filter_by_user_is_case_insensitive(client, trail):
    assert audit_json(client, user="BOB")["events"] == audit_json(client, user="bob")["events"]


def test_admin_audit_filter_by_unknown_user_matches_nothing(client, trail):
    assert audit_json(client, user="nobody")["events"] == []
    assert audit_json(client, user="#424242")["events"] == []


def test_admin_audit_filter_by_action_prefix(client, db, trail):
    got = audit_json(client, action="auth.*")["events"]
    assert got
    assert all(e["action"].startswith("auth.") for e in got)
    assert len(got) == len([e for e in events(db) if e.action.startswith("auth.")])
    exact = audit_json(client, action="auth.login.failed")["events"]
    assert [e["action"] for e in exact] == ["auth.login.failed"]
    assert audit_json(client, action="auth")["events"] == []  # no '*': exact match only


def test_admin_audit_filter_by_outcome(client, trail):
    denied = audit_json(client, outcome="denied")["events"]
    assert [e["action"] for e in denied] == ["authz.denied"]
    failures = audit_json(client, outcome="failure")["events"]
    assert {e["action"] for e in failures} == {"auth.login.failed"}
    assert all(e["outcome"] == "success" for e in audit_json(client, outcome="success")["events"])


def test_admin_audit_filter_by_ip(client, db, trail):
    assert len(audit_json(client, ip="127.0.0.1")["events"]) == len(
        [e for e in events(db) if e.ip == "127.0.0.1"]
    )
    assert audit_json(client, ip="10.9.9.9")["events"] == []


def test_admin_audit_filter_by_since_and_until(client, db, trail):
    now = dt.datetime.now(dt.UTC)
    past = (now - dt.timedelta(hours=1)).isoformat()
    future = (now + dt.timedelta(hours=1)).isoformat()
    total = event_count(db)
    assert len(audit_json(client, since=past)["events"]) == total
    assert audit_json(client, since=future)["events"] == []
    assert len(audit_json(client, until=future)["events"]) == total
    assert audit_json(client, until=past)["events"] == []
    assert len(audit_json(client, since=past, until=future)["events"]) == total
    # a plain date is accepted (midnight UTC)
    assert (
        len(audit_json(client, since=(now - dt.timedelta(days=1)).date().isoformat())["events"])
        == total
    )


def test_admin_audit_filters_combine(client, trail):
    got = audit_json(client, user="mallory", outcome="denied", action="authz.*")["events"]
    assert [(e["action"], e["actor_id"]) for e in got] == [("authz.denied", trail["mallory"].id)]
    assert audit_json(client, user="bob", outcome="denied")["events"] == []


def test_admin_audit_html_page_lists_events(client, trail):
    response = client.get("/admin/audit?action=auth.*")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "auth.login.succeeded" in body
    assert "authz.denied" not in body


class TestSmallPages:
    @pytest.fixture
    def config(self, config: dict[str, Any]) -> dict[str, Any]:
        return {**config, "AAA_PAGE_SIZE": 2}

    def test_admin_audit_keyset_pagination_walks_every_event_once(self, client, db, trail):
        seen: list[int] = []
        before: int | None = None
        pages = 0
        while True:
            query = {"before": str(before)} if before is not None else {}
            page = audit_json(client, **query)
            assert len(page["events"]) <= 2
            seen.extend(e["seq"] for e in page["events"])
            pages += 1
            before = page["next_before"]
            if before is None:
                break
            assert pages < 50
        all_seqs = [e.seq for e in events(db)]
        assert seen == sorted(all_seqs, reverse=True)
        assert pages >= 3

    def test_admin_audit_pagination_keeps_the_filter(self, client, db, trail):
        bob = trail["bob"].id
        first = audit_json(client, user="bob")
        assert first["next_before"] is None or len(first["events"]) == 2
        seen = [e["seq"] for e in first["events"]]
        before = first["next_before"]
        while before is not None:
            page = audit_json(client, user="bob", before=str(before))
            seen.extend(e["seq"] for e in page["events"])
            assert {e["actor_id"] for e in page["events"]} <= {bob}
            before = page["next_before"]
        assert seen == sorted((e.seq for e in events(db) if e.actor_id == bob), reverse=True)

    def test_admin_audit_html_next_link_carries_the_cursor(self, client, trail):
        body = client.get("/admin/audit?outcome=success").get_data(as_text=True)
        assert "Older events" in body
        assert "before=" in body
        assert "outcome=success" in body

    def test_admin_users_pagination(self, client, make_user, trail):
        seen: list[int] = []
        after: int | None = None
        while True:
            query = {"after": str(after)} if after is not None else {}
            page = client.get("/admin/", query_string=query, headers=JSON).get_json()
            assert len(page["users"]) <= 2
            seen.extend(u["id"] for u in page["users"])
            after = page["next_after"]
            if after is None:
                break
        assert seen == sorted(u.id for u in trail.values())


def read_jsonl(response: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines() if line]


def test_admin_audit_export_jsonl(client, db, trail):
    response = client.get("/admin/audit.jsonl")
    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = read_jsonl(response)
    assert [r["seq"] for r in rows] == [e.seq for e in events(db)]  # oldest first
    assert all(r["ts"].endswith("Z") for r in rows)
    assert all(isinstance(r["details"], dict) for r in rows)


def test_admin_audit_export_applies_the_filters(client, trail):
    rows = read_jsonl(client.get("/admin/audit.jsonl?user=mallory&outcome=denied"))
    assert [(r["action"], r["actor_id"]) for r in rows] == [("authz.denied", trail["mallory"].id)]
    rows = read_jsonl(client.get("/admin/audit.jsonl?action=auth.login.failed"))
    assert [(r["action"], r["target_id"]) for r in rows] == [
        ("auth.login.failed", str(trail["bob"].id))
    ]


def test_admin_audit_export_bad_filter_is_400(client, trail):
    response = client.get("/admin/audit.jsonl?since=yesterday", headers=JSON)
    assert response.status_code == 400
    assert "since" in response.get_json()["fields"]


def test_admin_audit_verify_says_ok(client, db, trail):
    response = post_json(client, "/admin/audit/verify")
    assert response.status_code == 200
    body = response.get_json()
    assert body["ok"] is True
    assert body["first_bad_seq"] is None
    assert body["checked"] == event_count(db)


def test_admin_audit_verify_form_flashes_the_result(client, trail):
    response = post(client, "/admin/audit/verify")
    assert response.status_code == 303
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "chain intact" in page


def test_admin_audit_verify_names_the_tampered_seq(client, db, trail):
    with writing():
        session = fresh(db)
        session.execute(text("UPDATE aaa_audit_events SET action='x' WHERE seq=2"))
        session.commit()
    body = post_json(client, "/admin/audit/verify").get_json()
    assert body["ok"] is False
    assert body["first_bad_seq"] == 2
    assert body["problem"]
    response = post(client, "/admin/audit/verify")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "BROKEN at event 2" in page


def test_admin_audit_verify_names_a_deleted_event(client, db, trail):
    with writing():
        session = fresh(db)
        session.execute(text("DELETE FROM aaa_audit_events WHERE seq=3"))
        session.commit()
    body = post_json(client, "/admin/audit/verify").get_json()
    assert body["ok"] is False
    assert body["first_bad_seq"] == 3


# -- L01: SQL injection and bad values in the filters --

INJECTIONS = ["' OR 1=1--", "1;DROP TABLE aaa_audit_events", "(SELECT 1)", "%", "_"]
FILTERS = ["user", "action", "outcome", "ip", "since", "until", "before"]


def _table_fingerprint(db: Any) -> tuple[int, int, str]:
    session = fresh(db)
    tables = int(inspect(session.connection()).has_table("aaa_audit_events"))
    count = session.execute(text("SELECT count(*) FROM aaa_audit_events")).scalar()
    last = session.execute(text("SELECT hash FROM aaa_audit_events ORDER BY seq DESC")).scalar()
    return int(tables or 0), int(count or 0), str(last)


@pytest.mark.parametrize("field", FILTERS)
def test_L01_injection_in_admin_audit_filters(client, db, trail, field):
    """Each payload: 200 with no rows (nothing can match) or a clean 400 naming a filter;
    the listing and the export alike; the table is unchanged afterwards."""
    before = _table_fingerprint(db)
    for payload in INJECTIONS:
        response = client.get("/admin/audit", query_string={field: payload}, headers=JSON)
        assert response.status_code in (200, 400), (payload, response.status_code)
        body = response.get_json()
        if response.status_code == 200:
            assert body["events"] == [], payload
        else:
            assert body["error"] == "invalid_input"
            assert set(body["fields"]) <= set(FILTERS)
        if field != "before":  # the export is not paged: it has no cursor to inject into
            export = client.get("/admin/audit.jsonl", query_string={field: payload})
            assert export.status_code in (200, 400), payload
            if export.status_code == 200:
                assert read_jsonl(export) == [], payload
        assert _table_fingerprint(db) == before
    assert client.get("/admin/audit", headers=JSON).get_json()["events"]


BAD_FILTERS = [
    ({"since": "2026-13-45"}, "since"),
    ({"until": "not a date"}, "until"),
    ({"since": "2026-02-01", "until": "2026-01-01"}, "since"),
    ({"before": "abc"}, "before"),
    ({"before": "-5"}, "before"),
    ({"before": "9" * 40}, "before"),
    ({"outcome": "maybe"}, "outcome"),
    ({"action": "AUTH.*"}, "action"),
    ({"action": "auth.**"}, "action"),
    ({"ip": "1" * 200}, "ip"),
    ({"user": "u" * 200}, "user"),
]


def test_L01_bad_filter_values_are_400_json_with_field_errors(client, trail):
    for url in ("/admin/audit", "/admin/audit.jsonl"):
        for query, field in BAD_FILTERS:
            if field == "before" and url.endswith(".jsonl"):
                continue
            response = client.get(url, query_string=query, headers=JSON)
            assert response.status_code == 400, (url, query)
            assert response.mimetype == "application/json"
            body = response.get_json()
            assert body["error"] == "invalid_input"
            assert field in body["fields"], (url, query)


def test_L01_unicode_digit_cursor_is_400_not_500(client, trail):
    """``str.isdigit`` accepts superscripts and circled digits that ``int`` refuses."""
    for cursor in ("\u00b2", "\u2460", "1\u00b3"):
        response = client.get("/admin/audit", query_string={"before": cursor}, headers=JSON)
        assert response.status_code == 400, cursor
        assert "before" in response.get_json()["fields"]


def test_L01_unicode_digit_user_id_filter_is_not_a_500(client, trail):
    response = client.get("/admin/audit", query_string={"user": "#\u00b2"}, headers=JSON)
    assert response.status_code in (200, 400)
    if response.status_code == 200:
        assert response.get_json()["events"] == []


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_L01_out_of_range_time_filter_is_400_not_500(client, trail, value):
    response = client.get("/admin/audit", query_string={"since": value}, headers=JSON)
    assert response.status_code == 400
    assert "since" in response.get_json()["fields"]


def test_L01_bad_users_cursor_is_400_naming_the_after_field(client, trail):
    response = client.get("/admin/?after=abc", headers=JSON)
    assert response.status_code == 400
    assert "after" in response.get_json()["fields"]


# -- L02: what users control renders escaped --

SCRIPT = "<script>alert(1)</script>"
IMG = 'x"><img src=x onerror=alert(1)>'


def test_L02_user_agent_renders_escaped_on_the_admin_audit_page(app, client, db, world):
    other = app.test_client()
    other.environ_base["HTTP_USER_AGENT"] = SCRIPT
    assert login(other, "mallory").status_code == 303
    as_admin(client)
    response = client.get("/admin/audit")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert SCRIPT not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "Content-Security-Policy" in response.headers
    data = client.get("/admin/audit", headers=JSON)
    assert data.mimetype == "application/json"
    assert SCRIPT in {e["user_agent"] for e in data.get_json()["events"]}


def test_L02_role_description_renders_escaped(client, db, world):
    as_admin(client)
    assert post(client, "/admin/roles", {"name": "xss", "description": IMG}).status_code == 303
    response = client.get("/admin/roles")
    body = response.get_data(as_text=True)
    assert "<img src=x" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body
    assert "Content-Security-Policy" in response.headers
    data = client.get("/admin/roles", headers=JSON)
    assert data.mimetype == "application/json"
    assert IMG in {r["description"] for r in data.get_json()["roles"]}


@pytest.mark.parametrize("field", ["user", "ip"])
def test_L02_reflected_filter_values_are_escaped(client, world, field):
    as_admin(client)
    response = client.get("/admin/audit", query_string={field: IMG})
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "<img" not in body
    assert "x&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in body


def test_L02_query_arguments_cannot_change_the_export_link(client, world):
    """The page builds its export link from the request's arguments; url_for's reserved
    arguments (``_external``, ``_anchor``, ...) must not reach it from the query string."""
    as_admin(client)
    response = client.get("/admin/audit", query_string={"_external": "1", "_anchor": "\nx"})
    assert response.status_code in (200, 400)
    body = response.get_data(as_text=True)
    assert 'href="http' not in body
    assert "#%0Ax" not in body


@pytest.mark.parametrize(
    "query",
    [{"_method": "DELETE"}, {"_scheme": "javascript", "_external": ""}, {"endpoint": "x"}],
    ids=["_method", "_scheme", "endpoint"],
)
def test_L02_reserved_url_for_names_in_the_query_are_not_a_500(client, world, query):
    as_admin(client)
    assert client.get("/admin/audit", query_string=query, headers=JSON).status_code == 200
    response = client.get("/admin/audit", query_string=query)
    assert response.status_code in (200, 400)


# -- L08: the audit trail failing makes the admin change fail closed --


def _broken_hash(_fields: Any) -> str:
    raise OperationalError("INSERT INTO aaa_audit_events", {}, Exception("disk I/O error"))


@pytest.mark.parametrize("as_json", [True, False])
def test_L08_role_grant_fails_closed_when_the_event_cannot_be_written(
    client, db, world, monkeypatch, as_json
):
    as_admin(client)
    before_events = event_count(db)
    monkeypatch.setattr(audit_service, "event_hash", _broken_hash)
    url = f"/admin/users/{world['mallory'].id}/roles"
    response = (
        post_json(client, url, {"role": "editor"})
        if as_json
        else post(client, url, {"role": "editor"})
    )
    assert response.status_code == 503
    assert response.headers.get("Retry-After")
    body = response.get_data(as_text=True)
    assert "INSERT" not in body
    assert "disk I/O" not in body
    monkeypatch.undo()
    assert roles_of(db, "mallory") == []
    assert event_count(db) == before_events
    assert audit_service.verify_chain(fresh(db)).ok


def test_L08_disabling_a_user_fails_closed_when_the_event_cannot_be_written(
    app, client, db, world, monkeypatch
):
    bob = app.test_client()
    assert login(bob, "bob").status_code == 303
    as_admin(client)
    monkeypatch.setattr(audit_service, "event_hash", _broken_hash)
    response = post_json(client, f"/admin/users/{world['bob'].id}/active", {"active": "0"})
    assert response.status_code == 503
    assert response.get_json()["error"] == "service_unavailable"
    monkeypatch.undo()
    assert is_active(db, "bob")
    assert bob.get("/notes").status_code == 200  # bob's session was not ended either
