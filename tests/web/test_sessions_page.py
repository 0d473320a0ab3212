"""Where a user is signed in, and ending those sessions.

Cases from SECURITY-CASES.md: S04 (remote revoke by the user, "sign out everywhere else",
an administrator or the CLI signing a user out everywhere: the next request of the ended
session is anonymous, no cache lag), Z01-style IDOR (someone else's session id is "not
found" and nothing changes), Z05 (CSRF and POST only), S02 (a role grant or revoke gives
every live session of the user a new id; the old id is dead) and S06 (idle and absolute
timeouts through HTTP).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from freezegun import freeze_time
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flask_aaa.db import writing
from flask_aaa.models import AuditEvent, LoginSession, Role, User
from flask_aaa.services import rbac
from tests.conftest import (
    SYSTEM,
    app_engine,
    csrf_token,
    ensure_role,
    fresh,
    login,
    post,
    post_json,
)

COOKIE = "aaa_session"
REMEMBER = "aaa_remember"
JSON = {"Accept": "application/json"}


@pytest.fixture
def config(config: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    config.update(getattr(request, "param", {}))
    return config


def with_config(**values: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("config", [values], indirect=True, ids=["config"])


@pytest.fixture
def alice(make_user: Any) -> User:
    return make_user("alice")


# -- helpers --


def device(app: Any, name: str = "alice", agent: str = "Device-A", **extra: Any) -> FlaskClient:
    """A browser with its own user agent, signed in as ``name``."""
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = agent
    response = login(client, name, **extra)
    assert response.status_code == 303, response.get_data(as_text=True)
    return client


def cookie(client: FlaskClient, name: str = COOKIE) -> str | None:
    found = client.get_cookie(name)
    return found.value if found is not None else None


def replay(app: Any, value: str) -> FlaskClient:
    """A second browser holding a copy of a session cookie."""
    other = app.test_client()
    other.set_cookie(COOKIE, value)
    return other


def is_signed_in(client: FlaskClient) -> bool:
    status = client.get("/private", headers=JSON).status_code
    assert status in (200, 401)
    return status == 200


def listing(client: FlaskClient) -> list[dict[str, Any]]:
    response = client.get("/account/sessions", headers=JSON)
    assert response.status_code == 200
    return list(response.get_json()["sessions"])


def session_id(client: FlaskClient, agent: str) -> int:
    [entry] = [s for s in listing(client) if s["user_agent"] == agent]
    return int(entry["id"])


def events(db: Any, action: str) -> list[AuditEvent]:
    stmt = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
    return list(fresh(db).scalars(stmt))


def live(db: Any, user: User | None = None) -> int:
    stmt = select(func.count()).select_from(LoginSession).where(LoginSession.revoked_at.is_(None))
    if user is not None:
        stmt = stmt.where(LoginSession.user_id == user.id)
    return int(fresh(db).scalar(stmt) or 0)


def admin_client(app: Any) -> FlaskClient:
    return device(app, "root", "Admin-Browser")


# -- the list --


def test_S04_sessions_json_lists_live_sessions_and_marks_the_current(app, alice, make_user):
    a = device(app, agent="Device-A")
    device(app, agent="Device-B")
    make_user("bob")
    device(app, "bob", "Bob-Browser")
    entries = listing(a)
    assert sorted(e["user_agent"] for e in entries) == ["Device-A", "Device-B"]
    assert [e["user_agent"] for e in entries if e["current"]] == ["Device-A"]
    for entry in entries:
        assert set(entry) == {
            "id",
            "current",
            "ip",
            "user_agent",
            "created_at",
            "last_seen_at",
            "expires_at",
        }


def test_S04_sessions_list_leaves_out_ended_sessions(app, alice):
    a = device(app, agent="Device-A")
    b = device(app, agent="Device-B")
    assert post(b, "/auth/logout").status_code == 303
    assert [e["user_agent"] for e in listing(a)] == ["Device-A"]


def test_S04_sessions_page_html_marks_this_browser_and_escapes(app, alice):
    a = device(app, agent="Device-A")
    device(app, agent="<script>alert(1)</script>")
    response = a.get("/account/sessions")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert html.count("(this browser)") == 1
    assert "Device-A" in html
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html
    assert "Sign out everywhere else" in html
    assert response.headers["Cache-Control"] == "no-store"


def test_S04_sessions_page_needs_a_signed_in_user(app):
    client = app.test_client()
    response = client.get("/account/sessions", headers=JSON)
    assert response.status_code == 401
    assert response.get_json()["error"] == "login_required"
    assert client.get("/account/sessions").status_code == 303


# -- revoking one session --


def test_S04_revoking_another_session_signs_it_out_at_once(app, alice, db):
    a = device(app, agent="Device-A")
    b = device(app, agent="Device-B")
    target = session_id(a, "Device-B")
    response = post(a, f"/account/sessions/{target}/revoke")
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/account/sessions")
    assert not is_signed_in(b), "the very next request of the revoked session is anonymous"
    assert is_signed_in(a)
    [event] = events(db, "session.revoked")
    assert (event.actor_id, event.target_type) == (alice.id, "session")
    assert event.target_id == str(target)
    assert json.loads(event.details) == {"current": False}
    assert event.target_label == "Device-B"


def test_S04_revoking_another_session_json(app, alice):
    a = device(app, agent="Device-A")
    b = device(app, agent="Device-B")
    response = post_json(a, f"/account/sessions/{session_id(a, 'Device-B')}/revoke")
    assert response.status_code == 200
    assert response.get_json() == {"ok": True, "signed_out": False}
    assert not is_signed_in(b)


def test_S04_revoking_the_current_session_signs_this_browser_out(app, alice, db):
    a = device(app, agent="Device-A")
    response = post_json(a, f"/account/sessions/{session_id(a, 'Device-A')}/revoke")
    assert response.get_json() == {"ok": True, "signed_out": True}
    assert not is_signed_in(a)
    [event] = events(db, "session.revoked")
    assert json.loads(event.details) == {"current": True}


def test_S04_revoking_the_current_session_by_form_goes_to_login(app, alice):
    a = device(app, agent="Device-A")
    response = post(a, f"/account/sessions/{session_id(a, 'Device-A')}/revoke")
    assert response.status_code == 303
    assert "/auth/login" in response.headers["Location"]
    assert not is_signed_in(a)


def test_Z01_revoking_someone_elses_session_is_not_found(app, alice, make_user, db):
    make_user("bob")
    a = device(app, agent="Device-A")
    bob = device(app, "bob", "Bob-Browser")
    bobs = session_id(bob, "Bob-Browser")
    response = post_json(a, f"/account/sessions/{bobs}/revoke")
    assert response.status_code == 404
    missing = post_json(a, "/account/sessions/999999/revoke")
    assert missing.status_code == 404
    assert response.get_json() == missing.get_json(), "ids reveal nothing"
    assert is_signed_in(bob)
    assert live(db) == 2
    assert events(db, "session.revoked") == []


def test_Z01_revoking_an_ended_session_is_not_found(app, alice, db):
    a = device(app, agent="Device-A")
    b = device(app, agent="Device-B")
    target = session_id(a, "Device-B")
    assert post(b, "/auth/logout").status_code == 303
    assert post_json(a, f"/account/sessions/{target}/revoke").status_code == 404
    assert events(db, "session.revoked") == []


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "0"])
def test_revoke_with_a_malformed_id_is_a_clean_4xx(app, alice, bad):
    a = device(app)
    response = post_json(a, f"/account/sessions/{bad}/revoke")
    assert 400 <= response.status_code < 500
    assert is_signed_in(a)


#: Beyond any database's integer column (SQLite and PostgreSQL BIGINT end at 2**63 - 1).
HUGE_ID = str(2**64)


def test_revoke_with_an_out_of_range_id_is_a_clean_4xx(app, alice):
    """An id no row can have: "every answer to a bad input is a clear 4xx, never a 500"."""
    a = device(app)
    response = post_json(a, f"/account/sessions/{HUGE_ID}/revoke")
    assert response.status_code == 404
    assert is_signed_in(a)


def test_admin_sign_out_of_an_out_of_range_user_id_is_a_clean_4xx(app, admin):
    boss = admin_client(app)
    for url in (f"/admin/users/{HUGE_ID}/sessions/revoke", f"/admin/users/{HUGE_ID}/unlock"):
        assert post_json(boss, url).status_code == 404, url


# -- revoking the others --


def test_S04_revoke_others_keeps_this_session_and_ends_the_rest(app, alice, make_user, db):
    make_user("bob")
    bob = device(app, "bob", "Bob-Browser")
    a = device(app, agent="Device-A")
    b = device(app, agent="Device-B")
    c = device(app, agent="Device-C")
    response = post_json(a, "/account/sessions/revoke-others")
    assert response.status_code == 200
    assert response.get_json() == {"ok": True, "sessions_ended": 2}
    assert is_signed_in(a)
    assert not is_signed_in(b)
    assert not is_signed_in(c)
    assert is_signed_in(bob), "other users are untouched"
    assert [e["user_agent"] for e in listing(a)] == ["Device-A"]
    [event] = events(db, "session.revoked_others")
    assert event.actor_id == alice.id
    assert json.loads(event.details) == {"sessions_ended": 2}


def test_S04_revoke_others_by_form_redirects_to_the_list(app, alice):
    a = device(app, agent="Device-A")
    b = device(app, agent="Device-B")
    response = post(a, "/account/sessions/revoke-others")
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/account/sessions")
    assert not is_signed_in(b)


def test_S04_revoke_others_also_ends_their_remember_me(app, alice):
    """Otherwise "sign out everywhere else" would be undone by a remember-me cookie."""
    a = device(app, agent="Device-A")
    b = device(app, agent="Device-B", remember="1")
    post_json(a, "/account/sessions/revoke-others")
    b.delete_cookie(COOKIE)
    assert not is_signed_in(b)


# -- an administrator or the CLI signs a user out everywhere --


def test_S04_admin_signs_a_user_out_everywhere(app, alice, admin, db):
    a = device(app, agent="Device-A")
    b = device(app, agent="Device-B", remember="1")
    boss = admin_client(app)
    response = post(boss, f"/admin/users/{alice.id}/sessions/revoke")
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/admin/users/{alice.id}")
    assert not is_signed_in(a)
    assert not is_signed_in(b)
    b.delete_cookie(COOKIE)
    assert not is_signed_in(b), "remember-me is ended too"
    assert is_signed_in(boss)
    [event] = events(db, "session.revoked_all")
    assert (event.actor_name, event.target_id) == ("root", str(alice.id))
    assert json.loads(event.details) == {"sessions_ended": 2}


def test_S04_admin_signs_a_user_out_everywhere_json(app, alice, admin, db):
    a = device(app, agent="Device-A")
    response = post_json(admin_client(app), f"/admin/users/{alice.id}/sessions/revoke")
    assert response.status_code == 200
    assert response.get_json()["ok"] is True
    assert not is_signed_in(a)
    assert live(db, alice) == 0


def test_S04_sign_out_everywhere_needs_users_write(app, alice, make_user, db):
    make_user("helper", roles=["helpdesk"], perms={"helpdesk": ["aaa:users:read"]})
    a = device(app, agent="Device-A")
    helper = device(app, "helper", "Helper")
    response = post_json(helper, f"/admin/users/{alice.id}/sessions/revoke")
    assert response.status_code == 403
    assert is_signed_in(a)
    assert events(db, "session.revoked_all") == []


def test_S04_cli_revoke_sessions_signs_a_user_out_everywhere(app, alice, db):
    a = device(app, agent="Device-A")
    b = device(app, agent="Device-B")
    result = app.test_cli_runner().invoke(args=["aaa", "revoke-sessions", "alice"])
    assert result.exit_code == 0, result.output
    assert "2 session(s)" in result.output
    assert not is_signed_in(a)
    assert not is_signed_in(b)
    [event] = events(db, "session.revoked_all")
    assert (event.actor_type, event.target_id) == ("system", str(alice.id))


def test_S04_cli_revoke_sessions_all_signs_everyone_out(app, alice, make_user, db):
    """ASVS 7.4.5: one command ends every session of every user, remember-me included."""
    make_user("bob")
    a = device(app, agent="Device-A")
    b = device(app, "bob", "Device-B")
    result = app.test_cli_runner().invoke(args=["aaa", "revoke-sessions", "--all"])
    assert result.exit_code == 0, result.output
    assert "Signed everyone out of 2 session(s)." in result.output
    assert not is_signed_in(a)
    assert not is_signed_in(b)
    [event] = events(db, "session.revoked_everyone")
    assert json.loads(event.details) == {"sessions_ended": 2}
    assert event.target_type is None


@pytest.mark.parametrize("args", [[], ["alice", "--all"]])
def test_cli_revoke_sessions_needs_a_user_or_all(app, alice, db, args):
    a = device(app, agent="Device-A")
    result = app.test_cli_runner().invoke(args=["aaa", "revoke-sessions", *args])
    assert result.exit_code == 2
    assert is_signed_in(a)
    assert events(db, "session.revoked") == []


def test_S04_disabling_a_user_signs_them_out_at_once(app, alice, admin):
    a = device(app, agent="Device-A")
    response = post_json(admin_client(app), f"/admin/users/{alice.id}/active", {"active": "0"})
    assert response.status_code == 200
    assert not is_signed_in(a)


# -- Z05: CSRF and methods --


def test_Z05_session_actions_need_a_csrf_token(app, alice, admin, db):
    a = device(app, agent="Device-A")
    device(app, agent="Device-B")
    boss = admin_client(app)
    target = session_id(a, "Device-B")
    before = live(db)
    for client, url in [
        (a, f"/account/sessions/{target}/revoke"),
        (a, "/account/sessions/revoke-others"),
        (boss, f"/admin/users/{alice.id}/sessions/revoke"),
    ]:
        assert client.post(url).status_code == 400, url
        assert client.post(url, data={"csrf_token": "forged"}).status_code == 400, url
        response = client.post(url, json={})
        assert response.status_code == 400, url
        assert response.get_json()["error"] == "csrf_failed"
        foreign = csrf_token(app.test_client())
        assert client.post(url, data={"csrf_token": foreign}).status_code == 400, url
    assert live(db) == before
    assert events(db, "session.revoked") == []
    assert events(db, "session.revoked_others") == []
    assert events(db, "session.revoked_all") == []


def test_Z05_get_on_session_actions_is_405(app, alice, admin, db):
    a = device(app, agent="Device-A")
    boss = admin_client(app)
    own = session_id(a, "Device-A")
    for client, url in [
        (a, f"/account/sessions/{own}/revoke"),
        (a, "/account/sessions/revoke-others"),
        (boss, f"/admin/users/{alice.id}/sessions/revoke"),
    ]:
        response = client.get(url)
        assert response.status_code == 405, url
        assert "POST" in response.headers["Allow"]
    assert is_signed_in(a)
    assert live(db) == 2


def test_anonymous_session_actions_are_refused(app, alice, db):
    a = device(app, agent="Device-A")
    own = session_id(a, "Device-A")
    anonymous = app.test_client()
    assert post_json(anonymous, f"/account/sessions/{own}/revoke").status_code == 401
    assert post_json(anonymous, "/account/sessions/revoke-others").status_code == 401
    assert is_signed_in(a)


# -- S02: a privilege change rotates the session id --


def make_role(app: Any, name: str = "editor") -> None:
    with writing(), Session(app_engine(app)) as s:
        ensure_role(s, name, ["notes:read"])
        s.commit()


def change_role_by_service(app: Any, user: User, role: str, *, grant: bool) -> None:
    with writing(), Session(app_engine(app)) as s:
        subject = s.get(User, user.id)
        found = s.scalar(select(Role).where(Role.name == role))
        change = rbac.grant_role if grant else rbac.revoke_role
        assert change(s, actor=SYSTEM, user=subject, role=found)
        s.commit()


def assert_rotated(client: FlaskClient, copy: FlaskClient, *, path: str, status: int) -> None:
    """The client's next request passes with a new session cookie; ``copy`` (a second
    browser that copied the old cookie before the change, and waited) is anonymous after."""
    old = cookie(client)
    assert cookie(copy) == old
    response = client.get(path, headers=JSON)
    assert response.status_code == status
    assert any(h.startswith(COOKIE + "=") for h in response.headers.getlist("Set-Cookie"))
    new = cookie(client)
    assert new is not None and new != old
    assert is_signed_in(client)
    assert not is_signed_in(copy)


def test_S02_role_granted_by_an_admin_rotates_the_session(app, alice, admin, db):
    make_role(app)
    a = device(app)
    copy = replay(app, cookie(a))
    boss = admin_client(app)
    assert post(boss, f"/admin/users/{alice.id}/roles", {"role": "editor"}).status_code == 303
    assert_rotated(a, copy, path="/editors", status=200)
    assert is_signed_in(boss), "the admin's own session is not affected"
    reasons = fresh(db).scalars(
        select(LoginSession.revoked_reason).where(LoginSession.user_id == alice.id)
    )
    assert "privileges_changed" in list(reasons)


def test_S02_role_granted_by_service_rotates_the_session(app, alice):
    make_role(app)
    a = device(app)
    copy = replay(app, cookie(a))
    change_role_by_service(app, alice, "editor", grant=True)
    assert_rotated(a, copy, path="/editors", status=200)


def test_S02_role_revoked_by_an_admin_rotates_the_session(app, make_user, admin):
    alice = make_user("alice", roles=["editor"], perms={"editor": ["notes:read"]})
    a = device(app)
    assert a.get("/editors").status_code == 200
    copy = replay(app, cookie(a))
    boss = admin_client(app)
    response = post(boss, f"/admin/users/{alice.id}/roles/revoke", {"role": "editor"})
    assert response.status_code == 303
    assert_rotated(a, copy, path="/editors", status=403)


def test_S02_role_revoked_by_service_rotates_the_session(app, make_user):
    alice = make_user("alice", roles=["editor"], perms={"editor": ["notes:read"]})
    a = device(app)
    copy = replay(app, cookie(a))
    change_role_by_service(app, alice, "editor", grant=False)
    assert_rotated(a, copy, path="/notes", status=403)


def test_S02_every_live_session_of_the_user_rotates(app, alice):
    make_role(app)
    a = device(app, agent="Device-A")
    b = device(app, agent="Device-B")
    copies = [replay(app, cookie(a)), replay(app, cookie(b))]
    change_role_by_service(app, alice, "editor", grant=True)
    for client, copy in zip([a, b], copies, strict=True):
        assert_rotated(client, copy, path="/private", status=200)


def test_S02_rotation_keeps_the_open_forms_csrf_token(app, alice):
    """The page the user has open still submits after the rotation."""
    make_role(app)
    a = device(app, agent="Device-A")
    device(app, agent="Device-B")
    token = csrf_token(a)
    change_role_by_service(app, alice, "editor", grant=True)
    old = cookie(a)
    assert is_signed_in(a)  # this request rotates the id
    assert cookie(a) != old
    response = a.post("/account/sessions/revoke-others", json={}, headers={"X-CSRFToken": token})
    assert response.status_code == 200


def test_S02_other_users_sessions_do_not_rotate(app, alice, make_user):
    make_role(app)
    make_user("bob")
    bob = device(app, "bob", "Bob-Browser")
    old = cookie(bob)
    change_role_by_service(app, alice, "editor", grant=True)
    response = bob.get("/private", headers=JSON)
    assert response.status_code == 200
    assert not any(h.startswith(COOKIE + "=") for h in response.headers.getlist("Set-Cookie"))
    assert cookie(bob) == old


# -- S06: timeouts through HTTP --

TIMEOUTS = {
    "AAA_SESSION_IDLE_TIMEOUT": 600,
    "AAA_SESSION_ABSOLUTE_TIMEOUT": 3600,
    "AAA_SESSION_TOUCH_INTERVAL": 60,
}


def frozen() -> Any:
    return freeze_time(dt.datetime.now(dt.UTC))


@with_config(**TIMEOUTS)
def test_S06_idle_session_ends(app, alice):
    with frozen() as clock:
        a = device(app)
        clock.tick(dt.timedelta(seconds=601))
        response = a.get("/private", headers=JSON)
        assert response.status_code == 401
        assert response.get_json()["error"] == "login_required"
        assert a.get("/private").status_code == 303, "a browser is sent to the login page"


@with_config(**TIMEOUTS)
def test_S06_session_just_inside_the_idle_timeout_lives(app, alice):
    with frozen() as clock:
        a = device(app)
        clock.tick(dt.timedelta(seconds=599))
        assert is_signed_in(a)


@with_config(**TIMEOUTS)
def test_S06_activity_keeps_the_session_until_the_absolute_timeout(app, alice):
    with frozen() as clock:
        start = dt.datetime.now(dt.UTC)
        a = device(app)
        step = dt.timedelta(minutes=5)
        while dt.datetime.now(dt.UTC) + step < start + dt.timedelta(seconds=3600):
            clock.tick(step)
            assert is_signed_in(a), dt.datetime.now(dt.UTC) - start
        clock.move_to(start + dt.timedelta(seconds=3599))
        assert is_signed_in(a)
        clock.move_to(start + dt.timedelta(seconds=3600))
        response = a.get("/private", headers=JSON)
        assert response.status_code == 401
        assert response.get_json()["error"] == "login_required"
