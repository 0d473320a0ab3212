"""Verification split over several processes (``verify_chain(jobs=N)``, L05).

Each range is walked by a process of its own and the ranges are stitched by their boundary
hashes; only an intact trail is taken from them, and at any finding the walk is done again
in one process. So the property to hold is: for any trail, intact or tampered with, the
report is exactly the one-process report, and tampering is never taken as intact.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from flask_aaa.db import configure_engine
from flask_aaa.models import Base
from flask_aaa.services import audit, signing

from .test_audit_signing import KEY_A, append, rewrite_chain, sql

SPLIT = {"jobs": 3, "min_events_per_job": 1}


@pytest.fixture
def signer(engine: Any) -> Any:
    found = signing.Signer([KEY_A], checkpoint_every=5)
    signing.use(engine, found)
    yield found
    signing.use(engine, None)


@pytest.fixture
def trail(session: Session, signer: Any) -> Session:
    append(session, 30, per_commit=3)  # checkpoints at 6, 12, 15, 21, 27, 30
    session.rollback()
    return session


def both(session: Session) -> tuple[audit.VerifyReport, audit.VerifyReport]:
    session.rollback()
    one = audit.verify_chain(session)
    session.rollback()
    split = audit.verify_chain(session, **SPLIT)
    return one, split


def walked_in_parallel(session: Session) -> bool:
    """Whether the split walk alone took the trail as intact."""
    session.rollback()
    state = audit._Walk(None)
    return audit._walk_in_parallel(session, state, 5_000, None, {}, 3, 1)


def test_an_intact_trail_is_walked_in_parallel_with_the_same_report(trail):
    assert walked_in_parallel(trail)
    one, split = both(trail)
    assert one.ok
    assert split == one
    assert split.checked == 30 and split.checkpoints == 6


def test_events_appended_while_the_ranges_are_walked_are_checked_too(trail, monkeypatch):
    real = audit._walk_in_parallel

    def then_append(session: Session, *args: Any) -> bool:
        done = real(session, *args)
        with Session(session.get_bind()) as other:
            append(other, 2, start=dt.datetime(2031, 1, 1, tzinfo=dt.UTC))
        return done

    monkeypatch.setattr(audit, "_walk_in_parallel", then_append)
    trail.rollback()
    report = audit.verify_chain(trail, **SPLIT)
    # SQLite's read transaction keeps the snapshot it began with; PostgreSQL's statements
    # see the new events: either way the ranges, the rest and the head agree.
    assert report.ok
    assert report.checked == report.last_seq in (30, 32)
    monkeypatch.undo()
    trail.rollback()
    assert audit.verify_chain(trail, **SPLIT).checked == 32


def _edit(engine: Any) -> None:
    sql(engine, "UPDATE aaa_audit_events SET details = :d WHERE seq = 17", d='{"i":0}')


def _delete(engine: Any) -> None:
    sql(engine, "DELETE FROM aaa_audit_events WHERE seq = 14")


def _delete_at_a_boundary(engine: Any) -> None:
    sql(engine, "DELETE FROM aaa_audit_events WHERE seq = 11")  # ranges 1-10, 11-20, 21-30


def _swap(engine: Any) -> None:
    sql(
        engine,
        "UPDATE aaa_audit_events SET seq = -1 WHERE seq = 22",
        "UPDATE aaa_audit_events SET seq = 22 WHERE seq = 23",
        "UPDATE aaa_audit_events SET seq = 23 WHERE seq = -1",
    )


def _row_below_one(engine: Any) -> None:
    columns = ", ".join(c for c in audit.EXPORT_COLUMNS if c != "seq")
    sql(
        engine,
        f"INSERT INTO aaa_audit_events (seq, {columns}) "  # noqa: S608 (constant names)
        f"SELECT 0, {columns} FROM aaa_audit_events WHERE seq = 5",
    )


def _rewritten(engine: Any) -> None:
    rewrite_chain(engine, 8)


def _cut_tail(engine: Any) -> None:
    sql(engine, "DELETE FROM aaa_audit_events WHERE seq > 28")


@pytest.mark.parametrize(
    "tamper",
    [_edit, _delete, _delete_at_a_boundary, _swap, _row_below_one, _rewritten, _cut_tail],
)
def test_L05_tampering_gives_the_one_process_report(trail, engine, tamper):
    tamper(engine)
    one, split = both(trail)
    assert not one.ok
    assert split == one
    if tamper not in (_rewritten, _cut_tail):  # those two are for the checkpoints and the head
        assert not walked_in_parallel(trail)


def test_a_range_process_that_cannot_run_is_logged_and_the_walk_done_in_one(
    trail, monkeypatch, caplog
):
    monkeypatch.setattr(audit.sys, "executable", "/bin/false")
    report = audit.verify_chain(trail, **SPLIT)
    assert report.ok
    assert report.checked == 30
    assert "a range process failed" in caplog.text


def test_a_short_trail_or_an_in_memory_database_is_walked_in_one_process(trail, tmp_path):
    trail.rollback()
    assert not audit._walk_in_parallel(trail, audit._Walk(None), 5_000, None, {}, 3, 16)
    memory = create_engine("sqlite://")
    configure_engine(memory)
    Base.metadata.create_all(memory)
    with Session(memory) as db:
        append(db, 4)
        db.rollback()
        assert not audit._walk_in_parallel(db, audit._Walk(None), 5_000, None, {}, 2, 1)
        assert audit.verify_chain(db, **SPLIT).ok
    memory.dispose()


# -- the pieces it relies on --

_VALUES = st.lists(st.one_of(st.none(), st.integers(), st.text()), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(_VALUES)
def test_the_fast_canonical_encoding_is_the_canonical_encoding(values):
    """The chain's hashes depend on this text: the encoder built once must match
    ``JSONEncoder.encode`` for every value an event holds."""
    assert audit._encode_canonical(values) == audit._CANONICAL.encode(values)


@pytest.mark.parametrize(
    "stored",
    [
        "2030-03-01 12:00:00.000000",
        "2030-03-01 12:00:00.123456",
        "2030-03-01T12:00:00.5",
        "2030-03-01 12:00:00",
        dt.datetime(2030, 3, 1, 12, 0, 0, 7),
    ],
)
def test_stored_timestamps_read_as_text_give_the_canonical_text(stored):
    as_datetime = stored if isinstance(stored, dt.datetime) else dt.datetime.fromisoformat(stored)
    expected = audit._ts_text(as_datetime.replace(tzinfo=dt.UTC))
    assert audit._stored_ts_text(stored) == expected


def test_timestamps_are_read_as_the_driver_gives_them(engine, session, signer):
    """What the verifier reads is what the database stores (text on SQLite), not a value the
    column type converted: a stored timestamp in an unexpected shape still verifies as the
    same moment."""
    append(session, 2)
    session.rollback()
    with engine.connect() as connection:
        raw = connection.execute(text("SELECT ts FROM aaa_audit_events WHERE seq = 1")).scalar()
        via = connection.execute(
            select(audit._STORED_COLUMNS[audit._TS]).where(audit._EVENTS.c.seq == 1)
        ).scalar()
    assert type(via) is type(raw)
    assert audit.verify_chain(session).ok
