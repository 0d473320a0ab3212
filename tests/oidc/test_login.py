"""Signing in with a provider: new accounts, linked accounts, and the account policies
(2FA, disabled, locked) on this path too. Against the development provider (Authlib)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select

from flask_aaa.db import utcnow
from flask_aaa.models import AuditEvent, Challenge, ExternalIdentity, User
from tests.conftest import fresh, post

from .conftest import sign_in


def events(db, action):
    return list(fresh(db).scalars(select(AuditEvent).where(AuditEvent.action == action)))


def link_identity(db, user, subject="1001", provider="dev", issuer=None, app=None):
    issuer = issuer or app.config["AAA_OIDC_PROVIDERS"][provider]["issuer"]
    db.add(ExternalIdentity(user_id=user.id, provider=provider, issuer=issuer, subject=subject))
    db.commit()


def test_login_page_offers_each_configured_provider(client):
    page = client.get("/auth/login").get_data(as_text=True)
    assert "Sign in with Dev IdP" in page and "Sign in with Fake" in page


def test_first_sign_in_creates_an_account_when_registration_is_allowed(client, db, devidp):
    response = sign_in(client, user="1001", next="/private")
    assert response.status_code == 303
    assert response.headers["Location"] == "/private"
    assert client.get("/private").get_json() == {"user": "ada"}
    user = fresh(db).scalar(select(User).where(User.username == "ada"))
    assert user.password_hash is None
    assert user.email == "ada@devidp.example.org" and user.email_confirmed_at is not None
    identity = db.scalar(select(ExternalIdentity))
    assert (identity.user_id, identity.issuer, identity.subject) == (user.id, devidp.issuer, "1001")
    assert events(db, "user.registered")[0].target_id == str(user.id)
    linked = json.loads(events(db, "account.identity.linked")[0].details)
    assert linked["new_account"] is True and linked["provider"] == "dev"
    login = json.loads(events(db, "auth.login.succeeded")[-1].details)
    assert login == {"method": "oidc", "provider": "dev"}


@pytest.fixture
def closed_client(config, request):
    """A client of an app where unknown identities may not create accounts."""
    config["AAA_OIDC_REGISTRATION"] = False
    return request.getfixturevalue("app").test_client()


def test_unknown_identity_is_refused_when_registration_is_off(closed_client, db):
    client = closed_client
    response = sign_in(client)
    assert response.status_code == 403
    assert "No account here is linked" in response.get_data(as_text=True)
    assert fresh(db).scalar(select(User.id)) is None
    assert client.get("/private", headers={"Accept": "application/json"}).status_code == 401
    failed = json.loads(events(db, "auth.oidc.failed")[0].details)
    assert failed["reason"] == "not_linked"


def test_linked_identity_signs_in_to_its_account(client, db, make_user, app):
    alice = make_user("alice")
    link_identity(db, alice, subject="1002", app=app)
    assert sign_in(client, user="1002").status_code == 303
    assert client.get("/private").get_json() == {"user": "alice"}
    assert fresh(db).scalar(select(User.id).where(User.username == "grace")) is None
    identity = db.scalar(select(ExternalIdentity))
    assert identity.last_login_at is not None and identity.email == "grace@devidp.example.org"


def test_second_sign_in_reuses_the_created_account(client, db):
    sign_in(client, user="1001")
    post(client, "/auth/logout")
    assert sign_in(client, user="1001").status_code == 303
    assert len(list(fresh(db).scalars(select(User)))) == 1


def test_user_with_two_factor_goes_to_the_second_step(client, db, make_user, app):
    alice = make_user("alice")
    link_identity(db, alice, subject="1002", app=app)
    row = db.get(User, alice.id)
    row.totp_secret = "JBSWY3DPEHPK3PXP"
    row.mfa_enabled_at = utcnow()
    db.commit()
    response = sign_in(client, user="1002")
    assert response.status_code == 303 and response.headers["Location"].endswith("/auth/2fa")
    assert client.get("/private", headers={"Accept": "application/json"}).status_code == 401
    assert events(db, "auth.login.succeeded") == []


def test_disabled_account_is_refused_and_audited(client, db, make_user, app):
    alice = make_user("alice", active=False)
    link_identity(db, alice, subject="1002", app=app)
    response = sign_in(client, user="1002")
    assert response.status_code == 403
    assert client.get("/private", headers={"Accept": "application/json"}).status_code == 401
    failed = [json.loads(e.details) for e in events(db, "auth.login.failed")]
    assert failed == [{"reason": "disabled", "method": "oidc"}]


def test_locked_account_is_refused_and_audited(client, db, make_user, app):
    alice = make_user("alice")
    link_identity(db, alice, subject="1002", app=app)
    row = db.get(User, alice.id)
    row.locked_until = utcnow() + dt.timedelta(minutes=5)
    db.commit()
    assert sign_in(client, user="1002").status_code == 403
    failed = [json.loads(e.details) for e in events(db, "auth.login.failed")]
    assert failed == [{"reason": "locked", "method": "oidc"}]


def test_unsafe_next_is_dropped(client):
    response = sign_in(client, next="//evil.example/")
    assert response.status_code == 303 and response.headers["Location"] == "/"


def test_unknown_provider_is_404(client):
    assert post(client, "/auth/oidc/nope").status_code == 404
    assert client.get("/auth/oidc/nope/callback?state=x&code=y").status_code == 404


def test_Z05_sign_in_with_a_provider_cannot_be_started_by_another_site(client, db):
    """ASVS 7.6.2 / 3.5.3: a GET (a link or an image on another site) starts nothing, and a
    POST without this browser's CSRF token is refused; no state is stored either way."""
    assert client.get("/auth/oidc/dev").status_code == 405
    assert client.post("/auth/oidc/dev", data={"next": "/"}).status_code == 400
    assert fresh(db).scalar(select(Challenge.id)) is None


def test_login_page_offers_providers_as_csrf_protected_forms(client):
    page = client.get("/auth/login?next=/private").get_data(as_text=True)
    assert 'action="/auth/oidc/dev"' in page
    assert 'name="csrf_token"' in page
    assert 'name="next" value="/private"' in page
