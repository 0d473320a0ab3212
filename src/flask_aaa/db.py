"""Database plumbing shared by the models, the services and the web layer.

SQLite needs care to behave like a server database under several writers: WAL journal,
foreign keys, a busy timeout, and write transactions that take the write lock when they
*begin* (``BEGIN IMMEDIATE``), not halfway through, where a stale read snapshot would make the
upgrade fail. Callers announce a write with :func:`writing`; everything else begins deferred.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
import weakref
from collections.abc import Iterator
from typing import Any

from sqlalchemy import DateTime, Engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable
from sqlalchemy.types import TypeDecorator

_log = logging.getLogger("flask_aaa")

_write_intent: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "aaa_write_intent", default=False
)

_configured: weakref.WeakSet[Engine] = weakref.WeakSet()

#: Milliseconds a SQLite connection waits for the write lock before it gives up.
SQLITE_BUSY_TIMEOUT_MS = 10_000


@contextlib.contextmanager
def writing() -> Iterator[None]:
    """Mark transactions begun inside this block as writers (``BEGIN IMMEDIATE`` on SQLite)."""
    token = _write_intent.set(True)
    try:
        yield
    finally:
        _write_intent.reset(token)


def set_write_intent(value: bool) -> contextvars.Token[bool]:
    """Set the write intent for the rest of this context (the web layer: per request)."""
    return _write_intent.set(value)


def reset_write_intent(token: contextvars.Token[bool]) -> None:
    _write_intent.reset(token)


def note_activity(db: Session, statement: Executable, what: str) -> None:
    """Run a best-effort bookkeeping write (when a session or a token was last used).

    On SQLite, in a request that writes, the request's own transaction already holds the
    database's write lock: a second connection would wait on it for the whole busy timeout.
    There the statement joins that transaction (in a savepoint) and commits with it; a request
    that fails loses the note, and the next request writes it again. Everywhere else it
    commits in a short transaction of its own, so that a read-only request never holds a write
    lock and a PostgreSQL row lock is never held for a whole request. Failures are logged,
    never raised: ``what`` names the write in the log line."""
    try:
        bind = db.get_bind()
        if _write_intent.get() and bind.dialect.name == "sqlite":
            with db.begin_nested():
                db.execute(statement)
            return
        with writing(), Session(bind=bind) as own:
            own.execute(statement)
            own.commit()
    except SQLAlchemyError as exc:
        _log.warning("could not record %s (%s)", what, type(exc).__name__)


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC. Every stored time goes through here."""
    return dt.datetime.now(dt.UTC)


def configure_engine(engine: Engine) -> None:
    """Apply the SQLite settings above to ``engine``; a no-op for other databases. Idempotent."""
    if engine.dialect.name != "sqlite" or engine in _configured:
        return
    _configured.add(engine)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy (not the driver) decide when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if _write_intent.get() else "BEGIN")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored as naive UTC and always returned timezone-aware in UTC.

    Naive storage gives the same text on SQLite and PostgreSQL, which the audit hash chain
    depends on; refusing naive input keeps local times out of the database.
    """

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime (db.utcnow())")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)
