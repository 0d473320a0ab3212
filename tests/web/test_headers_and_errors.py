"""Black-box tests of response headers (C04) and of failures: the database down (V01) and
errors that must stay generic."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

import flask_aaa.services.sessions as sessions_service
from flask_aaa import public
from tests.conftest import app_engine, build_app, csrf_token, login, post_json

JSON = {"Accept": "application/json"}

#: What a leaked database error would show: SQL, a connection string with a password.
DSN = "postgresql://aaa:hunter2@db.internal:5432/aaa"
SQL = "SELECT aaa_login_sessions.token_hash FROM aaa_login_sessions"
LEAKS = ("SELECT", "aaa_login_sessions", "hunter2", "postgresql://", "db.internal", "Traceback")


def vary(response: Any) -> set[str]:
    values = ",".join(response.headers.getlist("Vary"))
    return {v.strip().lower() for v in values.split(",") if v.strip()}


def hsts_max_age(response: Any) -> int:
    match = re.search(r"max-age=(\d+)", response.headers.get("Strict-Transport-Security", ""))
    return int(match.group(1)) if match else -1


def assert_base_headers(response: Any) -> None:
    h = response.headers
    assert h.get("X-Content-Type-Options") == "nosniff"
    assert h.get("X-Frame-Options") == "DENY"
    assert h.get("Referrer-Policy") in ("no-referrer", "same-origin", "strict-origin")
    csp = h.get("Content-Security-Policy", "")
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "object-src 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp


@pytest.fixture
def signed_in(client: Any, make_user: Any) -> Any:
    make_user("alice", roles=["reader"], perms={"reader": ["notes:read", "aaa:audit:read"]})
    assert login(client, "alice").status_code == 303
    return client


# -- C04: headers --


@pytest.mark.parametrize("path", ["/", "/auth/login", "/auth/register", "/auth/csrf"])
def test_C04_security_headers_on_public_pages(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert_base_headers(response)


AUTH_PAGES = ["/auth/login", "/auth/register", "/auth/csrf"]


@pytest.mark.parametrize("path", AUTH_PAGES)
def test_C04_auth_pages_are_not_stored(client, path):
    assert "no-store" in client.get(path).headers.get("Cache-Control", "")


@pytest.mark.parametrize("path", AUTH_PAGES)
def test_C04_auth_pages_keep_the_referer_on_this_site(client, path):
    """No URL of these pages carries a secret, and their forms must send a same-origin
    Referer (CSRF checking over HTTPS needs it): the Referer never leaves the site."""
    assert client.get(path).headers.get("Referrer-Policy") == "same-origin"


@pytest.mark.parametrize(
    "path", ["/auth/password", "/account/activity", "/account/activity.jsonl", "/admin/audit"]
)
def test_C04_signed_in_library_pages_are_not_stored(signed_in, path):
    response = signed_in.get(path)
    assert response.status_code == 200
    assert_base_headers(response)
    assert "no-store" in response.headers.get("Cache-Control", "")


def test_C04_login_post_response_is_not_stored(client, make_user):
    make_user("alice")
    response = login(client, "alice")
    assert response.status_code == 303
    assert "no-store" in response.headers.get("Cache-Control", "")
    assert_base_headers(response)


@pytest.mark.parametrize("path", ["/", "/auth/login", "/private", "/notes"])
def test_C04_vary_cookie(client, path):
    assert "cookie" in vary(client.get(path))


def test_C04_vary_cookie_on_signed_in_pages(signed_in):
    assert "cookie" in vary(signed_in.get("/notes"))
    assert "cookie" in vary(signed_in.get("/account/activity", headers=JSON))


@pytest.mark.parametrize("path", ["/", "/auth/login", "/private", "/admin/audit"])
def test_C04_hsts_of_at_least_a_year_over_https(app, path):
    client = app.test_client()
    response = client.get(path, base_url="https://localhost")
    assert hsts_max_age(response) >= 31_536_000


def test_C04_hsts_on_signed_in_https_pages(app, make_user):
    make_user("alice")
    client = app.test_client()
    token_page = client.get("/auth/login", base_url="https://localhost")
    token = re.search(r'name="csrf_token" value="([^"]+)"', token_page.get_data(as_text=True))
    assert token
    response = client.post(
        "/auth/login",
        data={"login": "alice", "password": "plum-harbor-violin-42", "csrf_token": token.group(1)},
        base_url="https://localhost",
        headers={"Referer": "https://localhost/auth/login"},
    )
    assert response.status_code == 303
    assert hsts_max_age(response) >= 31_536_000
    page = client.get("/account/activity", base_url="https://localhost")
    assert page.status_code == 200
    assert hsts_max_age(page) >= 31_536_000


def test_C04_no_hsts_over_plain_http(client):
    """Browsers ignore HSTS over HTTP; sending it there only hides a misconfiguration."""
    assert "Strict-Transport-Security" not in client.get("/").headers


def test_C04_headers_on_redirects_and_errors(signed_in, client):
    assert_base_headers(signed_in.get("/editors"))  # 403 page
    assert_base_headers(signed_in.get("/editors", headers=JSON))  # 403 JSON
    anonymous = signed_in.application.test_client()
    assert_base_headers(anonymous.get("/private"))  # 303 to login
    assert_base_headers(anonymous.get("/private", headers=JSON))  # 401 JSON
    assert_base_headers(signed_in.get("/admin/no-such-page"))  # 404


def test_C04_error_pages_are_generic_and_show_no_internals(signed_in):
    for response in (
        signed_in.get("/editors"),
        signed_in.get("/admin/users/99999"),
        signed_in.get("/account/activity?since=nope"),
    ):
        body = response.get_data(as_text=True)
        assert response.status_code in (400, 403, 404)
        assert "Traceback" not in body
        assert "flask_aaa" not in body
        assert 'File "' not in body


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/admin/no-such-page", 404, "not_found"),
        ("GET", "/admin/audit/verify", 405, "method_not_allowed"),
        ("GET", "/account/nothing", 404, "not_found"),
    ],
)
def test_C04_own_http_errors_answer_json_to_json_clients(signed_in, method, path, status, code):
    response = signed_in.open(path, method=method, headers=JSON)
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert response.get_json()["error"] == code


def test_C04_request_id_is_echoed_only_when_sane(client):
    assert client.get("/", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    evil = client.get("/", headers={"X-Request-ID": "x<script>"}).headers["X-Request-ID"]
    assert evil != "x<script>"
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", evil)


@pytest.fixture
def production_app(config: dict[str, Any], tmp_path: Any) -> Iterator[Flask]:
    """The test app without TESTING or DEBUG (real hashing preset), plus a view that fails."""
    cfg = {
        **config,
        "TESTING": False,
        "AAA_PASSWORD_HASH_PRESET": "owasp",
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'prod.db'}",
    }
    app = build_app(cfg)

    @app.get("/boom")
    @public
    def boom() -> Any:
        raise RuntimeError("secret internals: " + DSN)

    with app.app_context():
        app.extensions["aaa"].db.create_all()
    yield app
    app_engine(app).dispose()


def test_C04_production_500_is_generic(production_app):
    assert production_app.debug is False
    client = production_app.test_client()
    for headers in ({}, JSON):
        response = client.get("/boom", headers=headers)
        assert response.status_code == 500
        body = response.get_data(as_text=True)
        assert "hunter2" not in body
        assert "RuntimeError" not in body
        assert "Traceback" not in body
        assert_base_headers(response)


# -- V01: the database is down --


def _db_error(*_args: Any, **_kwargs: Any) -> Any:
    raise OperationalError(SQL, {"token": "x"}, Exception(f"could not connect to {DSN}"))


def assert_service_unavailable(response: Any) -> None:
    assert response.status_code == 503
    assert response.headers.get("Retry-After", "").isdigit()
    body = response.get_data(as_text=True)
    for leak in LEAKS:
        assert leak not in body, leak


def test_V01_db_down_json_client_gets_503_service_unavailable(signed_in, monkeypatch):
    monkeypatch.setattr(sessions_service, "resolve", _db_error)
    response = signed_in.get("/notes", headers=JSON)
    assert_service_unavailable(response)
    assert response.mimetype == "application/json"
    assert response.get_json()["error"] == "service_unavailable"


@pytest.mark.parametrize("path", ["/notes", "/account/activity", "/admin/audit"])
def test_V01_db_down_browser_gets_a_generic_503_page(signed_in, monkeypatch, path):
    """The error page must not need the database either (it renders the signed-in bar)."""
    monkeypatch.setattr(sessions_service, "resolve", _db_error)
    response = signed_in.get(path)
    assert_service_unavailable(response)
    assert response.mimetype == "text/html"


def test_V01_db_back_up_serves_again(signed_in, monkeypatch):
    monkeypatch.setattr(sessions_service, "resolve", _db_error)
    assert signed_in.get("/notes", headers=JSON).status_code == 503
    monkeypatch.undo()
    assert signed_in.get("/notes", headers=JSON).status_code == 200


@pytest.fixture
def engine_down(app: Flask) -> Iterator[Any]:
    """Call the returned function to make every new connection to the app's database fail
    with the driver's OperationalError (pooled connections are dropped first)."""
    engine = app_engine(app)

    def refuse(*_args: Any) -> Any:
        # The driver's own error class, whichever database the suite runs on.
        raise engine.dialect.loaded_dbapi.OperationalError(f"unable to connect ({DSN})")

    def down() -> None:
        engine.dispose()
        event.listen(engine, "do_connect", refuse)

    yield down
    if event.contains(engine, "do_connect", refuse):
        event.remove(engine, "do_connect", refuse)


def test_V01_engine_down_signed_in_json_gets_503(signed_in, engine_down):
    engine_down()
    response = signed_in.get("/account/activity", headers=JSON)
    assert_service_unavailable(response)
    assert response.get_json()["error"] == "service_unavailable"


def test_V01_engine_down_anonymous_login_gets_503(client, make_user, engine_down):
    make_user("alice")
    token = csrf_token(client)
    engine_down()
    response = client.post(
        "/auth/login",
        json={"login": "alice", "password": "plum-harbor-violin-42"},
        headers={"X-CSRFToken": token},
    )
    assert_service_unavailable(response)
    assert response.get_json()["error"] == "service_unavailable"


def test_V01_engine_down_anonymous_login_form_gets_503_page(client, make_user, engine_down):
    make_user("alice")
    token = csrf_token(client)
    engine_down()
    response = client.post(
        "/auth/login",
        data={"login": "alice", "password": "plum-harbor-violin-42", "csrf_token": token},
    )
    assert_service_unavailable(response)
    assert response.mimetype == "text/html"


def test_V01_engine_down_public_page_still_served(client, engine_down):
    engine_down()
    assert client.get("/").status_code == 200


def test_the_stylesheet_of_every_page_is_served_locally(client):
    """The pages link their CSS from this app (no CDN), and that link works."""
    import re

    page = client.get("/auth/login").get_data(as_text=True)
    href = re.search(r'<link rel="stylesheet" href="([^"]+)"', page).group(1)
    assert href.startswith("/")
    response = client.get(href)
    assert response.status_code == 200
    assert response.mimetype == "text/css"


def test_V01_db_down_at_the_login_limit_is_a_503_and_keeps_the_shared_limits(
    app, client, monkeypatch
):
    """The per-account login limit looks the account up; the database failing there must
    not look like a failure of the limit storage (Flask-Limiter would move every limit to
    per-process memory) nor answer 500."""
    from flask_aaa.services import accounts as accounts_service

    monkeypatch.setattr(accounts_service, "find_by_login", _db_error)
    response = post_json(client, "/auth/login", {"login": "alice", "password": "x" * 20})
    assert_service_unavailable(response)
    assert not app.extensions["aaa"].limiter._storage_dead


def test_V01_connection_lost_when_the_session_closes_keeps_the_answer(client, monkeypatch, caplog):
    """The connection dying during a request makes Flask-SQLAlchemy's closing rollback
    raise after the answer is made; that must be logged, not turn the answer into a 500."""
    from sqlalchemy.orm import scoping

    monkeypatch.setattr(scoping.scoped_session, "remove", _db_error)
    response = client.get("/")
    assert response.status_code == 200
    assert "closing the database session failed: OperationalError" in caplog.text
