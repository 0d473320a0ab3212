"""Remember me over HTTP: a rotating, revocable, theft-detecting long-lived sign-in cookie.

Cases from SECURITY-CASES.md: S05 (replay after rotation or after a password change signs
nobody in; a reused series ends every session of the user and is audited), S08 (cookie
flags, ``__Host-`` prefix, the deletion cookie), A06 (restore refuses a disabled user),
L04/T01-style storage (the raw cookie is nowhere in the database), M04 (no remember cookie
before the second factor).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from freezegun import freeze_time
from sqlalchemy import func, select, update

from flask_aaa.db import writing
from flask_aaa.models import AuditEvent, LoginSession, RememberToken, User
from flask_aaa.services import accounts, sessions
from flask_aaa.services.actors import token_digest
from tests.conftest import (
    PASSWORD,
    SYSTEM,
    app_engine,
    dump_database,
    form_token,
    fresh,
    login,
    post,
)

COOKIE = "aaa_session"
REMEMBER = "aaa_remember"
JSON = {"Accept": "application/json"}
DAY = 24 * 60 * 60


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


def frozen() -> Any:
    """Freeze the clock at the real current time (cookies signed before stay valid)."""
    return freeze_time(dt.datetime.now(dt.UTC))


def remember_login(client: FlaskClient, name: str = "alice", **kwargs: Any) -> Any:
    response = login(client, name, remember="1", **kwargs)
    assert response.status_code == 303, response.get_data(as_text=True)
    return response


def cookie(client: FlaskClient, name: str = REMEMBER, **kwargs: Any) -> str | None:
    found = client.get_cookie(name, **kwargs)
    return found.value if found is not None else None


def set_cookie_attrs(response: Any, name: str) -> dict[str, str] | None:
    """The attributes (lower-cased names) of the ``Set-Cookie`` header for ``name``."""
    for header in response.headers.getlist("Set-Cookie"):
        first, *attrs = [part.strip() for part in header.split(";")]
        if first.split("=", 1)[0] == name:
            out = {"value": first.split("=", 1)[1]}
            for attr in attrs:
                key, _, val = attr.partition("=")
                out[key.lower()] = val
            return out
    return None


def with_remember(app: Any, value: str, name: str = REMEMBER) -> FlaskClient:
    """A new browser holding only a remember-me cookie (no session cookie)."""
    other = app.test_client()
    other.set_cookie(name, value)
    return other


def private(client: FlaskClient, **kwargs: Any) -> Any:
    response = client.get("/private", headers=JSON, **kwargs)
    assert response.status_code in (200, 401), response.get_data(as_text=True)
    return response


def is_signed_in(client: FlaskClient) -> bool:
    return private(client).status_code == 200


def events(db: Any, action: str) -> list[AuditEvent]:
    stmt = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
    return list(fresh(db).scalars(stmt))


def live_sessions(db: Any) -> int:
    stmt = select(func.count()).select_from(LoginSession).where(LoginSession.revoked_at.is_(None))
    return int(fresh(db).scalar(stmt) or 0)


def all_sessions(db: Any) -> int:
    return int(fresh(db).scalar(select(func.count()).select_from(LoginSession)) or 0)


def series_rows(db: Any) -> list[RememberToken]:
    return list(fresh(db).scalars(select(RememberToken).order_by(RememberToken.id)))


# -- issuing the cookie --


def test_S05_login_with_remember_sets_the_cookie_with_its_flags(app, alice, db):
    client = app.test_client()
    response = remember_login(client)
    attrs = set_cookie_attrs(response, REMEMBER)
    assert attrs is not None
    assert "httponly" in attrs
    assert attrs["samesite"].lower() == "lax"
    assert attrs["path"] == "/"
    assert int(attrs["max-age"]) == 30 * DAY
    assert "secure" not in attrs  # AAA_SECURE_COOKIES=False in the tests' plain HTTP
    assert "domain" not in attrs
    [row] = series_rows(db)
    assert row.user_id == alice.id and row.revoked_at is None
    assert row.expires_at - dt.datetime.now(dt.UTC) > dt.timedelta(days=29, hours=23)


@with_config(AAA_REMEMBER_DAYS=7)
def test_S05_cookie_max_age_follows_remember_days(app, alice, db):
    response = remember_login(app.test_client())
    assert int(set_cookie_attrs(response, REMEMBER)["max-age"]) == 7 * DAY
    [row] = series_rows(db)
    lifetime = row.expires_at - row.created_at
    assert abs(lifetime - dt.timedelta(days=7)) < dt.timedelta(minutes=1)


@with_config(AAA_SECURE_COOKIES=True)
def test_S08_secure_remember_cookie_uses_the_host_prefix(app, alice):
    client = app.test_client()
    https = "https://localhost"
    page = client.get("/auth/login", base_url=https).get_data(as_text=True)
    data = {"login": "alice", "password": PASSWORD, "remember": "1"}
    response = client.post(
        "/auth/login",
        data={**data, "csrf_token": form_token(page)},
        base_url=https,
        headers={"Referer": https + "/auth/login"},  # Flask-WTF's check over HTTPS
    )
    assert response.status_code == 303
    assert set_cookie_attrs(response, REMEMBER) is None
    attrs = set_cookie_attrs(response, "__Host-" + REMEMBER)
    assert attrs is not None
    assert "secure" in attrs and "httponly" in attrs
    assert attrs["path"] == "/"
    assert "domain" not in attrs
    assert attrs["samesite"].lower() == "lax"
    # And it restores over HTTPS like the plain one.
    client.delete_cookie("__Host-aaa_session")
    assert client.get("/private", headers=JSON, base_url=https).status_code == 200


def test_S05_json_login_with_remember_true_sets_the_cookie(app, alice):
    client = app.test_client()
    token = client.get("/auth/csrf").get_json()["csrf_token"]
    response = client.post(
        "/auth/login",
        json={"login": "alice", "password": PASSWORD, "remember": True},
        headers={"X-CSRFToken": token},
    )
    assert response.status_code == 200
    assert set_cookie_attrs(response, REMEMBER) is not None


@pytest.mark.parametrize("extra", [{}, {"remember": "0"}, {"remember": ""}])
def test_S05_login_without_remember_sets_no_cookie(app, alice, db, extra):
    response = login(app.test_client(), "alice", **extra)
    assert response.status_code == 303
    assert set_cookie_attrs(response, REMEMBER) is None
    assert series_rows(db) == []


def test_S05_failed_login_with_remember_sets_no_cookie(app, alice, db):
    response = login(app.test_client(), "alice", "wrong-" + PASSWORD, remember="1")
    assert response.status_code == 401
    assert set_cookie_attrs(response, REMEMBER) is None
    assert series_rows(db) == []


@with_config(AAA_REMEMBER_ME=False)
def test_S05_remember_me_off_hides_the_checkbox_and_issues_nothing(app, alice, db):
    client = app.test_client()
    assert 'name="remember"' not in client.get("/auth/login").get_data(as_text=True)
    response = login(client, "alice", remember="1")
    assert response.status_code == 303
    assert set_cookie_attrs(response, REMEMBER) is None
    assert series_rows(db) == []


@with_config(AAA_REMEMBER_ME=False)
def test_S05_remember_me_off_ignores_an_existing_series(app, alice, db):
    """A series left from when the feature was on does not sign anyone in."""
    settings = app.extensions["aaa"].settings
    with writing():
        value = sessions.issue_remember(fresh(db), fresh(db).get(User, alice.id), settings=settings)
        db.commit()
    assert not is_signed_in(with_remember(app, value))
    assert all_sessions(db) == 0


def test_login_page_offers_the_checkbox_by_default(app):
    assert 'name="remember"' in app.test_client().get("/auth/login").get_data(as_text=True)


# -- restoring a sign-in --


def test_S05_lost_session_is_restored_with_a_new_session_and_rotated_cookie(app, alice, db):
    client = app.test_client()
    remember_login(client)
    old_session, old_remember = cookie(client, COOKIE), cookie(client)
    client.delete_cookie(COOKIE)
    response = private(client)
    assert response.status_code == 200
    assert response.get_json() == {"user": "alice"}
    new_session, new_remember = cookie(client, COOKIE), cookie(client)
    assert new_session is not None and new_session != old_session
    assert new_remember is not None and new_remember != old_remember
    assert new_remember.split(":")[0] == old_remember.split(":")[0], "same series"
    attrs = set_cookie_attrs(response, REMEMBER)
    assert "httponly" in attrs and int(attrs["max-age"]) == 30 * DAY
    assert all_sessions(db) == 2
    succeeded = events(db, "auth.login.succeeded")
    [restored] = [e for e in succeeded if json.loads(e.details) == {"method": "remember_me"}]
    assert restored.actor_id == alice.id
    # The restored session keeps working without the remember cookie.
    client.delete_cookie(REMEMBER)
    assert is_signed_in(client)


def test_S05_each_restore_rotates_again(app, alice):
    client = app.test_client()
    remember_login(client)
    seen = {cookie(client)}
    for _ in range(3):
        client.delete_cookie(COOKIE)
        assert is_signed_in(client)
        seen.add(cookie(client))
    assert len(seen) == 4


def test_S05_signed_in_browser_does_not_rotate_its_cookie(app, alice, db):
    client = app.test_client()
    remember_login(client)
    before = cookie(client)
    response = private(client)
    assert response.status_code == 200
    assert set_cookie_attrs(response, REMEMBER) is None
    assert cookie(client) == before
    assert all_sessions(db) == 1


@pytest.mark.parametrize(
    "value", ["garbage", "a:b", ":", "series:", ":token", "x" * 300 + ":" + "y" * 300, "é:ü"]
)
def test_S05_garbage_remember_cookie_is_anonymous_and_deleted(app, alice, db, value):
    client = with_remember(app, value)
    response = private(client)
    assert response.status_code == 401
    attrs = set_cookie_attrs(response, REMEMBER)
    assert attrs is not None and attrs.get("max-age") == "0"
    assert cookie(client) is None
    assert all_sessions(db) == 0


# -- S05: theft --


def test_S05_replaying_a_rotated_cookie_signs_nobody_in_and_ends_everything(app, alice, db):
    victim = app.test_client()
    remember_login(victim)
    stolen = cookie(victim)
    elsewhere = app.test_client()  # another of alice's devices, by password
    assert login(elsewhere, "alice").status_code == 303
    victim.delete_cookie(COOKIE)
    assert is_signed_in(victim)  # restored: the cookie rotates
    assert cookie(victim) != stolen

    thief = with_remember(app, stolen)
    response = private(thief)
    assert response.status_code == 401
    assert cookie(thief) is None, "the replayed cookie is deleted"

    assert not is_signed_in(victim), "every session of the user ends at once"
    assert not is_signed_in(elsewhere)
    assert live_sessions(db) == 0
    assert all(row.revoked_at is not None for row in series_rows(db))
    victim.delete_cookie(COOKIE)
    assert not is_signed_in(victim), "the legitimate rotated cookie is dead too"

    [event] = events(db, "auth.remember.reused")
    assert event.outcome == "denied"
    assert (event.target_type, event.target_id) == ("user", str(alice.id))
    assert json.loads(event.details)["sessions_ended"] == 3


def test_S05_theft_is_detected_when_the_victim_comes_back_after_the_thief(app, alice, db):
    victim = app.test_client()
    remember_login(victim)
    stolen = cookie(victim)
    thief = with_remember(app, stolen)
    assert is_signed_in(thief), "the thief was first: the cookie was still current"
    victim.delete_cookie(COOKIE)  # the victim's browser restarts
    assert not is_signed_in(victim)
    assert not is_signed_in(thief), "the thief's restored session ends"
    assert live_sessions(db) == 0
    assert len(events(db, "auth.remember.reused")) == 1


def test_S05_after_a_password_change_the_cookie_no_longer_signs_in(app, alice, db):
    client = app.test_client()
    remember_login(client)
    saved = cookie(client)
    response = post(
        client,
        "/auth/password",
        {"current_password": PASSWORD, "new_password": "saffron-meadow-lantern-88"},
    )
    assert response.status_code == 303
    assert not is_signed_in(with_remember(app, saved))
    assert all(row.revoked_at is not None for row in series_rows(db))
    assert events(db, "auth.remember.reused") == [], "a revoked series is not a theft"


def test_S05_logout_deletes_the_cookie_and_ends_the_series(app, alice, db):
    client = app.test_client()
    remember_login(client)
    saved = cookie(client)
    response = post(client, "/auth/logout")
    assert response.status_code == 303
    attrs = set_cookie_attrs(response, REMEMBER)
    assert attrs is not None
    assert attrs["value"] == ""
    assert attrs["max-age"] == "0"
    assert attrs["path"] == "/" and "httponly" in attrs
    assert cookie(client) is None
    [row] = series_rows(db)
    assert row.revoked_at is not None
    assert not is_signed_in(with_remember(app, saved))


def test_S05_logout_of_another_browser_leaves_this_series(app, alice, db):
    """Logging out ends the series the logging-out browser holds, not the others."""
    first, second = app.test_client(), app.test_client()
    remember_login(first)
    remember_login(second)
    assert post(second, "/auth/logout").status_code == 303
    first.delete_cookie(COOKIE)
    assert is_signed_in(first)


def test_S05_raw_cookie_value_is_nowhere_in_the_database(app, alice, db):
    client = app.test_client()
    remember_login(client)
    values = [cookie(client)]
    client.delete_cookie(COOKIE)
    assert is_signed_in(client)
    values.append(cookie(client))
    dump = dump_database(app_engine(app))
    for value in values:
        token = value.partition(":")[2]
        assert len(token) >= 43  # 256 bits, URL-safe base64
        assert token not in dump
        assert value not in dump
    stored = {row.token_hash for row in series_rows(db)}
    assert stored == {token_digest(values[-1].partition(":")[2])}


def test_A06_a_disabled_user_is_not_restored(app, alice, db):
    """Even if the series somehow survived (a flag flipped in the database), the account's
    state is checked before a session is opened."""
    client = app.test_client()
    remember_login(client)
    client.delete_cookie(COOKIE)
    with writing():
        fresh(db).execute(update(User).where(User.id == alice.id).values(active=False))
        db.commit()
    before = all_sessions(db)
    assert not is_signed_in(client)
    assert all_sessions(db) == before


def test_A06_disabling_a_user_ends_their_remember_series(app, alice, db):
    client = app.test_client()
    remember_login(client)
    saved = cookie(client)
    with writing():
        user = fresh(db).get(User, alice.id)
        accounts.set_active(db, actor=SYSTEM, user=user, active=False)
        db.commit()
    assert all(row.revoked_at is not None for row in series_rows(db))
    assert not is_signed_in(with_remember(app, saved))


def test_S05_remember_token_expires_after_remember_days(app, alice, db):
    with frozen() as clock:
        client = app.test_client()
        remember_login(client)
        clock.tick(dt.timedelta(days=30) - dt.timedelta(hours=1))
        late = with_remember(app, cookie(client))
        assert is_signed_in(late), "still within AAA_REMEMBER_DAYS"
        rotated = cookie(late)
        clock.tick(dt.timedelta(hours=1))
        expired = with_remember(app, rotated)
        response = private(expired)
        assert response.status_code == 401
        assert cookie(expired) is None
    assert events(db, "auth.remember.reused") == []


@with_config(AAA_REMEMBER_DAYS=2)
def test_S05_rotation_does_not_extend_the_lifetime(app, alice):
    """Using the cookie every day does not keep it alive past AAA_REMEMBER_DAYS."""
    with frozen() as clock:
        client = app.test_client()
        remember_login(client)
        clock.tick(dt.timedelta(days=1))
        client.delete_cookie(COOKIE)
        assert is_signed_in(client)
        clock.tick(dt.timedelta(days=1, seconds=1))
        client.delete_cookie(COOKIE)
        assert not is_signed_in(client)


# -- M04: nothing long-lived before the second factor --


def test_M04_no_remember_cookie_before_the_second_factor(app, alice, db):
    if "aaa_mfa" not in app.blueprints:
        pytest.skip("two-factor sign-in (aaa_mfa) is not available yet")
    with writing():
        fresh(db).execute(
            update(User)
            .where(User.id == alice.id)
            .values(totp_secret="JBSWY3DPEHPK3PXP", mfa_enabled_at=dt.datetime.now(dt.UTC))
        )
        db.commit()
    client = app.test_client()
    response = login(client, "alice", remember="1")
    assert response.status_code == 303
    assert set_cookie_attrs(response, REMEMBER) is None
    assert series_rows(db) == []
    assert not is_signed_in(client)
