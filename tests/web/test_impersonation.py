"""Impersonation: an administrator acts as another user, through the browser.

Starting needs ``aaa:users:impersonate``, a reason, a fresh login, and a target who holds
nothing the administrator lacks (no escalation), who is someone else, active and a person.
While it lasts the browser is the user: a banner names both people, every event names both,
and credentials, sessions, tokens, re-authentication, administration and another
impersonation are refused (403 ``impersonation_forbidden``, audited, nothing changed). The
way back is one POST; the time limit, the administrator's own session and rights, and
sign-out end it too.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from flask import Flask, jsonify
from flask.testing import FlaskClient
from freezegun import freeze_time
from sqlalchemy import select
from sqlalchemy.orm import Session

from flask_aaa.db import writing
from flask_aaa.models import SERVICE, ApiToken, AuditEvent, LoginSession, User
from flask_aaa.services import rbac, sessions
from flask_aaa.web.decorators import fresh_login_required
from tests.conftest import (
    PASSWORD,
    SYSTEM,
    app_engine,
    csrf_token,
    ensure_role,
    form_token,
    fresh,
    login,
    post,
    post_json,
)

JSON = {"Accept": "application/json"}
REASON = "Ticket 4711: cannot find the export button"
MINUTES = 30  # the default AAA_IMPERSONATION_MINUTES


@pytest.fixture
def app(app: Flask) -> Flask:
    """The test app plus a view of the app's own that needs a fresh login."""

    @app.post("/billing/close")
    @fresh_login_required
    def close_account() -> Any:
        return jsonify(closed=True)

    return app


@pytest.fixture
def alice(make_user: Any) -> User:
    return make_user("alice", roles=["member"], perms={"member": ["notes:read", "notes:write"]})


@pytest.fixture
def support(make_user: Any) -> User:
    """A delegated administrator: may act as users, but holds no ``*``."""
    return make_user(
        "sam",
        roles=["support"],
        perms={"support": [rbac.IMPERSONATE, rbac.READ_USERS, "notes:read"]},
    )


# -- helpers --


def signed_in(app: Flask, name: str) -> FlaskClient:
    client = app.test_client()
    assert login(client, name).status_code == 303
    return client


def act_as(client: FlaskClient, user: User, reason: str = REASON, **kw: Any) -> Any:
    return post(client, f"/admin/users/{user.id}/impersonate", {"reason": reason}, **kw)


def acting(app: Flask, admin: User, user: User) -> FlaskClient:
    client = signed_in(app, admin.username or "")
    response = act_as(client, user)
    assert response.status_code == 303, response.get_data(as_text=True)
    return client


def whoami(client: FlaskClient) -> str | None:
    response = client.get("/private", headers=JSON)
    return response.get_json()["user"] if response.status_code == 200 else None


def events(db: Session, action: str) -> list[AuditEvent]:
    return list(
        fresh(db).scalars(select(AuditEvent).where(AuditEvent.action == action).order_by("seq"))
    )


def details(event: AuditEvent) -> dict[str, Any]:
    return dict(json.loads(event.details))


def impersonation_sessions(db: Session, user: User) -> list[LoginSession]:
    return list(
        fresh(db).scalars(
            select(LoginSession).where(
                LoginSession.user_id == user.id, LoginSession.impersonator_id.is_not(None)
            )
        )
    )


def live_sessions(db: Session, user: User) -> list[LoginSession]:
    return list(
        fresh(db).scalars(
            select(LoginSession).where(
                LoginSession.user_id == user.id, LoginSession.revoked_at.is_(None)
            )
        )
    )


def later(minutes: float) -> Any:
    return freeze_time(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes))


# -- starting --


def test_start_needs_the_permission_and_the_denial_is_audited(app, make_user, alice, db):
    make_user("bob", roles=["helpdesk"], perms={"helpdesk": [rbac.READ_USERS]})
    client = signed_in(app, "bob")
    response = act_as(client, alice, headers=JSON)
    assert response.status_code == 403
    assert response.get_json()["error"] == "permission_denied"
    [denied] = events(db, "authz.denied")
    assert details(denied)["requirement"] == rbac.IMPERSONATE
    assert impersonation_sessions(db, alice) == []
    assert whoami(client) == "bob"


def test_the_act_as_form_is_shown_to_holders_of_the_permission_only(app, admin, make_user, alice):
    make_user("bob", roles=["helpdesk"], perms={"helpdesk": [rbac.READ_USERS]})
    page = signed_in(app, "root").get(f"/admin/users/{alice.id}").get_data(as_text=True)
    assert f'action="/admin/users/{alice.id}/impersonate"' in page
    assert 'name="reason"' in page
    own = signed_in(app, "root").get(f"/admin/users/{admin.id}").get_data(as_text=True)
    assert "/impersonate" not in own  # not on one's own page
    other = signed_in(app, "bob").get(f"/admin/users/{alice.id}").get_data(as_text=True)
    assert "/impersonate" not in other


@pytest.mark.parametrize(
    "reason",
    [None, "", "help", "   short   ", "two\nlines of reason text", "x" * 256],
)
def test_start_needs_a_reason_of_10_to_255_printable_characters(app, admin, alice, db, reason):
    client = signed_in(app, "root")
    data = {} if reason is None else {"reason": reason}
    response = post(client, f"/admin/users/{alice.id}/impersonate", data, headers=JSON)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_input"
    assert "reason" in response.get_json()["fields"]
    assert impersonation_sessions(db, alice) == []
    assert events(db, "impersonation.started") == []


def test_start_needs_a_fresh_login(app, admin, alice, db):
    client = signed_in(app, "root")
    with later(6):  # past AAA_REAUTH_WINDOW (5 minutes), within the idle timeout
        response = act_as(client, alice, headers=JSON)
        assert response.status_code == 401
        assert response.get_json()["error"] == "reauthentication_required"
        page = act_as(client, alice)
        assert page.status_code == 303
        assert page.headers["Location"].startswith("/account/reauth")
    assert impersonation_sessions(db, alice) == []


def test_Z05_start_needs_csrf_and_post(app, admin, alice, db):
    client = signed_in(app, "root")
    url = f"/admin/users/{alice.id}/impersonate"
    assert client.post(url, data={"reason": REASON}).status_code == 400
    assert client.post(url, data={"reason": REASON, "csrf_token": "forged"}).status_code == 400
    assert client.get(url).status_code == 405
    assert impersonation_sessions(db, alice) == []
    assert whoami(client) == "root"


def test_Z02_no_escalation_to_a_user_holding_a_permission_the_admin_lacks(app, support, alice, db):
    client = signed_in(app, "sam")
    response = act_as(client, alice, headers=JSON)
    assert response.status_code == 403
    assert "notes:write" in response.get_json()["message"]
    [denied] = events(db, "authz.denied")
    assert "notes:write" in details(denied)["requirement"]
    assert impersonation_sessions(db, alice) == []
    assert whoami(client) == "sam"


def test_Z02_no_escalation_to_a_user_holding_a_role_the_admin_lacks(app, support, make_user, db):
    # Apps guard views by role too (roles_required): a role is a right of its own.
    editor = make_user("erin", roles=["editor"])
    response = act_as(signed_in(app, "sam"), editor, headers=JSON)
    assert response.status_code == 403
    assert "role editor" in response.get_json()["message"]
    assert impersonation_sessions(db, editor) == []


def test_Z02_no_escalation_to_a_full_administrator(app, admin, support, make_user, db):
    other_admin = make_user("ada", roles=["admin"])
    response = act_as(signed_in(app, "sam"), other_admin, headers=JSON)
    assert response.status_code == 403
    assert details(events(db, "authz.denied")[0])["requirement"].startswith("*")


def test_a_delegated_admin_may_act_as_a_user_with_fewer_rights(app, support, make_user, db):
    carol = make_user("carol")
    client = acting(app, support, carol)
    assert whoami(client) == "carol"


def test_refuses_oneself_a_disabled_user_and_a_service_account(app, admin, make_user, db):
    client = signed_in(app, "root")
    disabled = make_user("dave", active=False)
    robot = make_user("robot")
    with writing(), Session(app_engine(app)) as s:
        row = s.get(User, robot.id)
        assert row is not None
        row.kind = SERVICE
        s.commit()
    for target, words in ((admin, "yourself"), (disabled, "disabled"), (robot, "Service")):
        response = act_as(client, target, headers=JSON)
        assert response.status_code == 403, target
        assert words in response.get_json()["message"]
        assert impersonation_sessions(db, target) == []
    assert len(events(db, "authz.denied")) == 3
    assert whoami(client) == "root"


# -- while acting as the user --


def test_start_switches_the_browser_to_the_user_and_records_it(app, admin, alice, db):
    client = signed_in(app, "root")
    admin_session = live_sessions(db, admin)[0]
    old_csrf = csrf_token(client)
    response = act_as(client, alice, headers=JSON)
    assert response.status_code == 200
    body = response.get_json()
    assert body["user"]["username"] == "alice"
    assert whoami(client) == "alice"
    assert csrf_token(client) != old_csrf  # a fresh cookie session
    [record] = impersonation_sessions(db, alice)
    assert record.impersonator_id == admin.id
    assert record.impersonation_reason == REASON
    assert record.reauthenticated_at is None  # never "fresh"
    lifetime = record.expires_at - record.created_at
    assert dt.timedelta(minutes=MINUTES - 1) < lifetime <= dt.timedelta(minutes=MINUTES)
    assert dt.datetime.fromisoformat(body["until"]) == record.expires_at
    [started] = events(db, "impersonation.started")
    assert (started.actor_id, started.target_id) == (admin.id, str(alice.id))
    assert details(started)["reason"] == REASON
    assert details(started)["minutes"] == MINUTES
    assert started.session_hash == admin_session.token_hash
    # The administrator's own session is kept for the way back.
    assert [s.id for s in live_sessions(db, admin)] == [admin_session.id]


def test_the_banner_names_both_people_the_reason_and_the_way_back(app, admin, alice, db):
    client = acting(app, admin, alice)
    page = client.get("/account/activity").get_data(as_text=True)
    [record] = impersonation_sessions(db, alice)
    assert 'class="aaa-impersonation" role="status"' in page
    assert "You are acting as <strong>alice</strong> (as admin <strong>root</strong>)" in page
    assert REASON in page
    assert f"until {record.expires_at.strftime('%H:%M')} UTC" in page
    assert 'action="/auth/impersonation/stop"' in page
    assert "Return to your account" in page
    assert "<script" not in page  # the CSP forbids inline scripts


def test_no_banner_without_impersonation(app, admin):
    page = signed_in(app, "root").get("/account/activity").get_data(as_text=True)
    assert "aaa-impersonation" not in page


def test_an_audited_action_names_the_user_as_actor_and_the_admin_in_details(app, admin, alice, db):
    client = acting(app, admin, alice)
    assert post(client, "/notes").status_code == 201
    [created] = events(db, "notes.created")
    assert (created.actor_id, created.actor_name) == (alice.id, "alice")
    assert details(created)["impersonator"] == {"id": admin.id, "name": "root"}
    [record] = impersonation_sessions(db, alice)
    assert created.session_hash == record.token_hash
    # The user sees it in their own activity, with the administrator's name.
    user_view = signed_in(app, "alice").get("/account/activity", headers=JSON).get_json()
    [mine] = [e for e in user_view["events"] if e["action"] == "notes.created"]
    assert mine["details"]["impersonator"]["name"] == "root"


BLOCKED = [
    ("/auth/password", {"current_password": PASSWORD, "new_password": "new-" + PASSWORD}),
    ("/auth/email", {"email": "new@example.org", "password": PASSWORD}),
    ("/account/2fa", {"code": "123456"}),
    ("/account/2fa/disable", {"password": PASSWORD}),
    ("/account/2fa/recovery-codes", {"password": PASSWORD}),
    ("/account/tokens", {"name": "laptop", "scopes": "account:read"}),
    ("/aaa/api/v1/me/tokens", {"name": "laptop", "scopes": ["account:read"]}),
    ("/account/sessions/revoke-others", {}),
    ("/account/reauth", {"password": PASSWORD}),
    ("/billing/close", {}),  # the app's own fresh_login_required view
]


@pytest.mark.parametrize(("url", "data"), BLOCKED, ids=[u for u, _ in BLOCKED])
def test_sensitive_actions_are_refused_while_acting_and_change_nothing(
    app, admin, alice, make_user, db, url, data
):
    other_device = signed_in(app, "alice")
    before = fresh(db).get(User, alice.id)
    assert before is not None
    password_hash, email = before.password_hash, before.email
    client = acting(app, admin, alice)
    response = post_json(client, url, data)
    assert response.status_code == 403, response.get_data(as_text=True)
    assert response.get_json()["error"] == "impersonation_forbidden"
    after = fresh(db).get(User, alice.id)
    assert after is not None
    assert (after.password_hash, after.email, after.mfa_enabled_at) == (
        password_hash,
        email,
        None,
    )
    assert fresh(db).scalars(select(ApiToken)).all() == []
    assert whoami(other_device) == "alice"  # her other session is untouched
    assert whoami(client) == "alice"  # still acting, nothing else happened
    [denied] = events(db, "authz.denied")
    assert denied.actor_id == alice.id
    assert details(denied)["requirement"] == "not while impersonating"
    assert details(denied)["impersonator"] == {"id": admin.id, "name": "root"}


def test_the_html_form_of_a_sensitive_action_gets_the_403_page(app, admin, alice, db):
    client = acting(app, admin, alice)
    page = client.get("/auth/password").get_data(as_text=True)
    response = client.post(
        "/auth/password",
        data={
            "current_password": PASSWORD,
            "new_password": "new-" + PASSWORD,
            "csrf_token": form_token(page),
        },
    )
    assert response.status_code == 403
    assert "impersonation_forbidden" in response.get_data(as_text=True) or (
        "acting as another user" in response.get_data(as_text=True)
    )
    assert login(app.test_client(), "alice").status_code == 303  # old password still works


def test_starting_another_impersonation_is_refused(app, admin, alice, make_user, db):
    bob = make_user("bob")
    client = acting(app, admin, alice)
    response = act_as(client, bob, headers=JSON)
    assert response.status_code == 403
    assert response.get_json()["error"] == "impersonation_forbidden"
    assert impersonation_sessions(db, bob) == []
    assert whoami(client) == "alice"


def test_administration_as_the_user_is_refused(app, admin, make_user, db):
    # Even a user who may administer: changes are made under one's own name.
    helper = make_user(
        "hank", roles=["assigner"], perms={"assigner": [rbac.ASSIGN_ROLES, rbac.READ_USERS]}
    )
    bob = make_user("bob")
    client = acting(app, admin, helper)
    assert client.get(f"/admin/users/{bob.id}").status_code == 200  # reading is fine
    response = post_json(client, f"/admin/users/{bob.id}/roles", {"role": "assigner"})
    assert response.status_code == 403
    assert response.get_json()["error"] == "impersonation_forbidden"
    bob_now = fresh(db).get(User, bob.id)
    assert bob_now is not None and bob_now.roles == []


@pytest.fixture
def passkeys_on(config: dict[str, Any]) -> None:
    pytest.importorskip("webauthn")
    config.update(
        AAA_PASSKEYS=True, AAA_PASSKEY_RP_ID="localhost", AAA_PASSKEY_ORIGIN="http://localhost"
    )


def test_adding_a_passkey_is_refused_while_acting(passkeys_on, app, admin, alice, db):
    client = acting(app, admin, alice)
    for url in ("/account/passkeys/options", "/account/passkeys"):
        response = post_json(client, url, {})
        assert response.status_code == 403
        assert response.get_json()["error"] == "impersonation_forbidden"
    assert client.get("/account/passkeys").status_code == 200  # the list can be read


def test_bearer_tokens_are_never_affected(app, admin, alice, db):
    from flask_aaa.services import tokens
    from flask_aaa.services.actors import Actor, RequestFacts

    settings = app.extensions["aaa"].settings
    with writing(), Session(app_engine(app)) as s:
        owner = s.get(User, alice.id)
        assert owner is not None
        minted = tokens.mint(
            s,
            owner,
            actor=Actor.of(owner),
            name="cli",
            scopes=["account:read", "account:write"],
            settings=settings,
            facts=RequestFacts.for_cli("tests"),
        )
        s.commit()
    client = acting(app, admin, alice)
    # A bearer request from the very browser that is acting as alice: the token alone counts.
    response = client.post(
        "/aaa/api/v1/me/tokens",
        json={"name": "second", "scopes": ["account:read"]},
        headers={"Authorization": f"Bearer {minted.secret}"},
    )
    assert response.status_code == 201
    [created] = [e for e in events(db, "token.created") if e.request_id != "tests"]
    assert "impersonator" not in details(created)


# -- the way back, and the other ends --


def test_stop_returns_to_the_admin_in_one_post(app, admin, alice, db):
    client = acting(app, admin, alice)
    [own_before] = live_sessions(db, admin)
    response = post(client, "/auth/impersonation/stop")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/admin/users/{alice.id}"
    assert whoami(client) == "root"
    assert "aaa-impersonation" not in client.get("/account/activity").get_data(as_text=True)
    [record] = impersonation_sessions(db, alice)
    assert record.revoked_at is not None
    # Back in the administrator's own session, under a new id, with the same end.
    [own_after] = live_sessions(db, admin)
    assert own_after.id != own_before.id
    assert own_after.expires_at == own_before.expires_at
    [ended] = events(db, "impersonation.ended")
    assert (ended.actor_id, ended.target_id) == (admin.id, str(alice.id))
    assert details(ended)["reason"] == "stopped"
    assert "impersonator" not in details(ended)  # the actor is the administrator already
    assert len(events(db, "impersonation.started")) == 1


def test_stop_answers_json(app, admin, alice):
    client = acting(app, admin, alice)
    response = post_json(client, "/auth/impersonation/stop")
    assert response.status_code == 200
    assert response.get_json()["user"]["username"] == "root"
    assert whoami(client) == "root"


def test_Z05_stop_needs_csrf_and_post(app, admin, alice, db):
    client = acting(app, admin, alice)
    assert client.post("/auth/impersonation/stop").status_code == 400
    assert client.post("/auth/impersonation/stop", data={"csrf_token": "x"}).status_code == 400
    assert client.get("/auth/impersonation/stop").status_code == 405
    assert whoami(client) == "alice"
    assert events(db, "impersonation.ended") == []


def test_stop_without_an_impersonation_is_a_conflict(app, admin):
    response = post_json(signed_in(app, "root"), "/auth/impersonation/stop")
    assert response.status_code == 409


def test_the_time_limit_returns_the_browser_to_the_admin(app, admin, alice, db):
    client = acting(app, admin, alice)
    for minutes in (10, 20, 29):  # active all along: neither session idles out
        with later(minutes):
            assert whoami(client) == "alice"
    with later(MINUTES + 1):
        response = client.get("/private")
        assert response.status_code == 303
        assert response.headers["Location"] == f"/admin/users/{alice.id}"
        assert whoami(client) == "root"
        [ended] = events(db, "impersonation.ended")
        assert details(ended)["reason"] == "expired"
        [record] = impersonation_sessions(db, alice)
        assert record.revoked_at is not None


def test_a_request_after_the_end_is_not_performed_as_anyone(app, admin, alice, db):
    client = acting(app, admin, alice)
    for minutes in (10, 20, 29):
        with later(minutes):
            assert whoami(client) == "alice"
            token = csrf_token(client)
    with later(MINUTES + 1):
        response = client.post("/notes", json={}, headers={"X-CSRFToken": token})  # as alice
        assert response.status_code == 401
        assert response.get_json()["error"] == "impersonation_ended"
        assert events(db, "notes.created") == []
        assert whoami(client) == "root"


def test_idle_ends_both_and_lands_on_the_login_page(app, admin, alice, db):
    client = acting(app, admin, alice)
    with later(MINUTES + 2):  # no request in between: both sessions idled out
        response = client.get("/private")
        assert response.status_code == 303
        assert response.headers["Location"].startswith("/auth/login")
        assert whoami(client) is None
    [ended] = events(db, "impersonation.ended")
    assert details(ended)["reason"] == "expired"


def test_the_admin_signed_out_elsewhere_ends_the_impersonation(app, admin, alice, db):
    client = acting(app, admin, alice)
    with writing(), Session(app_engine(app)) as s:
        row = s.get(User, admin.id)
        assert row is not None
        sessions.revoke_all(s, row, reason="revoked_by_admin")
        s.commit()
    response = client.get("/private")
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/auth/login")
    assert whoami(client) is None
    assert live_sessions(db, alice) == []
    [ended] = events(db, "impersonation.ended")
    assert details(ended)["reason"] == "admin_session_ended"


def test_a_right_granted_to_the_user_meanwhile_ends_the_impersonation(app, support, make_user, db):
    carol = make_user("carol")
    client = acting(app, support, carol)
    with writing(), Session(app_engine(app)) as s:
        role = ensure_role(s, "writer", ["notes:write"])
        user = s.get(User, carol.id)
        assert user is not None
        rbac.grant_role(s, actor=SYSTEM, user=user, role=role)
        s.commit()
    response = client.get("/private")
    assert response.status_code == 303
    assert whoami(client) == "sam"
    [ended] = events(db, "impersonation.ended")
    assert details(ended)["reason"] == "rights_changed"


def test_the_user_ending_the_session_ends_the_impersonation(app, admin, alice, db):
    client = acting(app, admin, alice)
    [record] = impersonation_sessions(db, alice)
    own = signed_in(app, "alice")
    assert post_json(own, f"/account/sessions/{record.id}/revoke").status_code == 200
    response = client.get("/private", headers=JSON)
    assert response.status_code == 401
    assert response.get_json()["error"] == "impersonation_ended"
    assert whoami(client) == "root"
    [ended] = events(db, "impersonation.ended")
    assert details(ended)["reason"] == "revoked"
    assert details(ended)["cause"] == "revoked_by_user"


def test_logout_while_acting_signs_both_out(app, admin, alice, db):
    client = acting(app, admin, alice)
    response = post(client, "/auth/logout")
    assert response.status_code == 303
    assert whoami(client) is None
    assert live_sessions(db, alice) == []
    assert live_sessions(db, admin) == []
    [ended] = events(db, "impersonation.ended")
    assert details(ended)["reason"] == "logout"
    logouts = {e.actor_id for e in events(db, "auth.logout")}
    assert logouts == {alice.id, admin.id}


def test_a_privilege_change_of_the_user_keeps_the_impersonation_and_its_limits(
    app, admin, alice, db
):
    client = acting(app, admin, alice)
    [first] = impersonation_sessions(db, alice)
    with writing(), Session(app_engine(app)) as s:
        role = ensure_role(s, "reader", ["reports:read"])
        user = s.get(User, alice.id)
        assert user is not None
        rbac.grant_role(s, actor=SYSTEM, user=user, role=role)
        s.commit()
    assert whoami(client) == "alice"  # the session got a new id (S02)
    rows = impersonation_sessions(db, alice)
    assert len(rows) == 2
    second = next(r for r in rows if r.id != first.id)
    assert second.revoked_at is None
    assert second.impersonator_id == admin.id
    assert second.expires_at == first.expires_at
    assert post(client, "/auth/impersonation/stop").status_code == 303
    assert whoami(client) == "root"
