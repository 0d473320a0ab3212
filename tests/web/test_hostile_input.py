"""Hostile and malformed input on every authentication endpoint (I01, I03, A14, Z03, L02).

The rule: every bad input is a clean 4xx with a JSON ``error`` code for API clients, never a
500, and it changes nothing (no user, no session, no new password hash).
"""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from flask_aaa.models import LoginSession, User
from tests.conftest import PASSWORD, csrf_token, fresh, login, post

NEW = "quartz-meadow-lantern-77"

#: Limits high enough that no test here is throttled: a 429 would hide what is tested.
ROOMY_LIMITS = {
    "AAA_LOGIN_LIMIT_PER_IP": "10000 per minute",
    "AAA_LOGIN_LIMIT_PER_ACCOUNT": "10000 per minute",
    "AAA_REGISTER_LIMIT_PER_IP": "10000 per hour",
    "AAA_CHANGE_PASSWORD_LIMIT": "10000 per hour",
}


@pytest.fixture
def config(config: dict[str, Any]) -> dict[str, Any]:
    config.update(ROOMY_LIMITS)
    return config


#: For each endpoint: a valid body, and which of its fields are required.
VALID = {
    "/auth/login": (
        {"login": "alice", "password": PASSWORD, "next": "/notes"},
        {"login", "password"},
    ),
    "/auth/register": (
        {
            "username": "dora",
            "email": "dora@example.org",
            "password": PASSWORD,
            "confirm": PASSWORD,
        },
        {"username", "email", "password"},
    ),
    "/auth/password": (
        {"current_password": PASSWORD, "new_password": NEW, "confirm": NEW},
        {"current_password", "new_password"},
    ),
}
ENDPOINTS = list(VALID)


def snapshot(db: Any) -> tuple[Any, ...]:
    """What a bad request must not change: user and session counts, and password hashes."""
    db = fresh(db)
    return (
        db.scalar(select(func.count()).select_from(User)),
        db.scalar(select(func.count()).select_from(LoginSession)),
        sorted(db.scalars(select(User.password_hash))),
    )


class Clients(dict):  # type: ignore[type-arg]
    """A client per endpoint, made on first use: signed in as alice for /auth/password."""

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app

    def __missing__(self, path: str) -> FlaskClient:
        client = self.app.test_client()
        if path == "/auth/password":
            assert login(client, "alice").status_code == 303
        self[path] = client
        return client


@pytest.fixture
def prepared(app: Any, make_user: Any) -> Clients:
    make_user("alice")
    return Clients(app)


def send(client: FlaskClient, path: str, data: Any, content_type: str, **headers: str) -> Any:
    return client.post(
        path,
        data=data,
        content_type=content_type,
        headers={"X-CSRFToken": csrf_token(client), "Accept": "application/json", **headers},
    )


def assert_json_4xx(response: Any, case: str = "") -> dict[str, Any]:
    """A 4xx with a JSON body holding a non-empty ``error`` code; ``case`` names the input."""
    text = response.get_data(as_text=True)[:300]
    assert 400 <= response.status_code < 500, (case, response.status_code, text)
    assert response.mimetype == "application/json", (case, text)
    body = response.get_json()
    assert isinstance(body.get("error"), str), (case, body)
    assert body["error"], case
    return body


# -- I01: malformed JSON --

MALFORMED_JSON = {
    "truncated": b"{",
    "array": b"[]",
    "string": b'"x"',
    "null": b"null",
    "number": b"1",
    "true": b"true",
    "empty": b"",
    "not-utf8": b"\xff\xfe\xfd",
    "trailing-garbage": b'{"login": "alice"} xx',
    "single-quotes": b"{'login': 'alice'}",
    "nan": b'{"login": NaN}',
    "object-in-array": b'[{"login": "alice", "password": "x"}]',
}


@pytest.mark.parametrize("path", ENDPOINTS)
def test_I01_malformed_json_body_is_a_json_400(prepared, db, path):
    client = prepared[path]
    before = snapshot(db)
    for case, body in MALFORMED_JSON.items():
        response = send(client, path, body, "application/json")
        assert assert_json_4xx(response, case)["error"] == "invalid_input", case
    assert snapshot(db) == before


@pytest.mark.parametrize(
    "body", [b"[" * 30000, b'{"a":' * 10000], ids=["deep-array", "deep-object"]
)
@pytest.mark.parametrize("path", ENDPOINTS)
def test_I01_deeply_nested_json_is_a_json_400(prepared, db, path, body):
    """Well under the body limit, but deeper than the JSON parser's recursion limit."""
    client = prepared[path]
    before = snapshot(db)
    assert_json_4xx(send(client, path, body, "application/json"))
    assert snapshot(db) == before


# -- I01: fields of the wrong type --

WRONG_TYPES = {
    "dict": {"a": 1},
    "list": ["alice"],
    "int": 42,
    "float": 1.5,
    "true": True,
    "false": False,
    "null": None,
}


@pytest.mark.parametrize("path", ENDPOINTS)
def test_I01_field_of_wrong_type_is_a_json_400_naming_it(prepared, db, path):
    """Each field in turn gets each wrong type while the others stay valid."""
    valid, required = VALID[path]
    client = prepared[path]
    before = snapshot(db)
    for kind, value in WRONG_TYPES.items():
        for name in valid:
            if value is None and name not in required:
                continue  # null is "absent": an optional field may be left out
            case = f"{name}={kind}"
            response = client.post(
                path, json={**valid, name: value}, headers={"X-CSRFToken": csrf_token(client)}
            )
            body = assert_json_4xx(response, case)
            assert response.status_code == 400, case
            assert body["error"] == "invalid_input", case
            assert name in body["fields"], case
    assert snapshot(db) == before


# -- I01: a wrong Content-Type --

WRONG_CONTENT = {
    "text-plain": ("text/plain", b'{"login": "alice", "password": "x"}'),
    "xml": ("application/xml", b"<login>alice</login>"),
    "multipart-no-boundary": ("multipart/form-data", b"garbage"),
    "multipart-broken": ("multipart/form-data; boundary=xx", b"--xx\r\ngarbage"),
    "urlencoded-garbage": ("application/x-www-form-urlencoded", b"%%%&&&=\xff%zz"),
    "octet-stream": ("application/octet-stream", b"\x00\x01\x02"),
    "json-bad-charset": ("application/json; charset=klingon", b'{"login": "alice"}'),
}


@pytest.mark.parametrize("path", ENDPOINTS)
def test_I01_wrong_content_type_is_a_json_4xx(prepared, db, path):
    """With ``Accept: application/json`` (content negotiation picks the error format)."""
    client = prepared[path]
    before = snapshot(db)
    for case, (content_type, body) in WRONG_CONTENT.items():
        assert_json_4xx(send(client, path, body, content_type), case)
    assert snapshot(db) == before


@pytest.mark.parametrize("path", ENDPOINTS)
def test_I01_wrong_content_type_without_accept_is_still_4xx(prepared, db, path):
    """A client that does not ask for JSON gets the HTML error page, but never a 500."""
    client = prepared[path]
    before = snapshot(db)
    response = client.post(
        path,
        data=b'{"login": "alice"}',
        content_type="text/plain",
        headers={"X-CSRFToken": csrf_token(client)},
    )
    assert 400 <= response.status_code < 500
    assert snapshot(db) == before


def test_I01_logout_ignores_a_malformed_body_but_never_fails(prepared, db):
    client = prepared["/auth/password"]
    response = send(client, "/auth/logout", b"[" * 100, "application/json")
    assert response.status_code == 200
    assert response.get_json() == {"ok": True}


@pytest.mark.parametrize("path", [*ENDPOINTS, "/auth/logout", "/auth/csrf"])
def test_I01_other_methods_are_405(prepared, path):
    client = prepared["/auth/password"]
    for method in ("PUT", "PATCH", "DELETE"):
        response = client.open(
            path,
            method=method,
            json={},
            headers={"X-CSRFToken": csrf_token(client), "Accept": "application/json"},
        )
        assert_json_4xx(response, method)
        assert response.status_code == 405, method


# -- A14 / I03: characters that are not text --


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/auth/login", "login"),
        ("/auth/login", "password"),
        ("/auth/register", "username"),
        ("/auth/register", "email"),
        ("/auth/register", "password"),
        ("/auth/password", "current_password"),
        ("/auth/password", "new_password"),
    ],
)
def test_I01_lone_surrogate_in_a_json_string_is_a_4xx(prepared, db, path, field):
    """JSON may carry an unpaired UTF-16 surrogate ("\\ud800") that no database or hasher
    can encode; it must be refused as bad input, not crash the request."""
    valid, _ = VALID[path]
    value = "\ud800" if field != "new_password" else "\ud800" + NEW
    client = prepared[path]
    before = snapshot(db)
    response = client.post(
        path, json={**valid, field: value}, headers={"X-CSRFToken": csrf_token(client)}
    )
    assert_json_4xx(response)
    assert snapshot(db) == before


@pytest.mark.parametrize(
    "name", ["alice\x00", "alice\r\n\r\n<h1>x</h1>", "\x1b[31malice", "al\u2028ice", "\x7f"]
)
def test_A14_control_characters_in_login_never_fail(prepared, db, name):
    client = prepared["/auth/login"]
    before = snapshot(db)
    response = post(client, "/auth/login", {"login": name, "password": PASSWORD})
    assert response.status_code in (400, 401)
    assert "<h1>x</h1>" not in response.get_data(as_text=True)
    assert snapshot(db) == before


# -- Z03: mass assignment; L02: reflected input is escaped --


def test_Z03_register_ignores_fields_it_does_not_know(app, client, db):
    response = client.post(
        "/auth/register",
        json={
            **VALID["/auth/register"][0],
            "id": 999,
            "roles": ["admin"],
            "active": False,
            "password_hash": "$2b$04$forged",
            "login_count": 5,
        },
        headers={"X-CSRFToken": csrf_token(client)},
    )
    assert response.status_code == 201
    user = fresh(db).scalar(select(User))
    assert user.id != 999
    assert user.active is True
    assert user.roles == []
    assert user.password_hash.startswith("$argon2id$")
    assert user.login_count == 0


def test_L02_register_form_escapes_reflected_username(client):
    nasty = '"><script>alert(1)</script>'
    response = post(
        client,
        "/auth/register",
        {"username": nasty, "email": "x@example.org", "password": PASSWORD, "confirm": PASSWORD},
    )
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;" in html or "&#34;&gt;&lt;script" in html


def test_L02_login_form_escapes_a_reflected_next(client):
    nasty = '/"><script>alert(1)</script>'
    response = post(client, "/auth/login", {"login": "nobody", "password": "x", "next": nasty})
    assert response.status_code == 401
    assert "<script>alert(1)" not in response.get_data(as_text=True)


def test_I03_hostile_request_id_is_not_echoed(client):
    response = client.get("/auth/login", headers={"X-Request-ID": "<script>x</script>"})
    assert response.status_code == 200
    assert "<" not in response.headers["X-Request-ID"]


# -- property: arbitrary text never makes a 500 --


@settings(
    max_examples=60,
    deadline=None,
    database=None,  # write no example database into the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    login_name=st.text(max_size=300),
    password=st.text(max_size=300),
    username=st.text(max_size=80),
    email=st.text(max_size=300),
    as_json=st.booleans(),
)
def test_I01_property_arbitrary_text_never_fails_login_or_register(
    app, login_name, password, username, email, as_json
):
    client = app.test_client()
    token = csrf_token(client)
    bodies = {
        "/auth/login": {"login": login_name, "password": password},
        "/auth/register": {
            "username": username,
            "email": email,
            "password": password,
            "confirm": password,
        },
    }
    for path, body in bodies.items():
        if as_json:
            response = client.post(path, json=body, headers={"X-CSRFToken": token})
        else:
            response = client.post(path, data={**body, "csrf_token": token})
        assert response.status_code < 500, (path, response.status_code)
        assert response.status_code != 429, "raise the limits in ROOMY_LIMITS"
