"""Case 4's audit trail: a chained trail of a given size, built fast once and reused.

Building it through ``audit.record`` would take hours at 1,000,000 events, so the rows are
made here (``trail_events.py``: a realistic mix of actors, actions, outcomes, addresses and
targets over 90 days), each chained with :func:`flask_aaa.services.audit.event_hash` exactly
as the seal does, inserted with Core ``executemany`` in chunks (the library's indexes are
dropped first and built after), and the head record set to the last event (signed, as the
seal signs it, when the library signs the trail). The measurements then go through the
public functions only, and ``verify_chain`` checks that the trail built here is one the
library accepts.

A trail is reused while its fingerprint (the size, this generator's version, the schema of
the audit tables, the signing key) matches; the events the cases append are cut off again
at the start of the next run. SQLite trails live in ``bench/data/`` (git-ignored),
PostgreSQL ones in a database of their own next to the bench's (``<bench>_audit_<size>``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    Text,
    create_engine,
    delete,
    func,
    inspect,
    make_url,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from flask_aaa import models
from flask_aaa.db import configure_engine, utcnow, writing
from flask_aaa.services import audit
from flask_aaa.services.actors import Actor, RequestFacts

from .trail_events import USERS, generate

try:  # the signed head and checkpoints (absent from older versions of the library)
    from flask_aaa.services import signing
except ImportError:  # pragma: no cover
    signing = None  # type: ignore[assignment]

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

#: Changing how rows are generated changes this, so that old trails are rebuilt.
GENERATOR_VERSION = 1
#: The key the bench signs its trails with (a bench secret, like the apps' SECRET_KEY).
SIGNING_SECRET = "flask-aaa bench audit signing secret, not for production"
#: What the write cases record: an actor and request facts like a signed-in request's.
BENCH_USER_ID = USERS + 1
BENCH_IP = "198.51.100.23"
BENCH_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


class BenchBase(DeclarativeBase):
    """The bench's own tables, next to the library's."""


class Item(BenchBase):
    """The small state change an audited request makes."""

    __tablename__ = "bench_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(120))


class NaiveAudit(BenchBase):
    """The tutorial's audit row: the same facts, no number, no chain, no index."""

    __tablename__ = "bench_naive_audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[dt.datetime] = mapped_column(DateTime)
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[int | None] = mapped_column(Integer)
    actor_name: Mapped[str | None] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    target_label: Mapped[str | None] = mapped_column(String(320))
    ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    request_id: Mapped[str | None] = mapped_column(String(64))
    session_hash: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[str] = mapped_column(Text)


class TrailMeta(BenchBase):
    """What the trail was built as (its fingerprint) and how long building it took."""

    __tablename__ = "bench_trail_meta"
    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


# -- the library's side --


def audit_tables() -> list[Table]:
    """The library's audit tables (events, head and, when it has them, checkpoints)."""
    names = ("AuditEvent", "AuditHead", "AuditCheckpoint")
    return [getattr(models, n).__table__ for n in names if hasattr(models, n)]


def signer() -> Any:
    """The signer the library would attach with a configured key, or None when this version
    of the library does not sign the trail."""
    if signing is None:
        return None
    return signing.Signer([signing.derive_key(SIGNING_SECRET)])


def open_engine(url: str) -> Engine:
    """An engine configured as the library configures its own (SQLite: WAL, busy timeout,
    ``BEGIN IMMEDIATE`` for writers), signing the trail when the library signs."""
    engine = create_engine(url)
    configure_engine(engine)
    found = signer()
    if found is not None:
        signing.use(engine, found)
    return engine


@functools.cache
def actor(number: int = 0) -> Actor:
    """A signed-in user (writer ``number`` of the concurrent cases gets a user of its own)."""
    user = models.User(id=BENCH_USER_ID + number, email=f"writer{number}@example.org")
    return Actor("user", f"writer{number}@example.org", user)


def facts(number: int) -> RequestFacts:
    return RequestFacts(
        ip=BENCH_IP,
        user_agent=BENCH_AGENT,
        request_id=f"{number:032x}",
        session_hash=hashlib.sha256(b"bench session").hexdigest(),
    )


def record(db: Session, number: int, writer: int = 0) -> None:
    """Record the event of write ``number`` on ``db`` (sealed when ``db`` commits)."""
    audit.record(
        db,
        action="notes.created",
        actor=actor(writer),
        target=audit.Target("note", str(number), f"note {number}"),
        details={"title": f"note {number}"},
        facts=facts(number),
    )


def naive_row(number: int, writer: int = 0) -> NaiveAudit:
    """The same event as :func:`record`, as the tutorial's unchained row."""
    return NaiveAudit(
        ts=dt.datetime.now(dt.UTC).replace(tzinfo=None),
        actor_type="user",
        actor_id=BENCH_USER_ID + writer,
        actor_name=f"writer{writer}@example.org",
        action="notes.created",
        outcome="success",
        target_type="note",
        target_id=str(number),
        target_label=f"note {number}",
        ip=BENCH_IP,
        user_agent=BENCH_AGENT,
        request_id=f"{number:032x}",
        session_hash=hashlib.sha256(b"bench session").hexdigest(),
        details=json.dumps({"title": f"note {number}"}, sort_keys=True, separators=(",", ":")),
    )


# -- the trail --


@dataclasses.dataclass
class Trail:
    """A populated trail on one database."""

    database: str
    url: str
    engine: Engine
    size: int
    #: How it came to be: built now (and how long it took) or reused.
    origin: str

    def count(self) -> int:
        with Session(self.engine) as db:
            return int(db.scalar(select(func.count()).select_from(models.AuditEvent)) or 0)

    def head(self) -> tuple[int, str]:
        with Session(self.engine) as db:
            row = db.execute(
                select(models.AuditHead.seq, models.AuditHead.hash).where(models.AuditHead.id == 1)
            ).one()
            return int(row.seq), str(row.hash)

    def close(self) -> None:
        self.engine.dispose()


def sqlite_url(directory: Path, size: int) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / f'audit-trail-{size}.db'}"


def postgres_url(bench_url: str, size: int) -> str:
    """The URL of the database of its own that holds the trail (created by the caller)."""
    parsed = make_url(bench_url)
    name = f"{parsed.database or 'bench'}_audit_{size}"
    return parsed.set(database=name).render_as_string(hide_password=False)


def fingerprint(size: int) -> str:
    """What a reusable trail must match: its size, the generator and the audit schema."""
    found = signer()
    parts = [f"v{GENERATOR_VERSION}", str(size), found.key_id if found else "unsigned"]
    parts.append(str(getattr(found, "checkpoint_every", "")))
    for table in [*audit_tables(), *BenchBase.metadata.sorted_tables]:
        columns = ",".join(f"{c.name}:{type(c.type).__name__}" for c in table.columns)
        indexes = sorted(f"{i.name}({','.join(c.name for c in i.columns)})" for i in table.indexes)
        parts.append(f"{table.name}[{columns}]{indexes}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def prepare(database: str, url: str, size: int) -> Trail:
    """The trail of ``size`` events at ``url``: reused when it matches, else built anew."""
    engine = open_engine(url)
    meta = _read_meta(engine)
    if meta.get("fingerprint") == fingerprint(size) and _intact(engine, size):
        _cut_back(engine, size)
        origin = (
            f"reused: built {meta.get('built', '?')} in {meta.get('seconds', '?')} s "
            f"({meta.get('breakdown', '')})"
        )
        return Trail(database, url, engine, size, origin)
    engine.dispose()
    _wipe(url)
    engine = open_engine(url)
    print(f"   building a trail of {size:,} events on {database} ...", flush=True)
    seconds, breakdown = populate(engine, size)
    with writing(), Session(engine) as db:
        for key, value in {
            "fingerprint": fingerprint(size),
            "built": f"{dt.datetime.now(dt.UTC):%Y-%m-%d}",
            "seconds": f"{seconds:.0f}",
            "breakdown": breakdown,
        }.items():
            db.merge(TrailMeta(key=key, value=value))
        db.commit()
    return Trail(database, url, engine, size, f"built in {seconds:.0f} s ({breakdown})")


def _read_meta(engine: Engine) -> dict[str, str]:
    if not inspect(engine).has_table(TrailMeta.__tablename__):
        return {}
    with Session(engine) as db:
        return {row.key: row.value for row in db.scalars(select(TrailMeta))}


def _intact(engine: Engine, size: int) -> bool:
    """The trail holds events 1..head without a gap, and at least ``size`` of them."""
    head_seq, _hash = Trail("", "", engine, size, "").head()
    with Session(engine) as db:
        count, low, high = db.execute(
            select(func.count(), func.min(models.AuditEvent.seq), func.max(models.AuditEvent.seq))
        ).one()
    return head_seq >= size and count == head_seq and low == 1 and high == head_seq


def _cut_back(engine: Engine, size: int) -> None:
    """Remove what earlier runs appended: events (and checkpoints) after ``size``, the
    bench's own rows; the head record back at event ``size`` (signed, when signing)."""
    events = models.AuditEvent
    with writing(), Session(engine) as db:
        db.execute(delete(Item))
        db.execute(delete(NaiveAudit))
        head_seq = db.scalar(select(models.AuditHead.seq).where(models.AuditHead.id == 1))
        if head_seq is not None and head_seq > size:
            db.execute(delete(events).where(events.seq > size))
            if hasattr(models, "AuditCheckpoint"):
                checkpoint = models.AuditCheckpoint
                db.execute(delete(checkpoint).where(checkpoint.seq > size))
            last = db.scalar(select(events.hash).where(events.seq == size))
            db.execute(
                update(models.AuditHead)
                .where(models.AuditHead.id == 1)
                .values(seq=size, hash=last, **_head_signature(size, str(last)))
            )
        db.commit()
    if engine.dialect.name == "sqlite":
        _forget_statistics(engine)
        _truncate_wal(engine)


def _forget_statistics(engine: Engine) -> None:
    """Drop the statistics an ``ANALYZE`` by hand may have left: a reused SQLite trail is
    queried as built, and as the library leaves it (it does not analyze)."""
    with writing(), engine.begin() as connection:
        found = connection.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'"
        ).first()
        if found is not None:
            connection.exec_driver_sql("DELETE FROM sqlite_stat1")


def _truncate_wal(engine: Engine) -> None:
    """Copy SQLite's write-ahead log into the database and empty it: after building (one
    transaction of every row) or cutting back, it would otherwise keep its size on disk."""
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def _head_signature(seq: int, chain_hash: str) -> dict[str, str]:
    found = signer()
    if found is None:
        return {}
    return {"mac": found.sign("head", seq, chain_hash), "key_id": found.key_id}


def _wipe(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def populate(engine: Engine, size: int, chunk: int = 10_000) -> tuple[float, str]:
    """Build the trail: tables, rows in chunks, then the indexes and the head record.
    Returns the seconds taken and what they went to."""
    started = time.perf_counter()
    models.Base.metadata.create_all(engine, tables=audit_tables())
    BenchBase.metadata.create_all(engine)
    events: Any = models.AuditEvent.__table__
    for index in events.indexes:
        index.drop(engine)
    found = signer()
    every = int(getattr(found, "checkpoint_every", 0) or 0)
    checkpoints: list[dict[str, Any]] = []
    last_hash = models.GENESIS_HASH
    building = inserting = 0.0
    with writing(), engine.begin() as connection:
        rows = generate(size)
        while True:
            mark = time.perf_counter()
            batch = list(itertools.islice(rows, chunk))
            building += time.perf_counter() - mark
            if not batch:
                break
            mark = time.perf_counter()
            connection.execute(events.insert(), batch)
            inserting += time.perf_counter() - mark
            for row in batch:
                if found is not None and every and row["seq"] % every == 0:
                    checkpoints.append(_checkpoint(found, row["seq"], row["hash"]))
            last_hash = batch[-1]["hash"]
        if checkpoints:
            connection.execute(models.AuditCheckpoint.__table__.insert(), checkpoints)
        connection.execute(
            update(models.AuditHead)
            .where(models.AuditHead.id == 1)
            .values(seq=size, hash=last_hash, **_head_signature(size, last_hash))
        )
    mark = time.perf_counter()
    for index in events.indexes:
        index.create(engine)
    if engine.dialect.name == "postgresql":
        # What autovacuum would do shortly after a bulk load, done now so that every run
        # queries tables in the same state.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    else:
        _truncate_wal(engine)
    indexing = time.perf_counter() - mark
    total = time.perf_counter() - started
    breakdown = (
        f"rows made and hashed {building:.0f} s, inserted {inserting:.0f} s, "
        f"indexes{' and VACUUM ANALYZE' if engine.dialect.name == 'postgresql' else ''} "
        f"{indexing:.0f} s"
    )
    return total, breakdown


def _checkpoint(found: Any, seq: int, chain_hash: str) -> dict[str, Any]:
    return {
        "seq": seq,
        "hash": chain_hash,
        "kind": "checkpoint",
        "key_id": found.key_id,
        "mac": found.sign("checkpoint", seq, chain_hash),
        "created_at": utcnow(),
    }
