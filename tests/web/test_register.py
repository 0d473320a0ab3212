"""Self-service registration over HTTP: success, password policy, identifier rules, a taken
email that is not announced (A01), closed registration, email-only mode, CSRF and limits."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from flask_aaa.models import AuditEvent, LoginSession, User
from tests.conftest import PASSWORD, csrf_token, form_token, fresh, login, post, post_json


@pytest.fixture
def config(config: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    """The shared test config plus this test's ``AAA_*`` overrides (see :func:`with_config`)."""
    config.update(getattr(request, "param", {}))
    return config


def with_config(**values: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("config", [values], indirect=True, ids=["config"])


def fields(**overrides: Any) -> dict[str, Any]:
    base = {
        "username": "dora",
        "email": "dora@example.org",
        "password": PASSWORD,
        "confirm": PASSWORD,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def users(db: Any) -> list[User]:
    return list(fresh(db).scalars(select(User).order_by(User.id)))


def user_count(db: Any) -> int:
    return int(fresh(db).scalar(select(func.count()).select_from(User)) or 0)


def register_json(client: Any, **overrides: Any) -> Any:
    return post_json(client, "/auth/register", fields(**overrides))


# -- success --


def test_register_form_success_redirects_to_login(client, db):
    response = post(client, "/auth/register", fields())
    assert response.status_code == 303
    assert response.headers["Location"] == "/auth/login"
    (user,) = users(db)
    assert (user.username, user.email, user.active) == ("dora", "dora@example.org", True)
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash
    # Registering does not sign in: the user is sent to the login page.
    assert client.get("/private", headers={"Accept": "application/json"}).status_code == 401
    assert login(client, "dora").status_code == 303


def test_register_json_success_is_201(client, db):
    response = register_json(client)
    assert response.status_code == 201
    body = response.get_json()
    assert body == {
        "user": {"id": users(db)[0].id, "username": "dora", "email": "dora@example.org"}
    }
    assert "password" not in json.dumps(body)
    assert fresh(db).scalar(select(func.count()).select_from(LoginSession)) == 0


def test_register_is_audited(client, db):
    assert register_json(client).status_code == 201
    actions = list(fresh(db).scalars(select(AuditEvent.action)))
    assert actions.count("user.registered") == 1


def test_register_without_confirm_field_is_accepted_by_json(client, db):
    assert register_json(client, confirm=None).status_code == 201


# -- password policy --


@pytest.mark.parametrize(
    ("password", "words"),
    [
        ("short-pw-1", "at least"),
        ("1qaz2wsx3edc4rfv", "common"),
        ("dora-harbor-violin-42", "name"),
        ("harbor-violin-DORA-42", "name"),
        ("Flask-AAA-harbor-violin", "name"),
        ("x" * 257, "at most"),
    ],
    ids=["short", "common", "contains-username", "contains-username-upper", "app-name", "long"],
)
def test_register_policy_failure_is_400_with_a_password_field_error(client, db, password, words):
    response = register_json(client, password=password, confirm=password)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "invalid_input"
    assert set(body["fields"]) == {"password"}
    assert words in body["fields"]["password"]
    assert user_count(db) == 0


def test_register_password_containing_email_local_part_is_refused(client, db):
    response = register_json(
        client,
        username="dora",
        email="harborview@example.org",
        password="harborview-violin-42",
        confirm="harborview-violin-42",
    )
    assert response.status_code == 400
    assert "password" in response.get_json()["fields"]
    assert user_count(db) == 0


def test_register_long_passphrase_is_accepted(client, db):
    """NIST: at least 64 characters allowed, no composition rules."""
    phrase = "a lowercase passphrase made of many quite ordinary words indeed ok"
    assert len(phrase) >= 64
    assert register_json(client, password=phrase, confirm=phrase).status_code == 201


def test_register_form_policy_failure_shows_the_error_on_the_form(client, db):
    response = post(client, "/auth/register", fields(password="short-pw-1", confirm="short-pw-1"))
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert 'id="e-password"' in html
    assert "Use at least 15 characters." in html
    # What was typed is kept, except the passwords.
    assert 'value="dora"' in html
    assert "short-pw-1" not in html
    assert user_count(db) == 0


def test_register_confirm_mismatch_is_400(client, db):
    response = register_json(client, confirm=PASSWORD + "!")
    assert response.status_code == 400
    assert set(response.get_json()["fields"]) == {"confirm"}
    assert user_count(db) == 0


# -- identifiers --


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"username": None}, "username"),
        ({"username": "ab"}, "username"),
        ({"username": "a" * 33}, "username"),
        ({"username": "dora smith"}, "username"),
        ({"username": "dora@home"}, "username"),
        ({"email": None}, "email"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "dora@"}, "email"),
        ({"email": "a" * 250 + "@example.org"}, "email"),
    ],
    ids=[
        "no-username",
        "short-username",
        "long-username",
        "space",
        "at-sign",
        "no-email",
        "bad-email",
        "no-domain",
        "long-email",
    ],
)
def test_register_bad_identifier_is_400_on_its_field(client, db, overrides, field):
    response = register_json(client, **overrides)
    assert response.status_code == 400
    assert field in response.get_json()["fields"]
    assert user_count(db) == 0


def test_register_taken_username_is_400(client, make_user, db):
    make_user("dora", email="someone@example.org")
    response = register_json(client, username="DORA")
    assert response.status_code == 400
    assert set(response.get_json()["fields"]) == {"username"}
    assert user_count(db) == 1


def test_A13_fullwidth_username_is_normalized_and_collides(client, make_user, db):
    make_user("dora", email="someone@example.org")
    response = register_json(client, username="\uff24\uff4f\uff52\uff41")
    assert response.status_code == 400
    assert "username" in response.get_json()["fields"]


def test_A13_username_is_stored_nfkc_normalized(client, db):
    assert register_json(client, username="\uff24\uff4f\uff52\uff41").status_code == 201
    assert users(db)[0].username == "Dora"
    assert users(db)[0].username_key == "dora"


# -- A01: a taken email is not announced --

#: Words that would tell an attacker the address has an account here.
REVEALING = ("taken", "exist", "already", "registered", "in use", "account")


@pytest.mark.parametrize("variant", ["dora@example.org", "DORA@Example.ORG", " dora@example.org "])
def test_A01_taken_email_gets_a_generic_field_error(client, make_user, db, variant):
    make_user("someone", email="dora@example.org")
    response = register_json(client, username="newcomer", email=variant)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "invalid_input"
    assert set(body["fields"]) == {"email"}
    message = body["fields"]["email"].lower()
    for word in REVEALING:
        assert word not in message
    assert user_count(db) == 1


def test_A01_taken_email_answer_has_the_shape_of_any_other_field_error(client, make_user):
    """Same status, same keys, same headers as an ordinary invalid-field answer."""
    make_user("someone", email="dora@example.org")
    taken = register_json(client, username="newcomer", email="dora@example.org")
    other = register_json(client, username="newcomer", email="broken-address")
    assert taken.status_code == other.status_code == 400
    assert set(taken.get_json()) == set(other.get_json())
    assert set(taken.get_json()["fields"]) == set(other.get_json()["fields"]) == {"email"}
    volatile = {"X-Request-ID", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Content-Length"}
    assert sorted(k for k, _ in taken.headers.items() if k not in volatile) == sorted(
        k for k, _ in other.headers.items() if k not in volatile
    )


def test_A01_taken_email_html_form_error_is_generic(client, make_user):
    make_user("someone", email="dora@example.org")
    response = post(client, "/auth/register", fields(username="newcomer"))
    assert response.status_code == 400
    html = response.get_data(as_text=True).lower()
    assert 'id="e-email"' in html
    for word in ("taken", "exists", "already", "registered"):
        assert word not in html


# -- closed registration --


@with_config(AAA_ENABLE_REGISTRATION=False)
def test_register_closed_is_403_for_json_clients(client, db):
    response = register_json(client)
    assert response.status_code == 403
    body = response.get_json()
    assert isinstance(body["error"], str)
    assert "closed" in json.dumps(body).lower()
    assert user_count(db) == 0
    # The login page no longer offers it.
    assert "/auth/register" not in client.get("/auth/login").get_data(as_text=True)


@with_config(AAA_ENABLE_REGISTRATION=False)
def test_register_closed_is_403_for_browsers(client, db):
    page = client.get("/auth/register")
    assert page.status_code == 403
    assert "Registration is closed." in page.get_data(as_text=True)
    form = client.post("/auth/register", data={**fields(), "csrf_token": csrf_token(client)})
    assert form.status_code == 403
    assert user_count(db) == 0


# -- email-only and username-only modes --


@with_config(AAA_ENABLE_USERNAME=False)
def test_register_email_only_mode_logs_in_by_email(app, client, db):
    page = client.get("/auth/register").get_data(as_text=True)
    assert 'name="username"' not in page
    response = post(
        client,
        "/auth/register",
        {"email": "erin@example.org", "password": PASSWORD, "confirm": PASSWORD},
    )
    assert response.status_code == 303
    (user,) = users(db)
    assert user.username is None
    assert user.email == "erin@example.org"
    assert login(app.test_client(), "erin@example.org").status_code == 303
    assert login(app.test_client(), "ERIN@example.org").status_code == 303
    # There are no usernames: the local part alone is not a login.
    assert login(app.test_client(), "erin").status_code == 401


@with_config(AAA_ENABLE_USERNAME=False)
def test_register_email_only_mode_ignores_a_sent_username(client, db):
    assert register_json(client, email="erin@example.org", username="erin").status_code == 201
    assert users(db)[0].username is None


@with_config(AAA_ENABLE_EMAIL=False)
def test_register_username_only_mode(app, client, db):
    response = register_json(client, email=None)
    assert response.status_code == 201
    assert users(db)[0].email is None
    assert login(app.test_client(), "dora").status_code == 303


# -- CSRF, limits, body size --


def test_Z05_register_without_csrf_is_400_and_creates_nobody(client, db):
    client.get("/auth/register")
    assert client.post("/auth/register", data=fields()).status_code == 400
    assert client.post("/auth/register", json=fields()).status_code == 400
    assert user_count(db) == 0


def test_register_form_page_carries_a_csrf_token(client):
    page = client.get("/auth/register")
    assert page.status_code == 200
    assert form_token(page.get_data(as_text=True))
    assert page.headers["Cache-Control"] == "no-store"


@with_config(AAA_REGISTER_LIMIT_PER_IP="2 per hour")
def test_register_is_rate_limited_per_ip(app, client, db):
    for i in range(2):
        response = register_json(client, username=f"user{i}", email=f"user{i}@example.org")
        assert response.status_code == 201
    response = register_json(client, username="user9", email="user9@example.org")
    assert response.status_code == 429
    assert "Retry-After" in response.headers
    assert user_count(db) == 2
    other = app.test_client()
    token = csrf_token(other)
    ok = other.post(
        "/auth/register",
        json=fields(username="user8", email="user8@example.org"),
        headers={"X-CSRFToken": token},
        environ_base={"REMOTE_ADDR": "10.20.0.1"},
    )
    assert ok.status_code == 201


def test_A15_ten_megabyte_registration_is_413(client, db):
    big = "x" * (10 * 1024 * 1024)
    response = register_json(client, password=big, confirm=big)
    assert response.status_code == 413
    assert user_count(db) == 0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"username": "dora\x00root"}, "username"),
        ({"username": "dora\r\nx"}, "username"),
        ({"username": "do\u202era"}, "username"),
        ({"email": "dora\r\n@example.org"}, "email"),
        ({"email": "dora@example.org\r\nBcc: x@evil.com"}, "email"),
        ({"password": PASSWORD + "\x00", "confirm": PASSWORD + "\x00"}, "password"),
    ],
    ids=["nul-username", "crlf-username", "bidi-username", "crlf-email", "bcc-email", "nul-pw"],
)
def test_A14_control_characters_in_registration_are_400(client, db, overrides, field):
    response = register_json(client, **overrides)
    assert response.status_code == 400
    assert field in response.get_json()["fields"]
    assert user_count(db) == 0
