"""L06: many processes appending to the audit trail at once keep it gapless and verifiable.

Runs on SQLite (WAL, ``BEGIN IMMEDIATE``) by default and on PostgreSQL (row lock on the head)
when ``AAA_TEST_DATABASE_URL`` is set. The writers sign as the app does (the head on every
commit, a checkpoint every 100 events) and commit one to three events at a time.
"""

from __future__ import annotations

import multiprocessing

from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from flask_aaa.db import configure_engine, writing
from flask_aaa.models import AuditEvent
from flask_aaa.services import audit, signing
from flask_aaa.services.actors import Actor, RequestFacts

WRITERS = 6
EVENTS_EACH = 400
KEY = b"k" * 32


def _signer() -> signing.Signer:
    return signing.Signer([KEY], checkpoint_every=100)


def _writer(url: str, number: int, start: multiprocessing.synchronize.Event) -> None:
    engine = create_engine(url)
    configure_engine(engine)
    signing.use(engine, _signer())
    actor = Actor.system(f"writer-{number}")
    start.wait(10)
    with Session(engine) as session:
        i = 0
        while i < EVENTS_EACH:
            with writing():
                for _ in range(min(1 + (i + number) % 3, EVENTS_EACH - i)):
                    audit.record(
                        session,
                        action="test.append",
                        actor=actor,
                        details={"writer": number, "i": i},
                        facts=RequestFacts(request_id=f"{number}-{i}"),
                        mirror=False,
                    )
                    i += 1
                session.commit()
    engine.dispose()


def test_L06_concurrent_writers_keep_the_chain(engine, database_url):
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [
        context.Process(target=_writer, args=(database_url, n, start)) for n in range(WRITERS)
    ]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(300)
        assert worker.exitcode == 0
    signing.use(engine, _signer())
    with Session(engine) as session:
        total = session.scalar(select(func.count()).select_from(AuditEvent))
        low, high = session.execute(
            select(func.min(AuditEvent.seq), func.max(AuditEvent.seq))
        ).one()
        assert total == WRITERS * EVENTS_EACH
        assert (low, high) == (1, total)  # unique seq (primary key) and no gaps
        per_writer = session.execute(
            select(AuditEvent.actor_name, func.count()).group_by(AuditEvent.actor_name)
        ).all()
        assert sorted(count for _, count in per_writer) == [EVENTS_EACH] * WRITERS
        report = audit.verify_chain(session)
        assert report.ok, report
        assert report.checked == total
        assert report.signed
        # A checkpoint each time a commit passed a multiple of 100 (commits hold up to 3).
        assert report.checkpoints == total // 100
