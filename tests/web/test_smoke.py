"""The shortest path through the library: register, sign in, be refused, be granted, get in."""

from __future__ import annotations

from flask_aaa.db import writing
from flask_aaa.services import rbac
from flask_aaa.services.accounts import find_user
from tests.conftest import PASSWORD, SYSTEM, ensure_role, fresh, login, post


def test_register_login_refused_granted(client, app, db):
    fields = {
        "username": "dora",
        "email": "dora@example.org",
        "password": PASSWORD,
        "confirm": PASSWORD,
    }
    assert post(client, "/auth/register", fields).status_code == 303
    assert login(client, "dora").status_code == 303
    assert client.get("/notes").status_code == 403

    with writing():
        role = ensure_role(fresh(db), "reader", ["notes:read"])
        user = find_user(db, app.extensions["aaa"].settings, "dora")
        rbac.grant_role(db, actor=SYSTEM, user=user, role=role)
        db.commit()

    assert client.get("/notes").status_code == 200
