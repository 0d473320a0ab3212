"""SECURITY-CASES.md rows T01-T03, Z01, Z03, Z05 and Z07, through the JSON API."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from sqlalchemy import update

from flask_aaa.db import writing
from flask_aaa.models import ApiToken, User
from tests.api.conftest import API, bearer, events
from tests.conftest import app_engine, csrf_token, dump_database, fresh, login


def test_T01_raw_token_is_stored_logged_and_listed_nowhere(app, client, make_user, db, caplog):
    caplog.set_level(logging.DEBUG, logger="flask_aaa")
    caplog.set_level(logging.DEBUG, logger="flask_aaa.audit")
    make_user("alice")
    login(client, "alice")
    minted = client.post(
        f"{API}/me/tokens",
        json={"name": "laptop", "scopes": ["account:read", "account:write"]},
        headers={"X-CSRFToken": csrf_token(client)},
    )
    assert minted.status_code == 201
    secret = minted.get_json()["secret"]
    fresh_client = app.test_client()
    assert fresh_client.get(f"{API}/me", headers=bearer(secret)).status_code == 200
    assert fresh_client.get(f"{API}/me/activity", headers=bearer(secret)).status_code == 200
    listed = fresh_client.get(f"{API}/me/tokens", headers=bearer(secret))
    assert secret not in listed.get_data(as_text=True)
    assert secret not in dump_database(app_engine(app))
    assert all(secret not in repr(e.__dict__) for e in events(db))
    assert secret not in caplog.text
    assert events(db, "token.created")  # the mint itself is on the record


def test_T02_read_only_token_cannot_write_or_widen(client, admin, make_user, db, token_for):
    reader = token_for(admin, ["account:read"])
    response = client.post(f"{API}/roles", json={"name": "sneaky"}, headers=bearer(reader))
    assert response.status_code == 403
    assert response.get_json()["error"] == "permission_denied"
    response = client.post(
        f"{API}/me/tokens", json={"name": "wider", "scopes": ["*"]}, headers=bearer(reader)
    )
    assert response.status_code == 403
    # A token that may mint still cannot mint beyond its own scopes, though its owner could.
    minter = token_for(admin, ["account:read", "account:write"])
    response = client.post(
        f"{API}/me/tokens",
        json={"name": "wider", "scopes": ["aaa:roles:write"]},
        headers=bearer(minter),
    )
    assert response.status_code == 403
    denied = events(db, "authz.denied", actor_id=admin.id)
    assert len(denied) == 3
    assert {e.session_hash for e in denied} == {"token:1", "token:2"}
    assert len(fresh(db).query(ApiToken).all()) == 2  # nothing minted
    assert fresh(db).query(User).filter_by(username="sneaky").first() is None


def test_T03_privileges_follow_the_owner_at_once(client, admin, make_user, db, token_for):
    alice = make_user("alice", roles=["auditor"], perms={"auditor": ["aaa:audit:read"]})
    secret = token_for(alice, ["aaa:audit:read"])
    assert client.get(f"{API}/audit", headers=bearer(secret)).status_code == 200
    root = token_for(admin, ["*"])
    revoked = client.delete(f"{API}/users/{alice.id}/roles/auditor", headers=bearer(root))
    assert revoked.status_code == 204
    response = client.get(f"{API}/audit", headers=bearer(secret))
    assert response.status_code == 403
    assert events(db, "authz.denied", actor_id=alice.id)


def test_T03_revoked_and_expired_tokens_are_401(client, make_user, db, token_for, app):
    alice = make_user("alice")
    revoked = token_for(alice, ["account:read", "account:write"], name="old")
    expired = token_for(alice, ["account:read"], name="expired")
    me = client.get(f"{API}/me", headers=bearer(revoked)).get_json()
    assert (
        client.delete(
            f"{API}/me/tokens/{me['auth']['token_id']}", headers=bearer(revoked)
        ).status_code
        == 204
    )
    with writing(), app_engine(app).begin() as connection:
        connection.execute(
            update(ApiToken)
            .where(ApiToken.name == "expired")
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    for secret in (revoked, expired):
        response = client.get(f"{API}/me", headers=bearer(secret))
        assert response.status_code == 401
        assert response.get_json()["error"] == "invalid_token"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    reasons = {e.details for e in events(db, "token.rejected")}
    assert any("revoked" in r for r in reasons) and any("expired" in r for r in reasons)


def test_Z01_nobody_reads_someone_elses_activity(app, client, make_user, db, token_for):
    alice = make_user("alice")
    bob = make_user("bob")
    login(app.test_client(), "bob")
    bobs = [e.seq for e in events(db, actor_id=bob.id)] + [
        e.seq for e in events(db, target_id=str(bob.id))
    ]
    assert bobs
    secret = token_for(alice, ["account:read"])
    items = client.get(f"{API}/me/activity?limit=200", headers=bearer(secret)).get_json()["items"]
    assert not {e["seq"] for e in items} & set(bobs)
    for seq in bobs:
        response = client.get(f"{API}/me/activity/{seq}", headers=bearer(secret))
        assert response.status_code == 404
    for query in (
        f"user={bob.id}",
        f"actor={bob.id}",
        f"actor_id={bob.id}",
        f"involving_user={bob.id}",
    ):
        assert client.get(f"{API}/me/activity?{query}", headers=bearer(secret)).status_code == 400
    # And the admin trail is not hers to read either.
    assert client.get(f"{API}/audit?actor={bob.id}", headers=bearer(secret)).status_code == 403


@pytest.mark.parametrize(
    "payload",
    [
        {"roles": ["admin"]},
        {"is_active": False},
        {"password_hash": "x"},
        {"id": 1},
        {"fs_uniquifier": "x"},
        {"active": False, "roles": ["admin"]},
        {},
    ],
)
def test_Z03_patch_user_is_an_allowlist(client, admin, make_user, db, token_for, payload):
    alice = make_user("alice")
    secret = token_for(admin, ["*"])
    client.get(f"{API}/me", headers=bearer(secret))  # its first use is recorded on the token
    before = dump_database(fresh(db).get_bind())
    response = client.patch(f"{API}/users/{alice.id}", json=payload, headers=bearer(secret))
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_input"
    assert dump_database(fresh(db).get_bind()) == before
    # And the user's own record is not writable at all.
    mine = token_for(alice, ["account:read", "account:write"])
    assert client.patch(f"{API}/me", json=payload, headers=bearer(mine)).status_code == 405


def test_Z05_cookie_json_write_needs_the_csrf_header(client, make_user, db):
    make_user("alice")
    login(client, "alice")
    response = client.post(f"{API}/me/tokens", json={"name": "x", "scopes": ["account:read"]})
    assert response.status_code == 400
    assert response.get_json()["error"] == "csrf_failed"
    response = client.post(
        f"{API}/me/tokens",
        json={"name": "x", "scopes": ["account:read"]},
        headers={"X-CSRFToken": "forged"},
    )
    assert response.status_code == 400
    assert fresh(db).query(ApiToken).count() == 0
    response = client.get(f"{API}/service-accounts")
    assert response.status_code == 405
    assert response.get_json()["error"] == "method_not_allowed"


#: Every administration endpoint, with plausible arguments.
ADMIN_ENDPOINTS = [
    ("get", "/users", None),
    ("get", "/users/1", None),
    ("patch", "/users/1", {"active": False}),
    ("post", "/service-accounts", {"name": "bot"}),
    ("put", "/users/1/roles/admin", None),
    ("delete", "/users/1/roles/admin", None),
    ("get", "/users/1/tokens", None),
    ("post", "/users/1/tokens", {"name": "x", "scopes": ["*"]}),
    ("get", "/tokens/1", None),
    ("delete", "/tokens/1", None),
    ("get", "/roles", None),
    ("post", "/roles", {"name": "x"}),
    ("get", "/roles/admin", None),
    ("put", "/roles/admin/permissions/x:y", None),
    ("delete", "/roles/admin/permissions/*", None),
    ("put", "/roles/admin/parents/admin", None),
    ("delete", "/roles/admin/parents/admin", None),
    ("delete", "/roles/admin", None),
    ("put", "/users/1/permissions/x:y", None),
    ("delete", "/users/1/permissions/*", None),
    ("get", "/explain?user=1&permission=x:y", None),
    ("get", "/permissions", None),
    ("get", "/audit", None),
    ("get", "/audit/export?format=csv", None),
    ("get", "/audit/export?format=jsonl", None),
    ("get", "/audit/1", None),
]


def test_Z07_list_covers_every_admin_route(app):
    routed = {
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("aaa_api.")
        and not rule.rule.startswith(f"{API}/me")
        and not rule.rule.endswith("openapi.json")
    }
    adapter = app.url_map.bind("localhost")
    covered = {
        adapter.match(f"{API}{path.partition('?')[0]}", method=m.upper())[0]
        for m, path, _ in ADMIN_ENDPOINTS
    }
    assert covered == routed


@pytest.mark.parametrize("how", ["plain user session", "admin token without the scope"])
def test_Z07_admin_endpoints_refuse_without_permission(app, admin, make_user, db, token_for, how):
    client = app.test_client()
    if how == "plain user session":
        actor = make_user("alice")
        login(client, "alice")
        headers = {"X-CSRFToken": csrf_token(client)}
    else:
        actor = admin
        headers = bearer(token_for(admin, ["account:read", "account:write"]))
    for method, path, payload in ADMIN_ENDPOINTS:
        count = len(events(db, "authz.denied", actor_id=actor.id))
        response = getattr(client, method)(f"{API}{path}", json=payload, headers=headers)
        assert response.status_code == 403, (method, path, response.get_json())
        assert response.get_json()["error"] == "permission_denied"
        assert len(events(db, "authz.denied", actor_id=actor.id)) == count + 1, (method, path)
    assert fresh(db).get(User, admin.id).active is True


def test_bearer_token_on_a_session_only_page_is_refused(client, make_user, token_for):
    secret = token_for(make_user("alice"), ["account:read"])
    response = client.get("/account/sessions", headers=bearer(secret))
    assert response.status_code == 401
    assert response.get_json()["error"] == "token_not_accepted"


def test_unrouted_api_paths_answer_json(client):
    response = client.get(f"{API}/nothing-here")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"
    response = client.get(f"{API}/users/99999999999")
    assert response.status_code == 404


def test_deny_by_default_leaves_the_api_usable(config, make_user, token_for):
    from tests.conftest import build_app

    del make_user, token_for
    app = build_app({**config, "AAA_DENY_BY_DEFAULT": True})
    with app.app_context():
        app.extensions["aaa"].db.create_all()
    from flask_aaa.extension import unguarded_endpoints

    assert not [e for e in unguarded_endpoints(app) if e.startswith("aaa_api.")]
    client = app.test_client()
    assert client.get(f"{API}/openapi.json").status_code == 200
    assert client.get(f"{API}/me").status_code == 401
