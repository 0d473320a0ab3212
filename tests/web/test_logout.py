"""Signing out: POST only, CSRF-protected, and the server record ends with it (S03, Z05)."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select

from flask_aaa.models import AuditEvent, LoginSession
from tests.conftest import csrf_token, fresh, login, post, post_json

COOKIE = "aaa_session"


def is_signed_in(client: FlaskClient) -> bool:
    status = client.get("/private", headers={"Accept": "application/json"}).status_code
    assert status in (200, 401)
    return status == 200


def cookie_value(client: FlaskClient) -> str:
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def replay(app: Any, value: str) -> FlaskClient:
    """A second client holding a copy of a saved session cookie."""
    other = app.test_client()
    other.set_cookie(COOKIE, value)
    return other


def live_sessions(db: Any) -> int:
    return int(
        fresh(db).scalar(
            select(func.count()).select_from(LoginSession).where(LoginSession.revoked_at.is_(None))
        )
        or 0
    )


def signed_in(app: Any, make_user: Any) -> FlaskClient:
    make_user("alice")
    client = app.test_client()
    assert login(client, "alice").status_code == 303
    return client


def test_S03_get_logout_is_405_and_keeps_the_session(app, make_user):
    client = signed_in(app, make_user)
    response = client.get("/auth/logout")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert is_signed_in(client)


def test_Z05_logout_without_csrf_token_is_400_and_keeps_the_session(app, make_user, db):
    client = signed_in(app, make_user)
    assert client.post("/auth/logout").status_code == 400
    assert client.post("/auth/logout", data={"csrf_token": "forged"}).status_code == 400
    assert is_signed_in(client)
    assert live_sessions(db) == 1


def test_Z05_json_logout_without_csrf_header_is_400_and_keeps_the_session(app, make_user, db):
    client = signed_in(app, make_user)
    response = client.post("/auth/logout", json={})
    assert response.status_code == 400
    assert response.get_json()["error"] == "csrf_failed"
    assert is_signed_in(client)
    assert live_sessions(db) == 1


def test_Z05_logout_with_another_sessions_token_is_400(app, make_user, db):
    client = signed_in(app, make_user)
    foreign = csrf_token(app.test_client())
    assert client.post("/auth/logout", data={"csrf_token": foreign}).status_code == 400
    assert is_signed_in(client)


def test_S03_form_logout_clears_site_data_and_revokes_the_server_record(app, make_user, db):
    client = signed_in(app, make_user)
    saved = cookie_value(client)
    assert live_sessions(db) == 1

    response = post(client, "/auth/logout")
    assert response.status_code == 303
    assert response.headers["Location"] == "/auth/login"
    assert "Clear-Site-Data" in response.headers
    assert '"storage"' in response.headers["Clear-Site-Data"]

    record = fresh(db).scalar(select(LoginSession))
    assert record.revoked_at is not None
    assert record.revoked_reason == "logout"
    assert live_sessions(db) == 0
    assert not is_signed_in(client)
    # Replaying the cookie captured before the logout is anonymous.
    assert not is_signed_in(replay(app, saved))


def test_S03_json_logout(app, make_user, db):
    client = signed_in(app, make_user)
    saved = cookie_value(client)
    response = post_json(client, "/auth/logout")
    assert response.status_code == 200
    assert response.get_json() == {"ok": True}
    assert "Clear-Site-Data" in response.headers
    assert live_sessions(db) == 0
    assert not is_signed_in(replay(app, saved))


def test_S03_logout_is_audited_once(app, make_user, db):
    client = signed_in(app, make_user)
    post(client, "/auth/logout")
    actions = list(fresh(db).scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))
    assert actions.count("auth.logout") == 1


def test_S03_logout_ends_only_this_session(app, make_user, db):
    client = signed_in(app, make_user)
    other = app.test_client()
    assert login(other, "alice").status_code == 303
    assert post(client, "/auth/logout").status_code == 303
    assert not is_signed_in(client)
    assert is_signed_in(other)
    assert live_sessions(db) == 1


def test_S03_logout_when_anonymous_is_401(client):
    response = client.post(
        "/auth/logout",
        json={},
        headers={"X-CSRFToken": csrf_token(client), "Accept": "application/json"},
    )
    assert response.status_code == 401
    assert response.get_json()["error"] == "login_required"


def test_S03_revoked_cookie_cannot_log_out_again_or_reach_pages(app, make_user, db):
    client = signed_in(app, make_user)
    saved = cookie_value(client)
    assert post(client, "/auth/logout").status_code == 303
    thief = replay(app, saved)
    assert thief.get("/private").status_code in (302, 303)  # a browser is sent to login
    assert thief.get("/auth/password").status_code in (302, 303)
    assert not is_signed_in(thief)
