"""Account lockout as a service: the exponential, capped duration (A08), the count of
consecutive failures that starts it (A04), the lock honoured by every password step (A06),
and the manual unlock with its permission check and audit event."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from freezegun import freeze_time
from sqlalchemy import select
from sqlalchemy.orm import Session

from flask_aaa.config import Settings
from flask_aaa.db import writing
from flask_aaa.errors import AuthenticationFailed, InvalidInput, PermissionDenied
from flask_aaa.models import AuditEvent, User
from flask_aaa.services import accounts, lockout, sessions
from flask_aaa.services.actors import Actor, RequestFacts
from tests.conftest import PASSWORD, SYSTEM

FACTS = RequestFacts(ip="203.0.113.50", user_agent="pytest-lockout")
START = dt.datetime(2030, 3, 1, 9, 0, tzinfo=dt.UTC)
WRONG = "wrong-" + PASSWORD
THRESHOLD = 3
BASE = 60
MAXIMUM = 300


@pytest.fixture
def settings() -> Settings:
    return Settings.from_config(
        {
            "AAA_PASSWORD_HASH_PRESET": "fast",
            "AAA_LOCKOUT_THRESHOLD": THRESHOLD,
            "AAA_LOCKOUT_BASE_SECONDS": BASE,
            "AAA_LOCKOUT_MAX_SECONDS": MAXIMUM,
        },
        debug=False,
        testing=True,
    )


@pytest.fixture
def user(session, settings, passwords) -> User:
    with writing():
        created = accounts.create_user(
            session,
            actor=SYSTEM,
            settings=settings,
            passwords=passwords,
            username="alice",
            email="alice@example.org",
            password=PASSWORD,
        )
        session.commit()
    return created


def reload(session: Session, user: User) -> User:
    """The user as committed (a new transaction, nothing cached)."""
    session.rollback()
    session.expire_all()
    found = session.get(User, user.id)
    assert found is not None
    return found


def events(engine, action: str) -> list[AuditEvent]:
    with Session(engine) as other:
        return list(
            other.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            )
        )


def fail(session, settings, user, times: int = 1) -> list[dt.datetime | None]:
    """``times`` failures through the service, each committed."""
    ends = []
    for _ in range(times):
        with writing():
            ends.append(lockout.register_failure(session, user, settings=settings, facts=FACTS))
            session.commit()
    return ends


def verify(session, settings, passwords, password: str = PASSWORD) -> User:
    with writing():
        user, _ = accounts.verify_credentials(
            session,
            settings=settings,
            passwords=passwords,
            login="alice",
            password=password,
            facts=FACTS,
        )
        session.commit()
    return user


# -- A08: each lockout twice the one before, never above the maximum --


def test_A08_lock_duration_doubles_then_caps(settings):
    assert [lockout.lock_duration(settings, n) for n in range(1, 7)] == [
        60,
        120,
        240,
        300,
        300,
        300,
    ]


@pytest.mark.parametrize("lockouts", [0, -3])
def test_A08_lock_duration_of_a_first_or_odd_count_is_the_base(settings, lockouts):
    assert lockout.lock_duration(settings, lockouts) == BASE


def test_A08_lock_duration_of_a_huge_count_is_the_maximum(settings):
    """No overflow and no unbounded lockout however often the account was locked."""
    assert lockout.lock_duration(settings, 10_000) == MAXIMUM


def test_A08_default_settings_cap_the_lockout_at_one_hour():
    defaults = Settings.from_config({}, debug=False, testing=True)
    assert defaults.lockout_threshold <= 100
    assert lockout.lock_duration(defaults, 1) == defaults.lockout_base_seconds
    assert lockout.lock_duration(defaults, 50) == defaults.lockout_max_seconds == 3600


# -- is_locked --


def test_is_locked_boundaries(user):
    assert not lockout.is_locked(user, START)
    user.locked_until = START
    assert not lockout.is_locked(user, START), "the lock ends at locked_until"
    assert lockout.is_locked(user, START - dt.timedelta(microseconds=1))


# -- A04: consecutive failures lock the account --


def test_A04_failures_below_the_threshold_only_count(session, settings, user):
    assert fail(session, settings, user, THRESHOLD - 1) == [None, None]
    stored = reload(session, user)
    assert stored.failed_logins == THRESHOLD - 1
    assert stored.locked_until is None
    assert not lockout.is_locked(stored)


def test_A04_threshold_failure_locks_and_restarts_the_count(session, engine, settings, user):
    with freeze_time(START):
        ends = fail(session, settings, user, THRESHOLD)
        assert ends[-1] == START + dt.timedelta(seconds=BASE)
        stored = reload(session, user)
        assert (stored.failed_logins, stored.lockouts) == (0, 1)
        assert stored.locked_until == START + dt.timedelta(seconds=BASE)
        assert lockout.is_locked(stored)
    [event] = events(engine, "auth.lockout")
    assert event.outcome == "denied"
    assert (event.actor_type, event.target_type, event.target_id) == (
        "anonymous",
        "user",
        str(user.id),
    )
    assert json.loads(event.details) == {"seconds": BASE, "lockouts_in_a_row": 1}
    assert event.ip == FACTS.ip


def test_A08_each_further_lockout_doubles_up_to_the_cap(session, engine, settings, user):
    with freeze_time(START) as clock:
        for expected in (60, 120, 240, 300, 300):
            [*_, end] = fail(session, settings, user, THRESHOLD)
            assert end == dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expected)
            clock.tick(dt.timedelta(seconds=expected + 1))
    seconds = [json.loads(e.details)["seconds"] for e in events(engine, "auth.lockout")]
    assert seconds == [60, 120, 240, 300, 300]


def test_clear_forgets_failures_lockouts_and_the_lock(session, settings, user):
    fail(session, settings, user, THRESHOLD * 2)
    stored = reload(session, user)
    lockout.clear(stored)
    assert (stored.failed_logins, stored.lockouts, stored.locked_until) == (0, 0, None)


# -- A06: the password step honours the lock --


def test_A06_locked_account_refuses_the_right_password(session, engine, settings, passwords, user):
    fail(session, settings, user, THRESHOLD)
    with pytest.raises(AuthenticationFailed) as info:
        verify(session, settings, passwords)
    assert info.value.reason == "locked"
    assert info.value.message == "Invalid login or password."
    reasons = [json.loads(e.details)["reason"] for e in events(engine, "auth.login.failed")]
    assert reasons == ["locked"]


def test_A06_locked_account_refusal_does_not_clear_or_extend_the_lock(
    session, settings, passwords, user
):
    """The right password while locked is not a failure (nothing to count) and not a
    success (the lock stays)."""
    with freeze_time(START):
        fail(session, settings, user, THRESHOLD)
        for _ in range(THRESHOLD + 1):
            with pytest.raises(AuthenticationFailed):
                verify(session, settings, passwords)
        stored = reload(session, user)
        assert stored.locked_until == START + dt.timedelta(seconds=BASE)
        assert (stored.failed_logins, stored.lockouts) == (0, 1)


def test_A04_wrong_passwords_through_verify_credentials_lock(
    session, engine, settings, passwords, user
):
    for _ in range(THRESHOLD):
        with pytest.raises(AuthenticationFailed) as info:
            verify(session, settings, passwords, WRONG)
        assert info.value.reason == "bad_password"
    assert lockout.is_locked(reload(session, user))
    assert len(events(engine, "auth.lockout")) == 1


def test_A08_lock_ends_by_itself(session, settings, passwords, user):
    with freeze_time(START) as clock:
        fail(session, settings, user, THRESHOLD)
        clock.tick(dt.timedelta(seconds=BASE - 1))
        with pytest.raises(AuthenticationFailed):
            verify(session, settings, passwords)
        clock.tick(dt.timedelta(seconds=2))
        assert verify(session, settings, passwords).id == user.id


def test_A04_success_resets_the_count_and_the_backoff(session, settings, passwords, user):
    with freeze_time(START) as clock:
        fail(session, settings, user, THRESHOLD)  # first lockout: 60 s
        clock.tick(dt.timedelta(seconds=BASE + 1))
        verify(session, settings, passwords)
        stored = reload(session, user)
        assert (stored.failed_logins, stored.lockouts, stored.locked_until) == (0, 0, None)
        [*_, end] = fail(session, settings, user, THRESHOLD)
        assert end == dt.datetime.now(dt.UTC) + dt.timedelta(seconds=BASE), "back to the base"


def test_A04_reauthentication_failures_count(session, engine, settings, passwords, user):
    facts = RequestFacts(ip="203.0.113.51")
    with writing():
        _, record = sessions.create(session, user, settings=settings, facts=facts)
        session.commit()
    for _ in range(THRESHOLD):
        with writing(), pytest.raises(InvalidInput):
            accounts.reauthenticate(
                session,
                settings=settings,
                passwords=passwords,
                user=reload(session, user),
                password=WRONG,
                session=record,
                facts=facts,
            )
    assert lockout.is_locked(reload(session, user))
    assert len(events(engine, "auth.reauth.failed")) == THRESHOLD
    assert len(events(engine, "auth.lockout")) == 1


# -- unlock --


def test_unlock_by_an_operator_lifts_the_lock_and_is_audited(session, engine, settings, user):
    fail(session, settings, user, THRESHOLD)
    with writing():
        stored = reload(session, user)
        assert lockout.unlock(session, actor=SYSTEM, user=stored, facts=FACTS) is True
        session.commit()
    stored = reload(session, user)
    assert not lockout.is_locked(stored)
    assert (stored.failed_logins, stored.lockouts, stored.locked_until) == (0, 0, None)
    [event] = events(engine, "user.unlocked")
    assert (event.actor_type, event.target_id, event.outcome) == ("system", str(user.id), "success")


def test_unlock_of_an_account_with_only_some_failures_clears_them(session, engine, settings, user):
    fail(session, settings, user, THRESHOLD - 1)
    with writing():
        assert lockout.unlock(session, actor=SYSTEM, user=reload(session, user)) is True
        session.commit()
    assert reload(session, user).failed_logins == 0
    assert len(events(engine, "user.unlocked")) == 1


def test_unlock_of_an_unlocked_account_changes_nothing_and_records_nothing(session, engine, user):
    with writing():
        assert lockout.unlock(session, actor=SYSTEM, user=reload(session, user)) is False
        session.commit()
    assert events(engine, "user.unlocked") == []


def test_unlock_needs_the_users_write_permission(session, engine, settings, passwords, user):
    fail(session, settings, user, THRESHOLD)
    with writing():
        mallory = accounts.create_user(
            session,
            actor=SYSTEM,
            settings=settings,
            passwords=passwords,
            username="mallory",
            email="mallory@example.org",
            password=PASSWORD,
        )
        session.commit()
    with writing(), pytest.raises(PermissionDenied):
        lockout.unlock(session, actor=Actor.of(mallory), user=reload(session, user), facts=FACTS)
    session.rollback()
    assert lockout.is_locked(reload(session, user))
    assert events(engine, "user.unlocked") == []
