"""Linking an account at a provider to the signed-in user (after a fresh sign-in), and
undoing it. Against the development provider."""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import select

from flask_aaa.models import AuditEvent, ExternalIdentity, LoginSession, User
from tests.conftest import csrf_token, fresh, login, post

from .conftest import approve, sign_in

JSON = {"Accept": "application/json"}


def fresh_login(client, name):
    assert login(client, name).status_code == 303


def start_link(client, provider="dev"):
    response = post(client, f"/account/identities/{provider}/link")
    assert response.status_code == 303, response.get_data(as_text=True)
    return str(response.headers["Location"])


def actions(db, name):
    rows = fresh(db).scalars(select(AuditEvent).where(AuditEvent.action == name))
    return [json.loads(e.details) for e in rows]


def test_link_after_a_fresh_sign_in_then_sign_in_with_it(client, db, make_user):
    alice = make_user("alice")
    fresh_login(client, "alice")
    response = client.get(approve(start_link(client), user="1002"))
    assert response.status_code == 303 and response.headers["Location"].endswith("/identities")
    identity = fresh(db).scalar(select(ExternalIdentity))
    assert identity.user_id == alice.id and identity.subject == "1002"
    assert actions(db, "account.identity.linked")[0]["new_account"] is False
    page = client.get("/account/identities").get_data(as_text=True)
    assert "Dev IdP" in page and "grace@devidp.example.org" in page
    post(client, "/auth/logout")
    assert sign_in(client, user="1002").status_code == 303
    assert client.get("/private").get_json() == {"user": "alice"}


def test_link_without_a_fresh_sign_in_is_refused(client, db, make_user):
    make_user("alice")
    fresh_login(client, "alice")
    record = fresh(db).scalar(select(LoginSession))
    record.reauthenticated_at = record.created_at - dt.timedelta(hours=1)
    db.commit()
    response = client.post(
        "/account/identities/dev/link", headers={**JSON, "X-CSRFToken": csrf_token(client)}
    )
    assert response.status_code == 401
    assert response.get_json()["error"] == "reauthentication_required"
    assert fresh(db).scalar(select(ExternalIdentity.id)) is None


def test_link_needs_csrf_and_a_sign_in(client, make_user):
    make_user("alice")
    assert client.post("/account/identities/dev/link", headers=JSON).status_code in (400, 401)
    fresh_login(client, "alice")
    assert client.post("/account/identities/dev/link").status_code == 400


def test_identity_linked_to_someone_else_is_refused(app, db, make_user):
    make_user("alice")
    make_user("bob")
    alice, bob = app.test_client(), app.test_client()
    fresh_login(alice, "alice")
    alice.get(approve(start_link(alice), user="1002"))
    fresh_login(bob, "bob")
    response = bob.get(approve(start_link(bob), user="1002"))
    assert response.status_code == 409
    assert len(list(fresh(db).scalars(select(ExternalIdentity)))) == 1
    assert actions(db, "auth.oidc.failed")[-1]["reason"] == "linked_to_another"


def test_unlink_removes_the_identity_and_is_audited(client, db, make_user):
    make_user("alice")
    fresh_login(client, "alice")
    client.get(approve(start_link(client), user="1002"))
    identity_id = fresh(db).scalar(select(ExternalIdentity.id))
    response = post(client, f"/account/identities/{identity_id}/unlink")
    assert response.status_code == 303
    assert fresh(db).scalar(select(ExternalIdentity.id)) is None
    assert actions(db, "account.identity.unlinked")[0]["identity_id"] == identity_id


def test_unlink_of_someone_elses_identity_is_404(app, db, make_user):
    make_user("alice")
    make_user("bob")
    alice, bob = app.test_client(), app.test_client()
    fresh_login(alice, "alice")
    alice.get(approve(start_link(alice), user="1002"))
    identity_id = fresh(db).scalar(select(ExternalIdentity.id))
    fresh_login(bob, "bob")
    assert post(bob, f"/account/identities/{identity_id}/unlink").status_code == 404
    assert fresh(db).scalar(select(ExternalIdentity.id)) == identity_id


def test_last_way_to_sign_in_cannot_be_unlinked(client, db):
    assert sign_in(client, user="1001").status_code == 303  # a new account, no password
    identity_id = fresh(db).scalar(select(ExternalIdentity.id))
    response = post(client, f"/account/identities/{identity_id}/unlink")
    assert response.status_code == 409
    assert fresh(db).scalar(select(ExternalIdentity.id)) == identity_id
    assert db.scalar(select(User.password_hash)) is None
