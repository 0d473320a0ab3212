"""The trail as a whole: one event per kind of action with who, what, when, where and how it
ended (L09), events nobody can change through the app (L10), revocation that takes effect at
once (S04), and a SECRET_KEY that can be rotated without signing everyone out (C02)."""

from __future__ import annotations

import datetime as dt
import json

from flask import Flask
from sqlalchemy import select

from flask_aaa.models import AuditEvent
from tests.conftest import PASSWORD, SECRET, build_app, csrf_token, fresh, login, post

IP = "198.51.100.23"
UA = "TrailTest/1.0"
JSON = {"Accept": "application/json"}


def env(client):
    client.environ_base.update({"REMOTE_ADDR": IP, "HTTP_USER_AGENT": UA})
    return client


def test_L09_every_flow_writes_exactly_one_complete_event(app, db, make_user, admin):
    """Each flow below is run once; each writes exactly one event of its kind, carrying
    the actor, a UTC time, the client's IP and user agent, and the outcome."""
    make_user("reader", roles=["reader"], perms={"reader": ["notes:read"]})
    start = fresh(db).scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1))

    user = env(app.test_client())
    post(
        user,
        "/auth/register",
        {"username": "nina", "email": "nina@example.org", "password": PASSWORD},
    )
    login(user, "nina", "wrong-password-xyz")
    login(user, "nina")
    user.get("/notes")  # denied
    new_password = PASSWORD + "-2"
    post(
        user,
        "/auth/password",
        {"current_password": "nope-nope-nope-1", "new_password": new_password},
    )
    post(user, "/auth/password", {"current_password": PASSWORD, "new_password": new_password})
    post(user, "/auth/logout")

    boss = env(app.test_client())
    login(boss, "root")
    nina_id = fresh(db).scalar(
        select(AuditEvent.target_id).where(AuditEvent.action == "user.registered")
    )
    post(boss, f"/admin/users/{nina_id}/roles", {"role": "reader"})
    post(boss, f"/admin/users/{nina_id}/roles/revoke", {"role": "reader"})
    post(boss, "/admin/roles", {"name": "auditors"})
    post(boss, "/admin/roles/auditors/permissions", {"permission": "aaa:audit:read"})
    post(boss, "/admin/roles/auditors/permissions/remove", {"permission": "aaa:audit:read"})
    post(boss, f"/admin/users/{nina_id}/active", {"active": "0"})

    expected = {
        "user.registered": ("nina", "success"),
        "auth.login.failed": (None, "failure"),
        "auth.login.succeeded": ("nina", "success"),
        "authz.denied": ("nina", "denied"),
        "auth.password.change_failed": ("nina", "failure"),
        "auth.password.changed": ("nina", "success"),
        "auth.logout": ("nina", "success"),
        "role.granted": ("root", "success"),
        "role.revoked": ("root", "success"),
        "role.created": ("root", "success"),
        "role.permission_added": ("root", "success"),
        "role.permission_removed": ("root", "success"),
        "user.disabled": ("root", "success"),
    }
    events = fresh(db).scalars(select(AuditEvent).where(AuditEvent.seq > start)).all()
    by_action: dict[str, list[AuditEvent]] = {}
    for event in events:
        by_action.setdefault(event.action, []).append(event)
    # root's own sign-in is one more auth.login.succeeded
    assert len(by_action.pop("auth.login.succeeded")) == 2
    expected.pop("auth.login.succeeded")
    assert set(by_action) == set(expected)
    for action, (actor, outcome) in expected.items():
        [event] = by_action[action]
        assert (event.actor_name, event.outcome) == (actor, outcome), action
        assert (event.ip, event.user_agent) == (IP, UA), action
        assert event.ts.tzinfo == dt.UTC and event.request_id, action
        assert abs(dt.datetime.now(dt.UTC) - event.ts) < dt.timedelta(minutes=5)


def test_L10_no_route_changes_or_deletes_events(app: Flask, make_user):
    """The app exposes no way to edit or delete the trail: no audit route takes PUT, PATCH
    or DELETE, and reading it needs aaa:audit:read."""
    for rule in app.url_map.iter_rules():
        if "audit" in rule.rule:
            assert not (rule.methods or set()) & {"PUT", "PATCH", "DELETE"}, rule
    make_user("alice")
    client = app.test_client()
    login(client, "alice")
    assert client.get("/admin/audit", headers=JSON).status_code == 403
    assert client.get("/admin/audit.jsonl").status_code == 403
    for method in ("delete", "put", "patch"):
        response = getattr(client, method)(
            "/admin/audit", headers={**JSON, "X-CSRFToken": csrf_token(client)}
        )
        assert response.status_code == 405


def test_S04_disabling_a_user_ends_their_session_on_the_next_request(app, make_user, admin):
    make_user("bob")
    bob, boss = app.test_client(), app.test_client()
    login(bob, "bob")
    assert bob.get("/private", headers=JSON).status_code == 200
    login(boss, "root")
    bob_id = json.loads(boss.get("/admin/", headers=JSON).get_data())["users"][1]["id"]
    assert post(boss, f"/admin/users/{bob_id}/active", {"active": "0"}).status_code == 303
    assert bob.get("/private", headers=JSON).status_code == 401


def test_C02_old_cookies_survive_a_key_rotation(config, make_user, app):
    """Move the old key to SECRET_KEY_FALLBACKS: sessions signed with it still work, and a
    new sign-in is signed with the new key only."""
    make_user("alice")
    old_client = app.test_client()
    login(old_client, "alice")
    cookie = old_client.get_cookie("aaa_session")
    assert cookie is not None

    new_key = "rotated-secret-key-" + "9f8e7d6c5b4a3928" * 2
    rotated = build_app({**config, "SECRET_KEY": new_key, "SECRET_KEY_FALLBACKS": [SECRET]})
    client = rotated.test_client()
    client.set_cookie("aaa_session", cookie.value)
    assert client.get("/private", headers=JSON).status_code == 200

    fresh_client = rotated.test_client()
    login(fresh_client, "alice")
    new_cookie = fresh_client.get_cookie("aaa_session")
    only_new = build_app({**config, "SECRET_KEY": new_key})
    check = only_new.test_client()
    check.set_cookie("aaa_session", new_cookie.value)
    assert check.get("/private", headers=JSON).status_code == 200
    only_old = build_app(config)
    stale = only_old.test_client()
    stale.set_cookie("aaa_session", new_cookie.value)
    assert stale.get("/private", headers=JSON).status_code == 401
