"""Role inheritance, direct permissions and explain through the JSON API."""

from __future__ import annotations

from tests.api.conftest import API, bearer, events


def test_inheritance_direct_grants_and_explain(client, admin, make_user, token_for, db):
    auth = bearer(token_for(admin, ["*"]))
    for name, perm in (("reader", "notes:read"), ("editor", "notes:write")):
        assert client.post(f"{API}/roles", json={"name": name}, headers=auth).status_code == 201
        assert client.put(f"{API}/roles/{name}/permissions/{perm}", headers=auth).status_code == 200
    response = client.put(f"{API}/roles/editor/parents/reader", headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    assert body["parents"] == ["reader"]
    assert body["effective_permissions"] == ["notes:read", "notes:write"]
    cycle = client.put(f"{API}/roles/reader/parents/editor", headers=auth)
    assert cycle.status_code == 400
    assert "cycle" in cycle.get_json()["fields"]["parent"]

    eve = make_user("eve", roles=["editor"])
    answer = client.get(f"{API}/explain?user={eve.id}&permission=notes:read", headers=auth)
    assert answer.status_code == 200
    assert answer.get_json()["allowed"] is True
    assert answer.get_json()["grants"][0]["via"] == ["editor", "reader"]
    denied = client.get(f"{API}/explain?user={eve.id}&permission=notes:delete", headers=auth)
    assert denied.get_json()["allowed"] is False
    assert denied.get_json()["near"] == ["notes:read", "notes:write"]

    granted = client.put(f"{API}/users/{eve.id}/permissions/notes:delete", headers=auth)
    assert granted.status_code == 200
    detail = client.get(f"{API}/users/{eve.id}", headers=auth).get_json()
    assert detail["direct_permissions"] == ["notes:delete"]
    assert client.get(
        f"{API}/explain?user={eve.id}&permission=notes:delete", headers=auth
    ).get_json()["allowed"]
    assert (
        client.delete(f"{API}/users/{eve.id}/permissions/notes:delete", headers=auth).status_code
        == 204
    )
    assert client.delete(f"{API}/roles/editor/parents/reader", headers=auth).status_code == 204
    assert client.delete(f"{API}/roles/reader", headers=auth).status_code == 204
    assert client.get(f"{API}/roles/reader", headers=auth).status_code == 404
    actions = {e.action for e in events(db)}
    assert {
        "role.parent_added",
        "role.parent_removed",
        "role.deleted",
        "user.permission_granted",
        "user.permission_revoked",
    } <= actions


def test_explain_needs_its_arguments_and_the_permission(client, admin, make_user, token_for):
    auth = bearer(token_for(admin, ["*"]))
    assert client.get(f"{API}/explain?user={admin.id}", headers=auth).status_code == 400
    assert client.get(f"{API}/explain?user=99999&permission=a:b", headers=auth).status_code == 404
    plain = make_user("plain")
    weak = bearer(token_for(plain, ["account:read"]))
    response = client.get(f"{API}/explain?user={admin.id}&permission=a:b", headers=weak)
    assert response.status_code == 403


def test_z07_a_scoped_token_cannot_change_the_hierarchy(client, admin, token_for, db):
    reader_only = bearer(token_for(admin, ["aaa:users:read"]))
    auth = bearer(token_for(admin, ["*"], name="full"))
    client.post(f"{API}/roles", json={"name": "a"}, headers=auth)
    client.post(f"{API}/roles", json={"name": "b"}, headers=auth)
    assert client.put(f"{API}/roles/a/parents/b", headers=reader_only).status_code == 403
    assert client.delete(f"{API}/roles/a", headers=reader_only).status_code == 403
    assert events(db, "authz.denied")
