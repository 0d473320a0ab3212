"""A database made by Flask-User (its schema, bcrypt hashes) is linked and its users sign in."""

from __future__ import annotations

import json
from typing import Any

import bcrypt
import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine, text

from flask_aaa.compat.cli import migrate_flask_user
from flask_aaa.compat.flask_user import UserManager, UserMixin, roles_required

from .apps import TEST_CONFIG
from .helpers import events, sign_in

FLASK_USER_SCHEMA = [
    """CREATE TABLE users (id INTEGER PRIMARY KEY, is_active BOOLEAN NOT NULL DEFAULT 1,
       username VARCHAR(100) NOT NULL UNIQUE, password VARCHAR(255) NOT NULL DEFAULT '',
       email_confirmed_at DATETIME)""",
    "CREATE TABLE roles (id INTEGER PRIMARY KEY, name VARCHAR(50) UNIQUE)",
    """CREATE TABLE user_roles (id INTEGER PRIMARY KEY,
       user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
       role_id INTEGER REFERENCES roles(id) ON DELETE CASCADE)""",
]


def _bcrypt(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture
def legacy_db(tmp_path: Any) -> str:
    uri = f"sqlite:///{tmp_path / 'legacy.sqlite'}"
    engine = create_engine(uri)
    with engine.begin() as conn:
        for statement in FLASK_USER_SCHEMA:
            conn.execute(text(statement))
        conn.execute(text("INSERT INTO roles (id, name) VALUES (1, 'Admin')"))
        for uid, name in ((3, "ann"), (7, "ben")):
            conn.execute(
                text("INSERT INTO users (id, username, password) VALUES (:i, :n, :p)"),
                {"i": uid, "n": name, "p": _bcrypt("Password1")},
            )
        conn.execute(text("INSERT INTO user_roles (user_id, role_id) VALUES (3, 1)"))
    engine.dispose()
    return uri


def _app(uri: str) -> Flask:
    app = Flask(__name__)
    app.config.update(
        TEST_CONFIG,
        SQLALCHEMY_DATABASE_URI=uri,
        USER_ENABLE_EMAIL=False,
        USER_APP_NAME="Legacy",
    )
    db = SQLAlchemy(app)

    class User(db.Model, UserMixin):  # type: ignore[name-defined,misc]
        __tablename__ = "users"
        id = db.Column(db.Integer, primary_key=True)
        active = db.Column("is_active", db.Boolean(), nullable=False, server_default="1")
        username = db.Column(db.String(100), nullable=False, unique=True)
        password = db.Column(db.String(255), nullable=False, server_default="")
        email_confirmed_at = db.Column(db.DateTime())
        roles = db.relationship("Role", secondary="user_roles")

    class Role(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "roles"
        id = db.Column(db.Integer(), primary_key=True)
        name = db.Column(db.String(50), unique=True)

    class UserRoles(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "user_roles"
        id = db.Column(db.Integer(), primary_key=True)
        user_id = db.Column(db.Integer(), db.ForeignKey("users.id", ondelete="CASCADE"))
        role_id = db.Column(db.Integer(), db.ForeignKey("roles.id", ondelete="CASCADE"))

    UserManager(app, db, User)

    @app.route("/admin")
    @roles_required("Admin")
    def admin() -> str:
        return "admin"

    app.User = User  # type: ignore[attr-defined]
    return app


def _rows(uri: str) -> list[tuple[Any, ...]]:
    engine = create_engine(uri)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text("SELECT * FROM users ORDER BY id"))]
        rows += [tuple(r) for r in conn.execute(text("SELECT * FROM user_roles ORDER BY id"))]
    engine.dispose()
    return rows


def test_plan_then_apply_then_sign_in(legacy_db: str) -> None:
    app = _app(legacy_db)
    before = _rows(legacy_db)
    runner = app.test_cli_runner()
    dry = runner.invoke(migrate_flask_user)
    assert dry.exit_code == 0, dry.output
    assert "create Flask-AAA's tables" in dry.output and "link 2 of 2 users" in dry.output
    assert "Nothing changed" in dry.output
    assert "aaa_users" not in create_engine(legacy_db).dialect.get_table_names(
        create_engine(legacy_db).connect()
    )
    done = runner.invoke(migrate_flask_user, ["--apply"])
    assert done.exit_code == 0, done.output
    assert _rows(legacy_db) == before  # the app's rows are untouched
    again = runner.invoke(migrate_flask_user)
    assert "link 0 of 2 users" in again.output

    client = app.test_client()
    response = sign_in(client, "ann", "Password1")
    assert response.status_code in (302, 303)
    assert client.get("/admin").text == "admin"
    with app.app_context():
        from flask_aaa.models import User as AAAUser

        db = app.extensions["aaa"].db
        linked = db.session.get(AAAUser, 3)
        assert linked is not None and linked.password_hash.startswith("$argon2id$")
        # The upgraded hash is mirrored into the app's own column.
        assert db.session.get(app.User, 3).password == linked.password_hash
    logins = events(app, "auth.login.succeeded")
    assert any(json.loads(e.details).get("hash_upgraded") for e in logins)
    other = app.test_client()
    sign_in(other, "ben", "Password1")
    assert other.get("/admin").status_code == 302


def test_users_without_migration_are_linked_at_first_sign_in(legacy_db: str) -> None:
    app = _app(legacy_db)
    with app.app_context():
        app.extensions["aaa"].db.create_all()  # tables only; no links
    client = app.test_client()
    assert sign_in(client, "ben", "Password1").status_code in (302, 303)
    assert sign_in(app.test_client(), "ann", "wrong").status_code == 401
    assert len(events(app, "flask_user.linked")) == 2
