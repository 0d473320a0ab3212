"""The tutorial's app: roles, permissions and an activity log, with only its import changed.
Its permissions are honoured by Flask-AAA's own checks; its actions are on the trail."""

from __future__ import annotations

from typing import Any

import pytest

from flask_aaa import permissions_required

from .apps import tutorial_app
from .helpers import events, sign_in


@pytest.fixture
def app(database_uri: str, built: Any) -> Any:
    app, db, um = tutorial_app(database_uri)
    built(app)
    m = app.models

    @app.route("/reports")
    @permissions_required("reports:read")
    def reports() -> str:  # one of Flask-AAA's extras, on the app's own permissions
        return "reports"

    with app.app_context():
        read = m["Permission"](name="reports:read")
        admin = m["Role"](name="admin", permissions=[read])
        db.session.add_all(
            [
                m["User"](username="alice", password=um.hash_password("Password1"), roles=[admin]),
                m["User"](username="bob", password=um.hash_password("Password1")),
            ]
        )
        db.session.commit()
    return app


def test_activity_log_uses_the_apps_own_user(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "bob", "Password1")
    assert client.get("/some-action").text == "done"
    assert client.get("/activity-log").text == "some action"


def test_roles_and_permissions_are_honoured(app: Any) -> None:
    alice, bob = app.test_client(), app.test_client()
    sign_in(alice, "alice", "Password1")
    sign_in(bob, "bob", "Password1")
    assert alice.get("/admin").text == "dashboard"
    assert alice.get("/reports").text == "reports"
    assert bob.get("/admin").status_code == 302
    assert bob.get("/reports").status_code == 403


def test_permission_removed_by_the_app_is_gone_on_the_next_request(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "alice", "Password1")
    assert client.get("/reports").status_code == 200
    with app.app_context():
        db = app.extensions["aaa"].db
        role = app.models["Role"].query.filter_by(name="admin").one()
        role.permissions.clear()
        db.session.commit()
    assert client.get("/reports").status_code == 403
    assert events(app, "role.permission_removed")


def test_trail_stays_valid(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "alice", "Password1")
    client.get("/some-action")
    from flask_aaa.services import audit

    with app.app_context():
        report = audit.verify_chain(app.extensions["aaa"].db.session())
        assert report.ok
    assert events(app, "flask_user.linked")
