"""Login sessions: token quality (S07), storage of the digest only, timeouts (S06), revoke."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from types import SimpleNamespace
from unittest import mock

import pytest
from freezegun import freeze_time
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from flask_aaa.db import writing
from flask_aaa.models import AuthzState, LoginSession
from flask_aaa.services import accounts, sessions
from flask_aaa.services.actors import RequestFacts
from tests.conftest import PASSWORD, SYSTEM, dump_database

FACTS = RequestFacts(ip="203.0.113.9", user_agent="pytest-agent")
START = dt.datetime(2030, 1, 1, 8, 0, tzinfo=dt.UTC)


@pytest.fixture
def user(session, settings, passwords):
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


def open_session(session, user, settings) -> tuple[str, LoginSession]:
    with writing():
        token, record = sessions.create(session, user, settings=settings, facts=FACTS)
        session.commit()
    return token, record


def resolve(session, token, settings):
    """Resolve as a new request would: nothing cached from an earlier transaction."""
    session.rollback()
    session.expire_all()
    return sessions.resolve(session, token, settings=settings)


def decoded_bytes(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


# -- S07: token quality --


def test_S07_token_comes_from_secrets_with_at_least_128_bits(session, user, settings):
    with mock.patch.object(
        sessions.secrets, "token_urlsafe", wraps=sessions.secrets.token_urlsafe
    ) as spy:
        token, _ = open_session(session, user, settings)
    spy.assert_called_once()
    assert spy.call_args.args[0] >= 16
    assert len(decoded_bytes(token)) * 8 >= 128
    assert len(token) >= 22  # 128 bits in unpadded base64url


def test_S07_ten_thousand_tokens_are_unique(settings):
    """Token generation through ``sessions.create`` (with a stand-in database: only the
    tokens are of interest here, and 10**4 inserts would be slow)."""
    db = mock.Mock()
    owner = SimpleNamespace(id=1)
    tokens = set()
    digests = set()
    for _ in range(10**4):
        token, record = sessions.create(db, owner, settings=settings, facts=FACTS)
        tokens.add(token)
        digests.add(record.token_hash)
    assert len(tokens) == len(digests) == 10**4
    assert min(len(decoded_bytes(t)) for t in tokens) * 8 >= 128


def test_S07_only_the_sha256_is_stored(session, engine, user, settings):
    token, record = open_session(session, user, settings)
    assert record.token_hash == hashlib.sha256(token.encode()).hexdigest()
    stored = session.scalar(select(LoginSession.token_hash).where(LoginSession.id == record.id))
    assert stored == record.token_hash
    dump = dump_database(engine)
    assert record.token_hash in dump
    assert token not in dump


def test_S07_tokens_differ_per_session(session, user, settings):
    first, _ = open_session(session, user, settings)
    second, _ = open_session(session, user, settings)
    assert first != second


def test_session_records_its_facts(session, user, settings):
    long_agent = RequestFacts(ip="203.0.113.9", user_agent="A" * 2000)
    with writing():
        _, record = sessions.create(session, user, settings=settings, facts=long_agent)
        session.commit()
    assert record.ip == "203.0.113.9"
    assert record.user_agent == "A" * 512
    assert record.expires_at - record.created_at == dt.timedelta(
        seconds=settings.session_absolute_timeout
    )


def test_resolve_returns_user_and_authz_version(session, user, settings):
    token, record = open_session(session, user, settings)
    with writing():
        session.execute(text("UPDATE aaa_authz_state SET version = 41 WHERE id = 1"))
        session.commit()
    resolved = resolve(session, token, settings)
    assert resolved is not None
    assert (resolved.session.id, resolved.user.id, resolved.authz_version) == (
        record.id,
        user.id,
        41,
    )
    assert session.get(AuthzState, 1).version == 41


@pytest.mark.parametrize(
    "token",
    ["", "not-a-token", "x" * 129, "' OR 1=1--", "A" * 10_000],
)
def test_unknown_or_malformed_tokens_resolve_to_nothing(session, user, settings, token):
    open_session(session, user, settings)
    assert resolve(session, token, settings) is None


def test_the_digest_is_not_a_token(session, user, settings):
    """Someone who reads the table cannot use the stored digest as a cookie."""
    _, record = open_session(session, user, settings)
    assert resolve(session, record.token_hash, settings) is None


# -- S06: timeouts --


def test_S06_idle_timeout(session, user, settings):
    idle = dt.timedelta(seconds=settings.session_idle_timeout)
    with freeze_time(START) as clock:
        token, _ = open_session(session, user, settings)
        clock.tick(idle - dt.timedelta(seconds=1))
        assert resolve(session, token, settings) is not None
        clock.tick(dt.timedelta(seconds=2))
        assert resolve(session, token, settings) is None


def test_S06_touched_session_lives_until_the_absolute_timeout(session, engine, user, settings):
    """Active every 20 minutes (idle timeout 30): valid for the whole 12 hours, then not."""
    step = dt.timedelta(minutes=20)
    absolute = dt.timedelta(seconds=settings.session_absolute_timeout)
    with freeze_time(START) as clock:
        token, _ = open_session(session, user, settings)
        while dt.datetime.now(dt.UTC) + step < START + absolute:
            clock.tick(step)
            resolved = resolve(session, token, settings)
            assert resolved is not None, dt.datetime.now(dt.UTC)
            sessions.touch(session, resolved.session, settings=settings)
        clock.move_to(START + absolute - dt.timedelta(seconds=1))
        assert resolve(session, token, settings) is not None
        clock.move_to(START + absolute)
        assert resolve(session, token, settings) is None


def test_S06_untouched_session_expires_even_when_read(session, user, settings):
    """Resolving alone does not extend the idle window; only touch() does."""
    with freeze_time(START) as clock:
        token, _ = open_session(session, user, settings)
        for _ in range(3):
            clock.tick(dt.timedelta(minutes=10))
            resolve(session, token, settings)
        clock.tick(dt.timedelta(minutes=1))
        assert resolve(session, token, settings) is None


def test_S06_explicit_now_is_honoured(session, user, settings):
    token, record = open_session(session, user, settings)
    later = record.created_at + dt.timedelta(seconds=settings.session_idle_timeout + 1)
    session.rollback()
    assert sessions.resolve(session, token, settings=settings, now=later) is None
    assert sessions.resolve(session, token, settings=settings, now=record.created_at) is not None


def test_touch_is_rate_limited_by_the_touch_interval(session, engine, user, settings):
    with freeze_time(START) as clock:
        _, record = open_session(session, user, settings)
        clock.tick(dt.timedelta(seconds=settings.session_touch_interval - 1))
        sessions.touch(session, record, settings=settings)
        session.expire_all()
        assert session.get(LoginSession, record.id).last_seen_at == START
        clock.tick(dt.timedelta(seconds=1))
        sessions.touch(session, record, settings=settings)
        session.rollback()
        session.expire_all()
        last_seen = session.get(LoginSession, record.id).last_seen_at
        assert last_seen == START + dt.timedelta(seconds=settings.session_touch_interval)


def test_touch_does_not_revive_a_revoked_session(session, engine, user, settings):
    with freeze_time(START) as clock:
        token, record = open_session(session, user, settings)
        with writing():
            sessions.revoke(session, record, reason="logout")
            session.commit()
        clock.tick(dt.timedelta(minutes=5))
        sessions.touch(session, record, settings=settings)
        session.expire_all()
        assert session.get(LoginSession, record.id).last_seen_at == START
        assert resolve(session, token, settings) is None


# -- revoke --


def test_revoke_ends_one_session(session, user, settings):
    token, record = open_session(session, user, settings)
    other, _ = open_session(session, user, settings)
    with writing():
        sessions.revoke(session, record, reason="logout")
        session.commit()
    assert resolve(session, token, settings) is None
    assert resolve(session, other, settings) is not None
    assert record.is_revoked
    assert record.revoked_reason == "logout"


def test_revoke_twice_keeps_the_first_reason(session, user, settings):
    _, record = open_session(session, user, settings)
    with writing():
        sessions.revoke(session, record, reason="logout")
        first = record.revoked_at
        sessions.revoke(session, record, reason="admin")
        session.commit()
    assert (record.revoked_at, record.revoked_reason) == (first, "logout")


def test_revoke_all_ends_every_session_but_the_kept_one(session, user, settings):
    opened = [open_session(session, user, settings) for _ in range(4)]
    (kept_token, kept), *others = opened
    with writing():
        ended = sessions.revoke_all(session, user, reason="admin", keep=kept)
        session.commit()
    assert ended == 3
    assert resolve(session, kept_token, settings) is not None
    assert all(resolve(session, token, settings) is None for token, _ in others)
    with writing():
        assert sessions.revoke_all(session, user, reason="admin") == 1
        assert sessions.revoke_all(session, user, reason="admin") == 0
        session.commit()
    assert resolve(session, kept_token, settings) is None


def test_revoke_all_leaves_other_users_alone(session, settings, passwords, user):
    with writing():
        bob = accounts.create_user(
            session,
            actor=SYSTEM,
            settings=settings,
            passwords=passwords,
            username="bob",
            email="bob@example.org",
            password=PASSWORD,
        )
        session.commit()
    bobs, _ = open_session(session, bob, settings)
    open_session(session, user, settings)
    with writing():
        assert sessions.revoke_all(session, user, reason="admin") == 1
        session.commit()
    assert resolve(session, bobs, settings) is not None


def test_rotate_replaces_the_token(session, user, settings):
    token, record = open_session(session, user, settings)
    with writing():
        new_token, new_record = sessions.rotate(
            session, record, settings=settings, facts=FACTS, reason="privilege_change"
        )
        session.commit()
    assert new_token != token
    assert new_record.id != record.id
    assert resolve(session, token, settings) is None
    assert resolve(session, new_token, settings).user.id == user.id


def test_disabled_users_session_does_not_resolve(session, user, settings):
    token, _ = open_session(session, user, settings)
    with writing():
        user.active = False
        session.commit()
    assert resolve(session, token, settings) is None
    with writing():
        user.active = True
        session.commit()
    assert resolve(session, token, settings) is not None


def test_live_sessions_lists_only_live_ones(session, user, settings):
    with freeze_time(START) as clock:
        _, old = open_session(session, user, settings)
        clock.tick(dt.timedelta(minutes=5))
        _, revoked = open_session(session, user, settings)
        _, newest = open_session(session, user, settings)
        with writing():
            sessions.revoke(session, revoked, reason="logout")
            session.commit()
        ids = [s.id for s in sessions.live_sessions(session, user)]
        assert set(ids) == {old.id, newest.id}
        assert ids[-1] == old.id  # most recently seen first
        clock.tick(dt.timedelta(seconds=settings.session_absolute_timeout))
        assert sessions.live_sessions(session, user) == []


def test_sessions_are_deleted_with_their_user(session, engine, user, settings):
    open_session(session, user, settings)
    with writing():
        session.delete(user)
        session.commit()
    with Session(engine) as other:
        assert other.scalars(select(LoginSession)).all() == []
