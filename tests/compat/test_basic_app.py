"""Flask-User's basic app, with only its import changed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .apps import basic_app
from .helpers import events, sign_in, sign_out, token


@pytest.fixture
def app(database_uri: str, built: Any) -> Any:
    app, _, _ = basic_app(database_uri)
    built(app)
    return app


def test_sign_in_and_out(app: Any) -> None:
    client = app.test_client()
    assert client.get("/members").status_code == 302
    response = sign_in(client, "member", "Password1")
    assert response.status_code in (302, 303)
    assert response.headers["Location"] == "/"
    assert client.get("/members").text == "members: member"
    assert ">member<" in client.get("/").text
    response = sign_out(client)
    assert response.status_code in (302, 303)
    assert client.get("/members").status_code == 302
    assert events(app, "auth.login.succeeded") and events(app, "auth.logout")


def test_roles_required_and_accepted(app: Any) -> None:
    member = app.test_client()
    sign_in(member, "member", "Password1")
    refused = member.get("/admin")
    assert refused.status_code == 302 and refused.headers["Location"] == "/"
    assert member.get("/staff").status_code == 302
    assert events(app, "authz.denied")
    admin = app.test_client()
    sign_in(admin, "admin", "Password1")
    assert admin.get("/admin").text == "admin page"
    assert admin.get("/special").text == "special page"  # Admin AND (Writer OR Agent)
    assert admin.get("/staff").text == "staff page"  # Writer OR Agent
    assert 'id="admin-link"' in admin.get("/").text


def test_anonymous_goes_to_sign_in_with_next(app: Any) -> None:
    response = app.test_client().get("/admin?x=1")
    assert response.headers["Location"] == "/user/sign-in?next=/admin%3Fx%3D1"


def test_json_clients_get_401_and_403(app: Any) -> None:
    client = app.test_client()
    assert client.get("/members", headers={"Accept": "application/json"}).status_code == 401
    sign_in(client, "member", "Password1")
    answer = client.get("/admin", headers={"Accept": "application/json"})
    assert answer.status_code == 403 and answer.get_json()["error"] == "permission_denied"


def test_has_roles_semantics(app: Any) -> None:
    with app.app_context():
        admin = app.User.query.filter_by(username="admin").one()
        assert admin.has_roles("Admin", "Agent")
        assert admin.has_roles("Admin", ("Writer", "Agent"))
        assert admin.has_roles(["Nobody", "Admin"])
        assert not admin.has_roles("Admin", "Writer")
        assert admin.has_role("Writer", "Agent")  # Flask-User's has_role: any of them
        member = app.User.query.filter_by(username="member").one()
        assert not member.has_roles("Admin") and not member.has_roles()


def test_wrong_password_is_refused(app: Any) -> None:
    client = app.test_client()
    response = sign_in(client, "member", "Password2")
    assert response.status_code == 401
    assert "Incorrect Username/Email and/or Password." in response.text
    assert client.get("/members").status_code == 302


def test_register_signs_in_and_creates_the_apps_row(app: Any) -> None:
    client = app.test_client()
    page = client.get("/user/register")
    assert 'name="username"' in page.text and 'name="password"' in page.text
    weak = client.post(
        "/user/register",
        data={"username": "carol", "password": "Password1", "csrf_token": token(page.text)},
    )
    assert weak.status_code == 400  # NIST rules: Flask-User's 6 characters are not enough
    response = client.post(
        "/user/register",
        data={
            "username": "carol",
            "password": "quiet-lantern-meadow-7",
            "csrf_token": token(page.text),
        },
    )
    assert response.status_code in (302, 303)
    assert client.get("/members").text == "members: carol"
    with app.app_context():
        row = app.User.query.filter_by(username="carol").one()
        from flask_aaa.models import User as AAAUser

        linked = app.extensions["aaa"].db.session.get(AAAUser, row.id)
        assert linked is not None and linked.username == "carol"
        assert row.password == linked.password_hash
    assert events(app, "user.registered")


def test_role_granted_by_the_app_applies_on_the_next_request(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "member", "Password1")
    assert client.get("/admin").status_code == 302
    with app.app_context():
        db = app.extensions["aaa"].db
        member = app.User.query.filter_by(username="member").one()
        member.roles.append(app.Role.query.filter_by(name="Admin").one())
        db.session.commit()
    assert client.get("/admin").text == "admin page"
    granted = events(app, "role.granted")
    assert any(json.loads(e.details).get("role") == "Admin" for e in granted)


def test_sign_out_by_get_asks_for_a_post(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "member", "Password1")
    page = client.get("/user/sign-out")
    assert page.status_code == 200 and 'method="POST"' in page.text
    assert client.get("/members").status_code == 200  # still signed in


def test_change_password_ends_other_sessions(app: Any) -> None:
    first, second = app.test_client(), app.test_client()
    sign_in(first, "member", "Password1")
    sign_in(second, "member", "Password1")
    page = first.get("/user/change-password")
    response = first.post(
        "/user/change-password",
        data={
            "old_password": "Password1",
            "new_password": "amber-violet-harbor-9",
            "csrf_token": token(page.text),
        },
    )
    assert response.status_code in (302, 303)
    assert first.get("/members").status_code == 200
    assert second.get("/members").status_code == 302
    third = app.test_client()
    assert sign_in(third, "member", "amber-violet-harbor-9").status_code in (302, 303)


def test_user_manager_hashes_and_verifies(app: Any) -> None:
    import bcrypt

    with app.app_context():
        um = app.user_manager
        hashed = um.hash_password("Password1")
        assert hashed.startswith("$argon2id$")
        assert um.verify_password("Password1", hashed)
        assert not um.verify_password("Password2", hashed)
        legacy = bcrypt.hashpw(b"Password1", bcrypt.gensalt(rounds=4)).decode()
        assert um.verify_password("Password1", legacy)
