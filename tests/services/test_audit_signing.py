"""Signed integrity of the audit trail: the signed head record, checkpoints (also mirrored to
the log), key rotation, resuming verification, and retention with a signed anchor (L05).

Each attack is done as someone who can write to the database but does not hold the signing
key: they know the hash algorithm, so they can recompute hashes, but not signatures.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from flask_aaa.db import writing
from flask_aaa.errors import InvalidInput, ServiceUnavailable
from flask_aaa.models import AuditCheckpoint, AuditEvent, AuditHead
from flask_aaa.services import audit, signing
from flask_aaa.services.actors import Actor, RequestFacts
from tests.conftest import SYSTEM

KEY_A = b"a" * 32
KEY_B = b"b" * 32
START = dt.datetime(2030, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def signer(engine) -> signing.Signer:
    signer = signing.Signer([KEY_A], checkpoint_every=5)
    signing.use(engine, signer)
    yield signer
    signing.use(engine, None)


def append(session: Session, n: int, *, start: dt.datetime = START, per_commit: int = 1) -> None:
    """``n`` events one hour apart from ``start``, committed ``per_commit`` at a time."""
    with freeze_time(start) as clock:
        for i in range(n):
            with writing():
                audit.record(
                    session,
                    action="test.step",
                    actor=Actor.system("job"),
                    details={"i": i},
                    facts=RequestFacts(ip="192.0.2.1"),
                )
                if (i + 1) % per_commit == 0 or i == n - 1:
                    session.commit()
            clock.tick(dt.timedelta(hours=1))


def verify(session: Session, **kwargs) -> audit.VerifyReport:
    session.rollback()
    return audit.verify_chain(session, **kwargs)


def sql(engine, *statements: str, **params: object) -> None:
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement), params)


def marks(session: Session) -> list[tuple[int, str]]:
    session.rollback()
    return [
        tuple(r)
        for r in session.execute(
            select(AuditCheckpoint.seq, AuditCheckpoint.kind).order_by(AuditCheckpoint.seq)
        )
    ]


def rewrite_chain(engine, from_seq: int, *, details: str = '{"i":999}') -> None:
    """Edit event ``from_seq`` and recompute the hash of every event after it, then point the
    head record at the new end: a chain that is consistent in itself."""
    columns = ", ".join(audit.EXPORT_COLUMNS)
    with engine.begin() as connection:
        rows = [
            dict(r)
            for r in connection.execute(
                text(f"SELECT {columns} FROM aaa_audit_events ORDER BY seq")  # noqa: S608 (constant names)
            ).mappings()
        ]
        prev = None
        for row in rows:
            if row["seq"] < from_seq:
                prev = row["hash"]
                continue
            if row["seq"] == from_seq:
                row["details"] = details
            row["prev_hash"] = prev
            fields = dict(row)
            fields["ts"] = audit._ts_text(
                row["ts"]
                if isinstance(row["ts"], dt.datetime)
                else dt.datetime.fromisoformat(row["ts"])
            )
            row["hash"] = prev = audit.event_hash(fields)
            connection.execute(
                text(
                    "UPDATE aaa_audit_events SET details = :details, prev_hash = :prev_hash, "
                    "hash = :hash WHERE seq = :seq"
                ),
                row,
            )
        connection.execute(text("UPDATE aaa_audit_head SET hash = :h"), {"h": prev})


# -- the signed head --


def test_every_append_signs_the_head(session, signer):
    append(session, 3)
    session.rollback()
    seq, chain_hash, mac, key = session.execute(
        select(AuditHead.seq, AuditHead.hash, AuditHead.mac, AuditHead.key_id)
    ).one()
    assert seq == 3
    assert key == signer.key_id
    assert signer.verify(key, "head", seq, chain_hash, mac)
    report = verify(session)
    assert report.ok and report.signed


def test_L05_cut_off_tail_with_the_head_set_to_the_new_end_is_caught(session, engine, signer):
    """Deleting the newest events and pointing the head at the new last event needs a head
    signature the attacker cannot make."""
    append(session, 4)  # no checkpoint yet (every 5): only the head's signature protects
    session.rollback()
    third = session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == 3))
    sql(
        engine,
        "DELETE FROM aaa_audit_events WHERE seq > 3",
        "UPDATE aaa_audit_head SET seq = 3, hash = :h",
        h=third,
    )
    report = verify(session)
    assert not report.ok
    assert report.first_bad_seq == 4
    assert "signature" in report.problem


def test_L05_unsigned_head_is_refused_when_a_key_is_configured(session, engine, signer):
    append(session, 2)
    sql(engine, "UPDATE aaa_audit_head SET mac = NULL, key_id = NULL")
    report = verify(session)
    assert not report.ok
    assert "not signed" in report.problem


def test_a_trail_written_before_signing_is_signed_by_a_checkpoint(session, engine):
    """Upgrading: events written without a key leave the head unsigned; once a key is
    configured verify says so, and `audit checkpoint` signs it."""
    append(session, 3)
    signing.use(engine, signing.Signer([KEY_A], checkpoint_every=0))
    try:
        assert "not signed" in verify(session).problem
        with writing():
            audit.checkpoint(session, actor=SYSTEM)
            session.commit()
        report = verify(session)
        assert report.ok
        assert report.checkpoints == 1
    finally:
        signing.use(engine, None)


# -- checkpoints --


def test_checkpoints_are_written_every_n_events_and_mirrored(session, signer, caplog):
    caplog.set_level(logging.INFO, logger="flask_aaa.audit")
    append(session, 12, per_commit=3)  # commits end at 3, 6, 9, 12: multiples of 5 crossed
    assert marks(session) == [(6, "checkpoint"), (12, "checkpoint")]
    lines = [r.getMessage() for r in caplog.records if '"checkpoint"' in r.getMessage()]
    mirrored = [json.loads(line)["checkpoint"] for line in lines]
    assert [m["seq"] for m in mirrored] == [6, 12]
    assert all(m["key_id"] == signer.key_id and len(m["mac"]) == 64 for m in mirrored)
    report = verify(session)
    assert report.ok
    assert report.checkpoints == 2


def test_no_checkpoint_is_left_by_a_rolled_back_commit(session, signer):
    append(session, 4)
    with writing():
        audit.record(session, action="test.step", actor=SYSTEM)
        session.rollback()
    assert marks(session) == []
    append(session, 1)
    assert marks(session) == [(5, "checkpoint")]


def test_L05_chain_rewritten_with_recomputed_hashes_is_caught(session, engine, signer):
    """The attack the plain hash chain cannot see: edit event 7, recompute every hash after
    it and the head's hash. The checkpoint at 10 still holds the genuine hash."""
    append(session, 12)
    rewrite_chain(engine, 7)
    report = verify(session)
    assert not report.ok
    # The checkpoint at 5 still matches; the one at 10 does not: the edit is in 6..10.
    assert report.first_bad_seq == 6
    assert "rewritten" in report.problem and "10" in report.problem


def test_L05_rewritten_tail_after_the_last_checkpoint_is_caught_by_the_head(
    session, engine, signer
):
    append(session, 12)
    rewrite_chain(engine, 12)
    report = verify(session)
    assert not report.ok
    assert "signature" in report.problem


def test_L05_forged_checkpoint_is_caught(session, engine, signer):
    append(session, 6)
    sql(engine, "UPDATE aaa_audit_checkpoints SET mac = :m", m="0" * 64)
    report = verify(session)
    assert not report.ok
    assert report.first_bad_seq == 5
    assert "invalid signature" in report.problem


def test_L05_checkpoint_naming_a_later_event_shows_a_cut_off_tail(session, engine, signer):
    """The tail deleted and the head set back to a signed state the attacker kept from
    earlier (a replay): the checkpoint at 10 names an event that is gone."""
    append(session, 4)
    session.rollback()
    saved = session.execute(select(AuditHead.seq, AuditHead.hash, AuditHead.mac)).one()
    append(session, 8)
    sql(
        engine,
        "DELETE FROM aaa_audit_events WHERE seq > 4",
        "UPDATE aaa_audit_head SET seq = :s, hash = :h, mac = :m",
        s=saved.seq,
        h=saved.hash,
        m=saved.mac,
    )
    report = verify(session)
    assert not report.ok
    assert report.first_bad_seq == 5
    assert "cut off" in report.problem


def test_L05_replayed_head_with_checkpoints_deleted_is_caught_by_the_log_copy(
    session, engine, signer, caplog
):
    """Everything in the database rolled back to an old signed state: the tail, the
    checkpoints that named it, and the head. Only a copy outside the database can tell;
    the checkpoints mirrored to the log are that copy."""
    caplog.set_level(logging.INFO, logger="flask_aaa.audit")
    append(session, 4)
    session.rollback()
    saved = session.execute(select(AuditHead.seq, AuditHead.hash, AuditHead.mac)).one()
    append(session, 8)
    sql(
        engine,
        "DELETE FROM aaa_audit_events WHERE seq > 4",
        "DELETE FROM aaa_audit_checkpoints",
        "UPDATE aaa_audit_head SET seq = :s, hash = :h, mac = :m",
        s=saved.seq,
        h=saved.hash,
        m=saved.mac,
    )
    assert verify(session).ok  # the database alone cannot show it: why the log copy exists
    external = [
        found
        for r in caplog.records
        if (found := audit.Checkpoint.from_json_line("INFO flask_aaa.audit " + r.getMessage()))
    ]
    assert [c.seq for c in external] == [5, 10]
    report = verify(session, external=external)
    assert not report.ok
    assert report.first_bad_seq == 5


def test_checkpoint_lines_are_read_from_a_log_and_malformed_ones_refused():
    good = (
        '2030-03-01 INFO {"checkpoint":'
        '{"seq":5,"hash":"h","kind":"checkpoint","key_id":"k","mac":"m"}}'
    )
    assert audit.Checkpoint.from_json_line(good) == audit.Checkpoint(5, "h", "checkpoint", "k", "m")
    assert audit.Checkpoint.from_json_line('{"seq":3,"action":"auth.logout"}') is None
    assert audit.Checkpoint.from_json_line("not json at all") is None
    with pytest.raises(InvalidInput):
        audit.Checkpoint.from_json_line('{"checkpoint":{"seq":"five"}}')


def test_checkpoint_on_request_records_an_event_and_signs_the_end(session, signer):
    append(session, 2)
    with writing():
        event_ = audit.checkpoint(session, actor=SYSTEM)
        session.commit()
    assert event_.seq == 3
    assert json.loads(event_.details) == {"signer": signer.key_id}
    assert marks(session) == [(3, "checkpoint")]
    assert audit.checkpoint_at(session, 3)["mac"]


def test_checkpoint_without_a_key_is_refused(session):
    with pytest.raises(ServiceUnavailable):
        audit.checkpoint(session, actor=SYSTEM)


# -- key rotation --


def test_rotated_key_signs_new_checkpoints_and_the_old_one_still_verifies(session, engine):
    signing.use(engine, signing.Signer([KEY_A], checkpoint_every=5))
    try:
        append(session, 6)
        rotated = signing.Signer([KEY_B, KEY_A], checkpoint_every=5)
        signing.use(engine, rotated)
        append(session, 5)
        session.rollback()
        keys = list(session.scalars(select(AuditCheckpoint.key_id).order_by(AuditCheckpoint.seq)))
        assert keys == [signing.key_id(KEY_A), signing.key_id(KEY_B)]
        assert verify(session).ok

        signing.use(engine, signing.Signer([KEY_B], checkpoint_every=5))
        report = verify(session)
        assert not report.ok
        assert report.first_bad_seq == 5
        assert signing.key_id(KEY_A) in report.problem and "not configured" in report.problem
    finally:
        signing.use(engine, None)


def test_signatures_made_for_one_purpose_do_not_verify_another():
    signer = signing.Signer([KEY_A])
    mac = signer.sign("head", 5, "h" * 64)
    assert signer.verify(signer.key_id, "head", 5, "h" * 64, mac)
    assert not signer.verify(signer.key_id, "checkpoint", 5, "h" * 64, mac)
    assert not signer.verify(signer.key_id, "head", 6, "h" * 64, mac)
    assert not signer.verify("unknown", "head", 5, "h" * 64, mac)
    assert not signer.verify(signer.key_id, "head", 5, "h" * 64, None)


def test_key_ids_do_not_reveal_keys():
    assert signing.key_id(KEY_A) != signing.key_id(KEY_B)
    assert len(signing.key_id(KEY_A)) == 16
    assert "a" * 8 not in signing.key_id(KEY_A)


# -- resuming --


def test_resume_starts_after_the_last_matching_checkpoint(session, signer):
    append(session, 13)
    full = verify(session)
    resumed = verify(session, resume=True)
    assert full.ok and resumed.ok
    assert (resumed.first_seq, resumed.checked, resumed.last_seq) == (11, 3, 13)
    assert full.checked == 13


def test_resume_still_catches_tampering_after_the_checkpoint(session, engine, signer):
    append(session, 13)
    sql(engine, "UPDATE aaa_audit_events SET ip = '203.0.113.9' WHERE seq = 12")
    report = verify(session, resume=True)
    assert not report.ok
    assert report.first_bad_seq == 12


def test_resume_without_checkpoints_verifies_everything(session, engine):
    append(session, 3)
    report = verify(session, resume=True)
    assert report.ok and report.first_seq == 1 and report.checked == 3


# -- retention --


NOW = START + dt.timedelta(hours=40)


def purge(session: Session, days: float, **kwargs) -> audit.PurgeResult:
    session.rollback()
    with writing():
        result = audit.purge(
            session, older_than=dt.timedelta(days=days), actor=SYSTEM, now=NOW, **kwargs
        )
        session.commit()
    return result


def test_purge_deletes_old_events_keeps_an_anchor_and_still_verifies(session, signer, caplog):
    caplog.set_level(logging.INFO, logger="flask_aaa.audit")
    append(session, 30)  # events at START + 0..29 hours; NOW is START + 40 h
    result = purge(session, 1)  # cut-off START + 16 h: events 1..16 go
    assert (result.through, result.deleted) == (16, 16)
    session.rollback()
    assert session.scalar(select(func.min(AuditEvent.seq))) == 17
    last = session.scalar(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))
    assert last.action == "audit.purged"
    assert json.loads(last.details) == {"through": 16, "deleted": 16, "older_than_days": 1}
    assert (16, "anchor") in marks(session)
    assert all(seq > 16 or kind == "anchor" for seq, kind in marks(session))
    assert any('"kind":"anchor"' in r.getMessage() for r in caplog.records)
    report = verify(session)
    assert report.ok
    assert report.first_seq == 17
    assert report.last_seq == 31


def test_purge_twice_moves_the_anchor(session, signer):
    append(session, 30)
    purge(session, 1)
    with freeze_time(NOW):
        result = audit.purge(
            session,
            older_than=dt.timedelta(hours=30),
            actor=SYSTEM,
            now=NOW + dt.timedelta(hours=12),
        )
        with writing():
            session.commit()
    assert result.through > 16
    assert [kind for _seq, kind in marks(session)].count("anchor") == 1
    assert verify(session).ok


def test_purge_with_nothing_old_enough_changes_nothing(session, signer):
    append(session, 3)
    result = purge(session, 30)
    assert result.deleted == 0
    session.rollback()
    assert session.scalar(select(func.count()).select_from(AuditEvent)) == 3
    assert marks(session) == []


def test_purge_of_everything_keeps_the_purge_event(session, signer):
    append(session, 5)
    result = purge(
        session,
        1,
    )
    assert result.deleted == 5
    session.rollback()
    assert [e.action for e in session.scalars(select(AuditEvent))] == ["audit.purged"]
    assert verify(session).ok


def test_purge_refuses_a_broken_trail(session, engine, signer):
    """A purge must not launder tampering into a clean, anchored trail."""
    append(session, 30)
    sql(engine, "UPDATE aaa_audit_events SET actor_name = 'x' WHERE seq = 3")
    with pytest.raises(InvalidInput) as caught:
        purge(session, 1)
    assert "broken at event 3" in caught.value.errors["trail"]
    session.rollback()
    assert session.scalar(select(func.count()).select_from(AuditEvent)) == 30


def test_purge_refuses_less_than_a_day_and_a_missing_key(session, engine, signer):
    append(session, 3)
    with pytest.raises(InvalidInput):
        purge(session, 0.5)
    signing.use(engine, None)
    with pytest.raises(ServiceUnavailable):
        purge(session, 1)


def test_purge_cut_off_respects_a_clock_that_went_back(session, signer):
    """Events are kept from the first one not older than the cut-off: an older timestamp
    after it (the clock went back) does not make a hole in the kept trail."""
    append(session, 20)  # START .. START + 19 h
    append(session, 1, start=START)  # event 21 stamped at START again
    result = purge(session, 1)  # cut-off START + 16 h
    assert result.through == 16
    assert verify(session).ok


def test_L05_events_deleted_after_the_anchor_are_caught(session, engine, signer):
    append(session, 30)
    purge(session, 1)
    sql(engine, "DELETE FROM aaa_audit_events WHERE seq = 17")
    report = verify(session)
    assert not report.ok
    assert report.first_bad_seq == 17


def test_L05_deleted_anchor_leaves_the_purged_range_unexplained(session, engine, signer):
    append(session, 30)
    purge(session, 1)
    sql(engine, "DELETE FROM aaa_audit_checkpoints WHERE kind = 'anchor'")
    report = verify(session)
    assert not report.ok
    assert report.first_bad_seq == 1
    assert "no signed anchor" in report.problem


def test_L05_forged_anchor_is_caught(session, engine, signer):
    """Deleting old events and writing an anchor for them needs the key."""
    append(session, 30)
    session.rollback()
    tenth = session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == 10))
    sql(
        engine,
        "DELETE FROM aaa_audit_events WHERE seq <= 10",
        "INSERT INTO aaa_audit_checkpoints (seq, hash, kind, key_id, mac, created_at) "
        "VALUES (10, :h, 'anchor', :k, :m, '2030-03-01 00:00:00')",
        h=tenth,
        k=signer.key_id,
        m="f" * 64,
    )
    report = verify(session)
    assert not report.ok
    assert "invalid signature" in report.problem
