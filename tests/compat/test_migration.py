"""A database made by Flask-User (its schema, bcrypt hashes) is linked and its users sign in."""

from __future__ import annotations

import json
from typing import Any

import bcrypt
import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    inspect,
    select,
    text,
    true,
)

from flask_aaa.compat.cli import migrate_flask_user
from flask_aaa.compat.flask_user import UserManager, UserMixin, roles_required

from .apps import TEST_CONFIG
from .helpers import events, sign_in


def _schema() -> tuple[MetaData, Table, Table, Table]:
    """The tables Flask-User's basic app creates (any database)."""
    meta = MetaData()
    users = Table(
        "users",
        meta,
        Column("id", Integer, primary_key=True),
        Column("is_active", Boolean, nullable=False, server_default=true()),
        Column("username", String(100), nullable=False, unique=True),
        Column("password", String(255), nullable=False, server_default=""),
        Column("email_confirmed_at", DateTime),
    )
    roles = Table(
        "roles",
        meta,
        Column("id", Integer, primary_key=True),
        Column("name", String(50), unique=True),
    )
    user_roles = Table(
        "user_roles",
        meta,
        Column("id", Integer, primary_key=True),
        Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE")),
        Column("role_id", Integer, ForeignKey("roles.id", ondelete="CASCADE")),
    )
    return meta, users, roles, user_roles


def _bcrypt(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture
def legacy_db(database_uri: str) -> str:
    engine = create_engine(database_uri)
    meta, users, roles, user_roles = _schema()
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(roles.insert().values(id=1, name="Admin"))
        for uid, name in ((3, "ann"), (7, "ben")):
            conn.execute(
                users.insert().values(id=uid, username=name, password=_bcrypt("Password1"))
            )
        conn.execute(user_roles.insert().values(id=1, user_id=3, role_id=1))
        if engine.dialect.name == "postgresql":
            # As in a real database: the ids came from the sequences, which are past them.
            for table in (users, roles, user_roles):
                conn.execute(
                    select(
                        func.setval(
                            func.pg_get_serial_sequence(table.name, "id"),
                            select(func.max(table.c.id)).scalar_subquery(),
                        )
                    )
                )
    engine.dispose()
    return database_uri


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


def _tables(uri: str) -> list[str]:
    engine = create_engine(uri)
    try:
        return inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_plan_then_apply_then_sign_in(legacy_db: str, built: Any) -> None:
    app = built(_app(legacy_db))
    before = _rows(legacy_db)
    runner = app.test_cli_runner()
    dry = runner.invoke(migrate_flask_user)
    assert dry.exit_code == 0, dry.output
    assert "create Flask-AAA's tables" in dry.output and "link 2 of 2 users" in dry.output
    assert "Nothing changed" in dry.output
    assert "aaa_users" not in _tables(legacy_db)
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


def test_users_without_migration_are_linked_at_first_sign_in(legacy_db: str, built: Any) -> None:
    app = built(_app(legacy_db))
    with app.app_context():
        app.extensions["aaa"].db.create_all()  # tables only; no links
    client = app.test_client()
    assert sign_in(client, "ben", "Password1").status_code in (302, 303)
    assert sign_in(app.test_client(), "ann", "wrong").status_code == 401
    assert len(events(app, "flask_user.linked")) == 2


def test_accounts_made_after_migration_get_ids_free_in_both_tables(
    legacy_db: str, built: Any
) -> None:
    """Linking wrote explicit ids (3, 7). A native ``flask aaa create-user`` must not be
    handed one of them (PostgreSQL's sequence of aaa_users did not move by itself), and the
    app's own next user must not get the id of that new account (its row is in the app's
    table, and the app's sequence is past it)."""
    app = built(_app(legacy_db))
    runner = app.test_cli_runner()
    assert runner.invoke(migrate_flask_user, ["--apply"]).exit_code == 0
    made = runner.invoke(
        args=["aaa", "create-user", "carl", "--password", "copper-meadow-lantern-4"]
    )
    assert made.exit_code == 0, made.output
    assert "(#8)" in made.output
    with app.app_context():
        db = app.extensions["aaa"].db
        assert db.session.get(app.User, 8).username == "carl"  # the app's row, same id
        own = app.User(username="dora", password=app.user_manager.hash_password("Password1"))
        db.session.add(own)
        db.session.commit()
        assert own.id == 9
    dora = app.test_client()
    assert sign_in(dora, "dora", "Password1").status_code in (302, 303)
    carl = app.test_client()
    assert sign_in(carl, "carl", "copper-meadow-lantern-4").status_code in (302, 303)
    assert carl.get("/admin").status_code == 302
    with app.app_context():
        from flask_aaa.models import User as AAAUser

        db = app.extensions["aaa"].db
        assert db.session.get(AAAUser, 9).username == "dora"
        assert db.session.get(AAAUser, 8).username == "carl"
