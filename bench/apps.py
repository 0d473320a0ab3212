"""The applications the request cases run: the same routes written with each library.

Every app has ``GET /protected`` (signed in, one permission check: ``notes:read``) and, where
the library has them, ``GET /api/protected`` (the same with a bearer token), ``POST /notes``
(insert a note and record an audit event) and ``POST /notes-plain`` (the same insert, no
event). :class:`Built` carries a signed-in test client and the headers of each request.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import secrets
from collections.abc import Callable
from typing import Any

from flask import Flask, abort, jsonify, request, session
from flask.testing import FlaskClient
from sqlalchemy import Column, ForeignKey, String, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from flask_aaa import Base

PASSWORD = "plum-harbor-violin-42"
#: One per run; the HTTP case hands it to its gunicorn workers (they must accept the cookies
#: and tokens the bench process made).
SECRET_KEY = os.environ.get("BENCH_SECRET_KEY") or secrets.token_hex(32)
FS_SALT = os.environ.get("BENCH_FS_SALT") or secrets.token_hex(16)


@dataclasses.dataclass
class Built:
    """An app on its database, a signed-in client and what each kind of request sends."""

    app: Flask
    client: FlaskClient
    #: Headers of a write (a CSRF token for a cookie session).
    write_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Headers of a bearer-token request (None: the library has no tokens).
    token_headers: dict[str, str] | None = None
    close: Callable[[], None] = lambda: None


def check(response: Any, *status: int) -> None:
    """Fail loudly if a measured request did not do what it should (200 unless ``status``)."""
    if response.status_code not in (status or (200,)):
        body = response.get_data(as_text=True)[:300]
        raise AssertionError(f"{request_line(response)} answered {response.status_code}: {body}")


def request_line(response: Any) -> str:
    req = getattr(response, "request", None)
    return f"{req.method} {req.path}" if req is not None else "the request"


# -- Flask-AAA --


class BenchNote(Base):
    """The row the write cases insert (next to Flask-AAA's tables)."""

    __tablename__ = "bench_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("aaa_users.id"))
    title: Mapped[str] = mapped_column(String(120))


def aaa_app(url: str, *, serve: bool = False, **config: Any) -> Built:
    """Flask-AAA with server-side sessions (and personal access tokens) on ``url``;
    ``config`` adds to (or replaces) the app's settings, e.g. a Redis rate-limit storage.
    ``serve``: only the app, on a database the bench process has already set up."""
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy.orm import Session

    from flask_aaa import AAA, audited, auth_required, permissions_required
    from flask_aaa.db import writing
    from flask_aaa.services import accounts, rbac, tokens
    from flask_aaa.services.actors import Actor, RequestFacts

    app = Flask("bench_aaa")
    app.config.update(
        SECRET_KEY=SECRET_KEY,
        SQLALCHEMY_DATABASE_URI=url,
        AAA_SECURE_COOKIES=False,
        AAA_RATELIMIT_STORAGE_URI="memory://",
        AAA_TOKEN_LIMIT_PER_IP="1000000 per minute",
    )
    app.config.update(config)
    db = SQLAlchemy(model_class=Base)
    AAA(app, db)

    def add_note() -> None:
        from flask_aaa import current_user

        db.session.add(BenchNote(owner_id=current_user.id, title=request.form.get("title", "")))

    @app.get("/protected")
    @permissions_required("notes:read")
    def protected() -> Any:
        return "ok"

    @app.get("/api/protected")
    @auth_required("session", "token")
    @permissions_required("notes:read")
    def api_protected() -> Any:
        return jsonify(ok=True)

    @app.post("/notes")
    @permissions_required("notes:write")
    @audited("notes.created")
    def create_note() -> Any:
        add_note()
        return "created", 201

    @app.post("/notes-plain")
    @permissions_required("notes:write")
    def create_note_plain() -> Any:
        add_note()
        db.session.commit()
        return "created", 201

    if serve:
        return Built(app, app.test_client())
    system = Actor.system("bench")
    st = app.extensions["aaa"]
    with app.app_context():
        db.create_all()
        with writing(), Session(db.engine, expire_on_commit=False) as s:
            role = rbac.create_role(s, actor=system, name="writer")
            for name in ("notes:read", "notes:write"):
                rbac.add_permission(s, actor=system, role=role, permission=name)
            user = accounts.create_user(
                s,
                actor=system,
                settings=st.settings,
                passwords=st.passwords,
                username="alice",
                email="alice@example.org",
                password=PASSWORD,
                roles=[role],
                facts=RequestFacts.for_cli("bench"),
            )
            minted = tokens.mint(
                s,
                user,
                actor=Actor.of(user),
                name="bench",
                scopes=["notes:read"],
                settings=st.settings,
                facts=RequestFacts.for_cli("bench"),
            )
            s.commit()
    client = app.test_client()
    page = client.get("/auth/login").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    check(
        client.post(
            "/auth/login", data={"login": "alice", "password": PASSWORD, "csrf_token": token}
        ),
        303,
    )
    csrf = client.get("/auth/csrf").get_json()["csrf_token"]
    built = Built(
        app,
        client,
        write_headers={"X-CSRFToken": csrf},
        token_headers={"Authorization": f"Bearer {minted.secret}"},
    )

    def close() -> None:
        with app.app_context():
            for engine in db.engines.values():
                engine.dispose()

    built.close = close
    return built


# -- the tutorial pattern: Flask-Login and Flask-SQLAlchemy, an audit row of its own --


@functools.cache
def _tutorial_models() -> Any:
    from flask_sqlalchemy import SQLAlchemy

    class TutBase(DeclarativeBase):
        pass

    db: Any = SQLAlchemy(model_class=TutBase)
    user_roles = Table(
        "tut_user_roles",
        TutBase.metadata,
        Column("user_id", ForeignKey("tut_users.id"), primary_key=True),
        Column("role_id", ForeignKey("tut_roles.id"), primary_key=True),
    )
    role_permissions = Table(
        "tut_role_permissions",
        TutBase.metadata,
        Column("role_id", ForeignKey("tut_roles.id"), primary_key=True),
        Column("permission_id", ForeignKey("tut_permissions.id"), primary_key=True),
    )

    class Permission(TutBase):
        __tablename__ = "tut_permissions"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(128), unique=True)

    class Role(TutBase):
        __tablename__ = "tut_roles"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(64), unique=True)
        permissions: Mapped[list[Permission]] = relationship(secondary=role_permissions)

    class User(TutBase):
        __tablename__ = "tut_users"
        id: Mapped[int] = mapped_column(primary_key=True)
        username: Mapped[str] = mapped_column(String(64), unique=True)
        roles: Mapped[list[Role]] = relationship(secondary=user_roles)
        is_authenticated = True
        is_active = True
        is_anonymous = False

        def get_id(self) -> str:
            return str(self.id)

        def can(self, permission: str) -> bool:
            return any(p.name == permission for r in self.roles for p in r.permissions)

    class Note(TutBase):
        __tablename__ = "tut_notes"
        id: Mapped[int] = mapped_column(primary_key=True)
        owner_id: Mapped[int] = mapped_column(ForeignKey("tut_users.id"))
        title: Mapped[str] = mapped_column(String(120))

    class AuditLog(TutBase):
        __tablename__ = "tut_audit_log"
        id: Mapped[int] = mapped_column(primary_key=True)
        ts: Mapped[dt.datetime]
        user_id: Mapped[int | None]
        action: Mapped[str] = mapped_column(String(64))
        ip: Mapped[str | None] = mapped_column(String(45))
        user_agent: Mapped[str | None] = mapped_column(String(512))

    return _Models(db, User, Role, Permission, Note, AuditLog)


@dataclasses.dataclass(frozen=True)
class _Models:
    db: Any
    User: Any
    Role: Any
    Permission: Any
    Note: Any
    AuditLog: Any


def tutorial_app(url: str, *, serve: bool = False) -> Built:
    """The tutorial pattern: Flask-Login with a signed cookie session, the user loaded from
    the database on each request, the permission found through ``user.roles`` and
    ``role.permissions``, the note committed, then an ``AuditLog`` row committed on its own."""
    from flask_login import LoginManager, current_user, login_required

    m = _tutorial_models()
    db = m.db
    app = Flask("bench_tutorial")
    app.config.update(SECRET_KEY=SECRET_KEY, SQLALCHEMY_DATABASE_URI=url)
    db.init_app(app)
    manager = LoginManager(app)

    @manager.user_loader
    def load_user(user_id: str) -> Any:
        return db.session.get(m.User, int(user_id))

    def permission_required(permission: str) -> Callable[[Any], Any]:
        def decorator(view: Any) -> Any:
            @functools.wraps(view)
            @login_required
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if not current_user.can(permission):
                    abort(403)
                return view(*args, **kwargs)

            return wrapper

        return decorator

    def audit(action: str) -> None:
        db.session.add(
            m.AuditLog(
                ts=dt.datetime.now(dt.UTC).replace(tzinfo=None),
                user_id=current_user.id,
                action=action,
                ip=request.remote_addr,
                user_agent=request.headers.get("User-Agent"),
            )
        )
        db.session.commit()

    @app.get("/protected")
    @permission_required("notes:read")
    def protected() -> Any:
        return "ok"

    @app.post("/notes")
    @permission_required("notes:write")
    def create_note() -> Any:
        db.session.add(m.Note(owner_id=current_user.id, title=request.form.get("title", "")))
        db.session.commit()
        audit("notes.created")
        return "created", 201

    if serve:
        return Built(app, app.test_client())
    with app.app_context():
        db.create_all()
        perms = [m.Permission(name="notes:read"), m.Permission(name="notes:write")]
        user = m.User(username="alice", roles=[m.Role(name="writer", permissions=perms)])
        db.session.add(user)
        db.session.commit()
        user_id = user.id
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["_user_id"] = str(user_id)
        sess["_fresh"] = True

    def close() -> None:
        with app.app_context():
            db.engine.dispose()

    return Built(app, client, close=close)


# -- bare Flask: the floor --


def bare_app() -> Built:
    """The least a signed-in, permission-checked GET can be: Flask's signed cookie session
    holds the user id, the permissions are a set in memory."""
    app = Flask("bench_bare")
    app.config["SECRET_KEY"] = SECRET_KEY
    held = {"1": frozenset({"notes:read", "notes:write"})}

    @app.get("/protected")
    def protected() -> Any:
        user_id = session.get("user_id")
        if user_id is None:
            abort(401)
        if "notes:read" not in held.get(user_id, ()):
            abort(403)
        return "ok"

    client = app.test_client()
    with client.session_transaction() as sess:
        sess["user_id"] = "1"
    return Built(app, client)


def session_floor_app(url: str, *, serve: bool = False) -> Built:
    """The least a revocable server-side session can cost: bare Flask whose signed cookie
    holds a random token, looked up by its SHA-256 with one query per request through
    Flask-SQLAlchemy's session (a transaction per request, as any app's), the permissions a
    set in memory. Any library that checks the session in the database on every request
    pays at least this."""
    import hashlib

    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy import Integer, MetaData, bindparam, select

    metadata = MetaData()
    table = Table(
        "bench_floor_sessions",
        metadata,
        Column("token_hash", String(64), primary_key=True),
        Column("user_id", Integer, nullable=False),
    )
    lookup = select(table.c.user_id).where(table.c.token_hash == bindparam("token_hash"))
    held = {1: frozenset({"notes:read", "notes:write"})}
    app = Flask("bench_session_floor")
    app.config.update(SECRET_KEY=SECRET_KEY, SQLALCHEMY_DATABASE_URI=url)
    db: Any = SQLAlchemy()
    db.init_app(app)

    @app.get("/protected")
    def protected() -> Any:
        token = session.get("sid")
        if not isinstance(token, str):
            abort(401)
        digest = hashlib.sha256(token.encode()).hexdigest()
        user_id = db.session.execute(lookup, {"token_hash": digest}).scalar()
        if user_id is None:
            abort(401)
        if "notes:read" not in held.get(user_id, ()):
            abort(403)
        return "ok"

    if serve:
        return Built(app, app.test_client())
    token = secrets.token_urlsafe(32)
    with app.app_context():
        metadata.create_all(db.engine)
        with db.engine.begin() as connection:
            connection.execute(
                table.insert().values(
                    token_hash=hashlib.sha256(token.encode()).hexdigest(), user_id=1
                )
            )
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["sid"] = token

    def close() -> None:
        with app.app_context():
            db.engine.dispose()

    return Built(app, client, close=close)


# -- Flask-Security-Too --


def fs_app(url: str, *, serve: bool = False) -> Built:
    """Flask-Security-Too (its fsqla_v3 models): a session login and its auth token, with
    ``@permissions_required``; CSRF for JSON requests off, as its docs show for APIs."""
    from flask_security import (
        Security,
        SQLAlchemyUserDatastore,
        auth_required,
        hash_password,
        permissions_required,
    )

    from .peers import fs_models

    fs = fs_models()
    app = Flask("bench_fs")
    app.config.update(
        SECRET_KEY=SECRET_KEY,
        SECURITY_PASSWORD_SALT=FS_SALT,
        SQLALCHEMY_DATABASE_URI=url,
        SECURITY_TOKEN_AUTHENTICATION_HEADER="Authentication-Token",
        WTF_CSRF_ENABLED=False,
    )
    fs.db.init_app(app)
    datastore = SQLAlchemyUserDatastore(fs.db, fs.User, fs.Role)
    Security(app, datastore)

    @app.get("/protected")
    @auth_required("session")
    @permissions_required("notes:read")
    def protected() -> Any:
        return "ok"

    @app.get("/api/protected")
    @auth_required("token", "session")
    @permissions_required("notes:read")
    def api_protected() -> Any:
        return jsonify(ok=True)

    if serve:
        return Built(app, app.test_client())
    with app.app_context():
        fs.db.create_all()
        role = datastore.create_role(name="writer", permissions=["notes:read", "notes:write"])
        datastore.create_user(
            email="alice@example.org", password=hash_password(PASSWORD), roles=[role]
        )
        fs.db.session.commit()
    client = app.test_client()
    response = client.post(
        "/login?include_auth_token", json={"email": "alice@example.org", "password": PASSWORD}
    )
    check(response)
    token = response.get_json()["response"]["user"]["authentication_token"]

    def close() -> None:
        with app.app_context():
            fs.db.engine.dispose()

    return Built(app, client, token_headers={"Authentication-Token": token}, close=close)


#: The builders by name, for the HTTP case's workers (``bench.serve``).
BUILDERS: dict[str, Callable[..., Built]] = {
    "bare": lambda url, **config: bare_app(),
    "session_floor": session_floor_app,
    "tutorial": tutorial_app,
    "fs": fs_app,
    "aaa": aaa_app,
}


def cookie_header(client: FlaskClient) -> str:
    """The ``Cookie`` header the signed-in test client would send (for another client)."""
    jar = client._cookies  # Werkzeug keeps no public list of its cookies
    return "; ".join(f"{cookie.key}={cookie.value}" for cookie in jar.values())
