"""Usage accounting on the pages: the user's own figures on their sessions page (HTML and
JSON), a user's figures on the console's user page, the active sessions column of the
users list, and the human form of a duration."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from flask_aaa.db import writing
from flask_aaa.models import LoginSession, User
from flask_aaa.web.account import duration_text
from tests.conftest import app_engine, fresh, login, post

JSON = {"Accept": "application/json"}
REASON = "Ticket 4711: cannot find the export button"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "—"),
        (dt.timedelta(0), "0 s"),
        (dt.timedelta(seconds=45.9), "45 s"),
        (dt.timedelta(minutes=12, seconds=59), "12 min"),
        (dt.timedelta(hours=2, minutes=5), "2 h 5 min"),
        (dt.timedelta(hours=3), "3 h"),
        (dt.timedelta(days=3, hours=4, minutes=30), "3 d 4 h"),
        (dt.timedelta(days=1), "1 d"),
        (dt.timedelta(seconds=-5), "0 s"),
    ],
)
def test_durations_read_as_people_say_them(value, text):
    assert duration_text(value) == text


def shift_sessions(app: Flask, user: User, **by: dt.timedelta) -> None:
    """Move times of ``user``'s sessions back: ``created_at=2h`` makes them 2 hours old."""
    with writing(), Session(app_engine(app)) as db:
        for record in db.scalars(select(LoginSession).where(LoginSession.user_id == user.id)):
            for column, delta in by.items():
                setattr(record, column, getattr(record, column) - delta)
        db.commit()


def text_of(html: str) -> str:
    """The page's text, tags dropped and spaces folded."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.fixture
def alice(app: Flask, make_user: Any) -> dict[str, Any]:
    """alice, signed in twice (two browsers), her sessions 2 h 5 min old."""
    user = make_user("alice")
    browsers = [app.test_client(), app.test_client()]
    for browser in browsers:
        assert login(browser, "alice").status_code == 303
    shift_sessions(app, user, created_at=dt.timedelta(hours=2, minutes=5))
    return {"user": user, "browser": browsers[0]}


# -- the user's own page --


def test_my_sessions_page_shows_my_usage(alice):
    response = alice["browser"].get("/account/sessions")
    assert response.status_code == 200
    page = text_of(response.get_data(as_text=True))
    assert "Your sign-ins" in page
    assert re.search(r"Last sign-in \d{4}-\d\d-\d\d \d\d:\d\d UTC from 127\.0\.0\.1", page)
    assert "Sign-ins 2 " in page
    assert "Active sessions 2 " in page
    assert "Sessions in the last 90 days 2: typically 2 h 5 min, the longest 2 h 5 min" in page


def test_my_sessions_json_has_my_usage(alice):
    body = alice["browser"].get("/account/sessions", headers=JSON).get_json()
    usage = body["usage"]
    assert usage["login_count"] == 2
    assert usage["last_login_ip"] == "127.0.0.1"
    assert usage["last_login_at"].endswith("+00:00")
    assert usage["active_sessions"] == 2
    assert usage["recent_sessions"] == 2
    assert usage["median_session_seconds"] == usage["longest_session_seconds"] == 7500
    assert len(body["sessions"]) == 2


def test_a_first_sign_in_counts_once(app, make_user):
    make_user("newbie")
    browser = app.test_client()
    assert login(browser, "newbie").status_code == 303
    usage = browser.get("/account/sessions", headers=JSON).get_json()["usage"]
    assert (usage["login_count"], usage["active_sessions"], usage["recent_sessions"]) == (1, 1, 1)
    assert 0 <= usage["median_session_seconds"] < 60


def test_my_usage_leaves_out_sessions_signed_out_long_ago(app, alice):
    """Signing out ends a session: it still counts in the durations, not as active."""
    browser = alice["browser"]
    other = app.test_client()
    assert login(other, "alice").status_code == 303
    assert post(other, "/auth/logout").status_code in (302, 303)
    usage = browser.get("/account/sessions", headers=JSON).get_json()["usage"]
    assert usage["login_count"] == 3
    assert usage["active_sessions"] == 2
    assert usage["recent_sessions"] == 3
    assert usage["longest_session_seconds"] == 7500


def test_anonymous_cannot_see_usage(client):
    assert client.get("/account/sessions", headers=JSON).status_code == 401


# -- the console --


@pytest.fixture
def root(app: Flask, admin: User) -> Any:
    browser = app.test_client()
    assert login(browser, "root").status_code == 303
    return browser


def test_console_user_page_shows_the_usage(root, alice):
    page = text_of(root.get(f"/admin/users/{alice['user'].id}").get_data(as_text=True))
    assert re.search(r"Last sign-in \d{4}-\d\d-\d\d \d\d:\d\d UTC from 127\.0\.0\.1", page)
    assert "Sign-ins 2 " in page
    assert "Active sessions 2 (used in the last 30 min; 2 not ended, listed below)" in page
    assert "Session length median 2 h 5 min, longest 2 h 5 min over 2 sign-in(s)" in page


def test_console_user_page_without_sessions_says_so(root, make_user):
    bob = make_user("bob")
    page = text_of(root.get(f"/admin/users/{bob.id}").get_data(as_text=True))
    assert "Last sign-in never" in page
    assert "Active sessions 0 " in page
    assert "no sign-in in the last 90 days" in page


def test_console_user_json_has_the_usage(root, alice):
    body = root.get(f"/admin/users/{alice['user'].id}", headers=JSON).get_json()
    assert body["usage"] == {
        "last_login_at": body["usage"]["last_login_at"],
        "last_login_ip": "127.0.0.1",
        "login_count": 2,
        "active_sessions": 2,
        "recent_sessions": 2,
        "median_session_seconds": 7500,
        "longest_session_seconds": 7500,
    }
    assert body["usage"]["last_login_at"] == body["user"]["last_login_at"]


def test_console_users_list_has_an_active_sessions_column(root, alice, make_user):
    make_user("bob")
    html = root.get("/admin/").get_data(as_text=True)
    assert '<th scope="col">Active sessions</th>' in html
    row = re.search(rf"<tr>\s*<td>{alice['user'].id}</td>.*?</tr>", html, re.S)
    assert row is not None
    cells = re.findall(r"<td>(.*?)</td>", row.group(0), re.S)
    assert cells[-2:] == ["2", "2"]  # sign-ins, active sessions
    users = {u["username"]: u for u in root.get("/admin/", headers=JSON).get_json()["users"]}
    assert users["alice"]["active_sessions"] == 2
    assert users["bob"]["active_sessions"] == 0
    assert users["root"]["active_sessions"] == 1


def test_console_users_list_counts_idle_sessions_out(app, root, alice, db):
    shift_sessions(app, alice["user"], last_seen_at=dt.timedelta(hours=1))
    users = {u["username"]: u for u in root.get("/admin/", headers=JSON).get_json()["users"]}
    assert users["alice"]["active_sessions"] == 0


def test_impersonation_is_not_the_users_own_use(app, root, alice, db):
    """An administrator acting as alice opens a session on her account: it is live (and
    listed), but her sign-in figures do not count it."""
    response = post(root, f"/admin/users/{alice['user'].id}/impersonate", {"reason": REASON})
    assert response.status_code == 303, response.get_data(as_text=True)
    [acting] = (
        fresh(db)
        .scalars(select(LoginSession).where(LoginSession.impersonator_id.is_not(None)))
        .all()
    )
    assert acting.user_id == alice["user"].id
    usage = alice["browser"].get("/account/sessions", headers=JSON).get_json()["usage"]
    assert usage["recent_sessions"] == 2
    assert usage["active_sessions"] == 3
    assert usage["login_count"] == 2


def test_usage_pages_need_their_permission(app, alice, make_user):
    make_user("mallory")
    browser = app.test_client()
    assert login(browser, "mallory").status_code == 303
    assert browser.get(f"/admin/users/{alice['user'].id}", headers=JSON).status_code == 403
    assert browser.get("/admin/", headers=JSON).status_code == 403
