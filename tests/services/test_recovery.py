"""The mail-based flows as services: one-time tokens (single use, one purpose, hash at rest,
expiry, bindings), email confirmation, password reset, change of address and invitations,
with the same work for known and unknown addresses and the audit events of each."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flask_aaa.config import Settings
from flask_aaa.db import utcnow, writing
from flask_aaa.errors import (
    AuthenticationFailed,
    ExpiredToken,
    InvalidInput,
    InvalidToken,
    InvitationRequired,
    PermissionDenied,
)
from flask_aaa.models import AuditEvent, LoginSession, OneTimeToken, RememberToken, User
from flask_aaa.services import accounts, onetime, recovery, sessions
from flask_aaa.services.actors import Actor, RequestFacts, token_digest
from flask_aaa.services.passwords import PasswordService
from tests.conftest import PASSWORD, SYSTEM, dump_database
from tests.services.test_accounts import create, events, make_admin, make_settings

FACTS = RequestFacts(ip="198.51.100.9", user_agent="pytest", request_id="req-r")
NEW_PASSWORD = "saffron-meadow-lantern-88"


@pytest.fixture
def confirm_settings() -> Settings:
    return make_settings(CONFIRM_EMAIL=True)


def commit(session: Session, fn: Any, /, **kwargs: Any) -> Any:
    """Run a service call as a writer and commit, as a view does."""
    with writing():
        result = fn(session, **kwargs)
        session.commit()
    return result


def fails(session: Session, exc: type[Exception], fn: Any, /, **kwargs: Any) -> Any:
    """Run a service call that must raise ``exc``; roll back as the view does."""
    with writing(), pytest.raises(exc) as info:
        fn(session, **kwargs)
    session.rollback()
    return info.value


def reset_link(session, settings, email="alice@example.org") -> str:
    out = commit(session, recovery.request_reset, settings=settings, email=email, facts=FACTS)
    assert out is not None and out.template == "reset" and out.token
    return str(out.token)


def do_reset(session, settings, passwords, raw, new=NEW_PASSWORD) -> recovery.ResetDone:
    return commit(
        session,
        recovery.reset_password,
        settings=settings,
        passwords=passwords,
        raw=raw,
        new=new,
        facts=FACTS,
    )


def verifies(passwords: PasswordService, user: User, password: str) -> bool:
    return passwords.verify(password, user.password_hash)[0]


def details(event_: AuditEvent) -> dict[str, Any]:
    return json.loads(event_.details)


# -- one-time tokens --


def test_A21_only_the_hash_of_a_token_is_stored(session, engine, settings, passwords):
    user = create(session, settings, passwords)
    raw = commit(session, onetime.issue, purpose=onetime.RESET, ttl=60, user=user)
    assert len(raw) >= 43  # 256 bits, URL-safe base64
    dump = dump_database(engine)
    assert raw not in dump
    assert token_digest(raw) in dump


def test_A18_a_token_works_once(session, settings, passwords):
    user = create(session, settings, passwords)
    raw = commit(session, onetime.issue, purpose=onetime.CONFIRM, ttl=60, user=user)
    row = commit(session, onetime.consume, purpose=onetime.CONFIRM, raw=raw)
    assert row.used_at is not None
    exc = fails(session, InvalidToken, onetime.consume, purpose=onetime.CONFIRM, raw=raw)
    assert (exc.code, exc.status, exc.message, exc.reason) == (
        "invalid_token",
        400,
        "This link is not valid.",
        "used",
    )


def test_a_token_has_one_purpose(session, settings, passwords):
    user = create(session, settings, passwords)
    raw = commit(session, onetime.issue, purpose=onetime.CONFIRM, ttl=60, user=user)
    exc = fails(session, InvalidToken, onetime.consume, purpose=onetime.RESET, raw=raw)
    assert exc.reason == "wrong_purpose"
    # ... and was not used up by the wrong attempt.
    commit(session, onetime.consume, purpose=onetime.CONFIRM, raw=raw)


def test_a_rollback_gives_the_token_back(session, settings, passwords):
    user = create(session, settings, passwords)
    raw = commit(session, onetime.issue, purpose=onetime.RESET, ttl=60, user=user)
    with writing():
        onetime.consume(session, purpose=onetime.RESET, raw=raw)
        session.rollback()
    commit(session, onetime.consume, purpose=onetime.RESET, raw=raw)


def test_a_newer_token_replaces_the_older(session, settings, passwords):
    user = create(session, settings, passwords)
    first = commit(session, onetime.issue, purpose=onetime.RESET, ttl=60, user=user)
    second = commit(session, onetime.issue, purpose=onetime.RESET, ttl=60, user=user)
    fails(session, InvalidToken, onetime.consume, purpose=onetime.RESET, raw=first)
    commit(session, onetime.consume, purpose=onetime.RESET, raw=second)


@pytest.mark.parametrize("raw", ["", "short", "x" * 200, "bad token with spaces ok?", "é" * 43])
def test_malformed_tokens_are_refused_before_any_lookup(session, raw):
    exc = fails(session, InvalidToken, onetime.consume, purpose=onetime.RESET, raw=raw)
    assert exc.reason == "malformed"


def test_A19_an_expired_token_says_so(session, settings, passwords):
    user = create(session, settings, passwords)
    raw = commit(session, onetime.issue, purpose=onetime.RESET, ttl=3600, user=user)
    with freeze_time(utcnow() + dt.timedelta(seconds=3601)):
        exc = fails(session, ExpiredToken, onetime.consume, purpose=onetime.RESET, raw=raw)
    assert (exc.code, exc.status, exc.message) == ("expired_token", 400, "This link has expired.")
    with freeze_time(utcnow() + dt.timedelta(seconds=3599)):
        commit(session, onetime.consume, purpose=onetime.RESET, raw=raw)


def test_a_binding_that_no_longer_holds_kills_the_token(session, settings, passwords):
    user = create(session, settings, passwords)
    raw = commit(
        session,
        onetime.issue,
        purpose=onetime.RESET,
        ttl=60,
        user=user,
        binding=onetime.bind("x", "1"),
    )
    exc = fails(
        session,
        InvalidToken,
        onetime.consume,
        purpose=onetime.RESET,
        raw=raw,
        binding_of=lambda _row: onetime.bind("x", "2"),
    )
    assert exc.reason == "binding"


# -- password reset --


def test_A01_A02_reset_request_does_the_same_work_for_known_and_unknown(
    session, engine, settings, passwords, monkeypatch
):
    """Known, unknown and disabled addresses: one secret made and hashed, one event, no
    password hashing; only a known, active account gets something to mail."""
    create(session, settings, passwords)
    dora = create(session, settings, passwords, "dora")
    with writing():
        dora.active = False
        session.commit()
    made: list[str] = []
    real = onetime._new_secret
    monkeypatch.setattr(onetime, "_new_secret", lambda: made.append("x") or real())
    hashed: list[str] = []
    monkeypatch.setattr(passwords, "hash", lambda value: hashed.append(value) or "")
    outcomes = {}
    for email in ("alice@example.org", "nobody@example.org", "dora@example.org"):
        made.clear()
        before = len(events(engine, "auth.reset.requested"))
        outcomes[email] = commit(
            session, recovery.request_reset, settings=settings, email=email, facts=FACTS
        )
        assert made == ["x"], email
        assert len(events(engine, "auth.reset.requested")) == before + 1
    assert hashed == []
    assert outcomes["alice@example.org"] is not None
    assert outcomes["nobody@example.org"] is None
    assert outcomes["dora@example.org"] is None
    reasons = [details(e).get("reason") for e in events(engine, "auth.reset.requested")]
    assert reasons == [None, "unknown_address", "disabled"]


def test_a_malformed_address_is_a_field_error_whoever_asks(session, settings):
    exc = fails(
        session, InvalidInput, recovery.request_reset, settings=settings, email="x@", facts=FACTS
    )
    assert set(exc.errors) == {"email"}


def test_reset_sets_the_password_ends_everything_and_signs_nobody_in(
    session, engine, settings, passwords
):
    user = create(session, settings, passwords)
    with writing():
        for _ in range(2):
            sessions.create(session, user, settings=settings, facts=FACTS)
        sessions.issue_remember(session, user, settings=settings)
        session.commit()
    raw = reset_link(session, settings)
    result = do_reset(session, settings, passwords, raw)
    assert result.sessions_ended == 2
    assert (result.mail.template, result.mail.to, result.mail.token) == (
        "password_reset",
        "alice@example.org",
        None,
    )
    session.refresh(user)
    assert verifies(passwords, user, NEW_PASSWORD)
    assert not verifies(passwords, user, PASSWORD)
    live = session.scalar(
        select(func.count()).select_from(LoginSession).where(LoginSession.revoked_at.is_(None))
    )
    assert live == 0  # A22: nobody is signed in by a reset
    assert session.scalar(select(RememberToken.revoked_at)) is not None
    [event] = events(engine, "auth.reset.succeeded")
    assert details(event) == {
        "sessions_ended": 2,
        "lockout_cleared": False,
        "email_confirmed": True,
    }
    assert raw not in dump_database(engine)


def test_A18_reset_link_reuse_fails_and_is_audited_apart(session, engine, settings, passwords):
    create(session, settings, passwords)
    raw = reset_link(session, settings)
    do_reset(session, settings, passwords, raw)
    exc = fails(
        session,
        InvalidToken,
        recovery.reset_password,
        settings=settings,
        passwords=passwords,
        raw=raw,
        new="another-fine-passphrase-7",
        facts=FACTS,
    )
    assert exc.reason == "used"
    [failed] = events(engine, "auth.reset.failed")
    assert failed.outcome == "failure"
    assert details(failed) == {"error": "invalid_token", "reason": "used"}
    assert raw not in failed.details


def test_A18_token_of_A_changes_only_A(session, settings, passwords):
    alice = create(session, settings, passwords)
    bob = create(session, settings, passwords, "bob")
    result = do_reset(session, settings, passwords, reset_link(session, settings))
    assert result.user.id == alice.id
    session.refresh(bob)
    assert verifies(passwords, bob, PASSWORD)


def test_A18_a_password_change_kills_the_reset_link(session, settings, passwords):
    alice = create(session, settings, passwords)
    raw = reset_link(session, settings)
    commit(
        session,
        accounts.change_password,
        settings=settings,
        passwords=passwords,
        user=alice,
        current=PASSWORD,
        new="another-fine-passphrase-7",
        session=None,
        facts=FACTS,
    )
    exc = fails(
        session,
        InvalidToken,
        recovery.reset_password,
        settings=settings,
        passwords=passwords,
        raw=raw,
        new=NEW_PASSWORD,
        facts=FACTS,
    )
    assert exc.reason == "binding"


def test_A19_an_expired_reset_link_is_refused(session, settings, passwords):
    create(session, settings, passwords)
    raw = reset_link(session, settings)
    with freeze_time(utcnow() + dt.timedelta(seconds=settings.reset_ttl + 1)):
        exc = fails(
            session,
            ExpiredToken,
            recovery.reset_password,
            settings=settings,
            passwords=passwords,
            raw=raw,
            new=NEW_PASSWORD,
            facts=FACTS,
        )
    assert exc.message == "This link has expired."


def test_a_weak_new_password_keeps_the_link_usable(session, engine, settings, passwords):
    create(session, settings, passwords)
    raw = reset_link(session, settings)
    exc = fails(
        session,
        InvalidInput,
        recovery.reset_password,
        settings=settings,
        passwords=passwords,
        raw=raw,
        new="password123",
        facts=FACTS,
    )
    assert set(exc.errors) == {"password"}
    do_reset(session, settings, passwords, raw)
    assert events(engine, "auth.reset.failed") == []


def test_A08_reset_lifts_a_lockout(session, engine, settings, passwords):
    alice = create(session, settings, passwords)
    with writing():
        alice.locked_until = utcnow() + dt.timedelta(hours=1)
        alice.failed_logins = 3
        alice.lockouts = 4
        session.commit()
    do_reset(session, settings, passwords, reset_link(session, settings))
    session.refresh(alice)
    assert (alice.locked_until, alice.failed_logins, alice.lockouts) == (None, 0, 0)
    user = commit(
        session,
        accounts.authenticate,
        settings=settings,
        passwords=passwords,
        login="alice",
        password=NEW_PASSWORD,
        facts=FACTS,
    )
    assert user.id == alice.id
    assert details(events(engine, "auth.reset.succeeded")[0])["lockout_cleared"] is True


def test_A22_reset_of_a_two_factor_account_opens_no_session(session, settings, passwords):
    alice = create(session, settings, passwords)
    with writing():
        alice.totp_secret = "JBSWY3DPEHPK3PXP"
        alice.mfa_enabled_at = utcnow()
        session.commit()
    # Users with two factors may pick shorter passwords (8, NIST).
    result = do_reset(session, settings, passwords, reset_link(session, settings), "blue-fox-9")
    assert result.user.mfa_enabled  # the second factor stays
    assert session.scalar(select(func.count()).select_from(LoginSession)) == 0


def test_a_disabled_account_cannot_use_a_reset_link(session, engine, settings, passwords):
    alice = create(session, settings, passwords)
    raw = reset_link(session, settings)
    with writing():
        alice.active = False
        session.commit()
    exc = fails(
        session,
        InvalidToken,
        recovery.reset_password,
        settings=settings,
        passwords=passwords,
        raw=raw,
        new=NEW_PASSWORD,
        facts=FACTS,
    )
    assert exc.reason == "account_unavailable"


# -- registration and email confirmation --


def register(session, settings, passwords, **fields: Any) -> recovery.Registered:
    return commit(
        session,
        recovery.register,
        settings=settings,
        passwords=passwords,
        username=fields.pop("username", "erin"),
        email=fields.pop("email", "erin@example.org"),
        password=fields.pop("password", PASSWORD),
        facts=FACTS,
        **fields,
    )


def test_registration_with_confirmation_mails_a_link(session, engine, confirm_settings, passwords):
    result = register(session, confirm_settings, passwords)
    assert result.must_confirm
    assert result.user is not None and result.user.email_confirmed_at is None
    assert result.mail is not None
    assert (result.mail.template, result.mail.to) == ("confirm", "erin@example.org")
    [sent] = events(engine, "auth.confirm.sent")
    assert details(sent) == {"reason": "registration"}
    assert len(events(engine, "user.registered")) == 1


def test_A01_registration_with_a_taken_address_looks_the_same(
    session, engine, confirm_settings, passwords, monkeypatch
):
    """Same outcome shape, same password hashing, one made secret; the owner gets a notice;
    nobody is created."""
    create(session, confirm_settings, passwords, "owner", email="erin@example.org")
    hashed: list[str] = []
    real_hash = passwords.hash
    monkeypatch.setattr(passwords, "hash", lambda value: hashed.append("h") or real_hash(value))
    made: list[str] = []
    real_secret = onetime._new_secret
    monkeypatch.setattr(onetime, "_new_secret", lambda: made.append("x") or real_secret())
    taken = register(session, confirm_settings, passwords, email="ERIN@example.org")
    assert (hashed, made) == (["h"], ["x"])
    fresh = register(session, confirm_settings, passwords, username="fred", email="f@example.org")
    assert (hashed, made) == (["h", "h"], ["x", "x"])
    assert taken.must_confirm and fresh.must_confirm
    assert taken.user is None
    assert taken.mail is not None
    assert (taken.mail.template, taken.mail.to, taken.mail.token) == (
        "address_in_use",
        "erin@example.org",
        None,
    )
    assert session.scalar(select(func.count()).select_from(User)) == 2
    [refused] = events(engine, "user.registration_refused")
    assert (refused.outcome, refused.target_label) == ("failure", "owner")


def test_a_taken_username_is_still_reported(session, confirm_settings, passwords):
    create(session, confirm_settings, passwords, "erin", email="someone@example.org")
    exc = fails(
        session,
        InvalidInput,
        recovery.register,
        settings=confirm_settings,
        passwords=passwords,
        username="erin",
        email="erin@example.org",
        password=PASSWORD,
        facts=FACTS,
    )
    assert set(exc.errors) == {"username"}


def test_A01_a_weak_password_is_refused_whether_or_not_the_address_is_taken(
    session, confirm_settings, passwords
):
    create(session, confirm_settings, passwords, "owner", email="erin@example.org")
    for email in ("erin@example.org", "new@example.org"):
        exc = fails(
            session,
            InvalidInput,
            recovery.register,
            settings=confirm_settings,
            passwords=passwords,
            username="erin",
            email=email,
            password="password123",
            facts=FACTS,
        )
        assert set(exc.errors) == {"password"}


def confirm(session, raw: str) -> User:
    return commit(session, recovery.confirm_email, raw=raw, facts=FACTS)


def test_A23_confirmation_works_once(session, engine, confirm_settings, passwords):
    result = register(session, confirm_settings, passwords)
    assert result.mail is not None and result.mail.token
    user = confirm(session, result.mail.token)
    assert user.email_confirmed_at is not None
    exc = fails(session, InvalidToken, recovery.confirm_email, raw=result.mail.token, facts=FACTS)
    assert exc.reason == "used"
    assert len(events(engine, "auth.confirm.succeeded")) == 1
    [failed] = events(engine, "auth.confirm.failed")
    assert (failed.outcome, failed.target_label) == ("failure", "erin")


def test_A23_expired_confirmation(session, confirm_settings, passwords):
    result = register(session, confirm_settings, passwords)
    assert result.mail is not None and result.mail.token
    with freeze_time(utcnow() + dt.timedelta(seconds=confirm_settings.confirm_ttl + 1)):
        fails(session, ExpiredToken, recovery.confirm_email, raw=result.mail.token, facts=FACTS)


def test_A23_a_confirmation_is_for_one_address(session, confirm_settings, passwords):
    """The link confirms the address it was sent to: once the account has another one, it
    is dead."""
    result = register(session, confirm_settings, passwords)
    assert result.mail is not None and result.mail.token and result.user is not None
    with writing():
        result.user.email = "other@example.org"
        result.user.email_key = "other@example.org"
        session.commit()
    exc = fails(session, InvalidToken, recovery.confirm_email, raw=result.mail.token, facts=FACTS)
    assert exc.reason == "binding"


def test_A23_an_unconfirmed_account_cannot_sign_in(session, confirm_settings, passwords):
    register(session, confirm_settings, passwords)
    exc = fails(
        session,
        AuthenticationFailed,
        accounts.authenticate,
        settings=confirm_settings,
        passwords=passwords,
        login="erin",
        password=PASSWORD,
        facts=FACTS,
    )
    assert (exc.reason, exc.message) == ("unconfirmed", "Invalid login or password.")


def test_A01_resend_confirmation_same_work_for_every_address(
    session, engine, confirm_settings, passwords, monkeypatch
):
    register(session, confirm_settings, passwords)  # erin: unconfirmed
    create(session, confirm_settings, passwords, "carl")  # confirmed below
    with writing():
        carl = session.scalar(select(User).where(User.username_key == "carl"))
        assert carl is not None
        carl.email_confirmed_at = utcnow()
        session.commit()
    made: list[str] = []
    real = onetime._new_secret
    monkeypatch.setattr(onetime, "_new_secret", lambda: made.append("x") or real())
    outcomes = {}
    for email in ("erin@example.org", "nobody@example.org", "carl@example.org"):
        made.clear()
        outcomes[email] = commit(
            session,
            recovery.request_confirmation,
            settings=confirm_settings,
            email=email,
            facts=FACTS,
        )
        assert made == ["x"]
    erin = outcomes["erin@example.org"]
    assert erin is not None and erin.template == "confirm"
    assert outcomes["nobody@example.org"] is None and outcomes["carl@example.org"] is None
    assert [details(e)["reason"] for e in events(engine, "auth.confirm.not_sent")] == [
        "unknown_address",
        "already_confirmed",
    ]


def test_a_reset_link_confirms_the_address(session, confirm_settings, passwords):
    """The link reached the mailbox: that is a confirmation too (and it takes an account
    pre-registered by someone else away from them)."""
    register(session, confirm_settings, passwords)
    result = do_reset(
        session,
        confirm_settings,
        passwords,
        reset_link(session, confirm_settings, "erin@example.org"),
    )
    assert result.user.email_confirmed_at is not None


# -- change of email address --


def change_request(session, settings, passwords, user, new="new@example.org", password=PASSWORD):
    return commit(
        session,
        recovery.request_email_change,
        settings=settings,
        passwords=passwords,
        user=user,
        password=password,
        new_email=new,
        facts=FACTS,
    )


def test_email_change_needs_the_password_and_audits_a_wrong_one(
    session, engine, settings, passwords
):
    alice = create(session, settings, passwords)
    exc = fails(
        session,
        InvalidInput,
        recovery.request_email_change,
        settings=settings,
        passwords=passwords,
        user=alice,
        password="not-the-password-at-all",
        new_email="new@example.org",
        facts=FACTS,
    )
    assert set(exc.errors) == {"password"}
    [failed] = events(engine, "user.email_change_failed")
    assert details(failed) == {"reason": "bad_password"}
    assert session.scalar(select(func.count()).select_from(OneTimeToken)) == 0


def test_email_change_confirms_the_new_address_and_tells_the_old(
    session, engine, settings, passwords
):
    alice = create(session, settings, passwords)
    reset_raw = reset_link(session, settings)  # mailed to the old address
    out = change_request(session, settings, passwords, alice)
    assert (out.template, out.to) == ("email_change", "new@example.org")
    session.refresh(alice)
    assert alice.email == "alice@example.org"  # nothing changes before the link is used
    user, notice = commit(session, recovery.confirm_email_change, raw=out.token, facts=FACTS)
    assert (user.email, user.email_key) == ("new@example.org", "new@example.org")
    assert user.email_confirmed_at is not None
    assert notice is not None
    assert (notice.template, notice.to, dict(notice.context)) == (
        "email_changed",
        "alice@example.org",
        {"new_email": "new@example.org"},
    )
    [changed] = events(engine, "user.email_changed")
    assert details(changed) == {"old_email": "alice@example.org", "new_email": "new@example.org"}
    assert len(events(engine, "user.email_change_requested")) == 1
    # Every link mailed to the old address died with the change.
    fails(
        session,
        InvalidToken,
        recovery.reset_password,
        settings=settings,
        passwords=passwords,
        raw=reset_raw,
        new=NEW_PASSWORD,
        facts=FACTS,
    )
    fails(session, InvalidToken, recovery.confirm_email_change, raw=out.token, facts=FACTS)


def test_a_second_change_request_kills_the_first_link(session, settings, passwords):
    alice = create(session, settings, passwords)
    first = change_request(session, settings, passwords, alice, "one@example.org")
    second = change_request(session, settings, passwords, alice, "two@example.org")
    fails(session, InvalidToken, recovery.confirm_email_change, raw=first.token, facts=FACTS)
    user, _ = commit(session, recovery.confirm_email_change, raw=second.token, facts=FACTS)
    assert user.email == "two@example.org"


def test_email_change_to_a_taken_address_answers_alike(session, engine, settings, passwords):
    alice = create(session, settings, passwords)
    create(session, settings, passwords, "bob")
    out = change_request(session, settings, passwords, alice, "BOB@example.org")
    assert (out.template, out.to, out.token) == ("address_in_use", "bob@example.org", None)
    assert session.scalar(select(func.count()).select_from(OneTimeToken)) == 0
    assert len(events(engine, "user.email_change_requested")) == 1


def test_email_change_to_the_same_address_is_a_field_error(session, settings, passwords):
    alice = create(session, settings, passwords)
    exc = fails(
        session,
        InvalidInput,
        recovery.request_email_change,
        settings=settings,
        passwords=passwords,
        user=alice,
        password=PASSWORD,
        new_email="ALICE@example.org",
        facts=FACTS,
    )
    assert set(exc.errors) == {"email"}


def test_email_change_link_dies_if_the_address_was_taken_meanwhile(session, settings, passwords):
    alice = create(session, settings, passwords)
    out = change_request(session, settings, passwords, alice)
    create(session, settings, passwords, "nina", email="new@example.org")
    fails(session, InvalidInput, recovery.confirm_email_change, raw=out.token, facts=FACTS)
    session.refresh(alice)
    assert alice.email == "alice@example.org"


# -- invitations --


def invite(session, settings, actor, email="guest@example.org") -> recovery.Outgoing | None:
    return commit(
        session, recovery.invite, settings=settings, actor=actor, email=email, facts=FACTS
    )


def test_inviting_needs_the_permission(session, engine, settings, passwords):
    alice = create(session, settings, passwords)
    fails(
        session,
        PermissionDenied,
        recovery.invite,
        settings=settings,
        actor=Actor.of(alice),
        email="guest@example.org",
        facts=FACTS,
    )
    [denied] = events(engine, "authz.denied")
    assert details(denied)["requirement"] == recovery.INVITE_USERS
    assert session.scalar(select(func.count()).select_from(OneTimeToken)) == 0


def test_an_invitation_registers_its_address_once(session, engine, settings, passwords):
    boss = make_admin(session, settings, passwords, "boss")
    out = invite(session, settings, Actor.of(boss))
    assert out is not None and out.template == "invite" and out.token
    assert dict(out.context) == {"invited_by": "boss"}
    [invited] = events(engine, "user.invited")
    assert (invited.actor_name, details(invited)) == ("boss", {"email": "guest@example.org"})
    result = register(
        session, settings, passwords, username="guest", email="ignored@example.org",
        invitation=out.token,
    )  # fmt: skip
    assert result.user is not None and not result.must_confirm
    assert result.user.email == "guest@example.org"
    assert result.user.email_confirmed_at is not None
    [accepted] = events(engine, "user.invitation_accepted")
    assert details(accepted) == {"invited_by": boss.id}
    exc = fails(
        session,
        InvalidToken,
        recovery.register,
        settings=settings,
        passwords=passwords,
        username="guest2",
        email=None,
        password=PASSWORD,
        facts=FACTS,
        invitation=out.token,
    )
    assert exc.reason == "used"
    assert len(events(engine, "user.invitation_failed")) == 1


def test_an_invitation_expires(session, settings, passwords):
    boss = make_admin(session, settings, passwords, "boss")
    out = invite(session, settings, Actor.of(boss))
    assert out is not None
    with freeze_time(utcnow() + dt.timedelta(seconds=settings.invite_ttl + 1)):
        fails(
            session,
            ExpiredToken,
            recovery.register,
            settings=settings,
            passwords=passwords,
            username="guest",
            email=None,
            password=PASSWORD,
            facts=FACTS,
            invitation=out.token,
        )


def test_a_failed_registration_keeps_the_invitation(session, settings, passwords):
    boss = make_admin(session, settings, passwords, "boss")
    out = invite(session, settings, Actor.of(boss))
    assert out is not None
    fails(
        session,
        InvalidInput,
        recovery.register,
        settings=settings,
        passwords=passwords,
        username="guest",
        email=None,
        password="password123",
        facts=FACTS,
        invitation=out.token,
    )
    assert register(session, settings, passwords, username="guest", invitation=out.token).user


def test_invite_only_registration_needs_an_invitation(session, passwords):
    settings = make_settings(INVITE_ONLY=True)
    fails(
        session,
        InvitationRequired,
        recovery.register,
        settings=settings,
        passwords=passwords,
        username="erin",
        email="erin@example.org",
        password=PASSWORD,
        facts=FACTS,
    )
    out = invite(session, settings, SYSTEM)
    assert out is not None
    assert register(session, settings, passwords, invitation=out.token).user is not None


def test_inviting_an_existing_account_sends_nothing(session, engine, settings, passwords):
    boss = make_admin(session, settings, passwords, "boss")
    create(session, settings, passwords, "guest")
    assert invite(session, settings, Actor.of(boss)) is None
    assert len(events(engine, "user.invited")) == 1
    assert session.scalar(select(func.count()).select_from(OneTimeToken)) == 0


def test_a_new_invitation_replaces_the_older_one(session, settings, passwords):
    first = invite(session, settings, SYSTEM, "guest@example.org")
    second = invite(session, settings, SYSTEM, "Guest@example.org")
    assert first is not None and second is not None
    with pytest.raises(InvalidToken):
        recovery.invitation(session, raw=str(first.token))
    assert recovery.invitation(session, raw=str(second.token)).email == "Guest@example.org"


# -- L04: no secret reaches the trail --


def test_L04_no_token_or_password_in_the_trail(session, engine, confirm_settings, passwords):
    boss = make_admin(session, confirm_settings, passwords, "boss")
    secrets = [PASSWORD, NEW_PASSWORD]
    result = register(session, confirm_settings, passwords)
    assert result.mail is not None and result.mail.token
    secrets.append(result.mail.token)
    confirm(session, result.mail.token)
    raw = reset_link(session, confirm_settings, "erin@example.org")
    secrets.append(raw)
    do_reset(session, confirm_settings, passwords, raw)
    out = invite(session, confirm_settings, Actor.of(boss))
    assert out is not None and out.token
    secrets.append(out.token)
    with Session(engine) as other:
        trail = "\n".join(
            f"{e.details} {e.target_label} {e.actor_name}"
            for e in other.scalars(select(AuditEvent))
        )
    for secret in secrets:
        assert secret not in trail
