"""The signed-in user's own resources: profile, sessions, tokens and activity."""

from __future__ import annotations

from sqlalchemy import select

from flask_aaa.models import ApiToken, LoginSession
from tests.api.conftest import API, bearer, events
from tests.conftest import csrf_token, fresh, login


def test_me_with_a_token(client, make_user, token_for):
    alice = make_user("alice", roles=["reader"], perms={"reader": ["notes:read"]})
    secret = token_for(alice, ["account:read"])
    response = client.get(f"{API}/me", headers=bearer(secret))
    assert response.status_code == 200
    body = response.get_json()
    assert body["username"] == "alice"
    assert body["roles"] == ["reader"]
    assert body["permissions"] == ["notes:read"]
    assert body["auth"]["method"] == "token"
    assert body["auth"]["scopes"] == ["account:read"]
    assert response.headers["Cache-Control"] == "no-store"


def test_me_with_a_session(client, make_user):
    make_user("alice")
    login(client, "alice")
    response = client.get(f"{API}/me")
    assert response.status_code == 200
    assert response.get_json()["auth"] == {"method": "session"}


def test_me_anonymous_is_401_json_with_bearer_challenge(client):
    response = client.get(f"{API}/me")
    assert response.status_code == 401
    assert response.get_json()["error"] == "login_required"
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_unknown_query_parameter_is_refused(client, make_user, token_for):
    secret = token_for(make_user("alice"))
    response = client.get(f"{API}/me/activity?user=2", headers=bearer(secret))
    assert response.status_code == 400
    assert response.get_json() == {
        "error": "invalid_input",
        "message": "The input is not valid.",
        "fields": {"user": "Unknown parameter."},
    }


def test_sessions_list_and_revoke_with_csrf(app, client, make_user, db):
    alice = make_user("alice")
    other = app.test_client()
    login(other, "alice")
    login(client, "alice")
    listed = client.get(f"{API}/me/sessions").get_json()
    assert len(listed["items"]) == 2 and listed["next_cursor"] is None
    mine = [s for s in listed["items"] if s["current"]]
    elsewhere = [s for s in listed["items"] if not s["current"]]
    assert len(mine) == 1 and len(elsewhere) == 1
    url = f"{API}/me/sessions/{elsewhere[0]['id']}"
    response = client.delete(url, headers={"X-CSRFToken": csrf_token(client)})
    assert response.status_code == 204
    assert other.get(f"{API}/me").status_code == 401
    record = fresh(db).get(LoginSession, elsewhere[0]["id"])
    assert record is not None and record.revoked_at is not None
    assert events(db, "session.revoked", actor_id=alice.id)


def test_someone_elses_session_is_not_found(app, client, make_user, db, token_for):
    make_user("alice")
    bob = make_user("bob")
    login(app.test_client(), "bob")
    bobs = fresh(db).scalar(select(LoginSession).where(LoginSession.user_id == bob.id))
    secret = token_for(make_user("carol"), ["account:write"])
    response = client.delete(f"{API}/me/sessions/{bobs.id}", headers=bearer(secret))
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"
    assert fresh(db).get(LoginSession, bobs.id).revoked_at is None


def test_mint_list_and_revoke_own_token(client, make_user, db, token_for):
    alice = make_user("alice")
    parent = token_for(alice, ["account:read", "account:write"])
    response = client.post(
        f"{API}/me/tokens",
        json={"name": "ci", "scopes": ["account:read"], "expires_in_days": 7},
        headers=bearer(parent),
    )
    assert response.status_code == 201
    minted = response.get_json()
    assert minted["secret"].startswith("aaa_pat_")
    assert minted["token"]["scopes"] == ["account:read"]
    assert minted["token"]["status"] == "active"
    assert client.get(f"{API}/me", headers=bearer(minted["secret"])).status_code == 200

    listed = client.get(f"{API}/me/tokens", headers=bearer(parent)).get_json()
    assert {t["name"] for t in listed["items"]} == {"ci", "test token"}
    token_id = minted["token"]["id"]
    one = client.get(f"{API}/me/tokens/{token_id}", headers=bearer(parent))
    assert one.get_json()["name"] == "ci"

    response = client.delete(f"{API}/me/tokens/{token_id}", headers=bearer(parent))
    assert response.status_code == 204
    assert fresh(db).get(ApiToken, token_id).revoked_at is not None
    assert events(db, "token.revoked", actor_id=alice.id)
    revoked = client.get(f"{API}/me/tokens?status=revoked", headers=bearer(parent)).get_json()
    assert [t["id"] for t in revoked["items"]] == [token_id]
    assert client.get(f"{API}/me", headers=bearer(minted["secret"])).status_code == 401


def test_mint_refuses_unknown_fields_and_bad_values(client, make_user, db, token_for):
    parent = token_for(make_user("alice"), ["account:read", "account:write"])
    cases = [
        ({"name": "x", "scopes": ["account:read"], "owner": 2}, "owner"),
        ({"name": "x", "scopes": "account:read"}, "scopes"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "", "scopes": ["account:read"]}, "name"),
        ({"name": "x", "scopes": ["account:read"], "expires_in_days": 9999}, "expires_in_days"),
        ({"name": "x", "scopes": ["account:read"], "expires_in_days": "7"}, "expires_in_days"),
        ({"name": "x", "scopes": ["NOT A SCOPE"]}, "scopes"),
    ]
    before = len(fresh(db).scalars(select(ApiToken)).all())
    for payload, field in cases:
        response = client.post(f"{API}/me/tokens", json=payload, headers=bearer(parent))
        assert response.status_code == 400, payload
        assert field in response.get_json()["fields"], payload
    assert len(fresh(db).scalars(select(ApiToken)).all()) == before


def test_non_object_and_non_json_bodies_are_400(client, make_user, token_for):
    parent = token_for(make_user("alice"), ["account:write"])
    for kwargs in (
        {"json": ["name"]},
        {"data": "name=x&scopes=account:read"},
        {"data": "{", "content_type": "application/json"},
    ):
        response = client.post(f"{API}/me/tokens", headers=bearer(parent), **kwargs)
        assert response.status_code == 400, kwargs
        assert response.get_json()["error"] == "invalid_input"


def test_body_over_the_limit_is_413(app, client, make_user, token_for):
    parent = token_for(make_user("alice"), ["account:write"])
    size = app.extensions["aaa"].settings.max_body_size
    response = client.post(
        f"{API}/me/tokens",
        data='{"name": "' + "x" * size + '"}',
        content_type="application/json",
        headers=bearer(parent),
    )
    assert response.status_code == 413
    assert response.get_json()["error"] == "too_large"


def test_activity_is_my_own_and_filterable(client, make_user, token_for):
    alice = make_user("alice")
    login(client, "alice")
    secret = token_for(alice, ["account:read"])
    everything = client.get(f"{API}/me/activity", headers=bearer(secret)).get_json()["items"]
    assert everything and all(
        e["actor_id"] == alice.id or e["target_id"] == str(alice.id) for e in everything
    )
    logins = client.get(
        f"{API}/me/activity?action=auth.*&outcome=success", headers=bearer(secret)
    ).get_json()["items"]
    assert logins and all(e["action"].startswith("auth.") for e in logins)
    future = client.get(f"{API}/me/activity?since=2999-01-01", headers=bearer(secret))
    assert future.get_json() == {"items": [], "next_cursor": None}
    one = everything[0]
    single = client.get(f"{API}/me/activity/{one['seq']}", headers=bearer(secret))
    assert single.get_json() == one


def test_activity_filters_are_validated(client, make_user, token_for):
    secret = token_for(make_user("alice"))
    for query, field in (
        ("outcome=maybe", "outcome"),
        ("since=yesterday", "since"),
        ("since=2026-02-01&until=2026-01-01", "since"),
        ("action=DROP TABLE", "action"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=", "limit"),
        ("cursor=nonsense", "cursor"),
    ):
        response = client.get(f"{API}/me/activity?{query}", headers=bearer(secret))
        assert response.status_code == 400, query
        assert field in response.get_json()["fields"], query
