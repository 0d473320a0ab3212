"""The audit trail: record, seal into a hash chain, verify, query and export.

Recording is two steps. :func:`record` builds the event and parks it on the caller's
session; it gets no number yet. When that session commits, a ``before_commit`` hook locks the
one-row ``aaa_audit_head`` (``SELECT ... FOR UPDATE`` on PostgreSQL, the write lock on
SQLite), numbers the parked events, chains their hashes and inserts them in the same
transaction as the action. So the action and its event commit together or not at all, the
lock is held only for the few statements of the commit, and concurrent writers never break
the chain or leave a gap. After the commit each event is mirrored as one JSON line to the
``flask_aaa.audit`` logger.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Select, and_, event, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ..db import utcnow, writing
from ..errors import InvalidInput, ServiceUnavailable
from ..models import GENESIS_HASH, AuditEvent, AuditHead, Permission, Role, User
from .actors import Actor, RequestFacts

logger = logging.getLogger("flask_aaa.audit")
_errors = logging.getLogger("flask_aaa")

OUTCOMES = ("success", "failure", "denied")

_PENDING = "aaa_audit_pending"
_SEALED = "aaa_audit_sealed"

#: Words that, as a part of a ``details`` key (``new_password``, ``accessToken``,
#: ``recovery-codes``), would put a secret into the trail.
_SECRET_WORDS = frozenset(
    {"password", "passwd", "pwd", "secret", "token", "otp", "totp", "code", "key", "cookie"}
)
_KEY_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")

#: Order of the fields in the hashed encoding. Changing it breaks every existing chain.
_HASHED_FIELDS = (
    "seq",
    "ts",
    "actor_type",
    "actor_id",
    "actor_name",
    "action",
    "outcome",
    "target_type",
    "target_id",
    "target_label",
    "ip",
    "user_agent",
    "request_id",
    "session_hash",
    "details",
    "prev_hash",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What an action was done to."""

    type: str
    id: str | None = None
    label: str | None = None

    @classmethod
    def of(cls, obj: object) -> Target:
        if isinstance(obj, Target):
            return obj
        if isinstance(obj, User):
            return cls("user", str(obj.id), obj.label)
        if isinstance(obj, Role):
            return cls("role", str(obj.id), obj.name)
        if isinstance(obj, Permission):
            return cls("permission", str(obj.id), obj.name)
        raise TypeError(f"cannot describe {type(obj).__name__} as an audit target; pass a Target")


def record(
    db: Session,
    *,
    action: str,
    actor: Actor,
    outcome: str = "success",
    target: object | None = None,
    details: Mapping[str, Any] | None = None,
    facts: RequestFacts | None = None,
    mirror: bool = True,
) -> AuditEvent:
    """Add an event to ``db``'s current transaction. It is numbered, chained and written when
    ``db`` commits, and discarded if ``db`` rolls back (as the action it records is)."""
    event_ = _build(action, actor, outcome, target, details, facts)
    _park(db, event_, mirror)
    return event_


def _park(db: Session, event_: AuditEvent, mirror: bool) -> None:
    if not db.in_transaction():
        # Start the session's transaction (no SQL is sent) so that a rollback before any
        # query still ends it, and with it this event.
        db.begin()
    db.info.setdefault(_PENDING, []).append((event_, mirror))


def _build(
    action: str,
    actor: Actor,
    outcome: str,
    target: object | None,
    details: Mapping[str, Any] | None,
    facts: RequestFacts | None,
) -> AuditEvent:
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}")
    if not action or len(action) > 64:
        raise ValueError("action must be a dotted name of at most 64 characters")
    facts = facts or RequestFacts()
    if facts.impersonator_id is not None:
        # Both identities, always: the user the action is attributed to (the actor) and the
        # administrator acting as them. Inside ``details``, so the hashed encoding is unchanged.
        details = {
            **(details or {}),
            "impersonator": {"id": facts.impersonator_id, "name": facts.impersonator_name},
        }
    tgt = Target.of(target) if target is not None else None
    event_ = AuditEvent(
        ts=utcnow(),
        actor_type=actor.kind,
        actor_id=actor.user_id,
        actor_name=_clip(actor.name, 320),
        action=action,
        outcome=outcome,
        target_type=tgt.type if tgt else None,
        target_id=_clip(tgt.id, 64) if tgt else None,
        target_label=_clip(tgt.label, 320) if tgt else None,
        ip=_clip(facts.ip, 45),
        user_agent=_clip(facts.user_agent, 512),
        request_id=_clip(facts.request_id, 64),
        session_hash=facts.session_hash,
        details=_encode_details(details or {}),
    )
    return event_


@contextlib.contextmanager
def apart(db: Session) -> Iterator[None]:
    """A transaction of its own for a failed or denied attempt: roll back what the caller
    had (the attempt failed, so nothing of it may be kept; on SQLite it may also hold the
    write lock), run the block as a writer and commit. If that fails, fail closed: 503."""
    db.rollback()
    db.info.pop(_PENDING, None)
    try:
        with writing():
            yield
            db.commit()
    except SQLAlchemyError as exc:
        db.rollback()
        _errors.error("audit trail unavailable; refusing the attempt (%s)", type(exc).__name__)
        raise ServiceUnavailable("The audit trail is unavailable. Try again shortly.") from exc


def record_apart(
    db: Session,
    *,
    action: str,
    actor: Actor,
    outcome: str,
    target: object | None = None,
    details: Mapping[str, Any] | None = None,
    facts: RequestFacts | None = None,
    mirror: bool = True,
) -> None:
    """Record a failed or denied attempt in a transaction of its own (see :func:`apart`)."""
    # Read everything the event needs before the rollback expires the caller's objects.
    event_ = _build(action, actor, outcome, target, details, facts)
    with apart(db):
        _park(db, event_, mirror)


def event_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON encoding of an event's hashed fields."""
    values = [fields[name] for name in _HASHED_FIELDS]
    encoded = json.dumps(values, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def _fields(event_: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event_.seq,
        "ts": _ts_text(event_.ts),
        "actor_type": event_.actor_type,
        "actor_id": event_.actor_id,
        "actor_name": event_.actor_name,
        "action": event_.action,
        "outcome": event_.outcome,
        "target_type": event_.target_type,
        "target_id": event_.target_id,
        "target_label": event_.target_label,
        "ip": event_.ip,
        "user_agent": event_.user_agent,
        "request_id": event_.request_id,
        "session_hash": event_.session_hash,
        "details": event_.details,
        "prev_hash": event_.prev_hash,
    }


def _ts_text(ts: dt.datetime) -> str:
    # Microseconds are kept by both databases; the canonical form is naive UTC ISO 8601.
    return ts.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


@event.listens_for(Session, "before_commit")
def _seal(db: Session) -> None:
    pending: list[tuple[AuditEvent, bool]] | None = db.info.pop(_PENDING, None)
    if not pending:
        return
    head_seq, head_hash = db.execute(
        select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1).with_for_update()
    ).one()
    for event_, _mirror in pending:
        head_seq += 1
        event_.seq = head_seq
        event_.prev_hash = head_hash
        event_.hash = head_hash = event_hash(_fields(event_))
    db.add_all(event_ for event_, _mirror in pending)
    db.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=head_seq, hash=head_hash))
    db.info.setdefault(_SEALED, []).extend(pending)


@event.listens_for(Session, "after_commit")
def _mirror(db: Session) -> None:
    sealed: list[tuple[AuditEvent, bool]] | None = db.info.pop(_SEALED, None)
    if not sealed or not logger.isEnabledFor(logging.INFO):
        return
    for event_, mirror in sealed:
        if mirror:
            # ensure_ascii: CR, LF and every other control character are escaped, so one
            # event is always exactly one line, whatever its text fields hold.
            logger.info(json.dumps(as_dict(event_), ensure_ascii=True, separators=(",", ":")))


@event.listens_for(Session, "after_soft_rollback")
def _forget(db: Session, _transaction: Any) -> None:
    db.info.pop(_PENDING, None)
    db.info.pop(_SEALED, None)


def as_dict(event_: AuditEvent) -> dict[str, Any]:
    """The event as plain JSON-ready data (``details`` decoded)."""
    data = _fields(event_)
    data["ts"] = data["ts"] + "Z"
    data["details"] = json.loads(event_.details or "{}")
    data["hash"] = event_.hash
    return data


# -- verification --


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of :func:`verify_chain`. ``first_bad_seq`` is None when the chain holds."""

    checked: int
    last_seq: int
    first_bad_seq: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None and self.problem is None


def verify_chain(db: Session, *, batch: int = 5_000) -> VerifyReport:
    """Recompute every event's hash in ``seq`` order and check the links between them.

    Finds an edited event (its hash no longer matches), a deleted or inserted event (a gap or
    an extra number, a broken link), a reordering (hashes cover ``seq``), and a cut-off tail
    (the head row no longer matches the last event)."""
    expected_seq, prev = 1, GENESIS_HASH
    checked = 0
    columns = [getattr(AuditEvent, name) for name in _HASHED_FIELDS] + [AuditEvent.hash]
    lower = None  # the first batch has no lower bound, so a row numbered below 1 is seen
    while True:
        stmt = select(*columns).order_by(AuditEvent.seq).limit(batch)
        if lower is not None:
            stmt = stmt.where(AuditEvent.seq >= lower)
        rows = db.execute(stmt).all()
        if not rows:
            break
        for row in rows:
            fields = dict(zip(_HASHED_FIELDS, row, strict=False))
            seq = fields["seq"]
            if seq < expected_seq:
                return VerifyReport(checked, seq, seq, f"event {seq} is numbered out of sequence")
            if seq != expected_seq:
                return VerifyReport(
                    checked, expected_seq - 1, expected_seq, f"event {expected_seq} is missing"
                )
            if fields["prev_hash"] != prev:
                return VerifyReport(checked, seq, seq, "link to the previous event is broken")
            fields["ts"] = _ts_text(fields["ts"])
            if event_hash(fields) != row.hash:
                return VerifyReport(checked, seq, seq, "event content does not match its hash")
            prev = row.hash
            expected_seq += 1
            checked += 1
        lower = expected_seq
    last_seq = expected_seq - 1
    head_seq, head_hash = db.execute(
        select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)
    ).one()
    if head_seq != last_seq or head_hash != prev:
        # More events than the head knows: the first unknown one is bad. Fewer: the first
        # missing one is. The same number but another hash: the last one was replaced.
        bad = head_seq + 1 if last_seq > head_seq else min(last_seq + 1, head_seq)
        if head_seq == last_seq:
            bad = last_seq
        return VerifyReport(
            checked,
            last_seq,
            bad,
            "the trail's end does not match the head record (events cut off or added)",
        )
    return VerifyReport(checked, last_seq)


# -- query and export --


@dataclasses.dataclass(frozen=True, slots=True)
class AuditFilter:
    """Filters for listing and exporting events. Every field is bound as a parameter."""

    actor_id: int | None = None
    #: A user's own view: what they did, and sign-in attempts on their account by others.
    involving_user: int | None = None
    action: str | None = None  # exact, or a prefix when it ends with "." or "*"
    outcome: str | None = None
    ip: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    #: What was acted on: a type (``user``, ``role``, ...) and, optionally, its id.
    target_type: str | None = None
    target_id: str | None = None

    def __post_init__(self) -> None:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise InvalidInput({"outcome": f"Use one of {', '.join(OUTCOMES)}."})
        if self.since and self.until and self.since > self.until:
            raise InvalidInput({"since": "The start of the range is after its end."})

    def apply(self, stmt: Select[Any]) -> Select[Any]:
        if self.actor_id is not None:
            stmt = stmt.where(AuditEvent.actor_id == self.actor_id)
        if self.involving_user is not None:
            stmt = stmt.where(
                or_(
                    AuditEvent.actor_id == self.involving_user,
                    and_(
                        AuditEvent.target_type == "user",
                        AuditEvent.target_id == str(self.involving_user),
                        AuditEvent.action.startswith("auth."),
                    ),
                )
            )
        if self.action:
            if self.action.endswith(("*", ".")):
                prefix = self.action.rstrip("*")
                stmt = stmt.where(AuditEvent.action.startswith(prefix, autoescape=True))
            else:
                stmt = stmt.where(AuditEvent.action == self.action)
        if self.outcome:
            stmt = stmt.where(AuditEvent.outcome == self.outcome)
        if self.ip:
            stmt = stmt.where(AuditEvent.ip == self.ip)
        if self.since:
            stmt = stmt.where(AuditEvent.ts >= self.since)
        if self.until:
            stmt = stmt.where(AuditEvent.ts <= self.until)
        if self.target_type:
            stmt = stmt.where(AuditEvent.target_type == self.target_type)
        if self.target_id:
            stmt = stmt.where(AuditEvent.target_id == self.target_id)
        return stmt


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """One page of events, newest first; pass ``next_before`` back to get the next page."""

    events: Sequence[AuditEvent]
    next_before: int | None


def query(db: Session, flt: AuditFilter, *, limit: int = 50, before: int | None = None) -> Page:
    """Newest events matching ``flt``, with keyset pagination on ``seq``."""
    stmt = flt.apply(select(AuditEvent))
    if before is not None:
        stmt = stmt.where(AuditEvent.seq < before)
    rows = list(db.scalars(stmt.order_by(AuditEvent.seq.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, rows[-1].seq if more and rows else None)


def get(db: Session, flt: AuditFilter, seq: int) -> AuditEvent | None:
    """The event numbered ``seq`` if it matches ``flt``, else None (so that an event
    outside a caller's view is indistinguishable from a missing one)."""
    found: AuditEvent | None = db.scalar(flt.apply(select(AuditEvent)).where(AuditEvent.seq == seq))
    return found


def neighbours(db: Session, seq: int) -> tuple[int | None, int | None]:
    """The ``seq`` of the events just before and just after ``seq`` (None at either end)."""
    before = db.scalar(select(func.max(AuditEvent.seq)).where(AuditEvent.seq < seq))
    after = db.scalar(select(func.min(AuditEvent.seq)).where(AuditEvent.seq > seq))
    return before, after


@dataclasses.dataclass(frozen=True, slots=True)
class EventCheck:
    """One event checked on its own (see :func:`check_event`)."""

    #: Its stored hash is the hash of its fields: it was not edited.
    hash_ok: bool
    #: Its ``prev_hash`` is the stored hash of the event before it (the genesis hash for
    #: the first): the link to its predecessor holds.
    link_ok: bool

    @property
    def ok(self) -> bool:
        return self.hash_ok and self.link_ok


def check_event(db: Session, event_: AuditEvent) -> EventCheck:
    """Recompute one event's hash and check its link to the event before it: two reads,
    whatever the length of the trail. Only :func:`verify_chain` also finds what lies
    elsewhere (a deleted or inserted event further on, a cut-off tail)."""
    if event_.seq == 1:
        previous: str | None = GENESIS_HASH
    else:
        previous = db.scalar(select(AuditEvent.hash).where(AuditEvent.seq == event_.seq - 1))
    return EventCheck(
        hash_ok=event_hash(_fields(event_)) == event_.hash,
        link_ok=previous is not None and previous == event_.prev_hash,
    )


def daily_counts(
    db: Session,
    actions: Sequence[str],
    *,
    since: dt.datetime,
    until: dt.datetime | None = None,
) -> dict[str, dict[dt.date, int]]:
    """How many events of each of ``actions`` happened on each UTC day from ``since`` (and
    before ``until``): ``{action: {day: count}}``, days without events left out.

    One grouped query over the indexed ``ts`` column. ``date()`` means the same on SQLite
    and PostgreSQL here because timestamps are stored as naive UTC; SQLite answers with
    text and PostgreSQL with a date, and both become a :class:`datetime.date`."""
    day = func.date(AuditEvent.ts)
    stmt = (
        select(day, AuditEvent.action, func.count())
        .where(AuditEvent.action.in_(list(actions)), AuditEvent.ts >= since)
        .group_by(day, AuditEvent.action)
    )
    if until is not None:
        stmt = stmt.where(AuditEvent.ts < until)
    out: dict[str, dict[dt.date, int]] = {action: {} for action in actions}
    for value, action, count in db.execute(stmt):
        when = value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])
        out[action][when] = out[action].get(when, 0) + int(count)
    return out


#: Columns of an export, in order: the hashed fields and the event's own hash.
EXPORT_COLUMNS = (*_HASHED_FIELDS, "hash")

#: A spreadsheet reads a cell starting with one of these as a formula (or, for tab and
#: carriage return, strips it and looks again), so exported text starting with one is
#: prefixed with ``'`` (OWASP's advice for CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _export_rows(db: Session, flt: AuditFilter, batch: int) -> Iterator[dict[str, Any]]:
    """Every matching event, oldest first, as plain data, read in batches by ``seq`` so that
    memory stays constant however long the trail is."""
    columns = [getattr(AuditEvent, name) for name in EXPORT_COLUMNS]
    after: int | None = None  # no lower bound at first: every row is exported, even forged ones
    while True:
        stmt = flt.apply(select(*columns))
        if after is not None:
            stmt = stmt.where(AuditEvent.seq > after)
        rows = db.execute(stmt.order_by(AuditEvent.seq).limit(batch)).all()
        if not rows:
            return
        for row in rows:
            data = row._asdict()
            data["ts"] = _ts_text(data["ts"]) + "Z"
            yield data
        after = rows[-1].seq


def export_jsonl(db: Session, flt: AuditFilter, *, batch: int = 2_000) -> Iterator[str]:
    """Every matching event, oldest first, one JSON object per line (``details`` decoded)."""
    for data in _export_rows(db, flt, batch):
        data["details"] = json.loads(data["details"] or "{}")
        yield json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"


def export_csv(db: Session, flt: AuditFilter, *, batch: int = 2_000) -> Iterator[str]:
    """Every matching event, oldest first, as CSV: a header line, then one record per event
    (``details`` as its JSON text). Text that a spreadsheet would run as a formula is
    prefixed with ``'``; the guard changes what is shown, so verify from the JSON export."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def line(values: Sequence[Any]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(values)
        return buffer.getvalue()

    yield line(EXPORT_COLUMNS)
    for data in _export_rows(db, flt, batch):
        yield line([csv_cell(data[name]) for name in EXPORT_COLUMNS])


def csv_cell(value: Any) -> Any:
    """``value`` made safe for a spreadsheet cell (see :data:`_FORMULA_STARTS`)."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _refuse_secrets(details: Mapping[str, Any]) -> None:
    for key, value in details.items():
        words = {w.lower().removesuffix("s") for w in _KEY_WORDS.findall(str(key))}
        words |= {w.lower() for w in _KEY_WORDS.findall(str(key))}
        if words & _SECRET_WORDS:
            raise ValueError(f"audit details must not carry secrets (key {key!r})")
        if isinstance(value, Mapping):
            _refuse_secrets(value)
        elif isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, Mapping):
                    _refuse_secrets(item)


def _encode_details(details: Mapping[str, Any]) -> str:
    _refuse_secrets(details)
    return json.dumps(
        dict(details), ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str
    )


def _clip(value: str | None, size: int) -> str | None:
    return None if value is None else value[:size]
