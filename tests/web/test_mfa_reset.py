"""An administrator turns off a user's two-factor authentication (lost device): with the
right permission only, never beyond their own rights, audited, and the user is signed out."""

from __future__ import annotations

import json

import pyotp
from sqlalchemy import select, update

from flask_aaa.db import utcnow
from flask_aaa.models import AuditEvent, User
from tests.conftest import fresh, login, post

JSON = {"Accept": "application/json"}


def enable_totp(db, username: str) -> None:
    db.execute(
        update(User)
        .where(User.username == username)
        .values(totp_secret=pyotp.random_base32(), mfa_enabled_at=utcnow())
    )
    db.commit()


def user_row(db, username: str) -> User:
    return fresh(db).scalar(select(User).where(User.username == username))


def test_admin_turns_off_2fa_and_the_user_is_signed_out(app, db, make_user, admin):
    alice = make_user("alice")
    alice_client = app.test_client()
    login(alice_client, "alice")
    enable_totp(db, "alice")
    boss = app.test_client()
    login(boss, "root")
    response = post(boss, f"/admin/users/{alice.id}/mfa/reset", headers=JSON)
    assert response.status_code == 200
    row = user_row(db, "alice")
    assert (row.totp_secret, row.mfa_enabled_at) == (None, None)
    assert alice_client.get("/private", headers=JSON).status_code == 401
    event = fresh(db).scalar(select(AuditEvent).where(AuditEvent.action == "mfa.reset"))
    assert event.actor_name == "root" and event.target_label == "alice"
    assert json.loads(event.details)["sessions_ended"] == 1


def test_cli_reset_2fa(app, db, make_user):
    make_user("alice")
    enable_totp(db, "alice")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["aaa", "reset-2fa", "alice"])
    assert result.exit_code == 0, result.output
    assert user_row(db, "alice").mfa_enabled_at is None
    again = runner.invoke(args=["aaa", "reset-2fa", "alice"])
    assert "had no two-factor" in again.output


def test_Z02_a_delegated_admin_cannot_reset_a_full_admins_2fa(app, db, make_user, admin):
    make_user("helpdesk", roles=["helpdesk"], perms={"helpdesk": ["aaa:users:write"]})
    enable_totp(db, "root")
    client = app.test_client()
    login(client, "helpdesk")
    response = post(client, f"/admin/users/{admin.id}/mfa/reset", headers=JSON)
    assert response.status_code == 403
    assert user_row(db, "root").mfa_enabled_at is not None


def test_a_plain_user_cannot_reset_anyones_2fa(app, db, make_user):
    bob = make_user("bob")
    make_user("alice")
    enable_totp(db, "bob")
    client = app.test_client()
    login(client, "alice")
    assert post(client, f"/admin/users/{bob.id}/mfa/reset", headers=JSON).status_code == 403
    assert user_row(db, "bob").mfa_enabled_at is not None
