"""Account lockout over HTTP.

Cases from SECURITY-CASES.md: A04 (consecutive failures on one account lock it; the
per-account rate limit and the lockout each work alone), A06 (the lock holds on every path:
form and JSON login, remember-me, re-authentication), A08 (the lock is temporary and grows
exponentially to a cap; an administrator or the CLI lifts it), and A01 (a locked account
answers exactly like a wrong password).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
from flask.testing import FlaskClient
from freezegun import freeze_time
from sqlalchemy import func, select

from flask_aaa.models import AuditEvent, LoginSession, User
from tests.conftest import PASSWORD, count_statements, form_token, fresh, login, post, post_json

COOKIE = "aaa_session"
REMEMBER = "aaa_remember"
WRONG = "wrong-" + PASSWORD
JSON = {"Accept": "application/json"}
THRESHOLD = 3
BASE = 60
MAXIMUM = 150

#: Lockout settings small enough to test, and rate limits high enough not to interfere.
LOCKOUT_CONFIG = {
    "AAA_LOCKOUT_THRESHOLD": THRESHOLD,
    "AAA_LOCKOUT_BASE_SECONDS": BASE,
    "AAA_LOCKOUT_MAX_SECONDS": MAXIMUM,
    "AAA_LOGIN_LIMIT_PER_IP": "1000 per minute",
    "AAA_LOGIN_LIMIT_PER_ACCOUNT": "1000 per minute",
    "AAA_CHANGE_PASSWORD_LIMIT": "1000 per hour",
}


@pytest.fixture
def config(config: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    """The shared config, this module's lockout settings, then the test's own overrides."""
    config.update(LOCKOUT_CONFIG)
    config.update(getattr(request, "param", {}))
    return config


def with_config(**values: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("config", [values], indirect=True, ids=["config"])


@pytest.fixture
def alice(make_user: Any) -> User:
    return make_user("alice")


# -- helpers --

_ips = iter(f"10.77.{i // 250}.{i % 250 + 1}" for i in range(100_000))


def new_ip() -> str:
    return next(_ips)


def frozen() -> Any:
    """Freeze the clock at the real current time (cookies signed before stay valid)."""
    return freeze_time(dt.datetime.now(dt.UTC))


def json_login(
    client: FlaskClient, name: str, password: str = PASSWORD, *, ip: str | None = None, **extra
) -> Any:
    environ = {"REMOTE_ADDR": ip or new_ip()}
    token = client.get("/auth/csrf", environ_base=environ).get_json()["csrf_token"]
    return client.post(
        "/auth/login",
        json={"login": name, "password": password, **extra},
        headers={"X-CSRFToken": token},
        environ_base=environ,
    )


def form_login(client: FlaskClient, name: str, password: str = PASSWORD, **extra: Any) -> Any:
    environ = {"REMOTE_ADDR": new_ip()}
    page = client.get("/auth/login", environ_base=environ).get_data(as_text=True)
    data = {"login": name, "password": password, "csrf_token": form_token(page), **extra}
    return client.post("/auth/login", data=data, environ_base=environ)


def fail_logins(app: Any, name: str = "alice", times: int = THRESHOLD) -> None:
    """``times`` wrong passwords, each from a new client and a new IP."""
    for _ in range(times):
        assert json_login(app.test_client(), name, WRONG).status_code == 401


def is_signed_in(client: FlaskClient) -> bool:
    status = client.get("/private", headers=JSON).status_code
    assert status in (200, 401)
    return status == 200


def stored_user(db: Any, name: str = "alice") -> User:
    user = fresh(db).scalar(select(User).where(User.username == name))
    assert user is not None
    return user


def is_locked(db: Any, name: str = "alice") -> bool:
    until = stored_user(db, name).locked_until
    return until is not None and until > dt.datetime.now(dt.UTC)


def events(db: Any, action: str) -> list[AuditEvent]:
    stmt = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
    return list(fresh(db).scalars(stmt))


def session_count(db: Any) -> int:
    return int(fresh(db).scalar(select(func.count()).select_from(LoginSession)) or 0)


#: Headers whose values legitimately differ between two attempts.
VOLATILE = {"X-Request-ID", "X-RateLimit-Reset", "X-RateLimit-Remaining", "Content-Length"}
_CSRF_VALUES = re.compile(r'(name="csrf_token" value="|name="csrf-token" content=")[^"]*"')


def shape(response: Any) -> tuple[Any, ...]:
    """Everything a client sees of a login answer, minus per-request values."""
    body = _CSRF_VALUES.sub(r'\1TOKEN"', response.get_data(as_text=True))
    headers = sorted(
        (name, "" if name in VOLATILE else value)
        for name, value in response.headers
        if name != "Set-Cookie"
    )
    cookies = sorted(h.split("=", 1)[0] for h in response.headers.getlist("Set-Cookie"))
    return response.status_code, body, headers, cookies


# -- A04: consecutive failures lock the account --


def test_A04_threshold_failures_lock_out_the_right_password(app, alice, db):
    fail_logins(app)
    client = app.test_client()
    response = json_login(client, "alice")
    assert response.status_code == 401
    assert response.get_json() == {
        "error": "authentication_failed",
        "message": "Invalid login or password.",
    }
    assert not is_signed_in(client)
    assert session_count(db) == 0
    assert is_locked(db)
    reasons = [json.loads(e.details)["reason"] for e in events(db, "auth.login.failed")]
    assert reasons == ["bad_password"] * THRESHOLD + ["locked"]


def test_A04_failures_below_the_threshold_do_not_lock(app, alice, db):
    fail_logins(app, times=THRESHOLD - 1)
    assert not is_locked(db)
    assert json_login(app.test_client(), "alice").status_code == 200


def test_A04_lockout_is_one_audit_event_with_its_duration(app, alice, db):
    fail_logins(app)
    json_login(app.test_client(), "alice")  # refused, but not another failure
    [event] = events(db, "auth.lockout")
    assert event.outcome == "denied"
    assert (event.target_type, event.target_id) == ("user", str(alice.id))
    assert json.loads(event.details) == {"seconds": BASE, "lockouts_in_a_row": 1}


def test_A04_identifiers_of_one_account_share_one_count(app, make_user, db):
    """Alternating username, email and case variants does not reset the count."""
    make_user("alice", email="alice@example.org")
    for name in ("alice", "ALICE@example.org", " Alice "):
        assert json_login(app.test_client(), name, WRONG).status_code == 401
    assert is_locked(db)


def test_A04_a_success_resets_the_count(app, alice, db):
    fail_logins(app, times=THRESHOLD - 1)
    assert json_login(app.test_client(), "alice").status_code == 200
    assert stored_user(db).failed_logins == 0
    fail_logins(app, times=THRESHOLD - 1)
    assert not is_locked(db)
    assert json_login(app.test_client(), "alice").status_code == 200
    assert events(db, "auth.lockout") == []


def test_A04_lock_of_one_account_leaves_the_others_alone(app, alice, make_user):
    make_user("bob")
    fail_logins(app)
    assert json_login(app.test_client(), "bob").status_code == 200


# -- A01: a locked account answers like a wrong password --


def test_A01_locked_account_form_answer_is_identical_to_a_wrong_password(app, alice, make_user):
    make_user("bob")
    fail_logins(app)
    shapes = [
        shape(form_login(app.test_client(), "alice")),  # locked, right password
        shape(form_login(app.test_client(), "alice", WRONG)),  # locked, wrong password
        shape(form_login(app.test_client(), "bob", WRONG)),  # not locked, wrong password
        shape(form_login(app.test_client(), "nobody")),  # unknown
    ]
    assert shapes[0][0] == 401
    for other in shapes[1:]:
        assert other == shapes[0]


def test_A01_locked_account_json_answer_is_identical_to_a_wrong_password(app, alice, make_user):
    make_user("bob")
    fail_logins(app)
    locked = shape(json_login(app.test_client(), "alice"))
    wrong = shape(json_login(app.test_client(), "bob", WRONG))
    assert locked[0] == 401
    assert locked == wrong


# -- A08: temporary, exponential, capped --


def test_A08_lock_ends_by_itself(app, alice, db):
    with frozen() as clock:
        fail_logins(app)
        clock.tick(dt.timedelta(seconds=BASE - 1))
        assert json_login(app.test_client(), "alice").status_code == 401
        clock.tick(dt.timedelta(seconds=2))
        client = app.test_client()
        assert json_login(client, "alice").status_code == 200
        assert is_signed_in(client)
        user = stored_user(db)
        assert (user.failed_logins, user.lockouts, user.locked_until) == (0, 0, None)


def test_A08_each_lockout_lasts_twice_as_long_up_to_the_maximum(app, alice, db):
    with frozen() as clock:
        for expected in (BASE, 2 * BASE, MAXIMUM, MAXIMUM):
            locked_at = dt.datetime.now(dt.UTC)
            fail_logins(app)
            assert stored_user(db).locked_until == locked_at + dt.timedelta(seconds=expected)
            clock.tick(dt.timedelta(seconds=expected - 1))
            assert json_login(app.test_client(), "alice").status_code == 401, expected
            clock.tick(dt.timedelta(seconds=2))
    seconds = [json.loads(e.details)["seconds"] for e in events(db, "auth.lockout")]
    assert seconds == [BASE, 2 * BASE, MAXIMUM, MAXIMUM]
    assert [json.loads(e.details)["lockouts_in_a_row"] for e in events(db, "auth.lockout")] == [
        1,
        2,
        3,
        4,
    ]


def test_A08_success_after_a_lock_restarts_the_backoff(app, alice, db):
    with frozen() as clock:
        fail_logins(app)
        clock.tick(dt.timedelta(seconds=BASE + 1))
        assert json_login(app.test_client(), "alice").status_code == 200
        fail_logins(app)
    seconds = [json.loads(e.details)["seconds"] for e in events(db, "auth.lockout")]
    assert seconds == [BASE, BASE]


# -- A08: lifting the lock by hand --


def admin_client(app: Any) -> FlaskClient:
    client = app.test_client()
    assert login(client, "root").status_code == 303
    return client


def test_A08_admin_unlock_page_lifts_the_lock(app, alice, admin, db):
    fail_logins(app)
    boss = admin_client(app)
    detail = boss.get(f"/admin/users/{alice.id}", headers=JSON).get_json()
    assert detail["user"]["locked_until"] is not None
    response = post(boss, f"/admin/users/{alice.id}/unlock")
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/admin/users/{alice.id}")
    assert not is_locked(db)
    detail = boss.get(f"/admin/users/{alice.id}", headers=JSON).get_json()
    assert detail["user"]["locked_until"] is None
    assert json_login(app.test_client(), "alice").status_code == 200
    [event] = events(db, "user.unlocked")
    assert (event.actor_name, event.target_id, event.outcome) == ("root", str(alice.id), "success")


def test_A08_admin_unlock_json(app, alice, admin, db):
    fail_logins(app)
    response = post_json(admin_client(app), f"/admin/users/{alice.id}/unlock")
    assert response.status_code == 200
    assert response.get_json()["ok"] is True
    assert not is_locked(db)
    assert len(events(db, "user.unlocked")) == 1


def test_A08_admin_unlock_of_an_unlocked_user_records_nothing(app, alice, admin, db):
    response = post_json(admin_client(app), f"/admin/users/{alice.id}/unlock")
    assert response.status_code == 200
    assert "not locked" in response.get_json()["message"]
    assert events(db, "user.unlocked") == []


def test_A08_unlock_needs_users_write(app, alice, make_user, db):
    make_user("helper", roles=["helpdesk"], perms={"helpdesk": ["aaa:users:read"]})
    fail_logins(app)
    helper = app.test_client()
    assert login(helper, "helper").status_code == 303
    assert post(helper, f"/admin/users/{alice.id}/unlock", headers=JSON).status_code == 403
    assert is_locked(db)
    assert events(db, "user.unlocked") == []


def test_A08_unlock_without_csrf_is_refused(app, alice, admin, db):
    fail_logins(app)
    boss = admin_client(app)
    assert boss.post(f"/admin/users/{alice.id}/unlock").status_code == 400
    assert boss.get(f"/admin/users/{alice.id}/unlock").status_code == 405
    assert is_locked(db)


def test_A08_cli_unlock_lifts_the_lock(app, alice, db):
    fail_logins(app)
    result = app.test_cli_runner().invoke(args=["aaa", "unlock", "alice"])
    assert result.exit_code == 0, result.output
    assert "Unlocked" in result.output
    assert not is_locked(db)
    assert json_login(app.test_client(), "alice").status_code == 200
    [event] = events(db, "user.unlocked")
    assert event.actor_type == "system"
    assert event.target_id == str(alice.id)


def test_A08_cli_unlock_of_an_unknown_user_fails_cleanly(app, db):
    result = app.test_cli_runner().invoke(args=["aaa", "unlock", "nobody"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert events(db, "user.unlocked") == []


# -- A06: every path honours the lock --


def test_A06_form_login_honours_the_lock(app, alice, db):
    fail_logins(app)
    client = app.test_client()
    assert form_login(client, "alice").status_code == 401
    assert client.get_cookie(REMEMBER) is None
    assert not is_signed_in(client)
    assert session_count(db) == 0


def test_A06_json_login_with_remember_honours_the_lock(app, alice, db):
    fail_logins(app)
    client = app.test_client()
    response = json_login(client, "alice", remember=True)
    assert response.status_code == 401
    assert response.get_json()["error"] == "authentication_failed"
    assert client.get_cookie(REMEMBER) is None
    assert session_count(db) == 0


def test_A06_remember_me_does_not_restore_a_locked_user(app, alice, db):
    client = app.test_client()
    assert form_login(client, "alice", remember="1").status_code == 303
    assert client.get_cookie(REMEMBER) is not None
    client.delete_cookie(COOKIE)
    fail_logins(app)
    before = session_count(db)
    assert not is_signed_in(client)
    assert session_count(db) == before
    succeeded = events(db, "auth.login.succeeded")
    assert all(json.loads(e.details).get("method") != "remember_me" for e in succeeded)


def test_A04_reauthentication_failures_count_towards_the_lock(app, alice, db):
    client = app.test_client()
    assert form_login(client, "alice").status_code == 303
    for _ in range(THRESHOLD):
        response = post(client, "/account/reauth", {"password": WRONG})
        assert response.status_code == 400
    assert len(events(db, "auth.reauth.failed")) == THRESHOLD
    assert len(events(db, "auth.lockout")) == 1
    assert is_locked(db)
    assert json_login(app.test_client(), "alice").status_code == 401


def test_A06_reauthentication_honours_the_lock(app, alice, db):
    """A signed-in attacker (a stolen session) who keeps guessing at /account/reauth must
    meet the lock too: while locked, even the right password is refused there."""
    client = app.test_client()
    assert form_login(client, "alice").status_code == 303
    fail_logins(app)
    response = post(client, "/account/reauth", {"password": PASSWORD}, headers=JSON)
    assert response.status_code == 400
    assert events(db, "auth.reauthenticated") == []


def test_A06_locked_reauthentication_does_the_same_work_for_the_right_password(app, alice, db):
    """While locked, /account/reauth must not tell the right password apart by its work
    either (A02): refused, it sends the same SQL as a wrong one. (Two wrong ones here stay
    under the threshold, so no new lockout adds its own statements.)"""
    client = app.test_client()
    assert form_login(client, "alice").status_code == 303
    fail_logins(app)

    def statements_of(password: str) -> list[str]:
        assert (
            post(client, "/account/reauth", {"password": password}, headers=JSON).status_code == 400
        )
        with count_statements(app) as sent:
            response = post(client, "/account/reauth", {"password": password}, headers=JSON)
            assert response.status_code == 400
        return sent

    assert statements_of(PASSWORD) == statements_of(WRONG)
    assert events(db, "auth.reauthenticated") == []


# -- A04: the per-account rate limit and the lockout each work alone --


@with_config(AAA_LOCKOUT_THRESHOLD=100, AAA_LOGIN_LIMIT_PER_ACCOUNT="3 per minute")
def test_A04_per_account_rate_limit_alone_stops_guessing(app, alice, db):
    fail_logins(app)
    response = json_login(app.test_client(), "alice")
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert not is_locked(db)
    assert stored_user(db).failed_logins == THRESHOLD
    assert events(db, "auth.lockout") == []


@with_config(AAA_LOGIN_LIMIT_PER_ACCOUNT="1000 per minute")
def test_A04_lockout_alone_stops_guessing(app, alice, db):
    fail_logins(app)
    for _ in range(2):
        response = json_login(app.test_client(), "alice")
        assert response.status_code == 401, "the lock answers, not the rate limit"
    assert is_locked(db)
    assert events(db, "auth.login.throttled") == []
