"""Usage accounting (``sessions.usage`` and ``sessions.active_counts``): last sign-in,
sign-in count, active sessions and session durations, with the edge cases of a session's
end (signed out, lapsed, still on), rotation, impersonation and the window."""

from __future__ import annotations

import datetime as dt
import secrets

import pytest
from sqlalchemy.orm import Session

from flask_aaa.db import writing
from flask_aaa.errors import NotFound
from flask_aaa.models import LoginSession, User
from flask_aaa.services import sessions

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)


def add_session(
    db: Session,
    user: User,
    *,
    start: dt.datetime,
    seen: dt.datetime | None = None,
    revoked: dt.datetime | None = None,
    reason: str | None = None,
    expires: dt.datetime | None = None,
    impersonator: User | None = None,
    agent: str | None = "Firefox",
) -> LoginSession:
    """A session row with the given times (committed): ``seen`` defaults to ``start``,
    ``expires`` to 12 hours after ``start`` (the default absolute lifetime)."""
    record = LoginSession(
        token_hash=secrets.token_hex(32),
        user_id=user.id,
        created_at=start,
        last_seen_at=seen or start,
        expires_at=expires or start + 12 * HOUR,
        revoked_at=revoked,
        revoked_reason=reason or ("logout" if revoked else None),
        impersonator_id=impersonator.id if impersonator else None,
        user_agent=agent,
        ip="203.0.113.7",
    )
    with writing():
        db.add(record)
        db.commit()
    return record


@pytest.fixture
def alice(world) -> User:
    return world.user("alice")


def usage(db: Session, user: User, settings, now: dt.datetime = NOW) -> sessions.Usage:
    db.rollback()
    return sessions.usage(db, user.id, now, settings=settings)


def test_a_user_without_sessions_has_empty_figures(session, settings, alice):
    got = usage(session, alice, settings)
    assert got == sessions.Usage(
        last_login_at=None,
        last_login_ip=None,
        login_count=0,
        active_sessions=0,
        recent_sessions=0,
        median_duration=None,
        longest_duration=None,
    )


def test_an_unknown_user_is_not_found(session, settings):
    with pytest.raises(NotFound):
        sessions.usage(session, 4242, NOW, settings=settings)


def test_last_sign_in_and_count_come_from_the_user(session, settings, alice):
    with writing():
        alice.last_login_at = NOW - HOUR
        alice.last_login_ip = "198.51.100.4"
        alice.login_count = 7
        session.commit()
    got = usage(session, alice, settings)
    assert (got.last_login_at, got.last_login_ip, got.login_count) == (
        NOW - HOUR,
        "198.51.100.4",
        7,
    )
    assert got.last_login_at is not None and got.last_login_at.tzinfo is not None


def test_a_signed_out_session_lasts_until_it_was_revoked(session, settings, alice):
    add_session(session, alice, start=NOW - 3 * HOUR, seen=NOW - 2 * HOUR, revoked=NOW - 2 * HOUR)
    got = usage(session, alice, settings)
    assert got.active_sessions == 0
    assert got.recent_sessions == 1
    assert got.median_duration == got.longest_duration == HOUR


def test_a_session_revoked_after_it_lapsed_lasts_until_its_last_use(session, settings, alice):
    """Revoked long after it went idle (say, by a password change a day later): the user
    had stopped using it; the revocation is not part of its length."""
    add_session(
        session,
        alice,
        start=NOW - 2 * dt.timedelta(days=1),
        seen=NOW - 2 * dt.timedelta(days=1) + 20 * MIN,
        revoked=NOW - dt.timedelta(days=1),
        reason="password_changed",
    )
    got = usage(session, alice, settings)
    assert got.longest_duration == 20 * MIN


def test_an_expired_session_lasts_until_its_last_use_and_is_not_active(session, settings, alice):
    add_session(
        session,
        alice,
        start=NOW - 13 * HOUR,
        seen=NOW - 12 * HOUR - 30 * MIN,
        expires=NOW - HOUR,
    )
    got = usage(session, alice, settings)
    assert got.active_sessions == 0
    assert got.median_duration == 30 * MIN


def test_an_idle_session_is_not_active(session, settings, alice):
    idle = dt.timedelta(seconds=settings.session_idle_timeout)
    add_session(session, alice, start=NOW - 2 * HOUR, seen=NOW - idle - MIN)
    got = usage(session, alice, settings)
    assert got.active_sessions == 0
    assert got.recent_sessions == 1


def test_an_active_session_counts_and_lasts_until_now_or_so(session, settings, alice):
    add_session(session, alice, start=NOW - 2 * HOUR, seen=NOW - MIN)
    add_session(session, alice, start=NOW - 10 * MIN, seen=NOW - 5 * MIN, agent="Safari")
    got = usage(session, alice, settings)
    assert got.active_sessions == 2
    assert got.recent_sessions == 2
    assert got.longest_duration == 2 * HOUR - MIN
    assert got.median_duration == (2 * HOUR - MIN + 5 * MIN) / 2  # even count: the mean of two


def test_the_median_of_an_odd_count_is_the_middle_one(session, settings, alice):
    for minutes in (5, 60, 600):
        start = NOW - dt.timedelta(days=2, minutes=minutes)
        add_session(
            session, alice, start=start, seen=start + minutes * MIN, revoked=start + minutes * MIN
        )
    got = usage(session, alice, settings)
    assert got.recent_sessions == 3
    assert got.median_duration == 60 * MIN
    assert got.longest_duration == 600 * MIN


def test_impersonation_sessions_are_not_the_users_own_use(session, settings, world, alice):
    root = world.user("root")
    add_session(session, alice, start=NOW - 4 * HOUR, seen=NOW - 3 * HOUR, revoked=NOW - 3 * HOUR)
    add_session(session, alice, start=NOW - 5 * MIN, seen=NOW - MIN, impersonator=root)
    got = usage(session, alice, settings)
    assert got.recent_sessions == 1
    assert got.median_duration == got.longest_duration == HOUR
    # Still a live session on the account, as the sessions list shows.
    assert got.active_sessions == 1
    # And not root's either.
    assert usage(session, root, settings).recent_sessions == 0


def test_a_rotated_session_and_its_successor_are_one_sign_in(session, settings, alice):
    """A new session id (re-authentication, privilege change) ends one row and opens the
    next at the same moment: one visit, counted once, from first start to last end."""
    start = NOW - 3 * HOUR
    add_session(
        session,
        alice,
        start=start,
        seen=start + 10 * MIN,
        revoked=start + 10 * MIN,
        reason="reauthenticated",
    )
    add_session(
        session,
        alice,
        start=start + 10 * MIN + dt.timedelta(microseconds=300),
        seen=start + 40 * MIN,
        revoked=start + 40 * MIN,
        reason="privileges_changed",
    )
    add_session(
        session,
        alice,
        start=start + 40 * MIN + dt.timedelta(milliseconds=2),
        seen=start + 70 * MIN,
        revoked=start + 70 * MIN,
    )
    got = usage(session, alice, settings)
    assert got.recent_sessions == 1
    assert got.longest_duration == 70 * MIN


def test_another_browser_opening_at_a_rotation_is_a_sign_in_of_its_own(session, settings, alice):
    start = NOW - 3 * HOUR
    add_session(
        session,
        alice,
        start=start,
        seen=start + 10 * MIN,
        revoked=start + 10 * MIN,
        reason="rotated",
    )
    add_session(session, alice, start=start + 10 * MIN, seen=start + 15 * MIN, agent="curl/8")
    got = usage(session, alice, settings)
    assert got.recent_sessions == 2
    assert got.longest_duration == 10 * MIN


def test_a_session_replaced_by_a_new_sign_in_is_not_joined_to_it(session, settings, alice):
    start = NOW - 3 * HOUR
    add_session(
        session,
        alice,
        start=start,
        seen=start + 10 * MIN,
        revoked=start + 10 * MIN,
        reason="replaced",
    )
    add_session(
        session, alice, start=start + 10 * MIN, seen=start + 20 * MIN, revoked=start + 20 * MIN
    )
    assert usage(session, alice, settings).recent_sessions == 2


def test_durations_cover_the_last_days_only(session, settings, alice):
    old = NOW - dt.timedelta(days=sessions.USAGE_DAYS, hours=1)
    add_session(session, alice, start=old, seen=old + 5 * HOUR, revoked=old + 5 * HOUR)
    add_session(session, alice, start=NOW - HOUR, seen=NOW - 50 * MIN, revoked=NOW - 50 * MIN)
    got = usage(session, alice, settings)
    assert got.recent_sessions == 1
    assert got.longest_duration == 10 * MIN


def test_durations_cover_the_latest_sessions_only(session, settings, alice):
    extra = 3
    for n in range(sessions.USAGE_SESSIONS + extra):
        start = NOW - dt.timedelta(days=30) + n * HOUR
        # The oldest ones are the longest: leaving them out shows in the longest duration.
        length = 50 * MIN if n < extra else 5 * MIN
        add_session(session, alice, start=start, seen=start + length, revoked=start + length)
    got = usage(session, alice, settings)
    assert got.recent_sessions == sessions.USAGE_SESSIONS
    assert got.longest_duration == 5 * MIN


def test_a_session_from_the_future_is_left_out(session, settings, alice):
    """A clock that jumped back (V03) does not make a negative duration."""
    add_session(session, alice, start=NOW + HOUR, seen=NOW + HOUR)
    assert usage(session, alice, settings).recent_sessions == 0


def test_active_counts_for_a_page_of_users_in_one_query(session, settings, world, alice):
    bob, carol = world.user("bob"), world.user("carol")
    add_session(session, alice, start=NOW - HOUR, seen=NOW - MIN)
    add_session(session, alice, start=NOW - HOUR, seen=NOW - MIN, agent="Safari")
    add_session(session, alice, start=NOW - HOUR, seen=NOW - MIN, revoked=NOW - MIN)
    add_session(session, bob, start=NOW - 13 * HOUR, seen=NOW - MIN, expires=NOW - MIN)
    add_session(session, carol, start=NOW - HOUR, seen=NOW - 2 * MIN)
    session.rollback()
    counts = sessions.active_counts(session, [alice.id, bob.id], settings=settings, now=NOW)
    assert counts == {alice.id: 2}
    assert sessions.active_counts(session, [], settings=settings, now=NOW) == {}
    every = sessions.active_counts(
        session, [alice.id, bob.id, carol.id, alice.id], settings=settings, now=NOW
    )
    assert every == {alice.id: 2, carol.id: 1}
    assert usage(session, alice, settings).active_sessions == 2
