"""Signing in over HTTP, as a browser (form) and as a single-page app (JSON).

Cases from SECURITY-CASES.md: A01 enumeration, A02 (unit part), A04/A05 throttling, A13
normalization, A14/I03 control characters, A15 oversized input, A16 legacy hashes, S01
fixation, S08 cookie flags, Z05 login CSRF, and open redirects through ``next``.
"""

from __future__ import annotations

import json
import re
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import bcrypt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from flask_aaa.db import writing
from flask_aaa.models import AuditEvent, LoginSession, User
from flask_aaa.services.actors import token_digest
from tests.conftest import PASSWORD, csrf_token, form_token, fresh, login, post_json

COOKIE = "aaa_session"
WRONG = "wrong-" + PASSWORD


@pytest.fixture
def config(config: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    """The shared test config plus this test's ``AAA_*`` overrides (see :func:`with_config`)."""
    config.update(getattr(request, "param", {}))
    return config


def with_config(**values: Any) -> pytest.MarkDecorator:
    """Build the test's app with these settings (indirect parametrization of ``config``)."""
    return pytest.mark.parametrize("config", [values], indirect=True, ids=["config"])


# -- helpers --


def env(ip: str) -> dict[str, str]:
    return {"REMOTE_ADDR": ip}


def form_login(
    client: FlaskClient, name: str, password: str = PASSWORD, *, ip: str = "127.0.0.1", **extra: Any
) -> Any:
    page = client.get("/auth/login", environ_base=env(ip)).get_data(as_text=True)
    data = {"login": name, "password": password, "csrf_token": form_token(page), **extra}
    return client.post("/auth/login", data=data, environ_base=env(ip))


def json_login(
    client: FlaskClient, name: str, password: str = PASSWORD, *, ip: str = "127.0.0.1"
) -> Any:
    token = client.get("/auth/csrf", environ_base=env(ip)).get_json()["csrf_token"]
    return client.post(
        "/auth/login",
        json={"login": name, "password": password},
        headers={"X-CSRFToken": token},
        environ_base=env(ip),
    )


def cookie_value(client: FlaskClient, name: str = COOKIE) -> str | None:
    cookie = client.get_cookie(name)
    return cookie.value if cookie is not None else None


def decode_session(app: Flask, value: str) -> dict[str, Any]:
    """The contents of a signed Flask session cookie."""
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    return dict(serializer.loads(value))


def cookie_names(response: Any) -> list[str]:
    return sorted(h.split("=", 1)[0] for h in response.headers.getlist("Set-Cookie"))


def set_cookie_attrs(response: Any, name: str) -> dict[str, str]:
    """The attributes (lower-cased names) of the ``Set-Cookie`` header for ``name``."""
    for header in response.headers.getlist("Set-Cookie"):
        first, *attrs = [part.strip() for part in header.split(";")]
        if first.split("=", 1)[0] == name:
            out = {"value": first.split("=", 1)[1]}
            for attr in attrs:
                key, _, val = attr.partition("=")
                out[key.lower()] = val
            return out
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers.getlist('Set-Cookie')}")


def is_signed_in(client: FlaskClient, **kwargs: Any) -> bool:
    """Whether the client's cookie opens a login_required view (401 JSON when not)."""
    headers = {**kwargs.pop("headers", {}), "Accept": "application/json"}
    status = client.get("/private", headers=headers, **kwargs).status_code
    assert status in (200, 401)
    return status == 200


def count(db: Any, model: Any, *where: Any) -> int:
    return int(fresh(db).scalar(select(func.count()).select_from(model).where(*where)) or 0)


# -- A01: one answer for every failure --

#: Headers whose values legitimately differ between two requests.
VOLATILE_HEADERS = {"X-Request-ID", "X-RateLimit-Reset", "Content-Length", "Set-Cookie"}
_CSRF_VALUES = re.compile(r'(name="csrf_token" value="|name="csrf-token" content=")[^"]*"')


def response_shape(response: Any) -> tuple[Any, ...]:
    """Everything a client can see, minus the per-request CSRF token and request id."""
    body = _CSRF_VALUES.sub(r'\1TOKEN"', response.get_data(as_text=True))
    headers = sorted(
        (name, "" if name in VOLATILE_HEADERS else value) for name, value in response.headers
    )
    return response.status_code, body, headers, cookie_names(response)


@pytest.fixture
def failures(make_user: Any) -> list[tuple[str, str]]:
    """(login, password) pairs that must fail alike: unknown username, unknown email, wrong
    password, and a disabled account with its right password."""
    make_user("alice")
    make_user("carol", active=False)
    return [
        ("nobody", PASSWORD),
        ("nobody@example.org", PASSWORD),
        ("alice", WRONG),
        ("carol", PASSWORD),
    ]


def test_A01_form_login_failures_are_indistinguishable(app, failures):
    # A fresh client and IP per attempt, so rate-limit headers start from the same point.
    shapes = [
        response_shape(form_login(app.test_client(), name, pw, ip=f"10.1.0.{i}"))
        for i, (name, pw) in enumerate(failures)
    ]
    assert shapes[0][0] == 401
    for shape in shapes[1:]:
        assert shape == shapes[0]


def test_A01_json_login_failures_are_indistinguishable(app, failures):
    shapes = [
        response_shape(json_login(app.test_client(), name, pw, ip=f"10.2.0.{i}"))
        for i, (name, pw) in enumerate(failures)
    ]
    assert shapes[0][0] == 401
    assert json.loads(shapes[0][1]) == {
        "error": "authentication_failed",
        "message": "Invalid login or password.",
    }
    for shape in shapes[1:]:
        assert shape == shapes[0]


def test_A01_disabled_account_with_right_password_gets_no_session(app, failures, db):
    client = app.test_client()
    assert json_login(client, "carol", PASSWORD).status_code == 401
    assert not is_signed_in(client)
    assert count(db, LoginSession) == 0


def test_A01_only_the_audit_trail_knows_why_a_login_failed(app, failures, db):
    for i, (name, pw) in enumerate(failures):
        json_login(app.test_client(), name, pw, ip=f"10.3.0.{i}")
    events = fresh(db).scalars(
        select(AuditEvent).where(AuditEvent.action == "auth.login.failed").order_by(AuditEvent.seq)
    )
    reasons = [json.loads(e.details)["reason"] for e in events]
    assert reasons == ["unknown_login", "unknown_login", "bad_password", "disabled"]


def test_A02_hasher_runs_exactly_once_whatever_the_failure(app, failures, monkeypatch):
    """Unknown logins are verified against a dummy hash: the same work as a known one."""
    argon2 = app.extensions["aaa"].passwords._argon2
    spy = mock.Mock(wraps=argon2.verify)
    monkeypatch.setattr(argon2, "verify", spy)
    for i, (name, pw) in enumerate(failures):
        spy.reset_mock()
        assert json_login(app.test_client(), name, pw, ip=f"10.9.0.{i}").status_code == 401
        assert spy.call_count == 1, name


# -- A04: per-account throttling; A05: per-IP throttling --


@with_config(AAA_LOGIN_LIMIT_PER_ACCOUNT="3 per minute")
def test_A04_failures_on_one_account_from_rotating_ips_are_throttled(app, make_user):
    make_user("alice")
    for i in range(3):
        assert json_login(app.test_client(), "alice", WRONG, ip=f"10.4.0.{i}").status_code == 401
    response = json_login(app.test_client(), "alice", WRONG, ip="10.4.0.99")
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert response.get_json()["error"] == "throttled"


@with_config(AAA_LOGIN_LIMIT_PER_ACCOUNT="3 per minute")
def test_A04_throttled_account_refuses_even_the_right_password(app, make_user, db):
    """A06: while the account is throttled, neither the form nor JSON lets anyone in."""
    make_user("alice")
    for i in range(3):
        json_login(app.test_client(), "alice", WRONG, ip=f"10.4.1.{i}")
    client = app.test_client()
    assert json_login(client, "alice", ip="10.4.1.50").status_code == 429
    response = form_login(client, "alice", ip="10.4.1.51")
    assert response.status_code == 429
    assert "Retry-After" in response.headers
    assert not is_signed_in(client)
    assert count(db, LoginSession) == 0


@with_config(AAA_LOGIN_LIMIT_PER_ACCOUNT="3 per minute")
def test_A04_case_width_and_space_variants_share_one_budget(app, make_user):
    make_user("alice")
    for i, variant in enumerate(["ALICE", " Alice ", "\uff41\uff4c\uff49\uff43\uff45"]):
        assert json_login(app.test_client(), variant, WRONG, ip=f"10.4.2.{i}").status_code == 401
    assert json_login(app.test_client(), "alice", WRONG, ip="10.4.2.9").status_code == 429


@with_config(AAA_LOGIN_LIMIT_PER_ACCOUNT="3 per minute")
def test_A04_username_and_email_of_one_account_share_one_budget(app, make_user):
    """The per-account budget belongs to the account, not to the identifier typed: else an
    attacker doubles it (and passes the catalogue's 100-failure ceiling) by alternating the
    username and the email address."""
    make_user("alice", email="alice@example.org")
    for i in range(3):
        assert json_login(app.test_client(), "alice", WRONG, ip=f"10.4.3.{i}").status_code == 401
    response = json_login(app.test_client(), "alice@example.org", WRONG, ip="10.4.3.9")
    assert response.status_code == 429


@with_config(AAA_LOGIN_LIMIT_PER_ACCOUNT="3 per minute")
def test_A04_successful_logins_do_not_count_against_the_account(app, make_user):
    make_user("alice")
    for i in range(5):
        assert json_login(app.test_client(), "alice", ip=f"10.4.4.{i}").status_code == 200
    for i in range(3):
        assert json_login(app.test_client(), "alice", WRONG, ip=f"10.4.5.{i}").status_code == 401
    assert json_login(app.test_client(), "alice", WRONG, ip="10.4.5.9").status_code == 429


@with_config(AAA_LOGIN_LIMIT_PER_IP="5 per minute")
def test_A05_spraying_many_accounts_from_one_ip_is_throttled(app, make_user):
    for i in range(3):
        make_user(f"user{i}")
    names = ["user0", "user1", "user2", "ghost3", "ghost4"]
    for name in names:
        assert json_login(app.test_client(), name, WRONG, ip="10.5.0.1").status_code == 401
    response = json_login(app.test_client(), "user5", WRONG, ip="10.5.0.1")
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    # Every outcome counts per IP: the right password from that IP waits too.
    assert json_login(app.test_client(), "user0", ip="10.5.0.1").status_code == 429
    # Another IP is not affected.
    assert json_login(app.test_client(), "user6", WRONG, ip="10.5.0.2").status_code == 401
    assert json_login(app.test_client(), "user0", ip="10.5.0.2").status_code == 200


# -- A13: identifiers are normalized --


@pytest.mark.parametrize("variant", ["ALICE", "  alice  ", "\uff41\uff4c\uff49\uff43\uff45"])
def test_A13_login_accepts_case_width_and_space_variants(app, make_user, variant):
    make_user("alice")
    assert json_login(app.test_client(), variant).status_code == 200


# -- A14 / I03: control characters --


@pytest.mark.parametrize(
    "name",
    ["alice\x00", "alice\x00admin", "ali\r\nce", "alice\r\nSet-Cookie: x=1", "\x00"],
    ids=["nul-suffix", "nul-inside", "crlf-inside", "crlf-header", "nul-only"],
)
@pytest.mark.parametrize("transport", ["form", "json"])
def test_A14_control_characters_in_login_are_a_clean_refusal(app, make_user, name, transport):
    """Even with the right password: a NUL or CRLF is never cut off to match 'alice'."""
    make_user("alice")
    client = app.test_client()
    do_login = form_login if transport == "form" else json_login
    response = do_login(client, name)
    assert response.status_code in (400, 401)
    assert "x" not in cookie_names(response)
    assert not is_signed_in(client)


@pytest.mark.parametrize("suffix", ["\x00", "\x00extra", "\r\n"])
def test_A14_password_is_not_truncated_at_control_characters(app, make_user, suffix):
    make_user("alice")
    client = app.test_client()
    assert json_login(client, "alice", PASSWORD + suffix).status_code in (400, 401)
    assert not is_signed_in(client)


# -- A15: oversized input is refused before hashing --


@pytest.fixture
def hasher_spies(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[mock.Mock]:
    """Spies on PasswordService.verify/hash and on the argon2 hasher itself."""
    passwords = app.extensions["aaa"].passwords
    spies = []
    for owner, name in [
        (passwords, "verify"),
        (passwords, "hash"),
        (passwords._argon2, "verify"),
        (passwords._argon2, "hash"),
    ]:
        spy = mock.Mock(wraps=getattr(owner, name))
        monkeypatch.setattr(owner, name, spy)
        spies.append(spy)
    return spies


@pytest.mark.parametrize("size", [257, 5000, 1024 * 1024], ids=["over-max", "over-field", "1MB"])
@pytest.mark.parametrize("transport", ["form", "json"])
def test_A15_long_password_is_refused_without_hashing(
    client, make_user, hasher_spies, size, transport
):
    make_user("alice")
    for spy in hasher_spies:
        spy.reset_mock()  # creating alice hashed her password
    token = csrf_token(client)
    fields = {"login": "alice", "password": "x" * size}
    if transport == "form":
        response = client.post("/auth/login", data={**fields, "csrf_token": token})
    else:
        response = client.post("/auth/login", json=fields, headers={"X-CSRFToken": token})
    assert response.status_code in (400, 413)
    for spy in hasher_spies:
        spy.assert_not_called()


@pytest.mark.parametrize("transport", ["form", "json"])
def test_A15_ten_megabyte_body_is_413(client, hasher_spies, transport):
    token = csrf_token(client)
    fields = {"login": "alice", "password": "x" * (10 * 1024 * 1024)}
    if transport == "form":
        response = client.post("/auth/login", data={**fields, "csrf_token": token})
    else:
        response = client.post("/auth/login", json=fields, headers={"X-CSRFToken": token})
    assert response.status_code == 413
    if transport == "json":
        assert response.get_json()["error"] == "too_large"
    for spy in hasher_spies:
        spy.assert_not_called()


# -- A16: legacy bcrypt hashes --


def set_password_hash(db: Any, user_id: int, value: str) -> None:
    with writing():
        fresh(db).execute(update(User).where(User.id == user_id).values(password_hash=value))
        db.commit()


def stored_hash(db: Any, user_id: int) -> str:
    return str(fresh(db).scalar(select(User.password_hash).where(User.id == user_id)))


def test_A16_bcrypt_user_logs_in_and_is_rehashed_with_argon2id(app, make_user, db):
    user = make_user("alice")
    legacy = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    assert legacy.startswith("$2b$")
    set_password_hash(db, user.id, legacy)

    response = login(app.test_client(), "alice")
    assert response.status_code == 303
    assert stored_hash(db, user.id).startswith("$argon2id$")
    # The new hash works on its own.
    assert login(app.test_client(), "alice").status_code == 303


def test_A16_bcrypt_user_with_wrong_password_keeps_the_legacy_hash(app, make_user, db):
    user = make_user("alice")
    legacy = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    set_password_hash(db, user.id, legacy)
    assert login(app.test_client(), "alice", WRONG).status_code == 401
    assert stored_hash(db, user.id) == legacy


# -- S01: session fixation --


def test_S01_planted_cookie_is_replaced_and_csrf_token_rotates_on_login(app, make_user, db):
    make_user("alice")
    attacker = app.test_client()
    old_token = csrf_token(attacker)
    planted = cookie_value(attacker)
    assert planted is not None
    assert count(db, LoginSession) == 0

    victim = app.test_client()
    victim.set_cookie(COOKIE, planted)
    response = victim.post(
        "/auth/login", data={"login": "alice", "password": PASSWORD, "csrf_token": old_token}
    )
    assert response.status_code == 303

    new = cookie_value(victim)
    assert new is not None
    assert new != planted
    before, after = decode_session(app, planted), decode_session(app, new)
    assert "_user_id" not in before
    assert after.get("csrf_token") != before["csrf_token"]
    # The cookie names a brand-new, live server session of alice.
    assert count(db, LoginSession) == 1
    record = db.scalar(select(LoginSession))
    assert record.token_hash == token_digest(after["_user_id"])
    assert record.revoked_at is None

    # The attacker's copy is still anonymous; the pre-login CSRF token is dead.
    assert not is_signed_in(attacker)
    assert victim.post("/auth/logout", data={"csrf_token": old_token}).status_code == 400
    assert is_signed_in(victim)


def test_S01_json_login_rotates_cookie_and_csrf_token(app, make_user, db):
    make_user("alice")
    client = app.test_client()
    old_token = csrf_token(client)
    planted = cookie_value(client)
    response = client.post(
        "/auth/login",
        json={"login": "alice", "password": PASSWORD},
        headers={"X-CSRFToken": old_token},
    )
    assert response.status_code == 200
    assert response.get_json()["user"]["username"] == "alice"
    assert cookie_value(client) not in (None, planted)
    assert count(db, LoginSession) == 1
    refused = client.post("/auth/logout", json={}, headers={"X-CSRFToken": old_token})
    assert refused.status_code == 400
    assert is_signed_in(client)


def test_S01_login_again_ends_the_previous_server_session(app, make_user, db):
    """Re-authenticating gives a new id and the old one dies with it ("X deleted"): a cookie
    copied before the second login must not stay signed in."""
    make_user("alice")
    client = app.test_client()
    assert json_login(client, "alice").status_code == 200
    first = cookie_value(client)
    assert json_login(client, "alice").status_code == 200
    assert cookie_value(client) != first

    replay = app.test_client()
    replay.set_cookie(COOKIE, first)
    assert not is_signed_in(replay)
    assert count(db, LoginSession, LoginSession.revoked_at.is_(None)) == 1


# -- S08: cookie flags --


#: Over HTTPS, Flask-WTF wants a same-origin Referer on every unsafe request.
HTTPS = {"base_url": "https://localhost", "headers": {"Referer": "https://localhost/auth/login"}}


@with_config(AAA_SECURE_COOKIES=True)
def test_S08_secure_cookie_is_host_prefixed_secure_httponly_lax(app, make_user):
    make_user("alice")
    client = app.test_client()
    page = client.get("/auth/login", **HTTPS)
    pre_login = set_cookie_attrs(page, "__Host-aaa_session")
    data = {
        "login": "alice",
        "password": PASSWORD,
        "csrf_token": form_token(page.get_data(as_text=True)),
    }
    response = client.post("/auth/login", data=data, **HTTPS)
    assert response.status_code == 303
    assert cookie_names(response) == ["__Host-aaa_session"]
    for attrs in (pre_login, set_cookie_attrs(response, "__Host-aaa_session")):
        assert "secure" in attrs
        assert "httponly" in attrs
        assert attrs["samesite"].lower() == "lax"
        assert attrs["path"] == "/"
        assert "domain" not in attrs
    hsts = response.headers["Strict-Transport-Security"]
    assert int(re.search(r"max-age=(\d+)", hsts).group(1)) >= 31536000
    assert is_signed_in(client, **HTTPS)

    # The deletion cookie at logout carries the same attributes (else browsers ignore it).
    token = client.get("/auth/csrf", **HTTPS).get_json()["csrf_token"]
    out = client.post("/auth/logout", data={"csrf_token": token}, **HTTPS)
    assert out.status_code == 303
    gone = set_cookie_attrs(out, "__Host-aaa_session")
    assert gone["value"] in ("", '""')
    assert "secure" in gone
    assert "httponly" in gone
    assert gone["path"] == "/"
    assert gone.get("max-age") == "0" or "1970" in gone.get("expires", "")
    assert not is_signed_in(client, **HTTPS)


@with_config(AAA_SECURE_COOKIES=True)
def test_S08_https_form_login_works_as_a_browser_sends_it(app, make_user):
    """A browser sends a Referer with the login form only if the login page's
    Referrer-Policy allows it; over HTTPS the CSRF check insists on one. The page's own
    policy must not make its own form fail."""
    make_user("alice")
    client = app.test_client()
    page = client.get("/auth/login", base_url="https://localhost")
    policy = page.headers.get("Referrer-Policy", "strict-origin-when-cross-origin")
    headers = {} if policy == "no-referrer" else {"Referer": "https://localhost/auth/login"}
    response = client.post(
        "/auth/login",
        data={
            "login": "alice",
            "password": PASSWORD,
            "csrf_token": form_token(page.get_data(as_text=True)),
        },
        base_url="https://localhost",
        headers=headers,
    )
    assert response.status_code == 303


@with_config(AAA_SECURE_COOKIES=False)
def test_S08_insecure_mode_cookie_is_plain_name_and_httponly(app, make_user):
    make_user("alice")
    response = login(app.test_client(), "alice")
    assert response.status_code == 303
    assert cookie_names(response) == ["aaa_session"]
    attrs = set_cookie_attrs(response, "aaa_session")
    assert "httponly" in attrs
    assert "secure" not in attrs
    assert attrs["samesite"].lower() == "lax"
    assert attrs["path"] == "/"


# -- Z05: login CSRF --


def test_Z05_form_login_without_csrf_token_is_400(app, make_user, db):
    make_user("alice")
    client = app.test_client()
    client.get("/auth/login")
    response = client.post("/auth/login", data={"login": "alice", "password": PASSWORD})
    assert response.status_code == 400
    assert not is_signed_in(client)
    assert count(db, LoginSession) == 0


def test_Z05_json_login_without_csrf_header_is_400(app, make_user, db):
    make_user("alice")
    client = app.test_client()
    csrf_token(client)
    response = client.post("/auth/login", json={"login": "alice", "password": PASSWORD})
    assert response.status_code == 400
    assert response.get_json()["error"] == "csrf_failed"
    assert not is_signed_in(client)
    assert count(db, LoginSession) == 0


def test_Z05_csrf_token_of_another_session_is_refused(app, make_user, db):
    make_user("alice")
    foreign = csrf_token(app.test_client())
    client = app.test_client()
    csrf_token(client)
    response = client.post(
        "/auth/login",
        json={"login": "alice", "password": PASSWORD},
        headers={"X-CSRFToken": foreign},
    )
    assert response.status_code == 400
    assert count(db, LoginSession) == 0


@pytest.mark.parametrize("token", ["", "garbage", "a" * 200])
def test_Z05_forged_csrf_token_is_refused(app, make_user, db, token):
    make_user("alice")
    client = app.test_client()
    client.get("/auth/login")
    data = {"login": "alice", "password": PASSWORD, "csrf_token": token}
    assert client.post("/auth/login", data=data).status_code == 400
    assert count(db, LoginSession) == 0


# -- open redirects through ``next`` --

HOSTILE_NEXT = [
    "//evil.com",
    "https://evil.com",
    "/\\evil.com",
    "\\\\evil",
    "javascript:alert(1)",
    "/ok\r\nSet-Cookie: x=1",
    "///evil.com",
    "/\t/evil.com",
    "http:evil.com",
    " //evil.com",
]


def assert_same_host(location: str) -> None:
    """A path on this host: no scheme, no host, one leading slash, nothing a browser reads
    as another host."""
    parts = urlsplit(location)
    assert not parts.scheme
    assert not parts.netloc
    assert location.startswith("/")
    assert not location.startswith(("//", "/\\"))
    assert "\\" not in location
    assert "\r" not in location
    assert "\n" not in location


@pytest.mark.parametrize("target", HOSTILE_NEXT)
def test_open_redirect_next_in_form_goes_home(app, make_user, target):
    make_user("alice")
    response = login(app.test_client(), "alice", next=target)
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert "x" not in cookie_names(response)


@pytest.mark.parametrize("target", HOSTILE_NEXT)
def test_open_redirect_next_in_query_string_goes_home(app, make_user, target):
    make_user("alice")
    client = app.test_client()
    token = csrf_token(client)
    response = client.post(
        "/auth/login?next=" + quote(target, safe=""),
        data={"login": "alice", "password": PASSWORD, "csrf_token": token},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    # Already signed in: GET /auth/login?next=... redirects, and just as safely.
    again = client.get("/auth/login?next=" + quote(target, safe=""))
    assert again.status_code == 302
    assert again.headers["Location"] == "/"


@pytest.mark.parametrize("target", HOSTILE_NEXT)
def test_open_redirect_hostile_next_is_not_kept_in_the_login_form(client, target):
    page = client.get("/auth/login?next=" + quote(target, safe=""))
    assert page.status_code == 200
    assert 'name="next"' not in page.get_data(as_text=True)


def test_open_redirect_percent_encoded_slashes_stay_a_local_path(app, make_user):
    """'/%2F%2Fevil.com' is kept as is: browsers do not decode %2F into a host, so it is a
    path on this site (it 404s). Whatever is done with it, it must stay same-host."""
    make_user("alice")
    response = login(app.test_client(), "alice", next="/%2F%2Fevil.com")
    assert response.status_code == 303
    location = response.headers["Location"]
    assert_same_host(location)
    assert location in ("/", "/%2F%2Fevil.com")


def test_open_redirect_plain_path_is_honoured(app, make_user):
    make_user("alice")
    response = login(app.test_client(), "alice", next="/notes")
    assert response.status_code == 303
    assert response.headers["Location"] == "/notes"


def test_open_redirect_plain_path_with_query_is_honoured(app, make_user):
    make_user("alice")
    response = login(app.test_client(), "alice", next="/notes-any?page=2")
    assert response.headers["Location"] == "/notes-any?page=2"


def test_login_failure_keeps_a_safe_next_for_the_retry(app, make_user):
    make_user("alice")
    response = login(app.test_client(), "alice", WRONG, next="/notes")
    assert response.status_code == 401
    assert 'name="next" value="/notes"' in response.get_data(as_text=True)


def test_json_login_returns_user_and_opens_a_session(app, make_user, db):
    make_user("alice", roles=["reader"], perms={"reader": ["notes:read"]})
    client = app.test_client()
    response = json_login(client, "alice")
    assert response.status_code == 200
    body = response.get_json()["user"]
    assert body["username"] == "alice"
    assert body["roles"] == ["reader"]
    assert body["permissions"] == ["notes:read"]
    assert "password_hash" not in json.dumps(response.get_json())
    assert client.get("/notes").status_code == 200
    assert count(db, LoginSession) == 1


def test_login_page_is_not_cached(client):
    response = client.get("/auth/login")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    # Never leaked to other sites (and, see S08 above, same-site form posts keep a Referer).
    assert response.headers["Referrer-Policy"] in ("same-origin", "no-referrer")


def test_V02_storage_failing_while_a_failed_login_is_counted_keeps_the_answer(
    app, client, make_user, monkeypatch, caplog
):
    """The per-account limit counts a failed sign-in after the answer is made (only
    failures count). If the shared storage fails in that instant, the loss of that one count
    is logged; the answer stays the 401 it was, never a 500."""
    make_user("alice")
    strategy = app.extensions["aaa"].limiter.limiter
    real_hit = strategy.hit
    calls = []

    def hit(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:  # the first is the per-IP limit's check, the second the deduction
            raise ConnectionError("storage unreachable")
        return real_hit(*args, **kwargs)

    monkeypatch.setattr(strategy, "hit", hit)
    response = post_json(client, "/auth/login", {"login": "alice", "password": "x" * 20})
    assert response.status_code == 401
    assert len(calls) == 2
    assert "Failed to deduct rate limit" in caplog.text
