"""Case 4: the audit engine at 1,000,000 events, on SQLite (a file, WAL, configured as the
library configures it) and on PostgreSQL, through the public functions of
``flask_aaa.services.audit`` (no HTTP). The trail is built once (a realistic mix of users,
actions, outcomes, addresses and targets over 90 days, chained and signed as the library
chains and signs; see ``bench/trail.py``) and reused between runs; the events the cases
append are removed again at the start of the next run.

- Audited write: N writes one after the other, each in a transaction of its own (a session
  per write, as per request): a small row inserted and ``audit.record`` (the floor: the
  same write without an event; the naive patterns: an unchained ORM audit row in the same
  transaction, and the tutorial's, committed after the write in a second transaction).
- Concurrent append: writer processes started beforehand, all released at once; the figure
  is the time per event of all the events the writers wrote together. Chained events go
  through ``audit.record`` and a commit (1 per transaction: the serialized append the
  library does per request; 100 per transaction: batch sealing); unchained rows are the
  tutorial's table with an autoincrement key. After every chained round the trail is
  checked: the count, no gap in the numbers, each new event's hash and link
  (``audit.check_event``) and the head record.
- Whole-trail passes: ``verify_chain`` (in one process, and split over two with
  ``jobs=2``, as ``flask aaa audit verify --jobs 2`` does), ``export_jsonl`` and
  ``export_csv`` over the whole trail (every line consumed), next to the floor: every event
  read in batches through the database driver (the reads verify and export make) with no
  work done on it. Peak memory of the exports: Python's allocations (``tracemalloc``) during an
  export of the first tenth of the trail and of all of it.
- A filtered page: ``audit.query`` with each filter the console and the API offer, the
  newest page and a deep page (keyset: ``before`` the event 80% of the way down the
  matches), a database session per page, as per request.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flask_aaa.config import DEFAULTS
from flask_aaa.db import writing
from flask_aaa.models import AuditEvent
from flask_aaa.services import audit

from .. import trail as trails
from .. import trail_events
from ..appenders import Writers
from ..options import postgres_database
from ..runner import Case, CaseResult, Contender, Target, at_most, faster_by, repeated

WRITERS = 4
BATCH = 100
PAGE = int(DEFAULTS["PAGE_SIZE"])
MIB = 1024 * 1024

FLOOR = "the write, no audit event (floor)"
OURS = "the write + audit.record, one transaction"
SAME_TXN = "the write + an unchained ORM audit row, one transaction"
TUTORIAL = "tutorial: the write committed, then an unchained ORM audit row committed"

CHAINED = f"{WRITERS} processes, chained, 1 event per transaction (serialized append)"
UNCHAINED = f"{WRITERS} processes, unchained rows (autoincrement), 1 per transaction"
CHAINED_1 = "1 process, chained, 1 event per transaction"
UNCHAINED_1 = "1 process, unchained rows, 1 per transaction"
BATCH_1 = f"1 process, batch sealing: {BATCH} events per transaction"
BATCH_N = f"{WRITERS} processes, batch sealing: {BATCH} events per transaction each"

READ = "read every event in batches (floor)"
VERIFY = "verify_chain"
VERIFY_2 = "verify_chain, 2 processes (--jobs 2)"
JSONL = "export_jsonl"
CSV = "export_csv"


def build(options: Any) -> list[Case]:
    size = options.pick(1_000_000, 100_000, 20_000)
    directory = options.workdir if options.tiny else trails.DATA
    found = [("SQLite", trails.sqlite_url(directory, size))]
    if options.postgres is not None:
        own = postgres_database(trails.postgres_url(options.postgres.url, size))
        if own is not None:
            found.append(("PostgreSQL", own.url))
    cases: list[Case] = []
    for database, url in found:
        trail = trails.prepare(database, url, size)
        # The pages first, on the trail as built: the events the write cases append are
        # the newest, and would push the matches of most filters down the trail.
        built = [
            _pages(trail),
            _writes(trail, options),
            _concurrent(trail, options),
            *_passes(trail, tiny=options.tiny),
        ]
        built[-1].close = trail.close
        cases += built
    return cases


def _per_write(write: Callable[[int], None], writes: int) -> Callable[[], float]:
    """A sampler: ``writes`` writes one after the other, seconds per write."""
    numbers = iter(range(1, 1 << 62))

    def sample() -> float:
        started = time.perf_counter()
        for _ in range(writes):
            write(next(numbers))
        return (time.perf_counter() - started) / writes

    return sample


def _writes(trail: trails.Trail, options: Any) -> Case:
    engine = trail.engine
    Item = trails.Item

    def plain(number: int) -> None:
        with writing(), Session(engine) as db:
            db.add(Item(owner_id=trails.BENCH_USER_ID, title=f"note {number}"))
            db.commit()

    def audited(number: int) -> None:
        with writing(), Session(engine) as db:
            db.add(Item(owner_id=trails.BENCH_USER_ID, title=f"note {number}"))
            trails.record(db, number)
            db.commit()

    def same_transaction(number: int) -> None:
        with writing(), Session(engine) as db:
            db.add(Item(owner_id=trails.BENCH_USER_ID, title=f"note {number}"))
            db.add(trails.naive_row(number))
            db.commit()

    def tutorial(number: int) -> None:
        with writing(), Session(engine) as db:
            db.add(Item(owner_id=trails.BENCH_USER_ID, title=f"note {number}"))
            db.commit()
            db.add(trails.naive_row(number))
            db.commit()

    writes = options.pick(400, 200, 20)
    indexes = len(AuditEvent.__table__.indexes)
    return Case(
        title=(
            f"Audited write without HTTP on {trail.database}, on the trail of "
            f"{trail.size:,} events (per write, {writes} writes in a row)"
        ),
        contenders=[
            Contender(FLOOR, _per_write(plain, writes)),
            Contender(OURS, _per_write(audited, writes)),
            Contender(SAME_TXN, _per_write(same_transaction, writes)),
            Contender(TUTORIAL, _per_write(tutorial, writes)),
        ],
        ours=OURS,
        floor=FLOOR,
        targets=[
            at_most(OURS, FLOOR, 1.25, "auditing adds at most 25% to the same write"),
            faster_by(OURS, TUTORIAL, 1, "at least the tutorial pattern's throughput"),
        ],
        notes=[
            "The event is built from the same facts in every pattern (actor, target, "
            "address, user agent, request id, session hash, details); the tutorial's "
            f"table has no index but its key, the library's has {indexes} more. Mirroring "
            "events to the `flask_aaa.audit` logger is off (its level is above INFO), as "
            "in the other cases.",
        ],
    )


@dataclasses.dataclass
class _Checks:
    """What the checks after the chained rounds found."""

    rounds: int = 0
    events: int = 0

    def note(self) -> str:
        return (
            f"Checked after each of the {self.rounds} chained samples: the {self.events:,} "
            "events appended in all are numbered without a gap (count = highest number = "
            "the head's), each one's hash and link hold (`check_event`) and the head "
            "record names the last one. `verify_chain` over the whole trail, in the next "
            "case, checks every event again."
        )


def check_appended(engine: Any, before: int, added: int) -> None:
    """Fail unless the ``added`` events after ``before`` are all there, without a gap,
    each with a good hash and link, and the head names the last of them."""
    with Session(engine) as db:
        count, low, high = db.execute(
            select(func.count(), func.min(AuditEvent.seq), func.max(AuditEvent.seq))
        ).one()
        head_seq, head_hash = trails.Trail("", "", engine, 0, "").head()
        if not (count == high == head_seq == before + added and low == 1):
            raise AssertionError(
                f"after appending {added} events to {before}: {count} events numbered "
                f"{low}..{high}, head at {head_seq}"
            )
        last = None
        for event_ in db.scalars(
            select(AuditEvent).where(AuditEvent.seq > before).order_by(AuditEvent.seq)
        ):
            checked = audit.check_event(db, event_)
            if not checked.ok:
                raise AssertionError(f"event {event_.seq} does not hold: {checked}")
            last = event_.hash
        if last != head_hash:
            raise AssertionError("the head record does not name the last event")


def _concurrent(trail: trails.Trail, options: Any) -> Case:
    writers = Writers(trail.url, WRITERS)
    checks = _Checks()
    single = options.pick(800, 400, 40)
    batched = options.pick(4_000, 2_000, 2 * WRITERS * BATCH)

    def sampler(kind: str, per_txn: int, processes: int, events: int) -> Callable[[], float]:
        def sample() -> float:
            before = trail.head()[0]
            elapsed = writers.run(kind, events // processes, per_txn, processes)
            if kind == "chained":
                check_appended(trail.engine, before, events)
                checks.rounds += 1
                checks.events += events
            return elapsed / events

        return sample

    case = Case(
        title=(
            f"Concurrent append on {trail.database} (per event, all writers together; "
            f"{single:,} events a sample, {batched:,} when batched)"
        ),
        contenders=[
            Contender(CHAINED, sampler("chained", 1, WRITERS, single)),
            Contender(UNCHAINED, sampler("unchained", 1, WRITERS, single)),
            Contender(CHAINED_1, sampler("chained", 1, 1, single)),
            Contender(UNCHAINED_1, sampler("unchained", 1, 1, single)),
            Contender(BATCH_1, sampler("chained", BATCH, 1, batched)),
            Contender(BATCH_N, sampler("chained", BATCH, WRITERS, batched)),
        ],
        ours=CHAINED,
        floor=UNCHAINED,
        rounds=7,
        notes=[
            "Chained events carry the same facts as in the previous case, without the "
            "write of the state change; each process has its own engine and a session per "
            "transaction. The machine has 2 cores for the writers and the database.",
        ],
    )

    def close() -> None:
        writers.close()
        case.notes.append(checks.note())

    case.close = close
    return case


def _count(engine: Any) -> int:
    with Session(engine) as db:
        return int(db.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def _read_all(db: Session, batch: int = 5_000) -> int:
    """Every event's exported columns, in ``seq`` batches, with nothing done to them: the
    same reads (through the database driver) that verify and export make."""
    stmt = select(*audit._STORED_COLUMNS).order_by(AuditEvent.seq).limit(batch)
    after, seen = 0, 0
    while rows := audit._driver_rows(db, stmt.where(AuditEvent.seq > after)):
        seen += len(rows)
        after = rows[-1][0]
    return seen


def _export(kind: str, db: Session) -> Iterator[str]:
    export = audit.export_jsonl if kind == JSONL else audit.export_csv
    return export(db, audit.AuditFilter())


def _passes(trail: trails.Trail, *, tiny: bool) -> list[Case]:
    engine = trail.engine
    counted: dict[str, int] = {}

    def events() -> int:
        if "events" not in counted:  # the trail does not change during these cases
            counted["events"] = _count(engine)
        return counted["events"]

    def timed(work: Callable[[Session], int]) -> Callable[[], float]:
        def sample() -> float:
            expected = events()
            with Session(engine) as db:
                started = time.perf_counter()
                done = work(db)
                elapsed = time.perf_counter() - started
            if done != expected:
                raise AssertionError(f"went through {done} events of {expected}")
            return elapsed / done

        return sample

    def verify(jobs: int) -> Callable[[Session], int]:
        def work(db: Session) -> int:
            report = audit.verify_chain(db, jobs=jobs, min_events_per_job=1)
            if not report.ok:
                raise AssertionError(f"the trail does not verify: {report}")
            return report.checked

        return work

    def export(kind: str) -> Callable[[Session], int]:
        def work(db: Session) -> int:
            lines = sum(1 for _ in _export(kind, db))
            return lines - (kind == CSV)  # the CSV header line

        return work

    def peak(kind: str, tenth: bool) -> Callable[[], float]:
        def sample() -> float:
            limit = events() // 10 if tenth else events() + 1
            gc.collect()
            with Session(engine) as db:
                tracemalloc.start()
                try:
                    lines = _export(kind, db)
                    for number, _line in enumerate(lines, 1):
                        if number >= limit:
                            break
                    peak_bytes = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
            return peak_bytes / MIB

        return sample

    times = Case(
        title=f"Whole-trail passes on {trail.database} (per event)",
        contenders=[
            Contender(READ, timed(_read_all)),
            Contender(VERIFY, timed(verify(1))),
            Contender(VERIFY_2, timed(verify(2))),
            Contender(JSONL, timed(export(JSONL))),
            Contender(CSV, timed(export(CSV))),
        ],
        ours=VERIFY,
        floor=READ,
        versus=False,
        rounds=1 if tiny else 3,
        targets=[
            _rate_at_least(VERIFY_2, 200_000, "verify at least 200,000 events/s (2 processes)"),
            _rate_at_least(VERIFY, 200_000, "verify at least 200,000 events/s (1 process)"),
            _rate_at_least(JSONL, 100_000, "export at least 100,000 events/s (JSON Lines)"),
            _rate_at_least(CSV, 100_000, "export at least 100,000 events/s (CSV)"),
        ],
    )
    times.close = lambda: times.notes.append(
        f"Over {events():,} events: the {trail.size:,} built and those the cases above "
        "appended (the floor reads the same columns as the exports)."
    )
    tenth = f"{trail.size // 10:,}"
    names = {
        (JSONL, True): f"{JSONL}, the first {tenth} events",
        (JSONL, False): f"{JSONL}, the whole trail",
        (CSV, True): f"{CSV}, the first {tenth} events",
        (CSV, False): f"{CSV}, the whole trail",
    }
    memory = Case(
        title=f"Peak memory of an export on {trail.database} (Python allocations)",
        contenders=[Contender(name, peak(*key)) for key, name in names.items()],
        ours=names[JSONL, False],
        unit="mib",
        rounds=1,
        targets=[_constant(names[kind, False], names[kind, True], kind) for kind in (JSONL, CSV)],
        notes=[
            "`tracemalloc` counts what Python allocates during the export (rows, dicts, "
            "lines), not the database driver's own buffers; the exports read 2,000 events "
            "a query, so their peak is one batch's worth, whatever the trail's length.",
        ],
    )
    return [times, memory]


def _rate_at_least(name: str, rate: float, text: str) -> Target:
    def measure(result: CaseResult) -> tuple[str, bool]:
        measured = 1 / result.median(name)
        return f"{measured / 1000:,.0f}k events/s", measured >= rate

    return Target(text, measure)


def _constant(whole: str, tenth: str, kind: str) -> Target:
    def measure(result: CaseResult) -> tuple[str, bool]:
        ratio = result.ratio(whole, tenth)
        return f"{ratio:.2f}x", ratio <= 1.25

    return Target(f"{kind}: the whole trail peaks within 1.25x of its first tenth", measure)


def _pages(trail: trails.Trail) -> Case:
    engine = trail.engine
    user = trail_events.WATCHED_USER
    with Session(engine) as db:
        first, last = db.execute(select(func.min(AuditEvent.ts), func.max(AuditEvent.ts))).one()
    middle = first + (last - first) / 2
    day = dt.datetime.combine(middle.date(), dt.time(), tzinfo=dt.UTC)
    filters = [
        ("no filter", audit.AuditFilter()),
        (f"actor = user {user}", audit.AuditFilter(actor_id=user)),
        ("action auth.* (common)", audit.AuditFilter(action="auth.*")),
        ("action role.* (rare)", audit.AuditFilter(action="role.*")),
        ("outcome denied", audit.AuditFilter(outcome="denied")),
        (f"ip {trail_events.home_ip(user)}", audit.AuditFilter(ip=trail_events.home_ip(user))),
        (
            "time range: one day",
            audit.AuditFilter(since=day, until=day + dt.timedelta(days=1)),
        ),
        (
            f"target user {user}",
            audit.AuditFilter(target_type="user", target_id=str(user)),
        ),
        (
            f"user {user} + auth.* + success + last 30 days",
            audit.AuditFilter(
                actor_id=user,
                action="auth.*",
                outcome="success",
                since=last - dt.timedelta(days=30),
            ),
        ),
        (f"involving user {user} (account page)", audit.AuditFilter(involving_user=user)),
    ]
    contenders = []
    for label, flt in filters:
        with Session(engine) as db:
            matches = int(db.scalar(flt.apply(select(func.count()).select_from(AuditEvent))) or 0)
            depth = int(matches * 0.8)
            deep = db.scalar(
                flt.apply(select(AuditEvent.seq))
                .order_by(AuditEvent.seq.desc())
                .offset(depth)
                .limit(1)
            )
        contenders.append(
            Contender(
                f"{label} ({matches:,} matches): newest page", _page(engine, flt, None, matches)
            )
        )
        if matches > 2 * PAGE and deep is not None:
            contenders.append(
                Contender(
                    f"{label}: deep page (after {depth:,} matches)",
                    _page(engine, flt, deep + 1, matches - depth),
                )
            )
    return Case(
        title=f"A filtered page on {trail.database} ({PAGE} events, newest first)",
        contenders=contenders,
        ours=contenders[0].name,
        versus=False,
        notes=[
            f"The trail on {trail.database}: {trail.size:,} events, {trail.origin}.",
            f"On the trail as built ({trail.size:,} events), before the cases below append "
            "to it. SQLite's tables have no statistics (the library does not run `ANALYZE`); "
            "PostgreSQL's are fresh (`VACUUM ANALYZE` after the build).",
        ],
    )


def _page(
    engine: Any, flt: audit.AuditFilter, before: int | None, left: int
) -> Callable[[], float]:
    def read() -> None:
        with Session(engine) as db:
            page = audit.query(db, flt, limit=PAGE, before=before)
            if len(page.events) < min(PAGE, left):
                raise AssertionError(f"a page of {len(page.events)} events, {left} expected")

    return repeated(read)
