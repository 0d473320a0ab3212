"""Flows that cross from the compatibility layer into Flask-AAA's own: invitations, the
second sign-in step, remember-me, and names changed on either side."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pyotp
import pytest
from sqlalchemy import text

from flask_aaa.db import writing
from flask_aaa.models import User as AAAUser
from flask_aaa.services import mfa, otp, recovery
from flask_aaa.services.actors import RequestFacts
from flask_aaa.web.mfa import code_hasher

from .apps import basic_app, email_app
from .helpers import events, sign_in, sign_out, token
from .test_attacks import grant_native_role

REMEMBER = "aaa_remember"


def _aaa_form_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def _outbox(app: Any) -> list[Any]:
    return list(getattr(app.extensions["mailman"], "outbox", []))


# -- invitations --


@pytest.fixture
def invite_app(database_uri: str, built: Any) -> Any:
    app, db, um = email_app(database_uri, USER_ENABLE_INVITE_USER=True)
    built(app)
    with app.app_context():
        for address in ("boss@example.org", "plain@example.org"):
            db.session.add(
                app.User(
                    email=address,
                    password=um.hash_password("Password1"),
                    email_confirmed_at=dt.datetime(2024, 1, 1),
                )
            )
        db.session.commit()
    return app


def _email_id(app: Any, address: str) -> int:
    with app.app_context():
        return int(app.User.query.filter_by(email=address).one().id)


def test_invitation_needs_the_permission_and_gives_the_app_its_user(invite_app: Any) -> None:
    app = invite_app
    plain = app.test_client()
    sign_in(plain, "plain@example.org", "Password1", field="email")
    refused = plain.get("/user/invite")
    assert refused.status_code == 302 and refused.headers["Location"] == "/"
    assert events(app, "authz.denied")

    boss = app.test_client()
    sign_in(boss, "boss@example.org", "Password1", field="email")
    grant_native_role(app, _email_id(app, "boss@example.org"), "inviters", ["aaa:users:invite"])
    moved = boss.get("/user/invite")
    assert moved.status_code == 303
    page = boss.get(moved.headers["Location"])
    sent = boss.post(
        moved.headers["Location"],
        data={"email": "guest@example.org", "csrf_token": _aaa_form_token(page.text)},
        buffered=True,
    )
    assert sent.status_code == 303
    mail = [m for m in _outbox(app) if "guest@example.org" in m.to][-1]
    link = re.search(r"https?://[^/\s]+(/auth/register\?invite=[A-Za-z0-9_-]+)", mail.body)
    assert link, mail.body

    guest = app.test_client()
    stashed = guest.get(link.group(1))
    form = guest.get(stashed.headers["Location"])
    assert "guest@example.org" in form.text
    done = guest.post(
        "/auth/register",
        data={
            "password": "saffron-glacier-violin-8",
            "confirm": "saffron-glacier-violin-8",
            "csrf_token": _aaa_form_token(form.text),
        },
    )
    assert done.status_code == 303
    with app.app_context():
        row = app.User.query.filter_by(email="guest@example.org").one()  # the app's own row
        linked = app.extensions["aaa"].db.session.get(AAAUser, row.id)
        assert linked is not None and linked.email == "guest@example.org"
        assert row.email_confirmed_at is not None  # the invitation confirmed the address
        assert row.password == linked.password_hash
    assert sign_in(guest, "guest@example.org", "saffron-glacier-violin-8", field="email")
    assert guest.get("/members").text == "members"
    assert events(app, "user.invitation_accepted")


def test_flask_user_invitation_links_lead_to_the_registration(invite_app: Any) -> None:
    answer = invite_app.test_client().get("/user/register?token=abc123")
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/auth/register?invite=abc123"


def test_invite_only_registration_needs_an_invitation(database_uri: str, built: Any) -> None:
    app, _, _ = email_app(database_uri, USER_ENABLE_INVITE_USER=True, USER_REQUIRE_INVITATION=True)
    built(app)
    assert app.config["AAA_INVITE_ONLY"] is True
    client = app.test_client()
    moved = client.get("/user/register")
    assert moved.status_code == 303
    assert client.get(moved.headers["Location"]).status_code == 403


# -- two-factor sign-in --


@pytest.fixture
def app(database_uri: str, built: Any) -> Any:
    app, _, _ = basic_app(database_uri)
    return built(app)


def _enable_totp(app: Any, user_id: int) -> str:
    secret = otp.new_secret()
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2 * otp.STEP_SECONDS)
    with app.test_request_context(), writing():
        db = app.extensions["aaa"].db.session()
        mfa.enable(
            db,
            db.get(AAAUser, user_id),
            secret=secret,
            code=pyotp.TOTP(secret).at(earlier),
            hasher=code_hasher(),
            facts=RequestFacts.for_cli("tests"),
            now=earlier,
        )
        db.commit()
    return secret


def test_two_factor_sign_in_asks_for_the_code(app: Any) -> None:
    from flask_aaa.compat.flask_user import user_logged_in

    client = app.test_client()
    sign_in(client, "member", "Password1")  # linked
    with app.app_context():
        member_id = app.User.query.filter_by(username="member").one().id
    secret = _enable_totp(app, member_id)
    sign_out(client)
    seen: list[Any] = []

    def note(sender: Any, user: Any, **_: Any) -> None:
        seen.append(user)

    user_logged_in.connect(note)
    try:
        first = sign_in(client, "member", "Password1", next="/members")
        assert first.status_code == 303 and first.headers["Location"] == "/auth/2fa"
        assert client.get("/members").status_code == 302  # M04: nothing before the code
        assert seen == []
        page = client.get("/auth/2fa")
        wrong = client.post(
            "/auth/2fa", data={"code": "000000", "csrf_token": _aaa_form_token(page.text)}
        )
        assert wrong.status_code == 401
        done = client.post(
            "/auth/2fa",
            data={"code": pyotp.TOTP(secret).now(), "csrf_token": _aaa_form_token(page.text)},
        )
        assert done.status_code == 303 and done.headers["Location"] == "/members"
        assert client.get("/members").text == "members: member"
        assert [u.username for u in seen] == ["member"]  # the app's own User
    finally:
        user_logged_in.disconnect(note)
    logins = [json.loads(e.details) for e in events(app, "auth.login.succeeded")]
    assert logins[-1].get("mfa") == "totp"


def test_two_factor_sign_in_for_json_clients(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "member", "Password1")
    with app.app_context():
        member_id = app.User.query.filter_by(username="member").one().id
    _enable_totp(app, member_id)
    sign_out(client)
    page = client.get("/user/sign-in")
    answer = client.post(
        "/user/sign-in",
        data={"username": "member", "password": "Password1", "csrf_token": token(page.text)},
        headers={"Accept": "application/json"},
    )
    assert answer.status_code == 200
    assert answer.get_json() == {"mfa_required": True, "verify_url": "/auth/2fa"}


# -- remember-me --


def test_remember_me_through_the_compat_sign_in(app: Any) -> None:
    client = app.test_client()
    signed = sign_in(client, "member", "Password1", remember_me="y")
    assert signed.status_code == 303
    cookie = client.get_cookie(REMEMBER)
    assert cookie is not None
    later = app.test_client()  # the browser was closed: only the remember-me cookie is left
    later.set_cookie(REMEMBER, cookie.value)
    assert later.get("/members").text == "members: member"
    rotated = later.get_cookie(REMEMBER).value
    assert rotated != cookie.value
    sign_out(later)  # signing out ends the series
    assert later.get_cookie(REMEMBER) is None
    copy = app.test_client()
    copy.set_cookie(REMEMBER, rotated)
    assert copy.get("/members").status_code == 302


def test_no_remember_me_cookie_without_the_box(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "member", "Password1")
    assert client.get_cookie(REMEMBER) is None


def test_remember_me_does_not_outlive_the_apps_user(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "member", "Password1", remember_me="y")
    cookie = client.get_cookie(REMEMBER)
    with app.app_context():
        app.User.query.filter_by(username="member").one().active = False
        app.extensions["aaa"].db.session.commit()
    later = app.test_client()
    later.set_cookie(REMEMBER, cookie.value)
    assert later.get("/members").status_code == 302


def test_remember_me_setting_off(database_uri: str, built: Any) -> None:
    app, _, _ = basic_app(database_uri, USER_ENABLE_REMEMBER_ME=False)
    built(app)
    client = app.test_client()
    page = client.get("/user/sign-in")
    assert 'name="remember_me"' not in page.text
    sign_in(client, "member", "Password1", remember_me="y")
    assert client.get_cookie(REMEMBER) is None


# -- names changed on either side --


def test_username_the_app_changes_reaches_flask_aaa_at_the_flush(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "member", "Password1")
    with app.app_context():
        db = app.extensions["aaa"].db
        member = app.User.query.filter_by(username="member").one()
        member.username = "morgan"
        db.session.commit()
        assert db.session.get(AAAUser, member.id).username == "morgan"  # same transaction
    assert client.get("/members").text == "members: morgan"  # still signed in
    assert sign_in(app.test_client(), "member", "Password1").status_code == 401
    assert sign_in(app.test_client(), "morgan", "Password1").status_code == 303
    fields = [json.loads(e.details)["fields"] for e in events(app, "flask_user.synced")]
    assert ["username"] in fields


def test_username_the_app_changes_with_sql_reaches_flask_aaa_at_the_next_request(
    app: Any,
) -> None:
    client = app.test_client()
    sign_in(client, "member", "Password1")
    with app.app_context():
        db = app.extensions["aaa"].db
        db.session.execute(text("UPDATE users SET username = 'morgan' WHERE username = 'member'"))
        db.session.commit()
    assert client.get("/members").text == "members: morgan"
    with app.app_context():
        member = app.User.query.filter_by(username="morgan").one()
        assert app.extensions["aaa"].db.session.get(AAAUser, member.id).username == "morgan"
    assert sign_in(app.test_client(), "morgan", "Password1").status_code == 303


def test_email_the_app_changes_reaches_flask_aaa(database_uri: str, built: Any) -> None:
    app, db, um = email_app(database_uri)
    built(app)
    with app.app_context():
        user = app.User(
            email="old@example.org",
            password=um.hash_password("Password1"),
            email_confirmed_at=dt.datetime(2024, 1, 1),
        )
        db.session.add(user)
        db.session.commit()
    client = app.test_client()
    sign_in(client, "old@example.org", "Password1", field="email")
    with app.app_context():
        row = app.User.query.filter_by(email="old@example.org").one()
        row.email = "New@Example.org"
        db.session.commit()
        linked = db.session.get(AAAUser, row.id)
        assert (linked.email, linked.email_key) == ("New@example.org", "new@example.org")
    assert (
        sign_in(app.test_client(), "new@example.org", "Password1", field="email").status_code == 303
    )


def test_email_change_confirmed_in_flask_aaa_reaches_the_app(database_uri: str, built: Any) -> None:
    app, db, um = email_app(database_uri)
    built(app)
    with app.app_context():
        db.session.add(
            app.User(
                email="old@example.org",
                password=um.hash_password("Password1"),
                email_confirmed_at=dt.datetime(2024, 1, 1),
            )
        )
        db.session.commit()
    client = app.test_client()
    sign_in(client, "old@example.org", "Password1", field="email")
    with app.test_request_context(), writing():
        session = db.session()
        row_id = app.User.query.filter_by(email="old@example.org").one().id
        account = session.get(AAAUser, row_id)
        out = recovery.request_email_change(
            session,
            settings=app.extensions["aaa"].settings,
            passwords=app.extensions["aaa"].passwords,
            user=account,
            password="Password1",
            new_email="moved@example.org",
            facts=RequestFacts.for_cli("tests"),
        )
        session.commit()
        assert out is not None and out.token is not None
        recovery.confirm_email_change(session, raw=out.token, facts=RequestFacts.for_cli("tests"))
        session.commit()
    with app.app_context():
        assert db.session.get(app.User, row_id).email == "moved@example.org"  # the app's row
    assert client.get("/members").text == "members"  # the next request keeps it
    with app.app_context():
        assert db.session.get(AAAUser, row_id).email == "moved@example.org"
    assert (
        sign_in(app.test_client(), "moved@example.org", "Password1", field="email").status_code
        == 303
    )
