"""Shared fixtures: an app on a fresh database, a client, users, and CSRF-aware helpers.

The database is a new SQLite file per test, or PostgreSQL when ``AAA_TEST_DATABASE_URL`` is
set (its Flask-AAA tables are dropped and recreated per test). Rate limits use Redis when
``AAA_TEST_REDIS_URL`` is set (its database is flushed per test), else memory.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, jsonify
from flask.testing import FlaskClient
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine, event, text
from sqlalchemy.orm import Session

from flask_aaa import (
    AAA,
    Base,
    Role,
    User,
    audited,
    auth_required,
    current_user,
    login_required,
    permissions_accepted,
    permissions_required,
    public,
    roles_accepted,
    roles_required,
)
from flask_aaa.config import Settings
from flask_aaa.db import configure_engine, writing
from flask_aaa.services import accounts, rbac
from flask_aaa.services.actors import Actor, RequestFacts
from flask_aaa.services.passwords import PasswordService

DATABASE_URL = os.environ.get("AAA_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("AAA_TEST_REDIS_URL")

#: A password that passes the default policy (15+ characters, not common).
PASSWORD = "plum-harbor-violin-42"
SECRET = "test-secret-key-0123456789abcdef-0123456789"

requires_postgres = pytest.mark.skipif(
    not (DATABASE_URL or "").startswith("postgresql"),
    reason="set AAA_TEST_DATABASE_URL=postgresql+psycopg://... to run PostgreSQL tests",
)
requires_redis = pytest.mark.skipif(
    not REDIS_URL, reason="set AAA_TEST_REDIS_URL=redis://... to run Redis tests"
)


def pytest_report_header() -> list[str]:
    return [
        "flask-aaa database: "
        + (_describe(DATABASE_URL) if DATABASE_URL else "SQLite (temporary files)"),
        f"flask-aaa rate-limit storage: {_describe(REDIS_URL) if REDIS_URL else 'memory://'}",
    ]


def _describe(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//", url)


def reset_database(url: str) -> None:
    """Drop and recreate every table of the shared metadata (used for PostgreSQL)."""
    empty_database(url)
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()


def empty_database(url: str) -> None:
    """Drop everything in a PostgreSQL test database (a no-op for SQLite files)."""
    # Finalize what earlier tests left in reference cycles (pooled connections among them)
    # now, at a quiet point. Left to a later collection, their finalizers run in the middle of
    # whatever allocates next; CPython 3.11 then can fail a compile() that is under way
    # ("AST constructor recursion depth mismatch", seen in Werkzeug's rule compiler).
    gc.collect()
    engine = create_engine(url)
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # A test that left a transaction open (an unread streaming response, say) must
            # not block the next one: end every other connection to the test database.
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def dump_database(engine: Any) -> str:
    """Every row of every table, as text: for checking that a secret is stored nowhere."""
    lines: list[str] = []
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            lines.extend(repr(tuple(row)) for row in connection.execute(table.select()))
    return "\n".join(lines)


# -- the secrets sentinel (T01) --
#
# Every raw secret the library hands out during a test (API tokens, session ids, remember-me
# cookies, mailed link tokens, recovery codes) is noted; when the test's database is torn
# down, neither the database nor anything logged during the test may contain one.

_MINTED: list[str] = []
_LOGGED: list[str] = []


class _LogTap(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            _LOGGED.append(self.format(record))
        except Exception:
            _LOGGED.append(str(record.msg))


def _note_secret(module: Any, name: str, pick: Callable[[Any], list[str]], mp: Any) -> None:
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        _MINTED.extend(pick(result))
        return result

    mp.setattr(module, name, wrapper)


@pytest.fixture(autouse=True)
def _secrets_sentinel(monkeypatch: Any) -> Iterator[None]:
    from flask_aaa.services import mfa, onetime, sessions, tokens

    _MINTED.clear()
    _LOGGED.clear()
    _note_secret(tokens, "generate", lambda value: [value], monkeypatch)
    _note_secret(sessions, "create", lambda result: [result[0]], monkeypatch)
    _note_secret(sessions, "rotate", lambda result: [result[0]], monkeypatch)
    _note_secret(sessions, "issue_remember", lambda value: [value.rpartition(":")[2]], monkeypatch)
    _note_secret(
        sessions,
        "redeem_remember",
        lambda result: [result.cookie.rpartition(":")[2]] if result.cookie else [],
        monkeypatch,
    )
    _note_secret(onetime, "issue", lambda value: [value], monkeypatch)
    _note_secret(mfa, "new_recovery_code", lambda value: [value], monkeypatch)
    # Every record that reaches the root logger is seen, and the library's own loggers
    # (``flask_aaa``, ``flask_aaa.audit``) speak at every level, debug included.
    tap = _LogTap(logging.DEBUG)
    root, own = logging.getLogger(), logging.getLogger("flask_aaa")
    old_level = own.level
    root.addHandler(tap)
    own.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(tap)
        own.setLevel(old_level)
    logged = "\n".join(_LOGGED)
    leaked = [secret for secret in _MINTED if secret and secret in logged]
    assert not leaked, "a raw secret was logged"


def assert_no_secret_stored(engine: Any) -> None:
    """T01: no raw secret handed out during the test is in the database."""
    if not _MINTED:
        return
    dump = dump_database(engine)
    leaked = [secret for secret in _MINTED if secret and secret in dump]
    assert not leaked, "a raw secret is stored in the database"


def flush_redis() -> None:
    if REDIS_URL:
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    return DATABASE_URL or f"sqlite:///{tmp_path / 'aaa.db'}"


@pytest.fixture
def config(database_url: str) -> dict[str, Any]:
    """The app's config; tests change it before the ``app`` fixture is built."""
    return {
        "TESTING": True,
        "SECRET_KEY": SECRET,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "AAA_PASSWORD_HASH_PRESET": "fast",
        "AAA_RATELIMIT_STORAGE_URI": REDIS_URL or "memory://",
        "AAA_SECURE_COOKIES": False,
    }


def build_app(config: dict[str, Any]) -> Flask:
    """A small app with one view per kind of guard, as an app developer would write it."""
    app = Flask("testapp")
    app.config.update(config)
    db = SQLAlchemy(model_class=Base)
    AAA(app, db)

    @app.get("/")
    @public
    def index() -> Any:
        return "home"

    @app.get("/private")
    @login_required
    def private() -> Any:
        return jsonify(user=current_user.label)

    @app.get("/notes")
    @permissions_required("notes:read")
    def notes() -> Any:
        return "notes"

    @app.get("/notes-any")
    @permissions_accepted("notes:read", "notes:write")
    def notes_any() -> Any:
        return "notes-any"

    @app.get("/editors")
    @roles_required("editor")
    def editors() -> Any:
        return "editors"

    @app.get("/editors-or-readers")
    @roles_accepted("editor", "reader")
    def editors_or_readers() -> Any:
        return "editors-or-readers"

    @app.post("/notes")
    @permissions_required("notes:write")
    @audited("notes.created")
    def create_note() -> Any:
        return "created", 201

    @app.get("/api/notes")
    @auth_required("session", "token")
    @permissions_required("notes:read")
    def api_notes() -> Any:
        return jsonify(notes=[], user=current_user.label)

    @app.post("/api/notes")
    @auth_required("token")
    @permissions_required("notes:write")
    @audited("notes.created")
    def api_create_note() -> Any:
        return jsonify(created=True), 201

    @app.get("/api/whoami")
    @auth_required("token", scopes=("account:read",))
    def api_whoami() -> Any:
        return jsonify(user=current_user.label)

    @app.post("/notes/fail")
    @permissions_required("notes:write")
    @audited("notes.created")
    def create_note_fails() -> Any:
        return "nope", 422

    return app


@pytest.fixture
def app(config: dict[str, Any]) -> Iterator[Flask]:
    """The test app. No app context stays pushed during the test: each request gets its own
    (as in production), so nothing cached on ``g`` leaks from one request to the next."""
    flush_redis()
    if DATABASE_URL:
        reset_database(config["SQLALCHEMY_DATABASE_URI"])
    app = build_app(config)
    with app.app_context():
        if not DATABASE_URL:
            app.extensions["aaa"].db.create_all()
    yield app
    with app.app_context():
        assert_no_secret_stored(app.extensions["aaa"].db.engine)
        for engine in app.extensions["aaa"].db.engines.values():
            engine.dispose()


def app_engine(app: Flask) -> Any:
    with app.app_context():
        return app.extensions["aaa"].db.engine


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def db(app: Flask) -> Iterator[Session]:
    """A session of the test's own on the app's database, for arranging and checking state.

    Call :func:`fresh` before reading what requests wrote: on SQLite a transaction keeps
    the snapshot it started with."""
    with Session(app_engine(app)) as session:
        yield session


def fresh(session: Session) -> Session:
    """End the session's transaction so the next read sees every commit since."""
    session.rollback()
    return session


SYSTEM = Actor.system("tests")


@pytest.fixture
def make_user(app: Flask) -> Callable[..., User]:
    """Create a user (committed) with the given roles; roles are created on first use with
    the permissions given in ``perms`` ({role: [permission, ...]})."""
    st = app.extensions["aaa"]

    def make(
        username: str = "alice",
        *,
        password: str = PASSWORD,
        email: str | None = None,
        roles: tuple[str, ...] | list[str] = (),
        perms: dict[str, list[str]] | None = None,
        active: bool = True,
    ) -> User:
        with writing(), Session(app_engine(app), expire_on_commit=False) as session:
            role_objs = [ensure_role(session, name, (perms or {}).get(name, [])) for name in roles]
            user = accounts.create_user(
                session,
                actor=SYSTEM,
                settings=st.settings,
                passwords=st.passwords,
                username=username,
                email=email or f"{username}@example.org",
                password=password,
                roles=role_objs,
                facts=RequestFacts.for_cli("tests"),
            )
            user.active = active
            session.commit()
            session.refresh(user)
            _ = [r.name for r in user.roles]
        return user

    return make


def ensure_role(session: Session, name: str, permissions: list[str] = ()) -> Role:  # type: ignore[assignment]
    """The role ``name`` (created if missing) holding at least ``permissions``."""
    from sqlalchemy import select

    role = session.scalar(select(Role).where(Role.name == name))
    if role is None:
        role = rbac.create_role(session, actor=SYSTEM, name=name)
    for permission in permissions:
        rbac.add_permission(session, actor=SYSTEM, role=role, permission=permission)
    return role


@pytest.fixture
def admin(make_user: Callable[..., User]) -> User:
    """A full administrator (role ``admin`` holding ``*``)."""
    return make_user("root", roles=["admin"], perms={"admin": ["*"]})


@contextlib.contextmanager
def count_statements(app: Flask) -> Iterator[list[str]]:
    """The SQL statements the app sends to its database while the block runs."""
    statements: list[str] = []
    engine = app_engine(app)

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # SQLite's BEGIN is sent by Flask-AAA as a statement; drivers for servers send it
        # with the first query, so it is not a round trip of its own there.
        if not statement.startswith("BEGIN"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before)


def csrf_token(client: FlaskClient) -> str:
    """A CSRF token for the client's current cookie session (JSON clients' way)."""
    return str(client.get("/auth/csrf").get_json()["csrf_token"])


def form_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client: FlaskClient, login_name: str, password: str = PASSWORD, **extra: Any) -> Any:
    """Sign in through the HTML form (with its CSRF token), as a browser would."""
    token = form_token(client.get("/auth/login").get_data(as_text=True))
    return client.post(
        "/auth/login",
        data={"login": login_name, "password": password, "csrf_token": token, **extra},
    )


def post(client: FlaskClient, url: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """POST a form with a valid CSRF token for the client's current session."""
    return client.post(url, data={**(data or {}), "csrf_token": csrf_token(client)}, **kwargs)


def post_json(client: FlaskClient, url: str, body: Any = None, **kwargs: Any) -> Any:
    """POST JSON with the CSRF header, as a single-page app would."""
    headers = {"X-CSRFToken": csrf_token(client), **kwargs.pop("headers", {})}
    return client.post(url, json=body if body is not None else {}, headers=headers, **kwargs)


@pytest.fixture
def settings() -> Settings:
    """Settings for service tests (no app): fast hashing, defaults otherwise."""
    return Settings.from_config({"AAA_PASSWORD_HASH_PRESET": "fast"}, debug=False, testing=True)


@pytest.fixture
def passwords(settings: Settings) -> PasswordService:
    return PasswordService(settings)


@pytest.fixture
def engine(database_url: str) -> Iterator[Any]:
    """An engine on a fresh database with the schema, for service tests without an app."""
    if DATABASE_URL:
        reset_database(database_url)
    eng = create_engine(database_url)
    configure_engine(eng)
    if not DATABASE_URL:
        Base.metadata.create_all(eng)
    yield eng
    assert_no_secret_stored(eng)
    eng.dispose()


@pytest.fixture
def session(engine: Any) -> Iterator[Session]:
    """A session for service tests; writes use ``writing()`` like the CLI does."""
    with Session(engine) as s:
        yield s
