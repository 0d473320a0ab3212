"""Changing the password: the current one is checked (A17), the change is throttled and
audited, the session id rotates and every other session ends (S02), and CSRF holds (Z05)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from flask_aaa.models import AuditEvent, LoginSession, User
from tests.conftest import PASSWORD, csrf_token, fresh, login, post, post_json

COOKIE = "aaa_session"
NEW = "quartz-meadow-lantern-77"


@pytest.fixture
def config(config: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    """The shared test config plus this test's ``AAA_*`` overrides (see :func:`with_config`)."""
    config.update(getattr(request, "param", {}))
    return config


def with_config(**values: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("config", [values], indirect=True, ids=["config"])


# -- helpers --


def is_signed_in(client: FlaskClient) -> bool:
    status = client.get("/private", headers={"Accept": "application/json"}).status_code
    assert status in (200, 401)
    return status == 200


def cookie_value(client: FlaskClient) -> str:
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def session_id(app: Any, client: FlaskClient) -> str | None:
    """The server-session token inside the client's signed session cookie."""
    serializer = app.session_interface.get_signing_serializer(app)
    return serializer.loads(cookie_value(client)).get("_user_id")


def replay(app: Any, value: str) -> FlaskClient:
    other = app.test_client()
    other.set_cookie(COOKIE, value)
    return other


@pytest.fixture
def alice(make_user: Any) -> User:
    return make_user("alice")


@pytest.fixture
def signed_in(app: Any, alice: User) -> FlaskClient:
    client = app.test_client()
    assert login(client, "alice").status_code == 303
    return client


def stored_hash(db: Any, user: User) -> str:
    return str(fresh(db).scalar(select(User.password_hash).where(User.id == user.id)))


def change(client: FlaskClient, current: str = PASSWORD, new: str = NEW, **extra: Any) -> Any:
    fields = {"current_password": current, "new_password": new, "confirm": new, **extra}
    return post(client, "/auth/password", fields)


def events(db: Any, action: str) -> list[AuditEvent]:
    return list(
        fresh(db).scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        )
    )


def live_sessions(db: Any) -> list[LoginSession]:
    return list(fresh(db).scalars(select(LoginSession).where(LoginSession.revoked_at.is_(None))))


# -- the happy path --


def test_password_change_form_page_needs_a_login(client):
    response = client.get("/auth/password")
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/auth/login")
    api = client.get("/auth/password", headers={"Accept": "application/json"})
    assert api.status_code == 401


def test_password_change_success_new_password_works_old_does_not(app, signed_in, alice, db):
    before = stored_hash(db, alice)
    response = change(signed_in)
    assert response.status_code == 303
    assert response.headers["Location"] == "/account/activity"
    assert stored_hash(db, alice) != before
    assert stored_hash(db, alice).startswith("$argon2id$")
    assert login(app.test_client(), "alice", PASSWORD).status_code == 401
    assert login(app.test_client(), "alice", NEW).status_code == 303
    assert len(events(db, "auth.password.changed")) == 1


# -- S02: the session id rotates; other sessions end --


def test_S02_password_change_rotates_the_session_id(app, signed_in, db):
    old_cookie = cookie_value(signed_in)
    sid = session_id(app, signed_in)
    old_token = csrf_token(signed_in)
    assert change(signed_in).status_code == 303

    assert cookie_value(signed_in) != old_cookie
    assert session_id(app, signed_in) != sid
    assert is_signed_in(signed_in)
    # A copy of the cookie saved before the change is anonymous now.
    assert not is_signed_in(replay(app, old_cookie))
    # So is the CSRF token of the old session.
    refused = signed_in.post("/auth/logout", data={"csrf_token": old_token})
    assert refused.status_code == 400
    assert is_signed_in(signed_in)


def test_S02_password_change_ends_every_other_session(app, signed_in, db):
    laptop = app.test_client()
    phone = app.test_client()
    assert login(laptop, "alice").status_code == 303
    assert login(phone, "alice").status_code == 303

    response = post_json(
        signed_in,
        "/auth/password",
        {"current_password": PASSWORD, "new_password": NEW, "confirm": NEW},
    )
    assert response.status_code == 200
    assert response.get_json() == {"ok": True, "other_sessions_ended": 2}
    assert not is_signed_in(laptop)
    assert not is_signed_in(phone)
    assert is_signed_in(signed_in)

    live = live_sessions(db)
    assert len(live) == 1
    reasons = sorted(
        r
        for r in fresh(db).scalars(
            select(LoginSession.revoked_reason).where(LoginSession.revoked_at.is_not(None))
        )
    )
    assert reasons == ["password_changed", "password_changed", "rotated"]


def test_S02_other_users_sessions_survive(app, signed_in, make_user):
    make_user("bob")
    bob = app.test_client()
    assert login(bob, "bob").status_code == 303
    assert change(signed_in).status_code == 303
    assert is_signed_in(bob)


# -- A17: the current password is required, checked, throttled and audited --


def test_A17_wrong_current_password_is_400_and_audited(app, signed_in, alice, db):
    before = stored_hash(db, alice)
    response = change(signed_in, current="not-" + PASSWORD)
    assert response.status_code == 400
    assert stored_hash(db, alice) == before
    assert is_signed_in(signed_in)
    failed = events(db, "auth.password.change_failed")
    assert len(failed) == 1
    assert failed[0].outcome == "failure"
    assert failed[0].target_id == str(alice.id)
    assert "password" not in failed[0].details.replace("bad_current_password", "")
    assert events(db, "auth.password.changed") == []


def test_A17_wrong_current_password_json_names_the_field(signed_in, alice, db):
    response = post_json(
        signed_in,
        "/auth/password",
        {"current_password": "nope-" + PASSWORD, "new_password": NEW, "confirm": NEW},
    )
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "invalid_input"
    assert set(body["fields"]) == {"current_password"}


@pytest.mark.parametrize("current", [None, ""], ids=["missing", "empty"])
def test_A17_missing_current_password_is_400(signed_in, alice, db, current):
    before = stored_hash(db, alice)
    fields: dict[str, Any] = {"new_password": NEW, "confirm": NEW}
    if current is not None:
        fields["current_password"] = current
    response = post_json(signed_in, "/auth/password", fields)
    assert response.status_code == 400
    assert "current_password" in response.get_json()["fields"]
    assert stored_hash(db, alice) == before


@with_config(AAA_CHANGE_PASSWORD_LIMIT="3 per minute")
def test_A17_password_change_is_throttled_per_user(app, signed_in, alice, db):
    for _ in range(3):
        assert change(signed_in, current="guess-" + PASSWORD).status_code == 400
    before = stored_hash(db, alice)
    # Even the right password waits now, from any IP.
    response = signed_in.post(
        "/auth/password",
        data={
            "current_password": PASSWORD,
            "new_password": NEW,
            "confirm": NEW,
            "csrf_token": csrf_token(signed_in),
        },
        environ_base={"REMOTE_ADDR": "10.17.0.9"},
    )
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert stored_hash(db, alice) == before
    assert len(events(db, "auth.password.change_failed")) == 3


@with_config(AAA_CHANGE_PASSWORD_LIMIT="2 per minute")
def test_A17_throttle_of_one_user_does_not_touch_another(app, signed_in, make_user):
    for _ in range(2):
        change(signed_in, current="guess-" + PASSWORD)
    assert change(signed_in).status_code == 429
    make_user("bob")
    bob = app.test_client()
    assert login(bob, "bob").status_code == 303
    assert change(bob).status_code == 303


# -- new-password rules --


@pytest.mark.parametrize(
    "new",
    ["short-pw-1", "1qaz2wsx3edc4rfv", "alice-harbor-violin-42", "x" * 257],
    ids=["short", "common", "contains-username", "too-long"],
)
def test_password_change_refuses_a_weak_new_password(signed_in, alice, db, new):
    before = stored_hash(db, alice)
    response = post_json(
        signed_in,
        "/auth/password",
        {"current_password": PASSWORD, "new_password": new, "confirm": new},
    )
    assert response.status_code == 400
    assert response.get_json()["fields"]
    assert stored_hash(db, alice) == before
    assert is_signed_in(signed_in)


def test_password_change_policy_error_names_the_new_password_field(signed_in):
    """A JSON client (and the form's aria-describedby) ties an error to the field sent:
    a weak ``new_password`` must be reported under ``new_password``."""
    response = post_json(
        signed_in,
        "/auth/password",
        {"current_password": PASSWORD, "new_password": "short-pw-1", "confirm": "short-pw-1"},
    )
    assert response.status_code == 400
    assert "new_password" in response.get_json()["fields"]


def test_password_change_confirm_mismatch_is_400(signed_in, alice, db):
    before = stored_hash(db, alice)
    response = change(signed_in, confirm=NEW + "x")
    assert response.status_code == 400
    assert "do not match" in response.get_data(as_text=True)
    assert stored_hash(db, alice) == before


# -- Z05: CSRF --


def test_Z05_password_change_without_csrf_is_400_and_changes_nothing(app, signed_in, alice, db):
    before = stored_hash(db, alice)
    sid = session_id(app, signed_in)
    fields = {"current_password": PASSWORD, "new_password": NEW, "confirm": NEW}
    assert signed_in.post("/auth/password", data=fields).status_code == 400
    assert signed_in.post("/auth/password", json=fields).status_code == 400
    forged = signed_in.post("/auth/password", json=fields, headers={"X-CSRFToken": "forged"})
    assert forged.status_code == 400
    assert stored_hash(db, alice) == before
    assert session_id(app, signed_in) == sid
    assert is_signed_in(signed_in)
    assert len(live_sessions(db)) == 1
    assert events(db, "auth.password.changed") == []


# -- A15: body limits --


def test_A15_ten_megabyte_body_on_password_change_is_413(signed_in, alice, db):
    before = stored_hash(db, alice)
    big = "x" * (10 * 1024 * 1024)
    response = post_json(
        signed_in,
        "/auth/password",
        {"current_password": PASSWORD, "new_password": big, "confirm": big},
    )
    assert response.status_code == 413
    assert response.get_json()["error"] == "too_large"
    assert stored_hash(db, alice) == before


def test_A15_one_megabyte_current_password_is_refused_before_hashing(app, signed_in, monkeypatch):
    passwords = app.extensions["aaa"].passwords
    calls: list[Any] = []
    monkeypatch.setattr(passwords, "verify", lambda *a, **k: calls.append(a) or (False, None))
    response = post(
        signed_in,
        "/auth/password",
        {"current_password": "x" * 1024 * 1024, "new_password": NEW, "confirm": NEW},
    )
    assert response.status_code in (400, 413)
    assert calls == []


def test_password_change_audit_event_holds_no_secret(signed_in, db):
    assert change(signed_in).status_code == 303
    for event in fresh(db).scalars(select(AuditEvent)):
        text = json.dumps([event.details, event.target_label, event.actor_name])
        assert PASSWORD not in text
        assert NEW not in text
    assert fresh(db).scalar(select(func.count()).select_from(AuditEvent)) > 0
