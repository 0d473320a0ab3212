"""Re-authentication: ``@fresh_login_required`` views and the /account/reauth page.

A sensitive view needs a password typed within ``AAA_REAUTH_WINDOW``: browsers are sent to
confirm it (and back), JSON clients get 401 ``reauthentication_required``. A wrong password
is refused and audited; the right one is audited and gives the session a new id (S02).
Only a password makes a session fresh: neither a remember-me restore nor a privilege-change
rotation may.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask, jsonify
from flask.testing import FlaskClient
from freezegun import freeze_time
from sqlalchemy import select
from sqlalchemy.orm import Session

from flask_aaa.db import writing
from flask_aaa.models import AuditEvent, LoginSession, User
from flask_aaa.services import rbac
from flask_aaa.web.decorators import fresh_login_required
from tests.conftest import (
    PASSWORD,
    SYSTEM,
    app_engine,
    ensure_role,
    form_token,
    fresh,
    login,
    post,
    post_json,
)

COOKIE = "aaa_session"
JSON = {"Accept": "application/json"}
WRONG = "wrong-" + PASSWORD
WINDOW = 300  # the default AAA_REAUTH_WINDOW


@pytest.fixture
def app(app: Flask) -> Flask:
    """The test app plus a sensitive view, as an app developer would guard it."""

    @app.get("/sensitive")
    @fresh_login_required
    def sensitive() -> Any:
        return jsonify(ok=True)

    return app


@pytest.fixture
def alice(make_user: Any) -> User:
    return make_user("alice")


# -- helpers --


def frozen() -> Any:
    """Freeze the clock at the real current time (cookies signed before stay valid)."""
    return freeze_time(dt.datetime.now(dt.UTC))


def signed_in(app: Flask, **extra: Any) -> FlaskClient:
    client = app.test_client()
    assert login(client, "alice", **extra).status_code == 303
    return client


def cookie(client: FlaskClient, name: str = COOKIE) -> str | None:
    found = client.get_cookie(name)
    return found.value if found is not None else None


def sensitive_status(client: FlaskClient) -> int:
    return client.get("/sensitive", headers=JSON).status_code


def is_signed_in(client: FlaskClient) -> bool:
    status = client.get("/private", headers=JSON).status_code
    assert status in (200, 401)
    return status == 200


def events(db: Any, action: str) -> list[AuditEvent]:
    stmt = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
    return list(fresh(db).scalars(stmt))


def reauth_form(client: FlaskClient, password: str, nxt: str | None = None) -> Any:
    """Submit the confirmation form as a browser does (its CSRF token, its hidden next)."""
    url = "/account/reauth" + (f"?next={nxt}" if nxt else "")
    page = client.get(url).get_data(as_text=True)
    data = {"password": password, "csrf_token": form_token(page)}
    if nxt:
        data["next"] = nxt
    return client.post("/account/reauth", data=data)


# -- a fresh sign-in passes; a stale one must confirm --


def test_fresh_login_passes(app, alice):
    assert sensitive_status(signed_in(app)) == 200


def test_anonymous_gets_login_required_not_reauth(app):
    response = app.test_client().get("/sensitive", headers=JSON)
    assert response.status_code == 401
    assert response.get_json()["error"] == "login_required"


def test_login_is_fresh_until_the_end_of_the_window(app, alice):
    with frozen() as clock:
        client = signed_in(app)
        clock.tick(dt.timedelta(seconds=WINDOW))
        assert sensitive_status(client) == 200


def test_stale_browser_is_sent_to_confirm_the_password(app, alice):
    with frozen() as clock:
        client = signed_in(app)
        clock.tick(dt.timedelta(seconds=WINDOW + 1))
        response = client.get("/sensitive?tab=keys")
        assert response.status_code == 303
        location = urlsplit(response.headers["Location"])
        assert location.path == "/account/reauth"
        assert parse_qs(location.query) == {"next": ["/sensitive?tab=keys"]}
        assert is_signed_in(client), "stale is not signed out"


def test_stale_json_client_gets_401_reauthentication_required(app, alice):
    with frozen() as clock:
        client = signed_in(app)
        clock.tick(dt.timedelta(seconds=WINDOW + 1))
        response = client.get("/sensitive", headers=JSON)
        assert response.status_code == 401
        assert response.get_json()["error"] == "reauthentication_required"


def test_reauth_page_renders_the_form_with_next(app, alice):
    client = signed_in(app)
    response = client.get("/account/reauth?next=/sensitive")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'name="password"' in html
    assert 'name="next" value="/sensitive"' in html
    assert 'name="csrf_token"' in html


def test_reauth_page_needs_a_signed_in_user(app):
    client = app.test_client()
    assert client.get("/account/reauth", headers=JSON).status_code == 401
    assert post_json(client, "/account/reauth", {"password": PASSWORD}).status_code == 401


# -- a wrong password --


def test_wrong_password_is_400_and_audited(app, alice, db):
    with frozen() as clock:
        client = signed_in(app)
        clock.tick(dt.timedelta(seconds=WINDOW + 1))
        response = reauth_form(client, WRONG, "/sensitive")
        assert response.status_code == 400
        html = response.get_data(as_text=True)
        assert "The password is not correct." in html
        assert WRONG not in html
        assert sensitive_status(client) == 401
    [event] = events(db, "auth.reauth.failed")
    assert (event.actor_id, event.outcome) == (alice.id, "failure")
    assert WRONG not in event.details
    assert events(db, "auth.reauthenticated") == []


def test_wrong_password_json_is_400_with_the_field(app, alice, db):
    client = signed_in(app)
    response = post_json(client, "/account/reauth", {"password": WRONG})
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "invalid_input"
    assert set(body["fields"]) == {"password"}
    assert len(events(db, "auth.reauth.failed")) == 1


@pytest.mark.parametrize("body", [{}, {"password": ""}, {"password": 12345}, {"password": None}])
def test_missing_or_malformed_password_is_400(app, alice, body):
    response = post_json(signed_in(app), "/account/reauth", body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_input"


def test_reauth_without_csrf_is_refused(app, alice, db):
    client = signed_in(app)
    assert client.post("/account/reauth", data={"password": PASSWORD}).status_code == 400
    response = client.post("/account/reauth", json={"password": PASSWORD})
    assert response.status_code == 400
    assert response.get_json()["error"] == "csrf_failed"
    assert events(db, "auth.reauthenticated") == []


# -- the right password --


def test_right_password_goes_back_to_next_and_the_view_passes(app, alice, db):
    with frozen() as clock:
        client = signed_in(app)
        clock.tick(dt.timedelta(seconds=WINDOW + 1))
        assert sensitive_status(client) == 401
        response = reauth_form(client, PASSWORD, "/sensitive")
        assert response.status_code == 303
        assert response.headers["Location"] == "/sensitive"
        assert client.get("/sensitive").status_code == 200
    [event] = events(db, "auth.reauthenticated")
    assert (event.actor_id, event.target_id, event.outcome) == (alice.id, str(alice.id), "success")


def test_right_password_json(app, alice):
    with frozen() as clock:
        client = signed_in(app)
        clock.tick(dt.timedelta(seconds=WINDOW + 1))
        response = post_json(client, "/account/reauth", {"password": PASSWORD})
        assert response.status_code == 200
        assert response.get_json() == {"ok": True}
        assert sensitive_status(client) == 200


def test_S02_reauthentication_rotates_the_session_id(app, alice, db):
    client = signed_in(app)
    old = cookie(client)
    assert post_json(client, "/account/reauth", {"password": PASSWORD}).status_code == 200
    new = cookie(client)
    assert new is not None and new != old
    assert is_signed_in(client)
    stale = app.test_client()
    stale.set_cookie(COOKIE, old)
    assert not is_signed_in(stale), "the old id is dead"
    reasons = list(
        fresh(db).scalars(
            select(LoginSession.revoked_reason).where(LoginSession.revoked_at.is_not(None))
        )
    )
    assert reasons == ["reauthenticated"]


def test_confirmation_lasts_one_window(app, alice):
    with frozen() as clock:
        client = signed_in(app)
        clock.tick(dt.timedelta(seconds=WINDOW + 1))
        assert post_json(client, "/account/reauth", {"password": PASSWORD}).status_code == 200
        clock.tick(dt.timedelta(seconds=WINDOW))
        assert sensitive_status(client) == 200
        clock.tick(dt.timedelta(seconds=1))
        assert sensitive_status(client) == 401


@pytest.mark.parametrize(
    "nxt", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"]
)
def test_reauth_never_redirects_off_site(app, alice, nxt):
    client = signed_in(app)
    response = post(client, "/account/reauth", {"password": PASSWORD, "next": nxt})
    assert response.status_code == 303
    location = urlsplit(response.headers["Location"])
    assert not location.netloc
    assert location.path == "/account/sessions"


# -- only a password makes a session fresh --


def test_remember_me_restore_is_not_a_fresh_login(app, alice):
    """A session restored from a remember-me cookie was opened without a password (a stolen
    cookie, a shared computer): sensitive views must still ask for it."""
    with frozen() as clock:
        client = signed_in(app, remember="1")
        clock.tick(dt.timedelta(seconds=WINDOW + 1))
        client.delete_cookie(COOKIE)  # the browser restarted; remember-me signs it in
        assert is_signed_in(client)
        assert sensitive_status(client) == 401
        assert post_json(client, "/account/reauth", {"password": PASSWORD}).status_code == 200
        assert sensitive_status(client) == 200


def test_S02_privilege_rotation_does_not_make_a_stale_session_fresh(app, alice):
    """A new id after a role change keeps the session's age: no password was typed."""
    with frozen() as clock:
        client = signed_in(app)
        clock.tick(dt.timedelta(seconds=WINDOW + 1))
        assert sensitive_status(client) == 401
        with writing(), Session(app_engine(app)) as s:
            role = ensure_role(s, "editor", ["notes:read"])
            rbac.grant_role(s, actor=SYSTEM, user=s.get(User, alice.id), role=role)
            s.commit()
        old = cookie(client)
        assert client.get("/editors", headers=JSON).status_code == 200
        assert cookie(client) != old, "rotated"
        assert sensitive_status(client) == 401


def test_S02_privilege_rotation_keeps_a_recent_confirmation(app, alice):
    with frozen() as clock:
        client = signed_in(app)
        clock.tick(dt.timedelta(seconds=WINDOW + 1))
        assert post_json(client, "/account/reauth", {"password": PASSWORD}).status_code == 200
        with writing(), Session(app_engine(app)) as s:
            role = ensure_role(s, "editor", ["notes:read"])
            rbac.grant_role(s, actor=SYSTEM, user=s.get(User, alice.id), role=role)
            s.commit()
        assert sensitive_status(client) == 200
