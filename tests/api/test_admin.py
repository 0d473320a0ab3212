"""Administration through the API: users, service accounts, tokens, roles, permissions and
the audit trail, with pagination and filters."""

from __future__ import annotations

from flask_aaa.models import ApiToken, User
from flask_aaa.services import accounts, rbac
from tests.api.conftest import API, bearer, events
from tests.conftest import SYSTEM, fresh

ADMIN_SCOPES = ["*"]


def test_users_pagination_walks_every_user_exactly_once(client, admin, make_user, token_for):
    for n in range(7):
        make_user(f"user{n}")
    secret = token_for(admin, ADMIN_SCOPES)
    seen: list[int] = []
    url = f"{API}/users?limit=3"
    pages = 0
    while True:
        body = client.get(url, headers=bearer(secret)).get_json()
        seen.extend(u["id"] for u in body["items"])
        pages += 1
        if body["next_cursor"] is None:
            break
        url = f"{API}/users?limit=3&cursor={body['next_cursor']}"
    assert pages == 3
    assert len(seen) == len(set(seen)) == 8


def test_users_filters(client, admin, make_user, token_for):
    make_user("alice", roles=["reader"], perms={"reader": ["notes:read"]})
    make_user("bob", active=False)
    secret = token_for(admin, ADMIN_SCOPES)

    def names(query: str) -> list[str]:
        response = client.get(f"{API}/users?{query}", headers=bearer(secret))
        assert response.status_code == 200, response.get_json()
        return [u["username"] for u in response.get_json()["items"]]

    assert names("q=ALI") == ["alice"]
    assert names("q=%25") == []  # a LIKE wildcard is matched literally
    assert names("active=false") == ["bob"]
    assert names("role=reader") == ["alice"]
    assert names("kind=service") == []
    for query, field in (("active=yes", "active"), ("kind=robot", "kind"), ("role=%20x", "role")):
        response = client.get(f"{API}/users?{query}", headers=bearer(secret))
        assert response.status_code == 400
        assert field in response.get_json()["fields"]


def test_a_cursor_of_another_listing_is_refused(client, admin, make_user, token_for):
    make_user("alice")
    secret = token_for(admin, ADMIN_SCOPES)
    cursor = client.get(f"{API}/users?limit=1", headers=bearer(secret)).get_json()["next_cursor"]
    response = client.get(f"{API}/roles?cursor={cursor}", headers=bearer(secret))
    assert response.status_code == 400
    assert response.get_json()["fields"] == {
        "cursor": "Pass back a next_cursor of this same listing."
    }


def test_disable_and_enable_a_user(client, admin, make_user, token_for, db):
    alice = make_user("alice")
    secret = token_for(admin, ADMIN_SCOPES)
    response = client.patch(
        f"{API}/users/{alice.id}", json={"active": False}, headers=bearer(secret)
    )
    assert response.status_code == 200
    assert response.get_json()["active"] is False
    assert fresh(db).get(User, alice.id).active is False
    assert events(db, "user.disabled", target_id=str(alice.id))
    response = client.patch(f"{API}/users/{alice.id}", json={"active": "0"}, headers=bearer(secret))
    assert response.status_code == 400


def test_last_admin_cannot_be_disabled(client, admin, token_for, db):
    secret = token_for(admin, ADMIN_SCOPES)
    response = client.patch(
        f"{API}/users/{admin.id}", json={"active": False}, headers=bearer(secret)
    )
    assert response.status_code == 409
    assert response.get_json()["error"] == "conflict"
    assert fresh(db).get(User, admin.id).active is True


def test_service_account_and_a_token_for_it(client, admin, token_for, db):
    secret = token_for(admin, ADMIN_SCOPES)
    client.post(f"{API}/roles", json={"name": "robots"}, headers=bearer(secret))
    client.put(f"{API}/roles/robots/permissions/notes:read", headers=bearer(secret))
    response = client.post(
        f"{API}/service-accounts",
        json={"name": "ci-bot", "roles": ["robots"]},
        headers=bearer(secret),
    )
    assert response.status_code == 201, response.get_json()
    bot = response.get_json()
    assert bot["kind"] == "service" and bot["roles"] == ["robots"]
    assert response.headers["Location"].endswith(f"/users/{bot['id']}")

    minted = client.post(
        f"{API}/users/{bot['id']}/tokens",
        json={"name": "deploy", "scopes": ["notes:read"]},
        headers=bearer(secret),
    )
    assert minted.status_code == 201
    token_id = minted.get_json()["token"]["id"]
    wider = client.post(
        f"{API}/users/{bot['id']}/tokens",
        json={"name": "deploy", "scopes": ["notes:write"]},
        headers=bearer(secret),
    )
    assert wider.status_code == 400  # the bot does not hold notes:write
    listed = client.get(f"{API}/users/{bot['id']}/tokens", headers=bearer(secret)).get_json()
    assert [t["id"] for t in listed["items"]] == [token_id]
    assert (
        client.get(f"{API}/tokens/{token_id}", headers=bearer(secret)).get_json()["name"]
        == "deploy"
    )
    assert client.delete(f"{API}/tokens/{token_id}", headers=bearer(secret)).status_code == 204
    assert fresh(db).get(ApiToken, token_id).revoked_at is not None

    for payload in (
        {"name": "x!"},
        {"name": "bot2", "roles": ["nope"]},
        {"name": "bot3", "kind": "person"},
    ):
        response = client.post(f"{API}/service-accounts", json=payload, headers=bearer(secret))
        assert response.status_code == 400, payload


def test_roles_and_permissions(client, admin, make_user, token_for, db):
    alice = make_user("alice")
    secret = token_for(admin, ADMIN_SCOPES)
    created = client.post(
        f"{API}/roles", json={"name": "editor", "description": "Edits"}, headers=bearer(secret)
    )
    assert created.status_code == 201
    assert (
        client.post(f"{API}/roles", json={"name": "editor"}, headers=bearer(secret)).status_code
        == 409
    )
    added = client.put(f"{API}/roles/editor/permissions/notes:write", headers=bearer(secret))
    assert added.get_json()["permissions"] == ["notes:write"]
    assert (
        client.put(f"{API}/roles/editor/permissions/NOPE", headers=bearer(secret)).status_code
        == 400
    )
    granted = client.put(f"{API}/users/{alice.id}/roles/editor", headers=bearer(secret))
    assert granted.get_json()["roles"] == ["editor"]
    assert (
        client.put(f"{API}/users/{alice.id}/roles/ghost", headers=bearer(secret)).status_code == 404
    )
    assert (
        client.get(f"{API}/roles/editor", headers=bearer(secret)).get_json()["description"]
        == "Edits"
    )
    names = [
        r["name"] for r in client.get(f"{API}/roles", headers=bearer(secret)).get_json()["items"]
    ]
    assert names == ["admin", "editor"]
    perms = client.get(f"{API}/permissions", headers=bearer(secret)).get_json()["items"]
    assert {"name": "notes:write", "description": "", "roles": ["editor"]} in perms
    assert (
        client.delete(f"{API}/users/{alice.id}/roles/editor", headers=bearer(secret)).status_code
        == 204
    )
    assert (
        client.delete(
            f"{API}/roles/editor/permissions/notes:write", headers=bearer(secret)
        ).status_code
        == 204
    )
    assert client.get(f"{API}/roles/editor", headers=bearer(secret)).get_json()["permissions"] == []
    assert [e.action for e in events(db, actor_id=admin.id) if e.action.startswith("role.")] == [
        "role.created",
        "role.permission_added",
        "role.granted",
        "role.revoked",
        "role.permission_removed",
    ]


def test_audit_listing_filters_and_pagination(client, admin, make_user, token_for, db):
    alice = make_user("alice")
    secret = token_for(admin, ADMIN_SCOPES)
    client.patch(f"{API}/users/{alice.id}", json={"active": False}, headers=bearer(secret))
    seen: list[int] = []
    url = f"{API}/audit?limit=2"
    while url:
        body = client.get(url, headers=bearer(secret)).get_json()
        seen.extend(e["seq"] for e in body["items"])
        url = body["next_cursor"] and f"{API}/audit?limit=2&cursor={body['next_cursor']}"
    assert seen == sorted({e.seq for e in events(db)}, reverse=True)

    def actions(query: str) -> list[str]:
        response = client.get(f"{API}/audit?{query}", headers=bearer(secret))
        assert response.status_code == 200, response.get_json()
        return [e["action"] for e in response.get_json()["items"]]

    assert actions(f"actor={admin.id}&action=user.*") == ["user.disabled"]
    assert actions(f"target_type=user&target_id={alice.id}&outcome=success") == [
        "user.disabled",
        "user.created",
    ]
    assert actions("action=nothing.such") == []
    one = client.get(f"{API}/audit/{seen[0]}", headers=bearer(secret))
    assert one.get_json()["seq"] == seen[0]
    assert client.get(f"{API}/audit/999999", headers=bearer(secret)).status_code == 404
    for query in ("actor=0", "actor=x", "target_type=USER", "until=soon", "ip=" + "1" * 200):
        assert client.get(f"{API}/audit?{query}", headers=bearer(secret)).status_code == 400, query


def test_service_lists_users_with_filters_and_keyset(session, settings, passwords):
    """accounts.list_users: filters bound as parameters, pages that do not overlap."""
    from flask_aaa.db import writing

    with writing():
        role = rbac.create_role(session, actor=SYSTEM, name="ops")
        for name in ("ann", "ben", "cat"):
            accounts.create_user(
                session,
                actor=SYSTEM,
                settings=settings,
                passwords=passwords,
                username=name,
                email=f"{name}@example.org",
                password="plum-harbor-violin-42",
                roles=[role] if name != "ben" else [],
            )
        session.commit()
    first, after = accounts.list_users(session, limit=2)
    second, last = accounts.list_users(session, limit=2, after=after)
    assert [u.username for u in first + second] == ["ann", "ben", "cat"] and last is None
    assert [u.username for u in accounts.list_users(session, limit=9, role="ops")[0]] == [
        "ann",
        "cat",
    ]
    assert [u.username for u in accounts.list_users(session, limit=9, q="EN")[0]] == ["ben"]
    roles, _ = rbac.list_roles(session, limit=5)
    assert [r.name for r in roles] == ["ops"]
