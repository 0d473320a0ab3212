"""Two-factor service: TOTP single use (M01) and drift (M02), throttling of guesses (M03),
recovery codes (M06), turning it off (M07), and the audit events of each, without an app."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from typing import Any

import pyotp
import pytest
from freezegun import freeze_time
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flask_aaa.config import Settings
from flask_aaa.db import writing
from flask_aaa.errors import Conflict, InvalidInput, Throttled
from flask_aaa.models import AuditEvent, RecoveryCode, User
from flask_aaa.services import accounts, mfa, otp
from flask_aaa.services.actors import RequestFacts
from flask_aaa.services.passwords import PasswordService
from tests.conftest import PASSWORD, SECRET, SYSTEM, dump_database

FACTS = RequestFacts(ip="198.51.100.7", user_agent="pytest", request_id="req-1")
HASHER = otp.RecoveryCodeHasher.from_secret_keys(SECRET)
#: The middle of a time step, so that T-1 and T+1 are exactly one step away.
T = dt.datetime(2031, 3, 4, 5, 6, 15, tzinfo=dt.UTC)


def at(secret: str, when: dt.datetime, steps: int = 0) -> str:
    """The code of ``secret`` ``steps`` time steps from ``when``."""
    return pyotp.TOTP(secret).at(when, counter_offset=steps)


def wrong(secret: str, when: dt.datetime) -> str:
    """A six-digit code that is certainly wrong at ``when`` (no code of the ±1 window)."""
    valid = {at(secret, when, steps) for steps in (-1, 0, 1)}
    return next(c for c in (f"{n:06d}" for n in range(4)) if c not in valid)


def events(session: Session, action: str) -> list[AuditEvent]:
    session.rollback()
    return list(
        session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by("seq"))
    )


@pytest.fixture
def user(session: Session, settings: Settings, passwords: PasswordService) -> User:
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


@pytest.fixture
def enrolled(session: Session, user: User) -> Callable[..., tuple[str, list[str]]]:
    """Turn 2FA on for ``user`` at ``when`` (default T), confirmed with the code of the step
    before it so that the code of ``when`` itself is still unused."""

    def enrol(when: dt.datetime = T) -> tuple[str, list[str]]:
        secret = otp.new_secret()
        with writing():
            codes = mfa.enable(
                session,
                user,
                secret=secret,
                code=at(secret, when, -1),
                hasher=HASHER,
                facts=FACTS,
                now=when,
            )
            session.commit()
        return secret, codes

    return enrol


def second_factor(session: Session, user: User, settings: Settings, code: str, **kw: Any) -> Any:
    with writing():
        method = mfa.verify_second_factor(
            session, user, settings=settings, code=code, hasher=HASHER, facts=FACTS, **kw
        )
        session.commit()
    return method


# -- M01: a code is good once --


def test_M01_the_same_code_twice_is_refused(session, user, enrolled):
    secret, _ = enrolled()
    code = at(secret, T)
    with writing():
        assert mfa.verify_totp(session, user, code, now=T)
        session.commit()
    with writing():
        assert not mfa.verify_totp(session, user, code, now=T)
        assert not mfa.verify_totp(session, user, code, now=T + dt.timedelta(seconds=20))
    session.rollback()
    assert session.get(User, user.id).totp_last_step == otp.current_step(T)


def test_M01_a_code_older_than_the_last_accepted_one_is_refused(session, user, enrolled):
    secret, _ = enrolled()
    with writing():
        assert mfa.verify_totp(session, user, at(secret, T, +1), now=T)
        session.commit()
    with writing():
        # Still within the drift window, but of an earlier step than the one used.
        assert not mfa.verify_totp(session, user, at(secret, T), now=T)


def test_M01_the_enrolment_code_cannot_be_used_to_sign_in(session, user):
    secret = otp.new_secret()
    code = at(secret, T)
    with writing():
        mfa.enable(session, user, secret=secret, code=code, hasher=HASHER, facts=FACTS, now=T)
        session.commit()
    with writing():
        assert not mfa.verify_totp(session, user, code, now=T)


def test_M01_two_parallel_verifications_of_one_code_only_one_succeeds(
    engine, session, user, enrolled
):
    secret, _ = enrolled()
    code, uid = at(secret, T), user.id
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def attempt() -> None:
        with Session(engine) as own, writing():
            barrier.wait()
            me = own.get(User, uid)
            ok = mfa.verify_totp(own, me, code, now=T)
            own.commit()
            results.append(ok)

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, True]


def test_M01_the_check_is_made_by_the_database_not_by_a_stale_copy(engine, session, user, enrolled):
    """Two requests that both loaded the user before either used the code: the second one's
    copy still says "no step used", but the conditional UPDATE sees the stored step."""
    secret, _ = enrolled()
    code = at(secret, T)
    with Session(engine, expire_on_commit=False) as stale_session:
        stale = stale_session.get(User, user.id)
        stale_session.commit()  # ends the read; the loaded values stay as they were
        assert stale.totp_last_step == otp.current_step(T) - 1
        with writing():
            assert mfa.verify_totp(session, user, code, now=T)
            session.commit()
        with writing():
            assert not mfa.verify_totp(stale_session, stale, code, now=T)
            stale_session.commit()


# -- M02: ±1 step, the server's clock --


@pytest.mark.parametrize(
    ("steps", "ok"), [(-2, False), (-1, True), (0, True), (1, True), (2, False)]
)
def test_M02_only_codes_within_one_step_pass(session, user, steps, ok):
    secret = otp.new_secret()
    with writing():
        mfa.enable(
            session,
            user,
            secret=secret,
            code=at(secret, T - dt.timedelta(minutes=5)),
            hasher=HASHER,
            facts=FACTS,
            now=T - dt.timedelta(minutes=5),
        )
        session.commit()
    with writing():
        assert mfa.verify_totp(session, user, at(secret, T, steps), now=T) is ok


def test_M02_the_default_clock_is_the_servers(session, user, enrolled):
    secret, _ = enrolled()
    with freeze_time(T + dt.timedelta(minutes=2)), writing():
        assert not mfa.verify_totp(session, user, at(secret, T))
        assert mfa.verify_totp(session, user, at(secret, T + dt.timedelta(minutes=2)))


@pytest.mark.parametrize(
    "code", ["", "12345", "1234567", "abcdef", "12345\x00", "١٢٣٤٥٦", "x" * 5000]
)
def test_M02_malformed_codes_fail_quietly(session, user, enrolled, code):
    enrolled()
    with writing():
        assert not mfa.verify_totp(session, user, code, now=T)


def test_codes_typed_with_spaces_or_full_width_digits_pass(session, user, enrolled):
    secret, _ = enrolled()
    code = at(secret, T)
    typed = code[:3] + " " + "".join(chr(ord(c) + 0xFEE0) for c in code[3:])
    with writing():
        assert mfa.verify_totp(session, user, typed, now=T)


def test_a_user_without_2fa_never_passes(session, user):
    with writing():
        assert not mfa.verify_totp(session, user, "123456", now=T)


# -- M03: guessing is counted, audited and throttled per account --


def test_M03_a_wrong_code_is_audited_and_counts_towards_the_lockout(
    session, user, enrolled, settings
):
    secret, _ = enrolled()
    assert second_factor(session, user, settings, wrong(secret, T), now=T) is None
    [event] = events(session, "auth.mfa.failed")
    assert (event.actor_type, event.outcome, event.target_id) == (
        "anonymous",
        "failure",
        str(user.id),
    )
    assert json.loads(event.details) == {"method": "totp", "reason": "wrong_code"}
    assert session.get(User, user.id).failed_logins == 1


def test_M03_a_replayed_code_is_audited_as_such(session, user, enrolled, settings):
    secret, _ = enrolled()
    assert second_factor(session, user, settings, at(secret, T), now=T) == otp.TOTP
    assert second_factor(session, user, settings, at(secret, T), now=T) is None
    [event] = events(session, "auth.mfa.failed")
    assert json.loads(event.details)["reason"] == "replayed"


def test_M03_after_the_threshold_each_attempt_waits_longer(session, user, enrolled, settings):
    secret, _ = enrolled()
    now = T
    for _ in range(settings.lockout_threshold):
        assert mfa.throttle_wait(session, user, settings=settings, now=now) == 0
        with freeze_time(now):
            assert second_factor(session, user, settings, wrong(secret, now), now=now) is None
    assert mfa.throttle_wait(session, user, settings=settings, now=now) == 60
    with pytest.raises(Throttled) as info:
        second_factor(session, user, settings, at(secret, now), now=now)
    assert info.value.retry_after == 60
    assert len(events(session, "auth.mfa.throttled")) == 1
    # The right code is not even looked at while throttled; after the wait, one more try.
    now += dt.timedelta(seconds=61)
    with freeze_time(now):
        assert second_factor(session, user, settings, wrong(secret, now), now=now) is None
    assert mfa.throttle_wait(session, user, settings=settings, now=now) == 120
    now += dt.timedelta(seconds=121)
    assert second_factor(session, user, settings, at(secret, now), now=now) == otp.TOTP


def test_M03_a_completed_second_step_resets_the_count(session, user, enrolled, settings):
    secret, _ = enrolled()
    with freeze_time(T):
        for _ in range(settings.lockout_threshold):
            second_factor(session, user, settings, wrong(secret, T), now=T)
    assert mfa.throttle_wait(session, user, settings=settings, now=T) > 0
    with writing(), freeze_time(T):
        accounts.open_session(
            session, user, settings=settings, facts=FACTS, details={"mfa": "totp"}
        )
        session.commit()
    assert mfa.throttle_wait(session, user, settings=settings, now=T) == 0


def test_M03_a_password_only_sign_in_does_not_reset_the_count(session, user, enrolled, settings):
    secret, _ = enrolled()
    with freeze_time(T):
        for _ in range(settings.lockout_threshold):
            second_factor(session, user, settings, wrong(secret, T), now=T)
        with writing():
            accounts.open_session(session, user, settings=settings, facts=FACTS, details={})
            session.commit()
    assert mfa.throttle_wait(session, user, settings=settings, now=T) > 0


def test_M03_wrong_codes_older_than_a_day_are_forgotten(session, user, enrolled, settings):
    secret, _ = enrolled()
    with freeze_time(T):
        for _ in range(settings.lockout_threshold):
            second_factor(session, user, settings, wrong(secret, T), now=T)
    later = T + mfa.THROTTLE_WINDOW + dt.timedelta(seconds=1)
    assert mfa.throttle_wait(session, user, settings=settings, now=later) == 0


# -- M06: recovery codes --


def test_M06_enable_returns_ten_codes_stored_only_as_keyed_hashes(engine, session, user, enrolled):
    _, codes = enrolled()
    assert len(codes) == mfa.RECOVERY_CODE_COUNT == len(set(codes))
    rows = list(session.scalars(select(RecoveryCode).where(RecoveryCode.user_id == user.id)))
    assert len(rows) == 10
    dump = dump_database(engine)
    for code in codes:
        bare = code.replace("-", "")
        assert code not in dump and bare not in dump
        assert HASHER.digest(bare) in dump
    # Keyed: a plain SHA-256 of the code is not what is stored.
    import hashlib

    assert hashlib.sha256(codes[0].replace("-", "").encode()).hexdigest() not in dump


def test_M06_a_recovery_code_works_once(session, user, enrolled, settings):
    _, codes = enrolled()
    assert second_factor(session, user, settings, codes[3], now=T) == otp.RECOVERY
    assert second_factor(session, user, settings, codes[3], now=T) is None
    assert mfa.remaining_recovery_codes(session, user) == 9
    [failed] = events(session, "auth.mfa.failed")
    assert json.loads(failed.details) == {"method": "recovery_code", "reason": "wrong_code"}


def test_M06_recovery_codes_are_read_forgivingly(session, user, enrolled):
    _, codes = enrolled()
    typed = "  " + codes[0].upper().replace("-", " ") + " "
    with writing():
        assert mfa.use_recovery_code(session, user, typed, hasher=HASHER, now=T)


def test_M06_parallel_use_of_one_recovery_code_only_one_succeeds(engine, session, user, enrolled):
    _, codes = enrolled()
    uid = user.id
    barrier = threading.Barrier(3)
    results: list[bool] = []

    def attempt() -> None:
        with Session(engine) as own, writing():
            barrier.wait()
            me = own.get(User, uid)
            ok = mfa.use_recovery_code(own, me, codes[0], hasher=HASHER, now=T)
            own.commit()
            results.append(ok)

    threads = [threading.Thread(target=attempt) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, True]


def test_M06_a_code_of_another_user_or_key_does_not_work(
    session, user, enrolled, settings, passwords
):
    _, codes = enrolled()
    other_key = otp.RecoveryCodeHasher.from_secret_keys("another-secret-key-0123456789abcdef")
    with writing():
        assert not mfa.use_recovery_code(session, user, codes[0], hasher=other_key, now=T)
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
    with writing():
        assert not mfa.use_recovery_code(session, bob, codes[0], hasher=HASHER, now=T)


def test_M06_codes_survive_a_secret_key_rotation(session, user, enrolled):
    _, codes = enrolled()
    rotated = otp.RecoveryCodeHasher.from_secret_keys(
        "new-secret-key-0123456789abcdef0123", [SECRET]
    )
    with writing():
        assert mfa.use_recovery_code(session, user, codes[0], hasher=rotated, now=T)


def test_M06_regeneration_needs_the_password_and_ends_the_old_codes(
    session, user, enrolled, settings, passwords
):
    _, codes = enrolled()
    with writing(), pytest.raises(InvalidInput) as info:
        mfa.regenerate_recovery_codes(
            session,
            user,
            settings=settings,
            passwords=passwords,
            password="wrong-" + PASSWORD,
            hasher=HASHER,
            facts=FACTS,
        )
    assert "password" in info.value.errors
    [failed] = events(session, "mfa.recovery_codes.regenerate_failed")
    assert failed.outcome == "failure"
    with writing():
        new = mfa.regenerate_recovery_codes(
            session,
            user,
            settings=settings,
            passwords=passwords,
            password=PASSWORD,
            hasher=HASHER,
            facts=FACTS,
        )
        session.commit()
    assert len(new) == 10 and not set(new) & set(codes)
    assert second_factor(session, user, settings, codes[0], now=T) is None
    assert second_factor(session, user, settings, new[0], now=T) == otp.RECOVERY
    [done] = events(session, "mfa.recovery_codes.regenerated")
    assert json.loads(done.details) == {"count": 10}


# -- enrolment --


def test_enable_with_a_wrong_code_stores_nothing_and_is_audited(session, user):
    secret = otp.new_secret()
    with writing(), pytest.raises(InvalidInput) as info:
        mfa.enable(
            session, user, secret=secret, code=wrong(secret, T), hasher=HASHER, facts=FACTS, now=T
        )
    assert "code" in info.value.errors
    session.rollback()
    fresh_user = session.get(User, user.id)
    assert fresh_user.totp_secret is None and not fresh_user.mfa_enabled
    assert session.scalar(select(func.count()).select_from(RecoveryCode)) == 0
    [event] = events(session, "mfa.enable_failed")
    assert (event.outcome, json.loads(event.details)) == ("failure", {"reason": "wrong_code"})


def test_enable_records_the_event_with_the_change(session, user, enrolled):
    enrolled()
    [event] = events(session, "mfa.enabled")
    assert (event.actor_id, event.target_id, event.outcome) == (user.id, str(user.id), "success")
    assert session.get(User, user.id).mfa_enabled


def test_enable_twice_is_a_conflict(session, user, enrolled):
    secret, _ = enrolled()
    with writing(), pytest.raises(Conflict):
        mfa.enable(
            session, user, secret=secret, code=at(secret, T), hasher=HASHER, facts=FACTS, now=T
        )


def test_two_racing_enrolments_store_one_secret(engine, session, user):
    """Two tabs confirm two candidate secrets: the second, whose copy of the user still says
    "off", is refused by the database and leaves nothing of its own."""
    first, second = otp.new_secret(), otp.new_secret()
    with Session(engine, expire_on_commit=False) as other:
        stale = other.get(User, user.id)
        other.commit()
        with writing():
            mfa.enable(
                session, user, secret=first, code=at(first, T), hasher=HASHER, facts=FACTS, now=T
            )
            session.commit()
        with writing(), pytest.raises(Conflict):
            mfa.enable(
                other, stale, secret=second, code=at(second, T), hasher=HASHER, facts=FACTS, now=T
            )
        other.rollback()
    session.rollback()
    assert session.get(User, user.id).totp_secret == first
    assert session.scalar(select(func.count()).select_from(RecoveryCode)) == 10
    assert len(events(session, "mfa.enabled")) == 1


def test_enable_refuses_a_secret_that_is_not_one(session, user):
    with writing(), pytest.raises(InvalidInput):
        mfa.enable(session, user, secret="short", code="123456", hasher=HASHER, facts=FACTS)


def test_new_secrets_are_160_random_bits_in_base32():
    secrets_ = {otp.new_secret() for _ in range(200)}
    assert len(secrets_) == 200
    assert all(otp.is_secret(s) and len(s) == 32 for s in secrets_)


def test_provisioning_uri_and_qr_code():
    secret = otp.new_secret()
    uri = otp.provisioning_uri(secret, "alice@example.org", "Acme <Corp>")
    assert uri.startswith("otpauth://totp/")
    assert f"secret={secret}" in uri and "issuer=Acme" in uri
    svg = otp.qr_svg(uri)
    assert svg.startswith('<svg role="img" ') and svg.endswith("</svg>")
    assert "<title>" in svg
    assert "style=" not in svg and "<script" not in svg.lower()
    assert "<Corp>" not in svg  # the issuer is inside the QR modules, not in the markup


# -- M07: turning it off --


def test_M07_disable_needs_the_current_password(session, user, enrolled, settings, passwords):
    enrolled()
    with writing(), pytest.raises(InvalidInput) as info:
        mfa.disable(
            session,
            user,
            settings=settings,
            passwords=passwords,
            password="wrong-" + PASSWORD,
            facts=FACTS,
        )
    assert "password" in info.value.errors
    session.rollback()
    assert session.get(User, user.id).mfa_enabled
    [event] = events(session, "mfa.disable_failed")
    assert json.loads(event.details) == {"reason": "bad_password"}
    assert session.get(User, user.id).failed_logins == 1


def test_M07_disable_clears_secret_step_and_codes(session, user, enrolled, settings, passwords):
    enrolled()
    with writing():
        mfa.disable(
            session, user, settings=settings, passwords=passwords, password=PASSWORD, facts=FACTS
        )
        session.commit()
    session.rollback()
    row = session.get(User, user.id)
    assert (row.totp_secret, row.totp_last_step, row.mfa_enabled_at) == (None, None, None)
    assert session.scalar(select(func.count()).select_from(RecoveryCode)) == 0
    [event] = events(session, "mfa.disabled")
    assert (event.actor_id, event.outcome) == (user.id, "success")


def test_M07_disable_when_off_is_a_conflict(session, user, settings, passwords):
    with writing(), pytest.raises(Conflict):
        mfa.disable(
            session, user, settings=settings, passwords=passwords, password=PASSWORD, facts=FACTS
        )


def test_A09_disable_is_refused_while_the_password_is_shorter_than_the_single_factor_minimum(
    session, user, enrolled, settings, passwords
):
    enrolled()
    short = "Tq7#vL2m"  # 8 characters: allowed with 2FA only
    with writing():
        accounts.change_password(
            session,
            settings=settings,
            passwords=passwords,
            user=user,
            current=PASSWORD,
            new=short,
            session=None,
            facts=FACTS,
        )
        session.commit()
    with writing(), pytest.raises(InvalidInput) as info:
        mfa.disable(
            session, user, settings=settings, passwords=passwords, password=short, facts=FACTS
        )
    assert "at least 15" in info.value.errors["password"]
    session.rollback()
    assert session.get(User, user.id).mfa_enabled
    [event] = events(session, "mfa.disable_failed")
    assert json.loads(event.details) == {"reason": "short_password"}


# -- L04: no secret in the trail --


def test_L04_the_trail_never_holds_the_secret_or_a_code(session, user, enrolled, settings):
    secret, codes = enrolled()
    second_factor(session, user, settings, at(secret, T), now=T)
    second_factor(session, user, settings, codes[0], now=T)
    second_factor(session, user, settings, wrong(secret, T), now=T)
    session.rollback()
    trail = "\n".join(
        repr(tuple(row)) for row in session.execute(select(AuditEvent.__table__)).all()
    )
    assert secret not in trail
    assert at(secret, T) not in trail
    for code in codes:
        assert code not in trail and code.replace("-", "") not in trail
