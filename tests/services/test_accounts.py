"""Accounts: identifier normalization, registration, authentication, password change and
enable/disable, with the audit events each of them leaves."""

from __future__ import annotations

import datetime as dt
import json

import bcrypt
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flask_aaa.config import Settings
from flask_aaa.db import writing
from flask_aaa.errors import AuthenticationFailed, Conflict, InvalidInput, PermissionDenied
from flask_aaa.models import AuditEvent, LoginSession, Role, User
from flask_aaa.services import accounts, rbac, sessions
from flask_aaa.services.actors import Actor, RequestFacts
from tests.conftest import PASSWORD, SYSTEM

FACTS = RequestFacts(ip="198.51.100.7", user_agent="pytest", request_id="req-1")
NEW_PASSWORD = "saffron-meadow-lantern-88"


def make_settings(**config: object) -> Settings:
    return Settings.from_config(
        {"AAA_PASSWORD_HASH_PRESET": "fast", **{f"AAA_{k}": v for k, v in config.items()}},
        debug=False,
        testing=True,
    )


def create(session, settings, passwords, username="alice", **kwargs) -> User:
    """Create and commit a user through the service, as the CLI would."""
    with writing():
        user = accounts.create_user(
            session,
            actor=SYSTEM,
            settings=settings,
            passwords=passwords,
            username=username,
            email=kwargs.pop("email", f"{username}@example.org"),
            password=kwargs.pop("password", PASSWORD),
            **kwargs,
        )
        session.commit()
    return user


def make_admin(session, settings, passwords, username: str) -> User:
    """A user holding the role ``admin`` (created on first use with ``*``)."""
    user = create(session, settings, passwords, username)
    with writing():
        role = session.scalar(select(Role).where(Role.name == "admin"))
        if role is None:
            role = rbac.create_role(session, actor=SYSTEM, name="admin")
            rbac.add_permission(session, actor=SYSTEM, role=role, permission="*")
        rbac.grant_role(session, actor=SYSTEM, user=user, role=role)
        session.commit()
    return user


def register(session, settings, passwords, **fields) -> User:
    with writing():
        user = accounts.register(
            session,
            settings=settings,
            passwords=passwords,
            username=fields.pop("username", "alice"),
            email=fields.pop("email", "alice@example.org"),
            password=fields.pop("password", PASSWORD),
            facts=FACTS,
        )
        session.commit()
    return user


def register_errors(session, settings, passwords, **fields) -> dict[str, str]:
    with writing(), pytest.raises(InvalidInput) as info:
        register(session, settings, passwords, **fields)
    session.rollback()
    return info.value.errors


def authenticate(session, settings, passwords, login, password=PASSWORD) -> User:
    with writing():
        return accounts.authenticate(
            session,
            settings=settings,
            passwords=passwords,
            login=login,
            password=password,
            facts=FACTS,
        )


def events(engine, action: str) -> list[AuditEvent]:
    """Committed events of ``action``, read through a session of their own."""
    with Session(engine) as other:
        return list(
            other.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            )
        )


def user_count(engine) -> int:
    with Session(engine) as other:
        return other.scalar(select(func.count()).select_from(User)) or 0


# -- normalization --


@pytest.mark.parametrize("other", ["ALICE", "alice", " Alice ", "\uff21\uff4c\uff49\uff43\uff45"])
def test_usernames_collide_after_nfkc_and_casefold(session, settings, passwords, other):
    """'Alice', 'ALICE' and its full-width form (U+FF21 ...) are one account."""
    register(session, settings, passwords, username="Alice")
    errors = register_errors(
        session, settings, passwords, username=other, email="someone.else@example.org"
    )
    assert errors == {"username": "This username is taken."}
    assert user_count(session.get_bind()) == 1


def test_username_keeps_display_form_and_casefolded_key(session, settings, passwords):
    user = register(session, settings, passwords, username="\uff21lice")
    assert user.username == "Alice"
    assert user.username_key == "alice"


@pytest.mark.parametrize("other", ["bob@example.org", "BOB@EXAMPLE.ORG", "Bob@Example.Org "])
def test_emails_collide_ignoring_case(session, settings, passwords, other):
    register(session, settings, passwords, username="bob", email="Bob@Example.org")
    errors = register_errors(session, settings, passwords, username="robert", email=other)
    assert set(errors) == {"email"}


@pytest.mark.parametrize("login", ["alice", "ALICE", "\uff41\uff4c\uff49\uff43\uff45", " Alice\t"])
def test_find_by_login_normalizes_username(session, settings, passwords, login):
    user = register(session, settings, passwords, username="Alice")
    assert accounts.find_by_login(session, settings, login) == user


@pytest.mark.parametrize("login", ["alice@example.org", "ALICE@EXAMPLE.ORG", "Alice@Example.Org"])
def test_find_by_login_normalizes_email(session, settings, passwords, login):
    user = register(session, settings, passwords, email="Alice@example.org")
    assert accounts.find_by_login(session, settings, login) == user


def test_find_by_login_honours_disabled_identifier_kinds(session, passwords):
    user = register(session, make_settings(), passwords)
    assert accounts.find_by_login(session, make_settings(ENABLE_EMAIL=False), "alice") == user
    assert accounts.find_by_login(session, make_settings(ENABLE_EMAIL=False), user.email) is None
    assert accounts.find_by_login(session, make_settings(ENABLE_USERNAME=False), "alice") is None


@pytest.mark.parametrize("login", ["", "   ", "x" * 5000, "a" * 300 + "@example.org"])
def test_find_by_login_junk_matches_nothing(session, settings, passwords, login):
    register(session, settings, passwords)
    assert accounts.find_by_login(session, settings, login) is None


def test_find_user_by_id_username_or_email(session, passwords):
    settings = make_settings(ENABLE_EMAIL=False)
    user = create(session, make_settings(), passwords, "carol")
    assert accounts.find_user(session, settings, f"#{user.id}") == user
    assert accounts.find_user(session, settings, "CAROL") == user
    assert accounts.find_user(session, settings, "carol@example.org") == user
    assert accounts.find_user(session, settings, "#999") is None


# -- A14 / I03: control characters in identifiers --


@pytest.mark.parametrize(
    "username",
    [
        "ali\r\nce",
        "ali\nce",
        "ali\x00ce",
        "ali\x1bce",
        "ali\u200bce",  # zero-width space (Cf)
        "ali\u202ece",  # right-to-left override (Cf)
        "ali\u2028ce",  # line separator (Zl)
    ],
)
def test_A14_I03_control_characters_in_username_refused(session, settings, passwords, username):
    errors = register_errors(session, settings, passwords, username=username)
    assert set(errors) == {"username"}
    assert user_count(session.get_bind()) == 0


def test_I03_surrounding_crlf_is_trimmed_not_stored(session, settings, passwords):
    user = register(session, settings, passwords, username="\r\nalice\r\n")
    assert user.username == "alice"


@pytest.mark.parametrize(
    "email",
    [
        "bob\r\n@example.org",
        "bob@example.org\r\nBcc: victim@example.org",
        "Bob <bob@example.org>\r\nBcc: victim@example.org",
        "bob\x00@example.org",
    ],
)
def test_I03_header_injection_in_email_refused(session, settings, passwords, email):
    errors = register_errors(session, settings, passwords, email=email)
    assert set(errors) == {"email"}


def test_A14_crlf_login_fails_like_any_unknown_login(session, engine, settings, passwords):
    register(session, settings, passwords)
    with pytest.raises(AuthenticationFailed):
        authenticate(session, settings, passwords, "alice\r\nSet-Cookie: x=1")
    assert json.loads(events(engine, "auth.login.failed")[0].details) == {"reason": "unknown_login"}


# -- registration --


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"username": None, "email": None}, {"username", "email"}),
        ({"username": ""}, {"username"}),
        ({"username": "al"}, {"username"}),
        ({"username": "a" * 33}, {"username"}),
        ({"username": "al ice"}, {"username"}),
        ({"username": "al@ice"}, {"username"}),
        ({"username": "al/ice"}, {"username"}),
        ({"email": None}, {"email"}),
        ({"email": "not-an-email"}, {"email"}),
        ({"email": "a" * 250 + "@example.org"}, {"email"}),
        ({"password": "short"}, {"password"}),
        ({"password": "alice-and-the-harbor-42"}, {"password"}),
        ({"password": "pw\x00" + "A" * 20}, {"password"}),
        ({"password": "x" * 257}, {"password"}),
    ],
)
def test_registration_errors_name_their_field(session, settings, passwords, fields, expected):
    errors = register_errors(session, settings, passwords, **fields)
    assert set(errors) == expected
    assert all(isinstance(message, str) and message for message in errors.values())
    assert user_count(session.get_bind()) == 0


def test_registration_stores_an_argon2id_hash_never_the_password(session, settings, passwords):
    user = register(session, settings, passwords)
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash
    assert user.active is True
    assert user.password_changed_at is not None
    assert user.password_changed_at.tzinfo is not None


def test_registration_is_audited_as_the_new_user(session, engine, settings, passwords):
    user = register(session, settings, passwords)
    [event] = events(engine, "user.registered")
    assert (event.actor_type, event.actor_id) == ("user", user.id)
    assert (event.target_type, event.target_id) == ("user", str(user.id))
    assert event.ip == FACTS.ip
    assert PASSWORD not in event.details


def test_registration_with_default_role_creates_it_and_bumps_the_version(
    session, engine, passwords
):
    settings = make_settings(DEFAULT_ROLE="member")
    before = rbac.current_version(session)
    user = register(session, settings, passwords)
    assert [r.name for r in user.roles] == ["member"]
    assert rbac.current_version(session) == before + 1
    assert json.loads(events(engine, "user.registered")[0].details) == {"roles": ["member"]}
    second = register(session, settings, passwords, username="bob", email="bob@example.org")
    assert [r.name for r in second.roles] == ["member"]
    assert session.scalar(select(func.count()).select_from(Role)) == 1


def test_registration_without_usernames(session, passwords):
    settings = make_settings(ENABLE_USERNAME=False)
    user = register(session, settings, passwords, username=None, email="Dana@example.org")
    assert user.username is None
    assert user.label == "Dana@example.org"
    assert authenticate(session, settings, passwords, "dana@EXAMPLE.org") == user


def test_create_user_needs_users_write(session, engine, settings, passwords):
    plain = create(session, settings, passwords, "plain")
    with writing(), pytest.raises(PermissionDenied):
        accounts.create_user(
            session,
            actor=Actor.of(plain),
            settings=settings,
            passwords=passwords,
            username="sneaky",
            email="sneaky@example.org",
            password=PASSWORD,
        )
    assert accounts.find_by_login(session, settings, "sneaky") is None
    [denied] = events(engine, "authz.denied")
    assert json.loads(denied.details)["requirement"] == rbac.MANAGE_USERS


# -- authentication --


def test_authenticate_success_updates_statistics_and_audits(session, engine, settings, passwords):
    user = create(session, settings, passwords)
    assert user.login_count == 0
    assert user.last_login_at is None
    signed_in = authenticate(session, settings, passwords, "alice")
    session.commit()
    assert signed_in.id == user.id
    session.refresh(signed_in)
    assert signed_in.login_count == 1
    assert signed_in.last_login_ip == FACTS.ip
    assert signed_in.last_login_at is not None
    age = dt.datetime.now(dt.UTC) - signed_in.last_login_at
    assert dt.timedelta(0) <= age < dt.timedelta(minutes=1)
    [event] = events(engine, "auth.login.succeeded")
    assert (event.actor_id, event.outcome, event.ip) == (user.id, "success", FACTS.ip)
    assert json.loads(event.details) == {}
    authenticate(session, settings, passwords, "alice@example.org")
    session.commit()
    assert session.get(User, user.id).login_count == 2


def test_authenticate_success_is_discarded_if_the_caller_rolls_back(
    session, engine, settings, passwords
):
    create(session, settings, passwords)
    authenticate(session, settings, passwords, "alice")
    session.rollback()
    assert events(engine, "auth.login.succeeded") == []


def test_authenticate_upgrades_a_legacy_bcrypt_hash(session, engine, settings, passwords):
    user = create(session, settings, passwords)
    with writing():
        user.password_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
        session.commit()
    authenticate(session, settings, passwords, "alice")
    session.commit()
    session.refresh(user)
    assert user.password_hash.startswith("$argon2id$")
    assert json.loads(events(engine, "auth.login.succeeded")[0].details) == {"hash_upgraded": True}
    authenticate(session, settings, passwords, "alice")  # and the new hash verifies


def failing_cases(session, settings, passwords) -> dict[str, tuple[str, str]]:
    """(login, password) for each failure cause, on accounts made here."""
    create(session, settings, passwords, "alice")
    disabled = create(session, settings, passwords, "dora")
    with writing():
        disabled.active = False
        session.commit()
    return {
        "unknown_login": ("nobody", PASSWORD),
        "bad_password": ("alice", PASSWORD + "x"),
        "disabled": ("dora", PASSWORD),
    }


def test_A01_failures_are_identical_to_the_caller(session, settings, passwords):
    """Unknown login, wrong password and disabled account: same class, message, code and
    status; only ``reason`` (for the audit trail) differs."""
    seen = set()
    for login, password in failing_cases(session, settings, passwords).values():
        with pytest.raises(AuthenticationFailed) as info:
            authenticate(session, settings, passwords, login, password)
        exc = info.value
        seen.add((type(exc), str(exc), exc.message, exc.code, exc.status))
    assert seen == {
        (AuthenticationFailed, "Invalid login or password.", "Invalid login or password.",
         "authentication_failed", 401)
    }  # fmt: skip


@pytest.mark.parametrize("reason", ["unknown_login", "bad_password", "disabled"])
def test_failed_login_writes_one_committed_event_with_its_reason(
    session, engine, settings, passwords, reason
):
    """The caller never commits: the failure event is committed by the service itself. The
    party trying is unknown (anonymous actor); the account, if there is one, is the target."""
    login, password = failing_cases(session, settings, passwords)[reason]
    with pytest.raises(AuthenticationFailed) as info:
        authenticate(session, settings, passwords, login, password)
    assert info.value.reason == reason
    [event] = events(engine, "auth.login.failed")
    assert event.outcome == "failure"
    assert json.loads(event.details) == {"reason": reason}
    assert event.ip == FACTS.ip
    assert password not in event.details
    assert (event.actor_type, event.actor_id) == ("anonymous", None)
    if reason == "unknown_login":
        assert (event.target_type, event.target_id) == (None, None)
    else:
        user = accounts.find_by_login(session, settings, login)
        assert (event.target_type, event.target_id) == ("user", str(user.id))
    assert events(engine, "auth.login.succeeded") == []


def test_failed_login_does_not_touch_statistics(session, settings, passwords):
    user = create(session, settings, passwords)
    with pytest.raises(AuthenticationFailed):
        authenticate(session, settings, passwords, "alice", "wrong-password-entirely")
    session.refresh(user)
    assert (user.login_count, user.last_login_at) == (0, None)


def test_disabled_account_with_wrong_password_is_a_bad_password(
    session, engine, settings, passwords
):
    """The disabled state is not revealed to someone who does not know the password."""
    failing_cases(session, settings, passwords)
    with pytest.raises(AuthenticationFailed) as info:
        authenticate(session, settings, passwords, "dora", "not-doras-password-at-all")
    assert info.value.reason == "bad_password"


def test_account_without_password_cannot_sign_in(session, settings, passwords):
    user = create(session, settings, passwords)
    with writing():
        user.password_hash = None
        session.commit()
    with pytest.raises(AuthenticationFailed):
        authenticate(session, settings, passwords, "alice", "")


def test_S01_sign_in_opens_a_new_session_and_ends_the_previous_one(
    session, engine, settings, passwords
):
    """A session planted before login (fixation) is revoked; the login event names the new
    session by its hash, never by its token."""
    user = create(session, settings, passwords)
    with writing():
        planted_token, planted = sessions.create(session, user, settings=settings, facts=FACTS)
        session.commit()
    with writing():
        signed_in, token, record = accounts.sign_in(
            session,
            settings=settings,
            passwords=passwords,
            login="alice",
            password=PASSWORD,
            facts=FACTS,
            replaces=planted,
        )
        session.commit()
    assert signed_in.id == user.id
    assert token != planted_token
    session.expire_all()
    assert sessions.resolve(session, planted_token, settings=settings) is None
    assert session.get(LoginSession, planted.id).revoked_reason == "replaced"
    assert sessions.resolve(session, token, settings=settings).session.id == record.id
    [event] = events(engine, "auth.login.succeeded")
    assert event.session_hash == record.token_hash
    assert token not in event.details


def test_sign_in_with_a_wrong_password_opens_no_session(session, engine, settings, passwords):
    user = create(session, settings, passwords)
    with writing(), pytest.raises(AuthenticationFailed):
        accounts.sign_in(
            session,
            settings=settings,
            passwords=passwords,
            login="alice",
            password="not-the-password-at-all",
            facts=FACTS,
        )
    session.rollback()
    assert sessions.live_sessions(session, user) == []
    assert len(events(engine, "auth.login.failed")) == 1


# -- password change (A17) --


def change(session, settings, passwords, user, current, new=NEW_PASSWORD, keep=None) -> int:
    with writing():
        return accounts.change_password(
            session,
            settings=settings,
            passwords=passwords,
            user=user,
            current=current,
            new=new,
            session=keep,
            facts=FACTS,
        )


@pytest.mark.parametrize("current", ["", "not-the-current-password", PASSWORD.upper()])
def test_A17_wrong_current_password_refused_and_audited(
    session, engine, settings, passwords, current
):
    user = create(session, settings, passwords)
    old_hash = user.password_hash
    with pytest.raises(InvalidInput) as info:
        change(session, settings, passwords, user, current)
    assert set(info.value.errors) == {"current_password"}
    [event] = events(engine, "auth.password.change_failed")
    assert (event.actor_id, event.outcome) == (user.id, "failure")
    assert json.loads(event.details) == {"reason": "bad_current_password"}
    assert NEW_PASSWORD not in event.details
    session.refresh(user)
    assert user.password_hash == old_hash
    assert events(engine, "auth.password.changed") == []


def test_A17_new_password_must_pass_the_policy(session, engine, settings, passwords):
    user = create(session, settings, passwords)
    for bad in ("too-short", "alice-is-my-name-2024"):
        with pytest.raises(InvalidInput) as info:
            change(session, settings, passwords, user, PASSWORD, bad)
        assert set(info.value.errors) == {"new_password"}
        session.rollback()
    assert authenticate(session, settings, passwords, "alice") == user


@pytest.mark.parametrize(
    ("current", "new", "field"),
    [("x" * 100_000, NEW_PASSWORD, "current_password"), (PASSWORD, "x" * 100_000, "new_password")],
)
def test_A15_over_long_passwords_in_a_change_refused_by_field(
    session, engine, settings, passwords, current, new, field
):
    user = create(session, settings, passwords)
    with pytest.raises(InvalidInput) as info:
        change(session, settings, passwords, user, current, new)
    assert set(info.value.errors) == {field}
    assert events(engine, "auth.password.changed") == []


def test_password_change_revokes_other_sessions(session, engine, settings, passwords):
    user = create(session, settings, passwords)
    with writing():
        tokens = [sessions.create(session, user, settings=settings, facts=FACTS) for _ in range(3)]
        session.commit()
    (kept_token, kept), *others = tokens
    ended = change(session, settings, passwords, user, PASSWORD, keep=kept)
    session.commit()
    assert ended == 2
    session.expire_all()
    assert sessions.resolve(session, kept_token, settings=settings) is not None
    for token, record in others:
        assert sessions.resolve(session, token, settings=settings) is None
        assert session.get(LoginSession, record.id).revoked_reason == "password_changed"
    [event] = events(engine, "auth.password.changed")
    assert json.loads(event.details) == {"other_sessions_ended": 2}
    with pytest.raises(AuthenticationFailed):
        authenticate(session, settings, passwords, "alice", PASSWORD)
    assert authenticate(session, settings, passwords, "alice", NEW_PASSWORD) == user


def test_password_change_without_kept_session_ends_all(session, settings, passwords):
    user = create(session, settings, passwords)
    with writing():
        token, _ = sessions.create(session, user, settings=settings, facts=FACTS)
        session.commit()
    assert change(session, settings, passwords, user, PASSWORD) == 1
    session.commit()
    assert sessions.resolve(session, token, settings=settings) is None


# -- enable / disable --


def set_active(session, actor, user, active) -> bool:
    with writing():
        return accounts.set_active(session, actor=actor, user=user, active=active, facts=FACTS)


def test_disabling_the_last_full_admin_is_a_conflict(session, engine, settings, passwords):
    root = make_admin(session, settings, passwords, "root")
    with pytest.raises(Conflict):
        set_active(session, SYSTEM, root, False)
    session.rollback()
    session.refresh(root)
    assert root.active is True
    assert events(engine, "user.disabled") == []


def test_disabling_an_admin_when_the_other_admin_is_disabled_is_a_conflict(
    session, settings, passwords
):
    root = make_admin(session, settings, passwords, "root")
    other = make_admin(session, settings, passwords, "other")
    assert set_active(session, SYSTEM, other, False) is True
    session.commit()
    with pytest.raises(Conflict):
        set_active(session, SYSTEM, root, False)


def test_disabling_one_of_two_admins_works_and_ends_its_sessions(
    session, engine, settings, passwords
):
    root = make_admin(session, settings, passwords, "root")
    other = make_admin(session, settings, passwords, "other")
    with writing():
        token, _ = sessions.create(session, other, settings=settings, facts=FACTS)
        session.commit()
    assert set_active(session, Actor.of(root), other, False) is True
    session.commit()
    session.expire_all()
    assert session.get(User, other.id).active is False
    assert sessions.resolve(session, token, settings=settings) is None
    [event] = events(engine, "user.disabled")
    assert (event.actor_id, event.target_id) == (root.id, str(other.id))
    assert json.loads(event.details) == {"sessions_ended": 1}
    assert set_active(session, SYSTEM, other, True) is True
    session.commit()
    assert len(events(engine, "user.enabled")) == 1


def test_disabling_a_plain_user_is_not_blocked_when_no_admin_exists(
    session, engine, settings, passwords
):
    """The last-admin rule protects full administrators; a plain user of an app that has no
    administrator yet (users created from the CLI) must still be disableable."""
    plain = create(session, settings, passwords, "plain")
    assert set_active(session, SYSTEM, plain, False) is True
    session.commit()
    assert len(events(engine, "user.disabled")) == 1


def test_set_active_without_change_returns_false(session, engine, settings, passwords):
    make_admin(session, settings, passwords, "root")
    plain = create(session, settings, passwords, "plain")
    assert set_active(session, SYSTEM, plain, True) is False
    session.commit()
    assert events(engine, "user.enabled") == []


def test_set_active_needs_users_write(session, engine, settings, passwords):
    make_admin(session, settings, passwords, "root")
    plain = create(session, settings, passwords, "plain")
    victim = create(session, settings, passwords, "victim")
    with pytest.raises(PermissionDenied):
        set_active(session, Actor.of(plain), victim, False)
    session.refresh(victim)
    assert victim.active is True
    assert len(events(engine, "authz.denied")) == 1
