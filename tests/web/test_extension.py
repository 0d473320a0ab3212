"""The extension itself: start-up checks, several apps, the app's own models and events."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import select

from flask_aaa import AAA, Base, ConfigurationError, login_required, record_event
from flask_aaa.models import AuditEvent
from tests.conftest import SECRET, fresh, login, post


def make(config: dict, tmp_path) -> Flask:
    app = Flask("x")
    app.config.update({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'x.db'}", **config})
    return app


@pytest.mark.parametrize("key", [None, "", "dev", "changeme", "short-key", "a" * 40])
def test_C01_refuses_to_start_in_production_with_a_weak_key(tmp_path, key):
    app = make({} if key is None else {"SECRET_KEY": key}, tmp_path)
    with pytest.raises(RuntimeError, match="SECRET_KEY") as info:
        AAA(app, SQLAlchemy(model_class=Base))
    if key:
        assert key not in str(info.value)


def test_C01_starts_in_production_with_a_strong_key(tmp_path):
    app = make({"SECRET_KEY": SECRET}, tmp_path)
    AAA(app, SQLAlchemy(model_class=Base))
    assert app.config["SESSION_COOKIE_NAME"] == "__Host-aaa_session"
    assert app.config["SESSION_COOKIE_SECURE"] is True


def test_debug_mode_starts_without_a_strong_key(tmp_path):
    app = make({"SECRET_KEY": "dev", "DEBUG": True}, tmp_path)
    AAA(app, SQLAlchemy(model_class=Base))
    assert app.config["SESSION_COOKIE_NAME"] == "aaa_session"


def test_a_misspelt_setting_is_an_error_with_a_hint(tmp_path):
    app = make({"TESTING": True, "SECRET_KEY": SECRET, "AAA_PASSWORD_MIN_LENGHT": 12}, tmp_path)
    with pytest.raises(ConfigurationError, match="AAA_PASSWORD_MIN_LENGTH"):
        AAA(app, SQLAlchemy(model_class=Base))


def test_one_extension_object_serves_two_apps(tmp_path):
    db = SQLAlchemy(model_class=Base)
    aaa = AAA(db=db)
    first = make({"TESTING": True, "SECRET_KEY": SECRET, "AAA_APP_NAME": "One"}, tmp_path)
    second = Flask("y")
    second.config.update(
        TESTING=True,
        SECRET_KEY=SECRET,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'y.db'}",
        AAA_APP_NAME="Two",
    )
    aaa.init_app(first)
    aaa.init_app(second)
    assert first.extensions["aaa"].settings.app_name == "One"
    assert second.extensions["aaa"].settings.app_name == "Two"
    assert first.extensions["aaa"].limiter is not second.extensions["aaa"].limiter


def test_record_event_commits_with_the_apps_own_change(app, client, make_user, db):
    @app.post("/ping")
    @login_required
    def ping():
        record_event("app.pinged", details={"count": 1})
        app.extensions["aaa"].db.session.commit()
        return "pong"

    make_user("alice")
    login(client, "alice")
    assert post(client, "/ping").status_code == 200
    event = fresh(db).scalar(select(AuditEvent).where(AuditEvent.action == "app.pinged"))
    assert event is not None
    assert event.actor_name == "alice" and event.details == '{"count":1}'


def test_apps_add_columns_to_users_and_point_at_them(tmp_path):
    """Run in a fresh interpreter: adding a column changes the shared model for the process."""
    script = textwrap.dedent(
        """
        import os
        from flask import Flask
        from flask_sqlalchemy import SQLAlchemy
        from sqlalchemy import ForeignKey, String, select
        from sqlalchemy.orm import Mapped, mapped_column, relationship
        from flask_aaa import AAA, Base, User

        User.nickname = mapped_column(String(40), nullable=True)
        db = SQLAlchemy(model_class=Base)

        class Note(db.Model):
            __tablename__ = "notes"
            id: Mapped[int] = mapped_column(primary_key=True)
            owner_id: Mapped[int] = mapped_column(ForeignKey("aaa_users.id"))
            owner: Mapped[User] = relationship()

        app = Flask("custom")
        app.config.update(TESTING=True, SECRET_KEY=os.environ["KEY"],
                          SQLALCHEMY_DATABASE_URI=os.environ["URL"])
        AAA(app, db)
        with app.app_context():
            db.create_all()
            user = User(username="zed", username_key="zed", nickname="Z")
            db.session.add(user)
            db.session.flush()
            db.session.add(Note(owner_id=user.id))
            db.session.commit()
            note = db.session.scalar(select(Note))
            print(note.owner.nickname)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={"KEY": SECRET, "URL": f"sqlite:///{tmp_path / 'c.db'}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Z"
