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
import json
import json.scanner
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Select,
    String,
    Table,
    UnaryExpression,
    and_,
    bindparam,
    delete,
    event,
    func,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from ..db import utcnow, writing
from ..errors import InvalidInput, ServiceUnavailable
from ..models import GENESIS_HASH, AuditCheckpoint, AuditEvent, AuditHead, Permission, Role, User
from . import signing
from .actors import Actor, RequestFacts

logger = logging.getLogger("flask_aaa.audit")
_errors = logging.getLogger("flask_aaa")

OUTCOMES = ("success", "failure", "denied")

_PENDING = "aaa_audit_pending"
_SEALED = "aaa_audit_sealed"
_SEALED_CHECKPOINTS = "aaa_audit_sealed_checkpoints"
_FORCE_CHECKPOINT = "aaa_audit_force_checkpoint"

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

#: Columns of an export, in order: the hashed fields and the event's own hash.
EXPORT_COLUMNS = (*_HASHED_FIELDS, "hash")


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


#: The encoding of an exported line (the same as the hash's, for objects).
_LINE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

#: The canonical encoding of the hashed fields: a JSON array, UTF-8, no spaces.
_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def event_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON encoding of an event's hashed fields."""
    return _hash_values([fields[name] for name in _HASHED_FIELDS])


def _hash_values(values: list[Any]) -> str:
    """:func:`event_hash` of the hashed fields given in their order, ``ts`` as text."""
    return hashlib.sha256(_encode_canonical(values).encode("utf-8")).hexdigest()


def _fast_encoder(reference: json.JSONEncoder) -> Callable[[Any], str]:
    """``reference.encode`` without building an encoder per call.

    ``JSONEncoder.encode`` makes a new C encoder for every call, a third of the cost of
    hashing an event (verify runs it once per event, export once per line). The C encoder
    is built once here with the reference's settings, and used only if it encodes samples
    exactly as the reference does: the hashes of existing chains depend on that text."""
    from json import encoder

    make = getattr(encoder, "c_make_encoder", None)
    strings = getattr(encoder, "c_encode_basestring", None)
    if make is None or strings is None or reference.ensure_ascii or reference.indent:
        return reference.encode
    try:
        fast = make(
            None,
            reference.default,
            strings,
            None,
            reference.key_separator,
            reference.item_separator,
            reference.sort_keys,
            reference.skipkeys,
            reference.allow_nan,
        )
    except TypeError:  # another Python's private signature
        return reference.encode

    def encode(value: Any) -> str:
        return "".join(fast(value, 0))

    text = 'é \u2028 " \\ \n \x00 \ud800 /'
    samples: list[Any] = [[1, text, None, -7, "{}", "", 2**70], {"a": text, "b": None, "c": 3}]
    if all(encode(sample) == reference.encode(sample) for sample in samples):
        return encode
    return reference.encode


_encode_canonical = _fast_encoder(_CANONICAL)
_encode_line = _fast_encoder(_LINE)


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


def _stored_ts_text(value: str | dt.datetime) -> str:
    """The canonical text of ``ts`` as read from the database: SQLite hands back its stored
    text (``YYYY-MM-DD HH:MM:SS.ffffff``, rewritten without parsing), PostgreSQL a naive
    datetime. Any other text that is a timestamp is parsed, as the column type would."""
    if isinstance(value, str):
        if len(value) == 26 and value[10] == " ":
            return f"{value[:10]}T{value[11:]}"
        value = dt.datetime.fromisoformat(value)
    return value.isoformat(timespec="microseconds")


def _ts_text(ts: dt.datetime) -> str:
    # Microseconds are kept by both databases; the canonical form is naive UTC ISO 8601.
    return ts.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


_EVENTS = cast(Table, AuditEvent.__table__)
_CHECKPOINTS = cast(Table, AuditCheckpoint.__table__)
#: The columns read to check or export events, in :data:`EXPORT_COLUMNS` order, read as
#: Core rows on the session's connection (through ``Session.execute`` the same rows cost
#: twice as much). ``ts`` is read as the driver gives it, with no type conversion: see
#: :func:`_stored_ts_text`.
_STORED_COLUMNS = [
    type_coerce(_EVENTS.c.ts, String()).label("ts") if name == "ts" else _EVENTS.c[name]
    for name in EXPORT_COLUMNS
]
if EXPORT_COLUMNS[:2] != ("seq", "ts") or EXPORT_COLUMNS[-2:] != ("prev_hash", "hash"):
    raise RuntimeError("_Walk._steps reads seq, ts first and prev_hash, hash last")
_TS = EXPORT_COLUMNS.index("ts")
_SEQ = EXPORT_COLUMNS.index("seq")
_PREV = EXPORT_COLUMNS.index("prev_hash")
_HASH = EXPORT_COLUMNS.index("hash")
# The seal's statements are Core statements on the tables, run on the transaction's
# connection: through the ORM, the head UPDATE alone went through its bulk-update
# bookkeeping (matching the identity map) and cost more than the rest of the seal (bench
# case 2). No ORM object of the head is ever loaded, so there is nothing to keep in step.
_HEAD = cast(Table, AuditHead.__table__)
_LOCK_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update()
_READ_HEAD = select(_HEAD.c.seq, _HEAD.c.hash, _HEAD.c.mac, _HEAD.c.key_id).where(_HEAD.c.id == 1)
_SET_HEAD = (
    _HEAD.update()
    .where(_HEAD.c.id == 1)
    .values(
        seq=bindparam("head_seq"),
        hash=bindparam("head_hash"),
        mac=bindparam("head_mac"),
        key_id=bindparam("head_key"),
    )
)
_INSERT_EVENTS = _EVENTS.insert()
_INSERT_CHECKPOINT = _CHECKPOINTS.insert()


@event.listens_for(Session, "before_commit")
def _seal(db: Session) -> None:
    if db.new or db.dirty or db.deleted:
        # The commit would flush after this hook; flush first, so that an event recorded
        # while flushing (by a flush listener of the app) is sealed with the rest.
        db.flush()
    pending: list[tuple[AuditEvent, bool]] | None = db.info.pop(_PENDING, None)
    force_checkpoint = db.info.pop(_FORCE_CHECKPOINT, False)
    if not pending:
        return
    try:
        connection = db.connection()
        head_seq, head_hash = connection.execute(_LOCK_HEAD).one()
        first = head_seq
        rows = []
        for event_, _mirror in pending:
            head_seq += 1
            event_.seq = head_seq
            event_.prev_hash = head_hash
            event_.hash = head_hash = event_hash(_fields(event_))
            rows.append({name: getattr(event_, name) for name in EXPORT_COLUMNS})
        # One Core insert for the batch: the events are never loaded back, so the ORM's unit of
        # work would only add bookkeeping (they stay plain objects the caller can read).
        connection.execute(_INSERT_EVENTS, rows)
        mac = key = None
        signer = signing.for_session(db)
        if signer is not None:
            mac, key = signer.sign("head", head_seq, head_hash), signer.key_id
            every = signer.checkpoint_every
            if force_checkpoint or (every and head_seq // every > first // every):
                signed = _signed_row(signer, "checkpoint", head_seq, head_hash)
                connection.execute(_INSERT_CHECKPOINT, [signed])
                db.info.setdefault(_SEALED_CHECKPOINTS, []).append(signed)
        connection.execute(
            _SET_HEAD,
            {"head_seq": head_seq, "head_hash": head_hash, "head_mac": mac, "head_key": key},
        )
        db.info.setdefault(_SEALED, []).extend(pending)
    except (OperationalError, InterfaceError, PoolTimeout):
        raise  # the database is unreachable: the app's handler answers 503 for those
    except SQLAlchemyError as exc:
        # Any other failure (a full disk, a revoked grant, a broken constraint): the action
        # must not commit without its event. Fail closed, as a 503, and say so in the log.
        _errors.error("audit trail unavailable; refusing the action (%s)", type(exc).__name__)
        raise ServiceUnavailable("The audit trail is unavailable. Try again shortly.") from exc


def _signed_row(signer: signing.Signer, kind: str, seq: int, chain_hash: str) -> dict[str, Any]:
    return {
        "seq": seq,
        "hash": chain_hash,
        "kind": kind,
        "key_id": signer.key_id,
        "mac": signer.sign(kind, seq, chain_hash),
        "created_at": utcnow(),
    }


@event.listens_for(Session, "after_commit")
def _mirror(db: Session) -> None:
    sealed: list[tuple[AuditEvent, bool]] | None = db.info.pop(_SEALED, None)
    checkpoints: list[dict[str, Any]] | None = db.info.pop(_SEALED_CHECKPOINTS, None)
    if not logger.isEnabledFor(logging.INFO):
        return
    for event_, mirror in sealed or ():
        if mirror:
            # ensure_ascii: CR, LF and every other control character are escaped, so one
            # event is always exactly one line, whatever its text fields hold.
            logger.info(json.dumps(as_dict(event_), ensure_ascii=True, separators=(",", ":")))
    for signed in checkpoints or ():
        # Always mirrored: a copy outside the database is what shows a cut-off tail.
        logger.info(json.dumps({"checkpoint": _checkpoint_data(signed)}, separators=(",", ":")))


def _checkpoint_data(signed: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "seq": signed["seq"],
        "hash": signed["hash"],
        "kind": signed["kind"],
        "key_id": signed["key_id"],
        "mac": signed["mac"],
        "created_at": _ts_text(signed["created_at"]) + "Z",
    }


@event.listens_for(Session, "after_soft_rollback")
def _forget(db: Session, _transaction: Any) -> None:
    for name in (_PENDING, _SEALED, _SEALED_CHECKPOINTS, _FORCE_CHECKPOINT):
        db.info.pop(name, None)


def as_dict(event_: AuditEvent) -> dict[str, Any]:
    """The event as plain JSON-ready data (``details`` decoded)."""
    data = _fields(event_)
    data["ts"] = data["ts"] + "Z"
    data["details"] = json.loads(event_.details or "{}")
    data["hash"] = event_.hash
    return data


# -- verification --


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement "event ``seq`` has hash ``hash``" (see :class:`AuditCheckpoint`),
    from the database or from a copy kept elsewhere (the ``flask_aaa.audit`` log)."""

    seq: int
    hash: str
    kind: str
    key_id: str
    mac: str

    @classmethod
    def from_json_line(cls, line: str) -> Checkpoint | None:
        """The checkpoint mirrored on a log line (``{"checkpoint": {...}}``, possibly after
        a log prefix), or None for any other line. A malformed checkpoint is an error."""
        brace = line.find("{")
        if brace < 0 or '"checkpoint"' not in line:
            return None
        try:
            data = json.loads(line[brace:])
        except ValueError:
            return None
        inner = data.get("checkpoint") if isinstance(data, dict) else None
        if not isinstance(inner, dict):
            return None
        try:
            return cls(
                seq=int(inner["seq"]),
                hash=str(inner["hash"]),
                kind=str(inner["kind"]),
                key_id=str(inner["key_id"]),
                mac=str(inner["mac"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput({"checkpoints": "A checkpoint line is malformed."}) from exc


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of :func:`verify_chain`. ``first_bad_seq`` is None when the trail holds."""

    checked: int
    last_seq: int
    first_bad_seq: int | None = None
    problem: str | None = None
    #: The first event checked: 1, the one after a retention anchor, or (resuming) the one
    #: after the last good checkpoint.
    first_seq: int = 1
    #: Signed checkpoints the chain was found to match.
    checkpoints: int = 0
    #: Whether signatures were checked (a signing key is configured).
    signed: bool = False

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None and self.problem is None


class _Broken(Exception):
    def __init__(self, seq: int, problem: str) -> None:
        super().__init__(problem)
        self.seq, self.problem = seq, problem


#: Below this many events per process, :func:`verify_chain` does not split the walk (starting
#: a process costs about as much as checking this many events).
PARALLEL_MIN_EVENTS = 100_000


def verify_chain(
    db: Session,
    *,
    batch: int = 5_000,
    resume: bool = False,
    external: Sequence[Checkpoint] = (),
    jobs: int = 1,
    min_events_per_job: int | None = None,
) -> VerifyReport:
    """Recompute every event's hash in ``seq`` order and check the links between them, the
    signed checkpoints and the signed head record.

    Finds an edited event (its hash no longer matches), a deleted or inserted event (a gap or
    an extra number, a broken link), a reordering (hashes cover ``seq``), a chain rewritten
    with recomputed hashes (it no longer matches a signed checkpoint or the head's
    signature), and a cut-off tail (the head record, or a checkpoint naming a later event).

    ``resume``: start after the newest checkpoint that the trail still matches instead of at
    the beginning (what a full run checked before it is taken as good). ``external``:
    checkpoints kept outside the database, such as the lines mirrored to the log; they are
    checked like the stored ones, which is what catches a tail cut off together with its
    checkpoints and the head set back to an old signed state.

    ``jobs``: split the walk over up to this many processes, each checking a range of
    events on a connection of its own (the database must be one other processes can open:
    not an in-memory SQLite). The ranges are stitched by their boundary hashes. Only a
    trail found intact is taken from them: at any finding, the walk is done again in one
    process, so that the report is exactly the one-process report."""
    signer = signing.for_session(db)
    stored = [
        Checkpoint(row.seq, row.hash, row.kind, row.key_id, row.mac)
        for row in db.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))
    ]
    state = _Walk(signer)
    try:
        marks = state.check_signatures([*stored, *external])
        first_seq, prev, lower = _starting_point(db, marks, resume)
        state.first_seq, state.expected, state.prev = first_seq, first_seq, prev
        least = PARALLEL_MIN_EVENTS if min_events_per_job is None else min_events_per_job
        if jobs > 1 and not _walk_in_parallel(db, state, batch, lower, marks, jobs, least):
            state = _Walk(signer)
            state.first_seq, state.expected, state.prev = first_seq, first_seq, prev
        state.walk(db, batch, lower if state.expected == first_seq else state.expected, marks)
        state.check_tail(db, marks)
    except _Broken as broken:
        return state.report(broken.seq, broken.problem)
    return state.report()


class _Walk:
    """The state of one :func:`verify_chain` run."""

    def __init__(self, signer: signing.Signer | None) -> None:
        self.signer = signer
        self.first_seq = self.expected = 1
        self.prev = GENESIS_HASH
        self.checked = 0
        self.matched = 0
        self.good_mark = 0  # the last checkpoint the chain matched

    def report(self, bad: int | None = None, problem: str | None = None) -> VerifyReport:
        return VerifyReport(
            checked=self.checked,
            last_seq=self.expected - 1,
            first_bad_seq=bad,
            problem=problem,
            first_seq=self.first_seq,
            checkpoints=self.matched,
            signed=self.signer is not None,
        )

    def check_signatures(self, checkpoints: Sequence[Checkpoint]) -> dict[int, list[Checkpoint]]:
        marks: dict[int, list[Checkpoint]] = {}
        for mark in checkpoints:
            if self.signer is not None:
                if not self.signer.knows(mark.key_id):
                    raise _Broken(
                        mark.seq,
                        f"the {mark.kind} at event {mark.seq} is signed by key {mark.key_id}, "
                        "which is not configured (keep retired keys in AAA_AUDIT_SIGNING_KEYS)",
                    )
                if not self.signer.verify(mark.key_id, mark.kind, mark.seq, mark.hash, mark.mac):
                    raise _Broken(
                        mark.seq, f"the {mark.kind} at event {mark.seq} has an invalid signature"
                    )
            marks.setdefault(mark.seq, []).append(mark)
        return marks

    def walk(
        self,
        db: Session,
        batch: int,
        lower: int | None,
        marks: dict[int, list[Checkpoint]],
        upper: int | None = None,
    ) -> None:
        stmt = select(*_STORED_COLUMNS).order_by(_EVENTS.c.seq).limit(batch)
        if upper is not None:
            stmt = stmt.where(_EVENTS.c.seq <= upper)
        if lower is None:
            rows = _driver_rows(db, stmt)
            self._steps(rows, marks)
            if not rows:
                return
            lower = self.expected
        following = stmt.where(_EVENTS.c.seq >= bindparam("lower"))
        while rows := _driver_rows(db, following, lower=lower):
            self._steps(rows, marks)
            lower = self.expected

    def _steps(self, rows: Sequence[Any], marks: dict[int, list[Checkpoint]]) -> None:
        """:meth:`_step` for each row, with the common case (the next event, linked, its hash
        right, no checkpoint on it) done inline: verify runs this once per event. Any other
        row goes through :meth:`_step`, which names what is wrong."""
        sha256, encode, ts_text = hashlib.sha256, _encode_canonical, _stored_ts_text
        expected, prev, checked = self.expected, self.prev, self.checked
        try:
            for row in rows:
                values = list(row)
                stored = values.pop()  # the hash, the last column
                if values[0] == expected and values[-1] == prev and values[0] not in marks:
                    values[1] = ts_text(values[1])
                    if sha256(encode(values).encode("utf-8")).hexdigest() == stored:
                        prev, expected, checked = stored, expected + 1, checked + 1
                        continue
                self.expected, self.prev, self.checked = expected, prev, checked
                self._step(row, marks.get(row[_SEQ]) if marks else None)
                expected, prev, checked = self.expected, self.prev, self.checked
        finally:
            self.expected, self.prev, self.checked = expected, prev, checked

    def _step(self, row: Any, marks: list[Checkpoint] | None) -> None:
        seq = row[_SEQ]
        if seq < self.expected:
            raise _Broken(seq, f"event {seq} is numbered out of sequence")
        if seq != self.expected:
            raise _Broken(self.expected, f"event {self.expected} is missing")
        if row[_PREV] != self.prev:
            raise _Broken(seq, "link to the previous event is broken")
        values = list(row[:_HASH])
        values[_TS] = _stored_ts_text(values[_TS])
        stored = row[_HASH]
        if _hash_values(values) != stored:
            raise _Broken(seq, "event content does not match its hash")
        for mark in marks or ():
            if mark.hash != stored:
                since = self.good_mark + 1
                raise _Broken(
                    since,
                    f"events {since} to {seq} were rewritten: the chain no longer matches "
                    f"the signed {mark.kind} at event {seq}",
                )
        if marks:
            self.good_mark = seq
            self.matched += 1
        self.prev = stored
        self.expected += 1
        self.checked += 1

    def check_tail(self, db: Session, marks: dict[int, list[Checkpoint]]) -> None:
        last_seq = self.expected - 1
        beyond = [seq for seq in marks if seq > last_seq]
        if beyond:
            raise _Broken(
                last_seq + 1,
                f"the trail ends at event {last_seq}, but a signed checkpoint records event "
                f"{max(beyond)}: events were cut off",
            )
        head_seq, head_hash, head_mac, head_key = db.execute(_READ_HEAD).one()
        if head_seq != last_seq or head_hash != self.prev:
            # More events than the head knows: the first unknown one is bad. Fewer: the first
            # missing one is. The same number but another hash: the last one was replaced.
            bad = head_seq + 1 if last_seq > head_seq else min(last_seq + 1, head_seq)
            if head_seq == last_seq:
                bad = last_seq
            raise _Broken(
                bad, "the trail's end does not match the head record (events cut off or added)"
            )
        if self.signer is None or head_seq == 0:
            return
        if head_mac is None:
            raise _Broken(
                last_seq + 1,
                "the head record is not signed (after upgrading, sign it once with "
                "`flask aaa audit checkpoint`)",
            )
        if not self.signer.verify(head_key, "head", head_seq, head_hash, head_mac):
            raise _Broken(
                last_seq + 1,
                "the head record's signature is invalid: events after it may have been cut off",
            )


def _driver_rows(db: Session, stmt: Select[Any], **params: Any) -> list[Any]:
    """All rows of ``stmt`` as the database driver gives them, on the session's connection.

    The verifier reads every event once; SQLAlchemy's result rows cost as much again as the
    driver's tuples (bench case 4), and the walk needs nothing of theirs. Driver errors are
    raised as SQLAlchemy's, as from any other query."""
    connection = db.connection()
    compiled = stmt.compile(dialect=connection.dialect)
    values = compiled.construct_params(params)
    args: Any = [values[k] for k in compiled.positiontup] if compiled.positiontup else values
    dbapi = connection.dialect.loaded_dbapi
    cursor = connection.connection.cursor()
    try:
        cursor.execute(str(compiled), args)
        return list(cursor.fetchall())
    except dbapi.Error as exc:
        raise DBAPIError.instance(str(compiled), args, exc, dbapi.Error) from exc
    finally:
        cursor.close()


def _walk_in_parallel(
    db: Session,
    state: _Walk,
    batch: int,
    lower: int | None,
    marks: dict[int, list[Checkpoint]],
    jobs: int,
    min_events_per_job: int,
) -> bool:
    """Walk the events up to the current last one in ``jobs`` processes; on success, move
    ``state`` past them and return True. False (``state`` untouched) when the trail is too
    short to gain, the database cannot be opened by another process, or any range found a
    problem: the caller then walks it in one process, for the exact report."""
    url = db.connection().engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return False
    last = db.connection().scalar(select(func.max(_EVENTS.c.seq)))
    if last is None:
        return False
    first = state.expected
    total = last - first + 1
    jobs = min(jobs, total // max(1, min_events_per_job))
    if jobs < 2:
        return False
    bounds = [first + total * k // jobs for k in range(jobs + 1)]
    starts = [state.prev]
    for start in bounds[1:-1]:
        # Each range starts from the stored hash before it; the range before checks that very
        # hash as its last event's, which stitches the chain back together.
        stored = db.connection().scalar(select(_EVENTS.c.hash).where(_EVENTS.c.seq == start - 1))
        if stored is None:
            return False
        starts.append(stored)
    address = url.render_as_string(hide_password=False)
    workers = []
    for k in range(jobs):
        lo, hi = bounds[k], bounds[k + 1] - 1
        own = [
            list(dataclasses.astuple(m)) for seq, ms in marks.items() if lo <= seq <= hi for m in ms
        ]
        task = [address, lo, hi, starts[k], lower if k == 0 else lo, own, batch]
        # A fresh interpreter per range (never a fork of the app, its connections and threads);
        # the task, database address included, goes through a pipe, not the command line.
        worker = subprocess.Popen(
            [sys.executable, "-m", "flask_aaa.services.audit_walk"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        stdin = cast(IO[bytes], worker.stdin)  # PIPE: always set
        with contextlib.suppress(OSError):  # a process that could not start: its status says
            stdin.write(json.dumps(task).encode())
        with contextlib.suppress(OSError):
            stdin.close()
        workers.append(worker)
    results: list[Any] = []
    for worker in workers:
        stdout = cast(IO[bytes], worker.stdout)
        output = stdout.read()
        stdout.close()
        status = worker.wait()
        try:
            results.append(json.loads(output) if status == 0 else None)
        except ValueError:
            status = -1
            results.append(None)
        if status != 0:
            # Not a finding: the process could not run (say, the database needs connection
            # options that are not in its URL). Say so; the walk is done in one process.
            _errors.warning("verify: a range process failed (status %s); walking in one", status)
    if any(result is None for result in results):
        return False
    for k, (checked, matched, good_mark, last_hash) in enumerate(results):
        if k + 1 < jobs and last_hash != starts[k + 1]:
            return False
        state.checked += checked
        state.matched += matched
        state.good_mark = max(state.good_mark, good_mark)
        state.prev = last_hash
    state.expected = bounds[-1]
    return True


def walk_range(task: list[Any]) -> list[Any] | None:
    """One range of a parallel :func:`verify_chain`, in a process of its own (see
    :mod:`flask_aaa.services.audit_walk`): [checked, checkpoints matched, last good
    checkpoint, last hash], or None at any finding."""
    from sqlalchemy import create_engine

    from ..db import configure_engine

    address, lo, hi, prev, lower, own, batch = task
    marks: dict[int, list[Checkpoint]] = {}
    for values in own:
        mark = Checkpoint(*values)
        marks.setdefault(mark.seq, []).append(mark)
    engine = create_engine(address)
    configure_engine(engine)
    try:
        with Session(engine) as db:
            state = _Walk(None)
            state.first_seq, state.expected, state.prev = lo, lo, prev
            try:
                state.walk(db, batch, lower, marks, upper=hi)
            except _Broken:
                return None
            if state.expected != hi + 1:
                return None  # the range ends early: events are missing
            return [state.checked, state.matched, state.good_mark, state.prev]
    finally:
        engine.dispose()


def _starting_point(
    db: Session, marks: dict[int, list[Checkpoint]], resume: bool
) -> tuple[int, str, int | None]:
    """Where verification starts: (the first ``seq`` to check, the hash before it, the lower
    bound of the first read, None to read from the very first row so that rows numbered
    below the start are seen)."""
    if resume:
        last = db.scalar(select(func.max(AuditEvent.seq))) or 0
        for seq in sorted((s for s in marks if s <= last), reverse=True):
            stored = db.scalar(select(AuditEvent.hash).where(AuditEvent.seq == seq))
            if stored is not None and any(m.hash == stored for m in marks[seq]):
                return seq + 1, stored, seq + 1
    first = db.scalar(select(func.min(AuditEvent.seq)))
    if first is None or first <= 1:
        return 1, GENESIS_HASH, None
    anchors = sorted(
        (m for ms in marks.values() for m in ms if m.kind == "anchor"), key=lambda m: m.seq
    )
    for anchor in reversed(anchors):
        if anchor.seq < first:
            # Events up to the anchor were purged; a gap after it is still a gap.
            return anchor.seq + 1, anchor.hash, None
    raise _Broken(1, f"events 1 to {first - 1} are missing and no signed anchor covers them")


# -- checkpoints and retention --


def checkpoint(db: Session, *, actor: Actor, facts: RequestFacts | None = None) -> AuditEvent:
    """Record ``audit.checkpoint`` and, when ``db`` commits, sign the trail's end (that
    event included) as a checkpoint. Run it from cron to bound what a cut-off tail could
    hide, and once after upgrading to sign the head record."""
    signer = _signer_or_refuse(db)
    event_ = record(
        db, action="audit.checkpoint", actor=actor, details={"signer": signer.key_id}, facts=facts
    )
    db.info[_FORCE_CHECKPOINT] = True
    return event_


def checkpoint_at(db: Session, seq: int) -> dict[str, Any] | None:
    """The newest signed checkpoint or anchor at ``seq``, as mirrored to the log."""
    found = db.scalar(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.seq == seq)
        .order_by(AuditCheckpoint.id.desc())
        .limit(1)
    )
    if found is None:
        return None
    return _checkpoint_data(
        {c: getattr(found, c) for c in ("seq", "hash", "kind", "key_id", "mac", "created_at")}
    )


@dataclasses.dataclass(frozen=True, slots=True)
class PurgeResult:
    """What :func:`purge` removed: events up to and including ``through``."""

    through: int
    deleted: int


def purge(
    db: Session,
    *,
    older_than: dt.timedelta,
    actor: Actor,
    facts: RequestFacts | None = None,
    now: dt.datetime | None = None,
) -> PurgeResult:
    """Delete the events older than ``older_than``, keeping a signed anchor for the last one
    deleted so that what remains still verifies, and record ``audit.purged``; all in ``db``'s
    transaction. The events kept start at the first one not older than the cut-off (a clock
    that went back cannot leave a hole). The whole trail is verified first: a purge never
    launders a broken trail into a clean-looking one. Nothing to delete records nothing."""
    if older_than < dt.timedelta(days=1):
        raise InvalidInput({"older_than": "Keep at least one day of events."})
    signer = _signer_or_refuse(db)
    report = verify_chain(db)
    if not report.ok:
        raise InvalidInput(
            {"trail": f"The trail is broken at event {report.first_bad_seq}: {report.problem}."}
        )
    cutoff = (now or utcnow()) - older_than
    first_kept = db.scalar(select(func.min(AuditEvent.seq)).where(AuditEvent.ts >= cutoff))
    through = (first_kept - 1) if first_kept is not None else report.last_seq
    if through < report.first_seq:
        return PurgeResult(through=report.first_seq - 1, deleted=0)
    through_hash = db.scalar(select(AuditEvent.hash).where(AuditEvent.seq == through))
    if through_hash is None:  # verified a moment ago; only a concurrent purge gets here
        raise InvalidInput({"trail": "The trail changed during the purge; run it again."})
    anchor = _signed_row(signer, "anchor", through, through_hash)
    gone = db.execute(delete(AuditEvent).where(AuditEvent.seq <= through))
    deleted = int(cast(CursorResult[Any], gone).rowcount)
    db.execute(delete(AuditCheckpoint).where(AuditCheckpoint.seq <= through))
    db.execute(_INSERT_CHECKPOINT, [anchor])
    db.info.setdefault(_SEALED_CHECKPOINTS, []).append(anchor)
    days = older_than.total_seconds() / 86_400
    record(
        db,
        action="audit.purged",
        actor=actor,
        details={
            "through": through,
            "deleted": deleted,
            "older_than_days": int(days) if days == int(days) else round(days, 3),
        },
        facts=facts,
    )
    return PurgeResult(through=through, deleted=deleted)


def _signer_or_refuse(db: Session) -> signing.Signer:
    signer = signing.for_session(db)
    if signer is None:
        raise ServiceUnavailable(
            "No audit signing key is configured for this database (see AAA_AUDIT_SIGNING_KEYS)."
        )
    return signer


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

    def by_time(self) -> bool:
        """A time range is the only filter an index can narrow (see :func:`query`)."""
        narrow = (
            self.actor_id,
            self.involving_user,
            self.action,
            self.ip,
            self.target_type,
            self.target_id,
        )
        return (self.since is not None or self.until is not None) and all(
            value is None for value in narrow
        )

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
    """Newest events matching ``flt``, with keyset pagination on ``seq``.

    Newest means the highest ``seq``, except when a time range is the only narrow filter:
    then it means the latest ``ts`` (``seq`` breaking ties), read straight off the time
    index. Both orders are the same unless the clock went back. Ordering such a page by
    ``seq`` would make the database walk from the newest event back to the range, through
    every event after it (hundreds of milliseconds at a million events)."""
    stmt = flt.apply(select(AuditEvent))
    order: tuple[UnaryExpression[Any], ...]
    if flt.by_time():
        order = (AuditEvent.ts.desc(), AuditEvent.seq.desc())
        if before is not None:
            stmt = stmt.where(_before_in_time(db, before))
    else:
        order = (AuditEvent.seq.desc(),)
        if before is not None:
            stmt = stmt.where(AuditEvent.seq < before)
    rows = list(db.scalars(stmt.order_by(*order).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, rows[-1].seq if more and rows else None)


def _before_in_time(db: Session, before: int) -> ColumnElement[bool]:
    """The keyset condition "after event ``before`` in (ts, seq) order, newest first"."""
    ts = db.scalar(select(AuditEvent.ts).where(AuditEvent.seq == before))
    if ts is None:  # not an event (a made-up cursor): the events numbered below it
        return AuditEvent.seq < before
    return or_(AuditEvent.ts < ts, and_(AuditEvent.ts == ts, AuditEvent.seq < before))


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


#: A spreadsheet reads a cell starting with one of these as a formula (or, for tab and
#: carriage return, strips it and looks again), so exported text starting with one is
#: prefixed with ``'`` (OWASP's advice for CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _export_batches(db: Session, flt: AuditFilter, batch: int) -> Iterator[list[Any]]:
    """Every matching event, oldest first, as stored (see :data:`_STORED_COLUMNS`), in
    batches read by ``seq`` so that memory stays constant however long the trail is."""
    after: int | None = None  # no lower bound at first: every row is exported, even forged ones
    while True:
        stmt = flt.apply(select(*_STORED_COLUMNS))
        if after is not None:
            stmt = stmt.where(_EVENTS.c.seq > after)
        rows = _driver_rows(db, stmt.order_by(_EVENTS.c.seq).limit(batch))
        if not rows:
            return
        yield rows
        after = rows[-1][_SEQ]


_DETAILS = EXPORT_COLUMNS.index("details")


_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _one_json_line(text: str) -> bool:
    """Whether ``text`` is exactly one JSON value on one line, so that it can be spliced into
    an exported line as it is. The library stores ``details`` that way; anything else (the
    row was tampered with) is exported as a JSON string instead."""
    if "\n" in text or "\r" in text:
        return False
    try:
        end: int = _scan_json(text, 0)[1]
    except (StopIteration, ValueError):
        return False
    return end == len(text)


def export_jsonl(db: Session, flt: AuditFilter, *, batch: int = 2_000) -> Iterator[str]:
    """Every matching event, oldest first, one JSON object per line (``details`` decoded)."""
    encode, splice, ts_text = _encode_line, _one_json_line, _stored_ts_text
    for rows in _export_batches(db, flt, batch):
        for row in rows:
            data = dict(zip(EXPORT_COLUMNS, row, strict=True))
            data["ts"] = ts_text(row[_TS]) + "Z"
            details = data.pop("details") or "{}"
            if not splice(details):
                details = encode(details)
            yield f'{encode(data)[:-1]},"details":{details}}}\n'


class _LastWrite:
    """A file for :func:`csv.writer` that keeps the one line each ``writerow`` writes."""

    line = ""

    def write(self, text: str) -> None:
        self.line = text


def export_csv(db: Session, flt: AuditFilter, *, batch: int = 2_000) -> Iterator[str]:
    """Every matching event, oldest first, as CSV: a header line, then one record per event
    (``details`` as its JSON text). Text that a spreadsheet would run as a formula is
    prefixed with ``'``; the guard changes what is shown, so verify from the JSON export."""
    out = _LastWrite()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    yield out.line
    ts_text, starts = _stored_ts_text, _FORMULA_STARTS
    for rows in _export_batches(db, flt, batch):
        for row in rows:
            values = list(row)
            values[_TS] = ts_text(values[_TS]) + "Z"
            # Formula guard (see _FORMULA_STARTS): inline, as it runs for every cell.
            writer.writerow(
                ["'" + v if isinstance(v, str) and v.startswith(starts) else v for v in values]
            )
            yield out.line


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
