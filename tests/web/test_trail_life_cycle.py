"""L09 for the account life cycle: one run of each flow, and the exact events a security
reviewer expects from it, each with who, what, when (UTC), where and how it ended."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pyotp
import pytest
from sqlalchemy import select

from flask_aaa.models import AuditEvent, User
from tests.conftest import PASSWORD, fresh, login, post

IP = "198.51.100.77"
UA = "LifeCycle/1.0"


@pytest.fixture
def config(config: dict[str, Any]) -> dict[str, Any]:
    config.update(
        AAA_LOCKOUT_THRESHOLD=2,
        AAA_LOGIN_LIMIT_PER_ACCOUNT="1000 per minute",
        AAA_BASE_URL="http://localhost",
    )
    return config


def browser(app) -> Any:
    client = app.test_client()
    client.environ_base.update({"REMOTE_ADDR": IP, "HTTP_USER_AGENT": UA})
    return client


def new_events(db, after: int) -> list[AuditEvent]:
    return list(fresh(db).scalars(select(AuditEvent).where(AuditEvent.seq > after)))


def last_seq(db) -> int:
    return fresh(db).scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1)) or 0


def mailed_link(app, path: str) -> str:
    outbox = app.extensions["mailman"].outbox
    text = outbox[-1].body
    return re.search(r"http://localhost(" + re.escape(path) + r"\S+)", text).group(1)


def test_L09_account_life_cycle_events(app, db, make_user):
    make_user("alice")
    start = last_seq(db)

    # Lockout: two wrong passwords in a row.
    attacker = browser(app)
    login(attacker, "alice", "wrong-password-123")
    login(attacker, "alice", "wrong-password-123")

    # Reset (lifts the lockout), then sign in on two devices, revoke one, then the rest.
    user = browser(app)
    post(user, "/auth/forgot", {"email": "alice@example.org"}, buffered=True)
    user.get(mailed_link(app, "/auth/reset/"))
    new_password = PASSWORD + "-new"
    post(user, "/auth/reset", {"password": new_password, "confirm": new_password}, buffered=True)
    other = browser(app)
    login(other, "alice", new_password)
    login(user, "alice", new_password)
    sessions = user.get("/account/sessions", headers={"Accept": "application/json"}).get_json()
    other_id = next(s["id"] for s in sessions["sessions"] if not s["current"])
    post(user, f"/account/sessions/{other_id}/revoke")
    post(user, "/account/sessions/revoke-others")

    # Re-authentication, wrong then right; then two-factor on.
    post(user, "/account/reauth", {"password": "not-it-at-all-1"})
    post(user, "/account/reauth", {"password": new_password})
    page = user.get("/account/2fa").get_data(as_text=True)
    secret = re.search(r"\b([A-Z2-7]{32})\b", page.replace(" ", "")).group(1)
    post(user, "/account/2fa", {"code": pyotp.TOTP(secret).now()})

    expected = {
        "auth.login.failed": 2,
        "auth.lockout": 1,
        "auth.reset.requested": 1,
        "auth.reset.succeeded": 1,
        "auth.login.succeeded": 2,
        "session.revoked": 1,
        "session.revoked_others": 1,
        "auth.reauth.failed": 1,
        "auth.reauthenticated": 1,
        "mfa.enabled": 1,
    }
    events = new_events(db, start)
    counts: dict[str, int] = {}
    for event in events:
        counts[event.action] = counts.get(event.action, 0) + 1
    assert counts == expected
    alice = fresh(db).scalar(select(User).where(User.username == "alice"))
    for event in events:
        assert (event.ip, event.user_agent) == (IP, UA), event.action
        assert event.ts.tzinfo == dt.UTC and event.request_id, event.action
        assert event.outcome in ("success", "failure", "denied"), event.action
        assert event.target_id in (str(alice.id), None) or event.target_type == "session"
        assert secret not in event.details and new_password not in event.details
