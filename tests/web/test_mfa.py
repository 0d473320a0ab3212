"""Two-factor sign-in over HTTP, as a browser (forms) and as a single-page app (JSON).

Cases from SECURITY-CASES.md: M01 replay (also in parallel), M02 drift and the server's clock,
M03 guessing (per sign-in, per account, audited), M04 nothing reachable between the steps,
M06 recovery codes, M07 turning it off, S02 a new session id on enrolment, A09 the shorter
password allowed with 2FA; plus required roles, remember-me and the audit trail of each flow.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flask_aaa.db import writing
from flask_aaa.models import AuditEvent, LoginSession, RecoveryCode, User
from flask_aaa.services import mfa, otp
from flask_aaa.services.actors import RequestFacts
from tests.conftest import (
    PASSWORD,
    SECRET,
    app_engine,
    csrf_token,
    dump_database,
    form_token,
    fresh,
    login,
    post,
    post_json,
)

COOKIE = "aaa_session"
REMEMBER = "aaa_remember"
JSON = {"Accept": "application/json"}
HASHER = otp.RecoveryCodeHasher.from_secret_keys(SECRET)


@pytest.fixture
def config(config: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    """The shared test config plus this test's ``AAA_*`` overrides (see :func:`with_config`)."""
    config.update(getattr(request, "param", {}))
    return config


def with_config(**values: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("config", [values], indirect=True, ids=["config"])


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    """The clock, frozen near the real time in the middle of a TOTP step; ``tick`` moves it."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start = now - dt.timedelta(seconds=now.second % 30) + dt.timedelta(seconds=15)
    with freeze_time(start) as frozen:
        yield frozen


def code(secret: str, steps: int = 0) -> str:
    """The code of ``secret`` for the (frozen) current time, ``steps`` steps away."""
    return pyotp.TOTP(secret).at(dt.datetime.now(dt.UTC), counter_offset=steps)


def wrong(secret: str, how_many: int = 1) -> list[str]:
    """Codes that are certainly wrong now (none is a code of the ±1 window)."""
    valid = {code(secret, steps) for steps in (-1, 0, 1)}
    return [c for c in (f"{n:06d}" for n in range(how_many + 3)) if c not in valid][:how_many]


class MfaUser:
    def __init__(self, user: User, secret: str, codes: list[str]) -> None:
        self.user, self.secret, self.codes = user, secret, codes
        self.name = user.username or ""

    @property
    def wrong(self) -> str:
        return wrong(self.secret)[0]


@pytest.fixture
def make_mfa_user(app: Flask, make_user: Callable[..., User], clock: Any) -> Callable[..., MfaUser]:
    """A user with 2FA on, enrolled two steps ago (so the codes of T-1, T and T+1 are unused)."""

    def make(username: str = "alice", **kwargs: Any) -> MfaUser:
        user = make_user(username, **kwargs)
        secret = otp.new_secret()
        with writing(), Session(app_engine(app), expire_on_commit=False) as session:
            row = session.get(User, user.id)
            assert row is not None
            codes = mfa.enable(
                session,
                row,
                secret=secret,
                code=code(secret, -2),
                hasher=HASHER,
                facts=RequestFacts.for_cli("tests"),
                now=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2 * otp.STEP_SECONDS),
            )
            session.commit()
        return MfaUser(user, secret, codes)

    return make


@pytest.fixture
def alice(make_mfa_user: Callable[..., MfaUser]) -> MfaUser:
    return make_mfa_user("alice")


def password_step(client: FlaskClient, name: str, password: str = PASSWORD, **extra: Any) -> Any:
    response = login(client, name, password, **extra)
    assert response.status_code == 303, response.get_data(as_text=True)
    assert response.headers["Location"] == "/auth/2fa"
    return response


def json_password_step(client: FlaskClient, name: str, password: str = PASSWORD) -> Any:
    response = post_json(client, "/auth/login", {"login": name, "password": password})
    assert response.status_code == 200
    assert response.get_json() == {"mfa_required": True, "verify_url": "/auth/2fa"}
    return response


def verify(client: FlaskClient, value: str, **extra: Any) -> Any:
    return post(client, "/auth/2fa", {"code": value, **extra})


def verify_json(client: FlaskClient, value: str, **extra: Any) -> Any:
    return post_json(client, "/auth/2fa", {"code": value, **extra})


def is_signed_in(client: FlaskClient) -> bool:
    status = client.get("/private", headers=JSON).status_code
    assert status in (200, 401)
    return status == 200


def events(db: Session, action: str) -> list[AuditEvent]:
    return list(
        fresh(db).scalars(select(AuditEvent).where(AuditEvent.action == action).order_by("seq"))
    )


def details(event: AuditEvent) -> dict[str, Any]:
    return dict(json.loads(event.details))


def count(db: Session, model: Any, *where: Any) -> int:
    return int(fresh(db).scalar(select(func.count()).select_from(model).where(*where)) or 0)


def cookie(client: FlaskClient, name: str = COOKIE) -> str | None:
    found = client.get_cookie(name)
    return found.value if found is not None else None


def replay(app: Flask, value: str) -> FlaskClient:
    other = app.test_client()
    other.set_cookie(COOKIE, value)
    return other


def enrol(client: FlaskClient) -> tuple[str, list[str]]:
    """Turn 2FA on through the JSON API; return the secret and the recovery codes."""
    page = client.get("/account/2fa", headers=JSON)
    assert page.status_code == 200, page.get_data(as_text=True)
    secret = page.get_json()["secret"]
    response = post_json(client, "/account/2fa", {"code": code(secret)})
    assert response.status_code == 200, response.get_data(as_text=True)
    return secret, response.get_json()["recovery_codes"]


# -- the sign-in, HTML and JSON --


def test_sign_in_with_a_code_html(app, client, db, alice):
    password_step(client, "alice")
    page = client.get("/auth/2fa")
    assert page.status_code == 200
    assert 'name="code"' in page.get_data(as_text=True)
    response = verify(client, code(alice.secret))
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert is_signed_in(client)
    [event] = events(db, "auth.login.succeeded")
    assert details(event) == {"mfa": "totp"}
    assert event.session_hash is not None


def test_sign_in_with_a_code_json(app, client, db, alice):
    json_password_step(client, "alice")
    assert client.get("/auth/2fa", headers=JSON).get_json()["methods"] == [
        "totp",
        "recovery_code",
    ]
    response = verify_json(client, code(alice.secret))
    assert response.status_code == 200
    assert response.get_json()["user"]["username"] == "alice"
    assert response.get_json()["user"]["mfa_enabled"] is True
    assert is_signed_in(client)


def test_the_next_page_survives_the_second_step(app, client, alice):
    token = form_token(client.get("/auth/login?next=/private").get_data(as_text=True))
    response = client.post(
        "/auth/login",
        data={"login": "alice", "password": PASSWORD, "next": "/private", "csrf_token": token},
    )
    assert response.headers["Location"] == "/auth/2fa"
    assert verify(client, code(alice.secret)).headers["Location"] == "/private"


def test_a_wrong_code_keeps_the_form_with_an_error(app, client, alice):
    password_step(client, "alice")
    response = verify(client, alice.wrong)
    assert response.status_code == 401
    assert "That code is not valid." in response.get_data(as_text=True)
    json_response = verify_json(client, alice.wrong)
    assert json_response.status_code == 401
    assert json_response.get_json() == {
        "error": "invalid_code",
        "message": "That code is not valid.",
        "attempts_left": 3,
    }
    assert verify(client, code(alice.secret)).status_code == 303


def test_a_missing_or_non_string_code_is_a_400_not_a_failure(app, client, db, alice):
    json_password_step(client, "alice")
    assert verify_json(client, "").status_code == 400
    response = post_json(client, "/auth/2fa", {"code": 123456})
    assert response.status_code == 400
    assert response.get_json()["fields"] == {"code": "Must be a string."}
    assert events(db, "auth.mfa.failed") == []


def test_users_without_2fa_sign_in_with_the_password_alone(app, client, make_user):
    make_user("bob")
    response = login(client, "bob")
    assert response.headers["Location"] == "/"
    assert is_signed_in(client)


def test_the_second_step_without_a_pending_sign_in(app, client):
    response = client.get("/auth/2fa")
    assert (response.status_code, response.headers["Location"]) == (303, "/auth/login")
    assert client.get("/auth/2fa", headers=JSON).status_code == 401
    response = post_json(client, "/auth/2fa", {"code": "123456"})
    assert response.status_code == 401
    assert response.get_json()["error"] == "login_required"


def test_a_pending_sign_in_expires(app, client, alice, clock):
    password_step(client, "alice")
    clock.tick(301)
    assert verify_json(client, code(alice.secret)).status_code == 401
    assert not is_signed_in(client)


def test_a_disabled_account_cannot_finish_the_second_step(app, client, db, alice):
    password_step(client, "alice")
    with writing():
        fresh(db).get(User, alice.user.id).active = False  # type: ignore[union-attr]
        db.commit()
    assert verify_json(client, code(alice.secret)).status_code == 401
    assert count(db, LoginSession) == 0


# -- M04: nothing protected between the two steps --


def test_M04_after_the_password_step_nothing_protected_is_reachable(app, client, db, make_mfa_user):
    boss = make_mfa_user("boss", roles=["admin"], perms={"admin": ["*"]})
    password_step(client, "boss", remember="1")
    assert client.get_cookie(REMEMBER) is None
    assert count(db, LoginSession) == 0
    assert client.get("/private", headers=JSON).status_code == 401
    response = client.get("/private")
    assert response.status_code == 303 and response.headers["Location"].startswith("/auth/login")
    assert client.get("/admin/", headers=JSON).status_code == 401
    assert client.get("/account/2fa", headers=JSON).status_code == 401
    token = csrf_token(client)
    headers = {**JSON, "X-CSRFToken": token}
    for url, body in [
        (f"/admin/users/{boss.user.id}/active", {"active": "0"}),
        (f"/admin/users/{boss.user.id}/sessions/revoke", {}),
        ("/admin/roles", {"name": "pwned"}),
        ("/account/sessions/revoke-others", {}),
        ("/account/2fa/disable", {"password": PASSWORD}),
        ("/account/2fa/recovery-codes", {"password": PASSWORD}),
        ("/auth/password", {"current_password": PASSWORD, "new_password": "x" * 20}),
    ]:
        response = client.post(url, json=body, headers=headers)
        assert response.status_code == 401, url
        assert response.get_json()["error"] == "login_required", url
    assert count(db, LoginSession) == 0
    assert fresh(db).get(User, boss.user.id).mfa_enabled  # type: ignore[union-attr]
    assert client.get_cookie(REMEMBER) is None


def test_M04_the_pending_state_is_not_a_session_in_the_cookie(app, client, alice):
    password_step(client, "alice")
    value = cookie(client)
    assert value is not None
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    data = serializer.loads(value)
    assert "_user_id" not in data
    assert data["_aaa_pending"]["uid"] == alice.user.id


def test_M04_remember_me_cookie_only_after_the_second_step(app, client, db, alice):
    response = password_step(client, "alice", remember="1")
    assert REMEMBER not in response.headers.get("Set-Cookie", "")
    assert client.get_cookie(REMEMBER) is None
    response = verify(client, code(alice.secret))
    assert response.status_code == 303
    assert client.get_cookie(REMEMBER) is not None
    # The remembered sign-in needs no second step again.
    other = app.test_client()
    other.set_cookie(REMEMBER, cookie(client, REMEMBER) or "")
    assert is_signed_in(other)


def test_M04_a_remember_cookie_does_not_skip_a_pending_second_step(app, client, db, alice):
    """A browser with a pending sign-in and someone's remember cookie stays pending."""
    password_step(client, "alice", remember="1")
    verify(client, code(alice.secret))
    remembered = cookie(client, REMEMBER)
    thief = app.test_client()
    password_step(thief, "alice")
    thief.set_cookie(REMEMBER, remembered or "")
    assert not is_signed_in(thief)


# -- M01: replay --


def test_M01_the_same_code_cannot_sign_in_twice(app, db, alice):
    first, second = app.test_client(), app.test_client()
    password_step(first, "alice")
    password_step(second, "alice")
    value = code(alice.secret)
    assert verify(first, value).status_code == 303
    response = verify_json(second, value)
    assert response.status_code == 401
    assert not is_signed_in(second)
    [failed] = events(db, "auth.mfa.failed")
    assert details(failed) == {"method": "totp", "reason": "replayed"}


def test_M01_parallel_second_steps_with_one_code_only_one_succeeds(app, db, alice):
    clients = [app.test_client() for _ in range(4)]
    for each in clients:
        password_step(each, "alice")
    tokens = [csrf_token(each) for each in clients]
    value = code(alice.secret)
    barrier = threading.Barrier(len(clients))
    statuses: list[int] = []

    def attempt(each: FlaskClient, token: str) -> None:
        barrier.wait()
        response = each.post(
            "/auth/2fa", json={"code": value}, headers={**JSON, "X-CSRFToken": token}
        )
        statuses.append(response.status_code)

    threads = [
        threading.Thread(target=attempt, args=pair) for pair in zip(clients, tokens, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 401, 401, 401]
    assert count(db, LoginSession, LoginSession.revoked_at.is_(None)) == 1
    assert len(events(db, "auth.login.succeeded")) == 1


# -- M02: drift --


def test_M02_codes_two_steps_away_fail_one_step_away_pass(app, db, alice):
    client = app.test_client()
    password_step(client, "alice")
    assert verify_json(client, code(alice.secret, -2)).status_code == 401
    assert verify_json(client, code(alice.secret, +2)).status_code == 401
    assert verify_json(client, code(alice.secret, -1)).status_code == 200
    other = app.test_client()
    password_step(other, "alice")
    assert verify_json(other, code(alice.secret, +1)).status_code == 200
    assert [details(e)["reason"] for e in events(db, "auth.mfa.failed")] == ["wrong_code"] * 2


def test_M02_a_time_sent_by_the_client_is_ignored(app, client, alice):
    future = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
    value = pyotp.TOTP(alice.secret).at(future)
    json_password_step(client, "alice")
    response = post_json(
        client,
        "/auth/2fa",
        {"code": value, "time": int(future.timestamp()), "timestamp": future.isoformat()},
        headers={"Date": future.strftime("%a, %d %b %Y %H:%M:%S GMT")},
    )
    assert response.status_code == 401
    assert not is_signed_in(client)


def test_M02_the_servers_clock_decides(app, client, alice, clock):
    json_password_step(client, "alice")
    value = code(alice.secret)
    clock.tick(90)  # three steps later, the code is stale
    assert verify_json(client, value).status_code == 401


# -- M03: guessing --


def test_M03_wrong_codes_end_the_pending_sign_in_after_the_maximum(app, client, db, alice):
    password_step(client, "alice")
    for _ in range(4):
        assert verify_json(client, alice.wrong).status_code == 401
    last = verify_json(client, alice.wrong)
    assert last.status_code == 401
    assert last.get_json() == {
        "error": "login_required",
        "message": "Too many wrong codes. Please sign in again.",
    }
    # The right code no longer helps: the password step comes first again.
    assert verify_json(client, code(alice.secret)).get_json()["error"] == "login_required"
    assert not is_signed_in(client)
    failed = events(db, "auth.mfa.failed")
    assert len(failed) == 5
    assert all(e.actor_type == "anonymous" and e.target_id == str(alice.user.id) for e in failed)
    assert fresh(db).get(User, alice.user.id).failed_logins == 5  # type: ignore[union-attr]


def test_M03_a_browser_is_sent_back_to_the_login_page(app, client, alice):
    password_step(client, "alice")
    for _ in range(4):
        assert verify(client, alice.wrong).status_code == 401
    response = verify(client, alice.wrong)
    assert (response.status_code, response.headers["Location"]) == (303, "/auth/login")
    assert "Too many wrong codes" in client.get("/auth/login").get_data(as_text=True)


@with_config(AAA_MFA_MAX_ATTEMPTS=3)
def test_M03_the_maximum_is_a_setting(app, client, alice):
    password_step(client, "alice")
    assert verify_json(client, alice.wrong).get_json()["attempts_left"] == 2
    assert verify_json(client, alice.wrong).get_json()["attempts_left"] == 1
    assert verify_json(client, alice.wrong).get_json()["error"] == "login_required"


def test_M03_the_account_is_throttled_beyond_the_lockout_threshold(app, db, alice, clock):
    """Starting over with the password gives five more tries, but the account keeps count:
    past AAA_LOCKOUT_THRESHOLD wrong codes, even the right code waits (429), audited."""
    for _ in range(2):
        client = app.test_client()
        password_step(client, "alice")
        for _ in range(5):
            verify_json(client, alice.wrong)
    client = app.test_client()
    password_step(client, "alice")
    response = verify_json(client, code(alice.secret))
    assert response.status_code == 429
    assert 60 <= int(response.headers["Retry-After"]) <= 61
    assert response.get_json()["error"] == "throttled"
    assert not is_signed_in(client)
    [throttled] = events(db, "auth.mfa.throttled")
    assert (throttled.outcome, throttled.target_id) == ("denied", str(alice.user.id))
    clock.tick(61)
    assert verify_json(client, code(alice.secret)).status_code == 200


def test_M03_replaying_the_pending_cookie_does_not_reset_the_count(app, db, alice):
    """The pending sign-in lives in the (signed, client-held) cookie: a script can replay
    the cookie from just after the password step to get its tries back. The account's
    count does not live there: at AAA_LOCKOUT_THRESHOLD wrong codes the account locks, and
    no further guess is even looked at."""
    client = app.test_client()
    password_step(client, "alice")
    token = csrf_token(client)
    saved = cookie(client)
    assert saved is not None
    statuses = []
    for guess in wrong(alice.secret, 15):
        attacker = replay(app, saved)
        response = attacker.post(
            "/auth/2fa", json={"code": guess}, headers={**JSON, "X-CSRFToken": token}
        )
        statuses.append(response.status_code)
    assert statuses == [401] * 15
    assert len(events(db, "auth.mfa.failed")) == 10
    [lockout] = events(db, "auth.lockout")
    assert lockout.target_id == str(alice.user.id)
    # Not even the right code passes now.
    attacker = replay(app, saved)
    response = attacker.post(
        "/auth/2fa", json={"code": code(alice.secret)}, headers={**JSON, "X-CSRFToken": token}
    )
    assert response.status_code == 401
    assert count(db, LoginSession) == 0


@with_config(AAA_LOGIN_LIMIT_PER_IP="2 per minute")
def test_M03_the_second_step_is_limited_per_ip(app, client, alice):
    """The second step has the login form's per-IP budget (AAA_LOGIN_LIMIT_PER_IP)."""
    password_step(client, "alice")
    assert verify_json(client, alice.wrong).status_code == 401
    assert verify_json(client, alice.wrong).status_code == 401
    response = verify_json(client, code(alice.secret))
    assert response.status_code == 429
    assert "Retry-After" in response.headers


# -- M06: recovery codes --


def test_M06_a_recovery_code_signs_in_once(app, db, alice):
    client = app.test_client()
    password_step(client, "alice")
    response = verify(client, alice.codes[0])
    assert response.status_code == 303
    assert "9 of them are left" in client.get("/account/2fa").get_data(as_text=True)
    [event] = events(db, "auth.login.succeeded")
    assert details(event) == {"mfa": "recovery_code", "remaining": 9}
    again = app.test_client()
    password_step(again, "alice")
    assert verify_json(again, alice.codes[0]).status_code == 401
    [failed] = events(db, "auth.mfa.failed")
    assert details(failed) == {"method": "recovery_code", "reason": "wrong_code"}
    assert count(db, RecoveryCode, RecoveryCode.used_at.is_not(None)) == 1


def test_M06_only_hashes_of_recovery_codes_and_no_secret_in_the_trail(app, client, db, make_user):
    make_user("carol")
    login(client, "carol")
    secret, codes = enrol(client)
    dump = dump_database(app_engine(app))
    for value in codes:
        assert value not in dump and value.replace("-", "") not in dump
    trail = "\n".join(repr(tuple(r)) for r in fresh(db).execute(select(AuditEvent.__table__)))
    assert secret not in trail
    assert all(value.replace("-", "") not in trail for value in codes)


def test_M06_regenerating_invalidates_the_old_codes(app, client, db, alice):
    password_step(client, "alice")
    verify(client, code(alice.secret))
    response = post_json(client, "/account/2fa/recovery-codes", {"password": PASSWORD})
    assert response.status_code == 200
    new = response.get_json()["recovery_codes"]
    assert len(new) == 10 and not set(new) & set(alice.codes)
    [event] = events(db, "mfa.recovery_codes.regenerated")
    assert event.actor_id == alice.user.id
    old = app.test_client()
    password_step(old, "alice")
    assert verify_json(old, alice.codes[1]).status_code == 401
    assert verify_json(old, new[1]).status_code == 200


def test_M06_regenerating_needs_the_password(app, client, db, alice):
    password_step(client, "alice")
    verify(client, code(alice.secret))
    assert post_json(client, "/account/2fa/recovery-codes", {}).status_code == 400
    wrong = post_json(client, "/account/2fa/recovery-codes", {"password": "nope-" + PASSWORD})
    assert wrong.status_code == 400
    assert wrong.get_json()["fields"] == {"password": "The password is not correct."}
    page = post(client, "/account/2fa/recovery-codes", {"password": "nope"})
    assert page.status_code == 400
    assert "The password is not correct." in page.get_data(as_text=True)
    assert len(events(db, "mfa.recovery_codes.regenerate_failed")) == 2
    assert count(db, RecoveryCode) == 10
    assert client.get("/account/2fa/recovery-codes").status_code == 405


def test_M06_the_codes_page_shows_them_once(app, client, alice):
    password_step(client, "alice")
    verify(client, code(alice.secret))
    response = post(client, "/account/2fa/recovery-codes", {"password": PASSWORD})
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    codes = re.findall(r"<li><code>([^<]+)</code></li>", html)
    assert len(codes) == 10
    assert not any(value in client.get("/account/2fa").get_data(as_text=True) for value in codes)


# -- M07: turning it off --


def test_M07_disabling_needs_the_password(app, client, db, alice):
    password_step(client, "alice")
    verify(client, code(alice.secret))
    missing = post_json(client, "/account/2fa/disable", {})
    assert missing.status_code == 400
    assert missing.get_json()["fields"] == {"password": "This field is required."}
    wrong = post(client, "/account/2fa/disable", {"password": "nope-" + PASSWORD})
    wrong.close()
    assert wrong.status_code == 400
    assert "The password is not correct." in wrong.get_data(as_text=True)
    assert outbox(app) == []
    assert fresh(db).get(User, alice.user.id).mfa_enabled  # type: ignore[union-attr]
    [failed] = events(db, "mfa.disable_failed")
    assert (failed.outcome, details(failed)) == ("failure", {"reason": "bad_password"})


def test_M07_disabling_needs_csrf(app, client, db, alice):
    password_step(client, "alice")
    verify(client, code(alice.secret))
    response = client.post("/account/2fa/disable", data={"password": PASSWORD})
    assert response.status_code == 400
    response = client.post("/account/2fa/disable", json={"password": PASSWORD}, headers=JSON)
    assert (response.status_code, response.get_json()["error"]) == (400, "csrf_failed")
    response = client.post(
        "/account/2fa/disable", json={"password": PASSWORD}, headers={"X-CSRFToken": "forged"}
    )
    assert response.status_code == 400
    assert client.get("/account/2fa/disable").status_code == 405
    assert fresh(db).get(User, alice.user.id).mfa_enabled  # type: ignore[union-attr]
    assert events(db, "mfa.disabled") == []


def outbox(app: Flask) -> list[Any]:
    return list(getattr(app.extensions["mailman"], "outbox", []))


def test_M07_disabling_with_the_password_turns_it_off_and_is_audited(app, client, db, alice):
    password_step(client, "alice")
    verify(client, code(alice.secret))
    response = post(
        client,
        "/account/2fa/disable",
        {"password": PASSWORD},
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    response.close()  # the mail leaves once the response is done
    assert (response.status_code, response.headers["Location"]) == (303, "/account/2fa")
    [message] = outbox(app)
    assert message.to == ["alice@example.org"]
    assert message.subject == "Two-factor authentication was turned off for your Flask-AAA account"
    assert "203.0.113.9" in message.body and "change your password" in message.body
    assert "Two-factor authentication is off." in client.get("/account/2fa").get_data(as_text=True)
    row = fresh(db).get(User, alice.user.id)
    assert row is not None and not row.mfa_enabled and row.totp_secret is None
    assert count(db, RecoveryCode) == 0
    [event] = events(db, "mfa.disabled")
    assert (event.actor_id, event.target_id, event.outcome) == (
        alice.user.id,
        str(alice.user.id),
        "success",
    )
    # The next sign-in needs the password only.
    other = app.test_client()
    assert login(other, "alice").headers["Location"] == "/"


def test_M07_disabling_json(app, client, db, alice):
    json_password_step(client, "alice")
    verify_json(client, code(alice.secret))
    response = post_json(client, "/account/2fa/disable", {"password": PASSWORD})
    response.close()
    assert response.get_json() == {"ok": True, "mfa_enabled": False}
    assert len(outbox(app)) == 1
    assert client.get("/account/2fa", headers=JSON).get_json()["mfa_enabled"] is False


def test_M07_disabling_when_off_is_a_conflict(app, client, make_user):
    make_user("bob")
    login(client, "bob")
    response = post_json(client, "/account/2fa/disable", {"password": PASSWORD})
    assert response.status_code == 409


# -- A09: 8 characters with 2FA --


def test_A09_with_2fa_an_8_character_password_is_accepted(app, client, db, alice, make_user):
    password_step(client, "alice")
    verify(client, code(alice.secret))
    response = post_json(
        client, "/auth/password", {"current_password": PASSWORD, "new_password": "Tq7#vL2m"}
    )
    assert response.status_code == 200, response.get_json()
    # Without 2FA the same password is too short.
    make_user("bob")
    bob = app.test_client()
    login(bob, "bob")
    response = post_json(
        bob, "/auth/password", {"current_password": PASSWORD, "new_password": "Tq7#vL2m"}
    )
    assert response.status_code == 400
    assert "15" in response.get_json()["fields"]["new_password"]


def test_A09_turning_2fa_off_with_a_short_password_is_refused(app, client, db, alice):
    password_step(client, "alice")
    verify(client, code(alice.secret))
    post_json(client, "/auth/password", {"current_password": PASSWORD, "new_password": "Tq7#vL2m"})
    response = post_json(client, "/account/2fa/disable", {"password": "Tq7#vL2m"})
    assert response.status_code == 400
    assert "at least 15" in response.get_json()["fields"]["password"]
    assert fresh(db).get(User, alice.user.id).mfa_enabled  # type: ignore[union-attr]


# -- enrolment and S02 --


def test_enrolment_page_shows_the_qr_code_and_the_secret(app, client, db, make_user, clock):
    make_user("carol")
    login(client, "carol")
    response = client.get("/account/2fa")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert '<svg role="img"' in html and "<title>QR code" in html
    secret = client.get("/account/2fa", headers=JSON).get_json()["secret"]
    assert otp.format_secret(secret) in html
    # The CSP forbids inline scripts and style attributes: the page needs neither.
    assert "<script" not in html and "style=" not in html
    assert "img-src 'self' data:" in response.headers["Content-Security-Policy"]
    # A reload shows the same secret (the one being scanned), not a new one.
    assert client.get("/account/2fa", headers=JSON).get_json()["secret"] == secret


def test_enrolment_json_gives_the_uri_and_the_svg(app, client, make_user):
    make_user("carol", email="carol@example.org")
    login(client, "carol")
    body = client.get("/account/2fa", headers=JSON).get_json()
    assert body["mfa_enabled"] is False
    assert body["otpauth_uri"].startswith("otpauth://totp/Flask-AAA:carol%40example.org?")
    assert f"secret={body['secret']}" in body["otpauth_uri"]
    assert body["qr_svg"].startswith("<svg")


@with_config(AAA_MFA_ISSUER="Acme Notes")
def test_enrolment_uses_the_configured_issuer(app, client, make_user):
    make_user("carol")
    login(client, "carol")
    assert (
        "issuer=Acme%20Notes" in client.get("/account/2fa", headers=JSON).get_json()["otpauth_uri"]
    )


def test_enrolment_with_a_wrong_code_stores_nothing(app, client, db, make_user):
    user = make_user("carol")
    login(client, "carol")
    secret = client.get("/account/2fa", headers=JSON).get_json()["secret"]
    response = post(client, "/account/2fa", {"code": wrong(secret)[0]})
    assert response.status_code == 400
    assert "That code is not right" in response.get_data(as_text=True)
    assert otp.format_secret(secret) in response.get_data(as_text=True)
    assert post_json(client, "/account/2fa", {"code": wrong(secret)[0]}).status_code == 400
    assert not fresh(db).get(User, user.id).mfa_enabled  # type: ignore[union-attr]
    assert len(events(db, "mfa.enable_failed")) == 2


def test_enrolment_html_shows_the_codes_once_and_turns_2fa_on(app, client, db, make_user):
    user = make_user("carol")
    login(client, "carol")
    secret = client.get("/account/2fa", headers=JSON).get_json()["secret"]
    response = post(client, "/account/2fa", {"code": code(secret)})
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert html.count("<li><code>") == 10
    assert fresh(db).get(User, user.id).mfa_enabled  # type: ignore[union-attr]
    [event] = events(db, "mfa.enabled")
    assert (event.actor_id, details(event)) == (user.id, {"method": "totp"})
    status = client.get("/account/2fa").get_data(as_text=True)
    assert "Recovery codes left: <strong>10</strong>" in status
    # Enabling twice is a conflict.
    assert post_json(client, "/account/2fa", {"code": code(secret, 1)}).status_code == 409


def test_S02_enabling_2fa_gives_the_session_a_new_id(app, client, db, make_user):
    make_user("carol")
    login(client, "carol")
    before = cookie(client)
    assert before is not None
    enrol(client)
    after = cookie(client)
    assert after != before
    assert is_signed_in(client)
    assert not is_signed_in(replay(app, before))
    assert count(db, LoginSession, LoginSession.revoked_reason == "mfa_enabled") == 1
    # The page's CSRF token keeps working after the rotation.
    assert (
        post_json(client, "/account/2fa/recovery-codes", {"password": PASSWORD}).status_code == 200
    )


def test_enrolment_needs_a_fresh_session(app, client, make_user, clock):
    make_user("carol")
    login(client, "carol")
    clock.tick(app.extensions["aaa"].settings.reauth_window + 1)
    response = client.get("/account/2fa")
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/account/reauth?next=/account/2fa")
    assert client.get("/account/2fa", headers=JSON).status_code == 401
    assert post(client, "/account/reauth", {"password": PASSWORD}).status_code == 303
    assert client.get("/account/2fa", headers=JSON).status_code == 200


def test_enrolment_candidate_expires(app, client, make_user, clock):
    make_user("carol")
    login(client, "carol")
    secret = client.get("/account/2fa", headers=JSON).get_json()["secret"]
    clock.tick(16 * 60)
    response = post_json(client, "/account/2fa", {"code": code(secret)})
    assert response.status_code == 400
    assert "expired" in response.get_json()["fields"]["code"]


def test_enrolment_pages_need_a_signed_in_user(app, client):
    assert client.get("/account/2fa", headers=JSON).status_code == 401
    assert post_json(client, "/account/2fa", {"code": "123456"}).status_code == 401


def test_the_nav_links_to_the_2fa_page(app, client, make_user):
    make_user("carol")
    login(client, "carol")
    assert 'href="/account/2fa"' in client.get("/account/activity").get_data(as_text=True)


# -- required roles --


@with_config(AAA_MFA_REQUIRED_ROLES=["admin"])
def test_a_user_in_a_required_role_must_enrol_first(app, client, db, make_user):
    make_user("root", roles=["admin"], perms={"admin": ["*"]})
    assert login(client, "root").status_code == 303
    response = client.get("/private")
    assert (response.status_code, response.headers["Location"]) == (303, "/account/2fa")
    response = client.get("/admin/", headers=JSON)
    assert response.status_code == 403
    assert response.get_json()["error"] == "mfa_enrolment_required"
    assert response.get_json()["setup_url"] == "/account/2fa"
    refused = post_json(client, "/admin/roles", {"name": "sneaky"})
    assert (refused.status_code, refused.get_json()["error"]) == (403, "mfa_enrolment_required")
    assert client.get("/account/activity", headers=JSON).status_code == 403
    assert client.get("/", headers=JSON).status_code == 403
    # Enrolment, the stylesheet and the CSRF endpoint stay reachable.
    assert client.get("/account/2fa").status_code == 200
    assert client.get("/aaa-static/aaa/aaa.css").status_code == 200
    enrol(client)
    assert client.get("/private", headers=JSON).status_code == 200
    assert client.get("/admin/", headers=JSON).status_code == 200


@with_config(AAA_MFA_REQUIRED_ROLES=["admin"])
def test_a_user_in_a_required_role_can_still_sign_out(app, client, make_user):
    make_user("root", roles=["admin"], perms={"admin": ["*"]})
    login(client, "root")
    assert post(client, "/auth/logout").status_code == 303
    assert not is_signed_in(client)


@with_config(AAA_MFA_REQUIRED_ROLES=["admin"])
def test_other_roles_are_not_asked_to_enrol(app, client, make_user):
    make_user("bob", roles=["editor"])
    login(client, "bob")
    assert client.get("/private", headers=JSON).status_code == 200


@with_config(AAA_MFA_REQUIRED_ROLES=["admin"])
def test_a_required_role_with_2fa_passes(app, client, make_mfa_user):
    boss = make_mfa_user("root", roles=["admin"], perms={"admin": ["*"]})
    password_step(client, "root")
    verify(client, code(boss.secret))
    assert client.get("/admin/", headers=JSON).status_code == 200


# -- every flow leaves its events --


def test_each_flow_writes_its_audit_events(app, client, db, make_user, clock):
    user = make_user("dave")
    login(client, "dave")
    secret, codes = enrol(client)
    assert len(codes) == 10
    post_json(client, "/auth/logout")
    clock.tick(30)
    json_password_step(client, "dave")
    verify_json(client, wrong(secret)[0])
    verify_json(client, code(secret))
    post_json(client, "/account/2fa/recovery-codes", {"password": PASSWORD})
    post_json(client, "/account/2fa/disable", {"password": PASSWORD})
    actions = [
        e.action
        for e in fresh(db).scalars(
            select(AuditEvent).where(AuditEvent.target_id == str(user.id)).order_by("seq")
        )
    ]
    assert actions[actions.index("mfa.enabled") :] == [
        "mfa.enabled",
        "auth.logout",
        "auth.mfa.failed",
        "auth.login.succeeded",
        "mfa.recovery_codes.regenerated",
        "mfa.disabled",
    ]


# -- I01: hostile bodies on every 2FA endpoint --


@pytest.mark.parametrize(
    "body",
    ["{", "[]", '"code"', "null", '{"code": ["1"]}', '{"code": {"a": 1}}', '{"password": 7}'],
)
def test_I01_malformed_json_on_every_2fa_endpoint_is_a_json_400(app, db, alice, body):
    client = app.test_client()
    password_step(client, "alice")
    token = csrf_token(client)
    headers = {**JSON, "X-CSRFToken": token, "Content-Type": "application/json"}
    response = client.post("/auth/2fa", data=body, headers=headers)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"] == "invalid_input"
    verify(client, code(alice.secret))
    token = csrf_token(client)
    headers["X-CSRFToken"] = token
    for url in ("/account/2fa", "/account/2fa/disable", "/account/2fa/recovery-codes"):
        response = client.post(url, data=body, headers=headers)
        assert response.status_code in (400, 409), (url, response.status_code)
        assert response.is_json, url
    assert events(db, "auth.mfa.failed") == []
    assert fresh(db).get(User, alice.user.id).mfa_enabled  # type: ignore[union-attr]
