"""``flask aaa audit ...`` through Click's runner: verify (signed, resumed, with the log's
checkpoints), checkpoint, purge and export in both formats (L02, L05)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select, text

from flask_aaa import Actor, Target
from flask_aaa.db import writing
from flask_aaa.models import AuditCheckpoint, AuditEvent
from flask_aaa.services import audit, signing
from tests.conftest import build_app, fresh


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(args=["aaa", "audit", *args], input=input)

    return invoke


@pytest.fixture
def aaa(app):
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(args=["aaa", *args])


def test_verify_reports_signatures_and_checkpoints(cli, aaa):
    for n in range(3):
        aaa("create-role", f"r{n}")
    assert cli("checkpoint").exit_code == 0
    result = cli("verify")
    assert result.exit_code == 0, result.output
    assert "OK: 4 events" in result.output
    assert "1 signed checkpoints matched, head signature valid" in result.output


def test_L05_verify_in_several_processes_gives_the_same_answers(cli, aaa, app, monkeypatch):
    monkeypatch.setattr(audit, "PARALLEL_MIN_EVENTS", 1)
    for n in range(6):
        aaa("create-role", f"r{n}")
    one, split = cli("verify"), cli("verify", "--jobs", "3")
    assert split.exit_code == one.exit_code == 0, split.output
    assert split.output == one.output
    with app.app_context():
        engine = app.extensions["aaa"].db.engine
        with engine.begin() as connection:
            connection.execute(text("UPDATE aaa_audit_events SET actor_name = 'x' WHERE seq = 4"))
    one, split = cli("verify"), cli("verify", "--jobs", "3")
    assert split.exit_code == one.exit_code == 1
    assert split.output == one.output
    assert "BROKEN at seq 4" in split.output
    assert cli("verify", "--jobs", "0").exit_code == 2


def test_checkpoint_prints_the_signed_line_for_safekeeping(cli, aaa, db):
    aaa("create-role", "r")
    result = cli("checkpoint")
    assert result.exit_code == 0, result.output
    line = json.loads(result.output)
    assert line["checkpoint"]["seq"] == 2
    assert line["checkpoint"]["kind"] == "checkpoint"
    assert len(line["checkpoint"]["mac"]) == 64
    event = fresh(db).scalar(select(AuditEvent).where(AuditEvent.seq == 2))
    assert event.action == "audit.checkpoint"
    assert event.actor_name.startswith("cli:")


def test_L05_verify_with_the_log_catches_a_rolled_back_database(cli, aaa, db, tmp_path, caplog):
    """Tail, checkpoints and head all rolled back to an old signed state: the database
    alone verifies, the checkpoints kept in the log do not match it."""
    caplog.set_level(logging.INFO, logger="flask_aaa.audit")
    aaa("create-role", "r1")
    session = fresh(db)
    saved = session.execute(text("SELECT seq, hash, mac FROM aaa_audit_head")).one()
    aaa("create-role", "r2")
    cli("checkpoint")
    log = tmp_path / "audit.log"
    log.write_text(
        "".join(f"INFO flask_aaa.audit {r.getMessage()}\n" for r in caplog.records),
        encoding="utf-8",
    )
    session = fresh(db)
    session.execute(text("DELETE FROM aaa_audit_events WHERE seq > 1"))
    session.execute(text("DELETE FROM aaa_audit_checkpoints"))
    session.execute(
        text("UPDATE aaa_audit_head SET seq = :s, hash = :h, mac = :m"),
        {"s": saved.seq, "h": saved.hash, "m": saved.mac},
    )
    session.commit()
    assert cli("verify").exit_code == 0
    result = cli("verify", "--checkpoints", str(log))
    assert result.exit_code == 1
    assert "BROKEN at seq 2" in result.output and "cut off" in result.output


def test_verify_resume_starts_after_the_last_checkpoint(cli, aaa):
    aaa("create-role", "r1")
    cli("checkpoint")
    aaa("create-role", "r2")
    result = cli("verify", "--resume")
    assert result.exit_code == 0, result.output
    assert "OK: events 3 to 3" in result.output


def test_purge_keeps_recent_events_and_still_verifies(cli, aaa, db):
    with freeze_time(dt.datetime.now(dt.UTC) - dt.timedelta(days=40)):
        aaa("create-role", "old1")
        aaa("create-role", "old2")
    aaa("create-role", "new")
    result = cli("purge", "--older-than", "30", "--yes")
    assert result.exit_code == 0, result.output
    assert "Purged 2 events (up to seq 2)" in result.output
    session = fresh(db)
    assert session.scalar(select(func.min(AuditEvent.seq))) == 3
    purged = session.scalar(select(AuditEvent).where(AuditEvent.action == "audit.purged"))
    assert json.loads(purged.details)["deleted"] == 2
    assert session.scalar(select(AuditCheckpoint.kind)) == "anchor"
    verified = cli("verify")
    assert verified.exit_code == 0, verified.output
    assert "events 3 to 4" in verified.output


def test_purge_asks_first_and_a_no_changes_nothing(cli, aaa, db):
    with freeze_time(dt.datetime.now(dt.UTC) - dt.timedelta(days=40)):
        aaa("create-role", "old")
    result = cli("purge", "--older-than", "30", input="n\n")
    assert result.exit_code == 1
    assert fresh(db).scalar(select(func.count()).select_from(AuditEvent)) == 1


@pytest.mark.parametrize("args", [(), ("--older-than", "0"), ("--older-than", "x")])
def test_purge_needs_a_valid_age(cli, args):
    result = cli("purge", "--yes", *args)
    assert result.exit_code == 2


def test_purge_uses_the_configured_retention(config, request):
    config["AAA_AUDIT_RETENTION_DAYS"] = 30
    app = request.getfixturevalue("app")
    runner = app.test_cli_runner()
    with freeze_time(dt.datetime.now(dt.UTC) - dt.timedelta(days=31)):
        runner.invoke(args=["aaa", "create-role", "old"])
    result = runner.invoke(args=["aaa", "audit", "purge", "--yes"])
    assert result.exit_code == 0, result.output
    assert "Purged 1 events" in result.output


def test_purge_refuses_a_broken_trail(cli, aaa, db):
    with freeze_time(dt.datetime.now(dt.UTC) - dt.timedelta(days=40)):
        aaa("create-role", "old")
    aaa("create-role", "new")
    session = fresh(db)
    session.execute(text("UPDATE aaa_audit_events SET actor_name = 'x' WHERE seq = 1"))
    session.commit()
    result = cli("purge", "--older-than", "30", "--yes")
    assert result.exit_code == 1
    assert "broken at event 1" in result.output
    assert fresh(db).scalar(select(func.count()).select_from(AuditEvent)) == 2


def test_L02_export_csv_guards_formulas_and_filters(cli, db, tmp_path):
    session = fresh(db)
    with writing():
        for number, label in ((1, "=HYPERLINK(1)"), (2, "plain")):
            audit.record(
                session,
                action="notes.renamed",
                actor=Actor.system("@SUM(A1)"),
                target=Target("note", str(number), label),
            )
        session.commit()
    target = tmp_path / "trail.csv"
    result = cli("export", "--format", "csv", "--output", str(target))
    assert result.exit_code == 0, result.output
    assert "Exported 2 events." in result.output
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"), newline="")))
    assert [r["target_label"] for r in rows] == ["'=HYPERLINK(1)", "plain"]
    assert {r["actor_name"] for r in rows} == {"'@SUM(A1)"}
    assert target.read_bytes().count(b"\r\n") == 3
    only = cli("export", "--format", "csv", "--target", "note:2")
    assert [r["target_label"] for r in csv.DictReader(io.StringIO(only.stdout))] == ["plain"]


def test_export_jsonl_by_ip_and_target(cli, aaa):
    aaa("create-role", "a")
    assert cli("export", "--ip", "203.0.113.1").stdout == ""
    lines = cli("export", "--target", "role").stdout.splitlines()
    assert [json.loads(line)["target_label"] for line in lines] == ["a"]


def test_configured_signing_key_signs_the_trail(config, request):
    config["AAA_AUDIT_SIGNING_KEYS"] = ["n" * 32, "o" * 32]
    request.getfixturevalue("app").test_cli_runner().invoke(args=["aaa", "create-role", "r"])
    key = fresh(request.getfixturevalue("db")).scalar(text("SELECT key_id FROM aaa_audit_head"))
    assert key == signing.key_id(b"n" * 32)


def test_secret_key_rotated_the_flask_way_keeps_old_checkpoints_verifiable(config, request):
    """Without dedicated keys the signing key comes from SECRET_KEY; moving the old
    SECRET_KEY to SECRET_KEY_FALLBACKS keeps what it signed verifiable."""
    old = config["SECRET_KEY"]
    first = request.getfixturevalue("app")
    runner = first.test_cli_runner()
    runner.invoke(args=["aaa", "create-role", "r"])
    assert runner.invoke(args=["aaa", "audit", "checkpoint"]).exit_code == 0

    rotated = build_app({**config, "SECRET_KEY": "n" * 64, "SECRET_KEY_FALLBACKS": [old]})
    result = rotated.test_cli_runner().invoke(args=["aaa", "audit", "verify"])
    assert result.exit_code == 0, result.output
    forgotten = build_app({**config, "SECRET_KEY": "n" * 64})
    result = forgotten.test_cli_runner().invoke(args=["aaa", "audit", "verify"])
    assert result.exit_code == 1
    assert "not configured" in result.output
