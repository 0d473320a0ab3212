"""The compatibility layer seen by an attacker: redirects, CSRF, enumeration, throttling,
the link between the app's users and Flask-AAA's accounts (ids, direction of the sync,
disabled and deleted users), session fixation and stale privileges. Case ids are those of
SECURITY-CASES.md."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from sqlalchemy import select, text

from flask_aaa import permissions_required
from flask_aaa.db import writing
from flask_aaa.models import ApiToken, LoginSession, Role
from flask_aaa.models import User as AAAUser
from flask_aaa.services import rbac
from flask_aaa.services.actors import Actor, RequestFacts

from .apps import basic_app, email_app, tutorial_app
from .helpers import events, sign_in, sign_out, token

SYSTEM = Actor.system("tests")
COOKIE = "aaa_session"


@pytest.fixture
def app(database_uri: str, built: Any) -> Any:
    app, _, _ = basic_app(database_uri)
    return built(app)


def _aaa_db(app: Any) -> Any:
    return app.extensions["aaa"].db.session()


def grant_native_role(app: Any, user_id: int, name: str, permissions: list[str]) -> None:
    """What an operator does with Flask-AAA's console or CLI: a role of Flask-AAA's own."""
    with app.app_context(), writing():
        db = _aaa_db(app)
        role = db.scalar(select(Role).where(Role.name == name))
        if role is None:
            role = rbac.create_role(db, actor=SYSTEM, name=name)
        for permission in permissions:
            rbac.add_permission(db, actor=SYSTEM, role=role, permission=permission)
        user = db.get(AAAUser, user_id)
        assert user is not None
        rbac.grant_role(db, actor=SYSTEM, user=user, role=role)
        db.commit()


def app_user_id(app: Any, username: str) -> int:
    with app.app_context():
        return int(app.User.query.filter_by(username=username).one().id)


# -- redirects --

EVIL_TARGETS = [
    "//evil.example/x",
    "https://evil.example/",
    "/\\evil.example",
    "\\\\evil.example",
    "/ok\r\nLocation: https://evil.example",
    "javascript:alert(1)",
    "http:evil.example",
]


@pytest.mark.parametrize("target", EVIL_TARGETS)
def test_next_never_leaves_the_site(app: Any, target: str) -> None:
    client = app.test_client()
    signed = sign_in(client, "member", "Password1", next=target)
    assert signed.status_code in (302, 303) and signed.headers["Location"] == "/"
    again = client.get("/user/sign-in", query_string={"next": target})
    assert again.headers["Location"] == "/"
    page = client.get("/user/sign-out", query_string={"next": target})
    assert target not in page.text
    out = client.post("/user/sign-out", data={"csrf_token": token(page.text), "next": target})
    assert out.headers["Location"] == "/"
    page = client.get("/user/register", query_string={"reg_next": target})
    registered = client.post(
        "/user/register",
        data={
            "username": "newcomer",
            "password": "quiet-lantern-meadow-7",
            "reg_next": target,
            "csrf_token": token(page.text),
        },
    )
    assert registered.headers["Location"] == "/"


# -- CSRF (Z05) --


def test_Z05_every_compat_form_needs_its_csrf_token(app: Any) -> None:
    client = app.test_client()
    client.get("/user/sign-in")  # a cookie session exists: only the token is missing
    refused = client.post("/user/sign-in", data={"username": "member", "password": "Password1"})
    assert refused.status_code == 400
    assert client.get("/members").status_code == 302
    wrong = client.post(
        "/user/register",
        data={"username": "mallory", "password": "quiet-lantern-meadow-7", "csrf_token": "x"},
    )
    assert wrong.status_code == 400
    with app.app_context():
        assert app.User.query.filter_by(username="mallory").first() is None
    sign_in(client, "member", "Password1")
    assert client.post("/user/sign-out", data={}).status_code == 400
    assert client.get("/members").status_code == 200  # still signed in
    changed = client.post(
        "/user/change-password",
        data={"old_password": "Password1", "new_password": "amber-violet-harbor-9"},
    )
    assert changed.status_code == 400
    assert sign_in(app.test_client(), "member", "Password1").status_code in (302, 303)


# -- enumeration (A01) --


def _normalized(response: Any) -> tuple[int, str, list[str]]:
    # The typed login and the CSRF token are field values; everything else must match.
    body = re.sub(r'value="[^"]*"', 'value=""', response.get_data(as_text=True))
    cookies = sorted(c.split("=", 1)[0] for c in response.headers.getlist("Set-Cookie"))
    return response.status_code, body, cookies


def test_A01_sign_in_answers_alike_for_unknown_wrong_and_disabled(app: Any) -> None:
    with app.app_context():
        app.User.query.filter_by(username="member").one().active = False
        app.extensions["aaa"].db.session.commit()
    answers = [
        _normalized(sign_in(app.test_client(), login, password))
        for login, password in (
            ("nobody", "Password1"),  # unknown
            ("admin", "Password2"),  # wrong password
            ("member", "Password1"),  # right password, disabled by the app
        )
    ]
    assert answers[0][0] == 401
    assert answers[0] == answers[1] == answers[2]
    reasons = sorted(json.loads(e.details)["reason"] for e in events(app, "auth.login.failed"))
    assert reasons == ["bad_password", "disabled", "unknown_login"]


def test_A01_registration_answers_alike_for_a_taken_address(database_uri: str, built: Any) -> None:
    app, _, _ = email_app(database_uri)
    built(app)

    def register(email: str) -> Any:
        client = app.test_client()
        page = client.get("/user/register")
        return client.post(
            "/user/register",
            data={
                "email": email,
                "password": "velvet-orchard-compass-3",
                "retype_password": "velvet-orchard-compass-3",
                "csrf_token": token(page.text),
            },
        )

    first = register("dana@example.org")
    taken = register("dana@example.org")
    new = register("erin@example.org")
    assert taken.status_code == new.status_code == first.status_code
    assert taken.headers["Location"] == new.headers["Location"]
    assert events(app, "user.registration_refused")


# -- throttling (A04, A17) and mail limits --


def test_A04_sign_in_throttling_is_audited(database_uri: str, built: Any) -> None:
    app, _, _ = basic_app(database_uri, AAA_LOGIN_LIMIT_PER_ACCOUNT="2 per minute")
    built(app)
    client = app.test_client()
    assert sign_in(client, "member", "wrong-1").status_code == 401
    assert sign_in(client, "member", "wrong-2").status_code == 401
    assert sign_in(client, "member", "Password1").status_code == 429
    assert events(app, "auth.login.throttled")


def test_A17_change_password_is_throttled(database_uri: str, built: Any) -> None:
    app, _, _ = basic_app(database_uri, AAA_CHANGE_PASSWORD_LIMIT="2 per hour")
    built(app)
    client = app.test_client()
    sign_in(client, "member", "Password1")
    statuses = []
    for _ in range(3):
        page = client.get("/user/change-password")
        answer = client.post(
            "/user/change-password",
            data={
                "old_password": "not-the-password",
                "new_password": "amber-violet-harbor-9",
                "retype_password": "amber-violet-harbor-9",
                "csrf_token": token(page.text),
            },
        )
        statuses.append(answer.status_code)
    assert statuses == [400, 400, 429]
    assert len(events(app, "auth.password.change_failed")) == 2


def test_registration_mail_is_limited_per_address(database_uri: str, built: Any) -> None:
    app, _, _ = email_app(database_uri, AAA_MAIL_LIMIT="2 per hour")
    built(app)
    statuses = []
    for _ in range(3):
        client = app.test_client()
        page = client.get("/user/register")
        statuses.append(
            client.post(
                "/user/register",
                data={
                    "email": "victim@example.org",
                    "password": "velvet-orchard-compass-3",
                    "retype_password": "velvet-orchard-compass-3",
                    "csrf_token": token(page.text),
                },
            ).status_code
        )
    assert statuses[-1] == 429


# -- session fixation (S01) --


def test_S01_sign_in_gives_a_new_session_and_csrf_token(app: Any) -> None:
    client = app.test_client()
    page = client.get("/user/sign-in")
    planted = client.get_cookie(COOKIE).value
    old_token = token(page.text)
    sign_in(client, "member", "Password1")
    first = client.get_cookie(COOKIE).value
    assert first != planted
    # The token of the page seen before signing in is worthless now.
    assert client.post("/user/sign-out", data={"csrf_token": old_token}).status_code == 400
    # The same browser signs in again, as someone else: a new session again.
    current = token(client.get("/user/change-password").text)
    again = client.post(
        "/user/sign-in",
        data={"username": "admin", "password": "Password1", "csrf_token": current},
    )
    assert again.status_code == 303
    assert client.get_cookie(COOKIE).value != first
    replay = app.test_client()
    replay.set_cookie(COOKIE, first)
    assert replay.get("/members").status_code == 302
    with app.app_context():
        live = (
            _aaa_db(app)
            .scalars(select(LoginSession).where(LoginSession.revoked_at.is_(None)))
            .all()
        )
        assert [s.user_id for s in live] == [app_user_id(app, "admin")]


# -- disabled app users --


def test_app_user_disabled_by_the_app_is_out_even_as_flask_aaas_last_admin(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "admin", "Password1")
    admin_id = app_user_id(app, "admin")
    # The operator made this account Flask-AAA's only administrator (console, CLI).
    grant_native_role(app, admin_id, "operators", ["*"])
    assert client.get("/members").status_code == 200
    with app.app_context():
        app.User.query.filter_by(username="admin").one().active = False
        _aaa_db(app).commit()
    assert client.get("/members").status_code == 302
    assert sign_in(app.test_client(), "admin", "Password1").status_code == 401
    with app.app_context():
        assert (
            not _aaa_db(app)
            .scalars(
                select(LoginSession).where(
                    LoginSession.user_id == admin_id, LoginSession.revoked_at.is_(None)
                )
            )
            .all()
        )


# -- direction of the sync: what writing into the app's tables can grant --


def test_app_role_named_like_a_flask_aaa_role_does_not_hand_it_out(app: Any) -> None:
    """The app's role ``Admin`` is the app's; a Flask-AAA role of that name, made by an
    operator with Flask-AAA's rights in it, is not granted by writing ``user_roles``."""

    @app.route("/aaa-users")
    @permissions_required("aaa:users:write")
    def aaa_users() -> str:
        return "users"

    with app.app_context(), writing():
        rbac.create_role(_aaa_db(app), actor=SYSTEM, name="Admin")
        role = _aaa_db(app).scalar(select(Role).where(Role.name == "Admin"))
        rbac.add_permission(_aaa_db(app), actor=SYSTEM, role=role, permission="aaa:users:write")
        _aaa_db(app).commit()
    client = app.test_client()
    sign_in(client, "admin", "Password1")
    assert client.get("/admin").text == "admin page"  # the app's own check: its own tables
    assert client.get("/aaa-users").status_code == 403
    with app.app_context():
        user = _aaa_db(app).get(AAAUser, app_user_id(app, "admin"))
        assert "Admin" not in {r.name for r in user.roles}
    # Not a difference to sync again on every request (nor a warning each time).
    with app.app_context():
        app_user = app.User.query.filter_by(username="admin").one()
        assert app.user_manager.in_sync(app_user)


def test_permissions_of_flask_aaa_are_not_taken_from_the_apps_tables(
    database_uri: str, built: Any
) -> None:
    app, db, um = tutorial_app(database_uri)
    built(app)
    m = app.models

    @app.route("/aaa-users")
    @permissions_required("aaa:users:write")
    def aaa_users() -> str:
        return "users"

    with app.app_context():
        role = m["Role"](
            name="moderator",
            permissions=[m["Permission"](name="*"), m["Permission"](name="aaa:users:write")],
        )
        db.session.add(
            m["User"](username="mod", password=um.hash_password("Password1"), roles=[role])
        )
        db.session.commit()
    client = app.test_client()
    sign_in(client, "mod", "Password1")
    assert client.get("/aaa-users").status_code == 403


# -- stale privileges (T03) --


def test_T03_role_the_app_deletes_is_gone_from_flask_aaa_too(database_uri: str, built: Any) -> None:
    app, db, um = tutorial_app(database_uri)
    built(app)
    m = app.models

    @app.route("/reports")
    @permissions_required("reports:read")
    def reports() -> str:
        return "reports"

    with app.app_context():
        role = m["Role"](name="reader", permissions=[m["Permission"](name="reports:read")])
        db.session.add(
            m["User"](username="alice", password=um.hash_password("Password1"), roles=[role])
        )
        db.session.commit()
    client = app.test_client()
    sign_in(client, "alice", "Password1")
    assert client.get("/reports").text == "reports"
    with app.app_context():
        db.session.execute(text("DELETE FROM user_roles"))
        db.session.delete(m["Role"].query.filter_by(name="reader").one())
        db.session.commit()
    assert client.get("/reports").status_code == 403
    assert client.get("/admin").status_code == 302
    assert any(json.loads(e.details)["role"] == "reader" for e in events(app, "role.revoked"))


def test_T03_roles_required_and_has_roles_read_the_apps_tables_now(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "admin", "Password1")
    assert client.get("/admin").text == "admin page"
    with app.app_context():
        admin = app.User.query.filter_by(username="admin").one()
        admin.roles = [r for r in admin.roles if r.name != "Admin"]
        _aaa_db(app).commit()
    refused = client.get("/admin", headers={"Accept": "application/json"})
    assert refused.status_code == 403
    assert 'id="admin-link"' not in client.get("/").text


# -- the app's password column is the truth, whoever writes it --


def test_password_the_app_writes_with_sql_replaces_the_old_one(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "member", "Password1")
    with app.app_context():
        new_hash = app.user_manager.hash_password("amber-violet-harbor-9")
        _aaa_db(app).execute(
            text("UPDATE users SET password = :p WHERE username = 'member'"), {"p": new_hash}
        )
        _aaa_db(app).commit()
    assert client.get("/members").status_code == 302  # the session ended with the password
    assert sign_in(app.test_client(), "member", "Password1").status_code == 401
    assert sign_in(app.test_client(), "member", "amber-violet-harbor-9").status_code == 303
    fields = [json.loads(e.details)["fields"] for e in events(app, "flask_user.synced")]
    assert ["password"] in fields


def test_L09_password_the_app_sets_through_its_model_is_on_the_trail(app: Any) -> None:
    """The app's own password change (its code, its ``db.session.commit()``): mirrored to
    Flask-AAA in the same transaction, the user's other sessions end, and the trail says so."""
    elsewhere = app.test_client()
    sign_in(elsewhere, "member", "Password1")
    with app.app_context():
        member = app.User.query.filter_by(username="member").one()
        member.password = app.user_manager.hash_password("amber-violet-harbor-9")
        _aaa_db(app).commit()
    assert elsewhere.get("/members").status_code == 302
    assert sign_in(app.test_client(), "member", "amber-violet-harbor-9").status_code == 303
    synced = [json.loads(e.details) for e in events(app, "flask_user.synced")]
    assert {"fields": ["password"], "sessions_ended": 1} in synced


# -- one id space: no Flask-AAA account can stand for someone else's app user --


def test_account_registered_with_flask_aaa_does_not_take_over_an_app_user(app: Any) -> None:
    """Nobody has signed in yet, so no app user is linked: Flask-AAA's own registration
    page must not hand out the id of one of them."""
    client = app.test_client()
    page = client.get("/auth/register")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf
    done = client.post(
        "/auth/register",
        data={
            "username": "mallory",
            "password": "quiet-lantern-meadow-7",
            "confirm": "quiet-lantern-meadow-7",
            "csrf_token": csrf.group(1),
        },
    )
    assert done.status_code == 303
    signed = sign_in(client, "mallory", "quiet-lantern-meadow-7")
    assert signed.status_code in (302, 303)
    assert client.get("/members").text == "members: mallory"
    with app.app_context():
        mallory = app.User.query.filter_by(username="mallory").one()  # the app's own row
        assert _aaa_db(app).get(AAAUser, mallory.id).username == "mallory"
        assert {u.username for u in app.User.query} == {"member", "admin", "mallory"}
        # The app's own next user: its id (PostgreSQL: its sequence) is past mallory's.
        zoe = app.User(username="zoe", password=app.user_manager.hash_password("Password1"))
        _aaa_db(app).add(zoe)
        _aaa_db(app).commit()
        assert zoe.id > mallory.id
    assert sign_in(app.test_client(), "member", "Password1").status_code in (302, 303)
    zoe_client = app.test_client()
    assert sign_in(zoe_client, "zoe", "Password1").status_code in (302, 303)
    assert zoe_client.get("/members").text == "members: zoe"


def _mint_token(app: Any, user_id: int) -> None:
    from flask_aaa.services import tokens

    with app.app_context(), writing():
        owner = _aaa_db(app).get(AAAUser, user_id)
        tokens.mint(
            _aaa_db(app),
            owner,
            actor=Actor.of(owner),
            name="ci",
            scopes=["account:read"],
            days=30,
            settings=app.extensions["aaa"].settings,
            facts=RequestFacts.for_cli("tests"),
        )
        _aaa_db(app).commit()


def _live(app: Any, model: Any, user_id: int) -> list[Any]:
    with app.app_context():
        return list(
            _aaa_db(app).scalars(
                select(model).where(model.user_id == user_id, model.revoked_at.is_(None))
            )
        )


def test_user_the_app_deletes_leaves_nothing_a_new_user_with_its_id_inherits(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "admin", "Password1")
    admin_id = app_user_id(app, "admin")
    _mint_token(app, admin_id)
    with app.app_context():
        db = app.extensions["aaa"].db
        db.session.delete(db.session.get(app.User, admin_id))
        db.session.commit()
    assert client.get("/members").status_code == 302
    assert _live(app, ApiToken, admin_id) == [] and _live(app, LoginSession, admin_id) == []
    with app.app_context():
        # The app gives the freed id to someone else (SQLite reuses the highest id).
        db.session.execute(
            text("INSERT INTO users (id, username, password) VALUES (:i, 'newbie', :p)"),
            {"i": admin_id, "p": app.user_manager.hash_password("fern-copper-lagoon-5")},
        )
        db.session.commit()
    assert sign_in(app.test_client(), "admin", "Password1").status_code == 401
    newbie = app.test_client()
    assert sign_in(newbie, "newbie", "fern-copper-lagoon-5").status_code in (302, 303)
    assert newbie.get("/members").text == "members: newbie"
    assert newbie.get("/admin").status_code == 302


def test_user_the_app_deletes_with_sql_is_signed_out_at_its_next_request(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "admin", "Password1")
    admin_id = app_user_id(app, "admin")
    _mint_token(app, admin_id)
    with app.app_context():
        db = app.extensions["aaa"].db
        db.session.execute(text("DELETE FROM users WHERE id = :i"), {"i": admin_id})
        db.session.commit()
    assert client.get("/members").status_code == 302
    assert _live(app, ApiToken, admin_id) == [] and _live(app, LoginSession, admin_id) == []
    with app.app_context():
        assert not _aaa_db(app).get(AAAUser, admin_id).active
    assert events(app, "user.disabled")


def test_sign_out_and_in_again_keeps_one_live_session(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "member", "Password1")
    sign_out(client)
    sign_in(client, "member", "Password1")
    with app.app_context():
        live = (
            _aaa_db(app)
            .scalars(select(LoginSession).where(LoginSession.revoked_at.is_(None)))
            .all()
        )
        assert len(live) == 1


def test_A02_the_hasher_runs_once_for_known_and_unknown_users(app: Any) -> None:
    passwords = app.extensions["aaa"].passwords
    calls: list[Any] = []
    original = passwords.verify

    def counting(password: str, stored: Any) -> Any:
        calls.append(stored)
        return original(password, stored)

    passwords.verify = counting
    try:
        for login in ("member", "nobody", "admin"):
            calls.clear()
            assert sign_in(app.test_client(), login, "not-the-password").status_code == 401
            assert len(calls) == 1, login
    finally:
        del passwords.verify
