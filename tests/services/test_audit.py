"""The audit trail: recording and sealing, the hash chain and its tampering (L05), secrets
in details (L04), query filters and injection (L01), export, the log mirror, and UTC (V03)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
from types import SimpleNamespace

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from flask_aaa.db import writing
from flask_aaa.errors import InvalidInput, PermissionDenied
from flask_aaa.models import GENESIS_HASH, AuditEvent, AuditHead
from flask_aaa.services import audit, rbac
from flask_aaa.services.actors import Actor, RequestFacts
from tests.conftest import SYSTEM

START = dt.datetime(2030, 3, 1, 12, 0, tzinfo=dt.UTC)

#: (action, outcome) of the seeded events, cycled.
KINDS = [
    ("auth.login.succeeded", "success"),
    ("auth.login.failed", "failure"),
    ("role.granted", "success"),
    ("authz.denied", "denied"),
    ("user.created", "success"),
]


def user_actor(user_id: int, name: str) -> Actor:
    """A user actor without a database user (``actor_id`` is not a foreign key)."""
    return Actor("user", name, SimpleNamespace(id=user_id))  # type: ignore[arg-type]


ALICE = user_actor(1, "alice")
BOB = user_actor(2, "bob")


def seed(session: Session, n: int = 20) -> None:
    """``n`` events one minute apart from START, committed in groups of 1 to 3."""
    with freeze_time(START) as clock:
        for i in range(n):
            action, outcome = KINDS[i % len(KINDS)]
            with writing():
                audit.record(
                    session,
                    action=action,
                    actor=ALICE if i % 2 == 0 else BOB,
                    outcome=outcome,
                    facts=RequestFacts(ip=f"192.0.2.{i + 1}", user_agent="ua", request_id=f"r{i}"),
                    details={"i": i, "note": "é\n<script>"},
                )
                if i % 3 != 1:
                    session.commit()
            clock.tick(dt.timedelta(minutes=1))
        with writing():
            session.commit()
    session.expire_all()


def seqs(session: Session) -> list[int]:
    session.rollback()
    return list(session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))


def head(session: Session) -> tuple[int, str]:
    session.rollback()
    return tuple(session.execute(select(AuditHead.seq, AuditHead.hash)).one())  # type: ignore[return-value]


def tamper(engine, *statements: str, **params: object) -> None:
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement), params)


def verify(session: Session, **kwargs: int) -> audit.VerifyReport:
    session.rollback()
    return audit.verify_chain(session, **kwargs)


def row(engine, seq: int) -> dict[str, object]:
    with engine.connect() as connection:
        return dict(
            connection.execute(text("SELECT * FROM aaa_audit_events WHERE seq = :s"), {"s": seq})
            .mappings()
            .one()
        )


def mirrored(caplog) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "flask_aaa.audit"]


# -- recording and sealing --


def test_events_get_gapless_seq(session):
    seed(session, 20)
    assert seqs(session) == list(range(1, 21))
    assert head(session)[0] == 20


def test_seq_stays_gapless_across_rollbacks_and_apart_events(session):
    with writing():
        audit.record(session, action="a.one", actor=SYSTEM)
        session.commit()
    with writing():
        head(session)  # the transaction has begun when the event is recorded
        audit.record(session, action="a.rolled_back", actor=SYSTEM)
        session.rollback()
    audit.record_apart(session, action="a.apart", actor=SYSTEM, outcome="failure")
    with writing():
        audit.record(session, action="a.two", actor=SYSTEM)
        audit.record(session, action="a.three", actor=SYSTEM)
        session.commit()
    session.rollback()
    actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)).all()
    assert actions == ["a.one", "a.apart", "a.two", "a.three"]
    assert seqs(session) == [1, 2, 3, 4]
    assert verify(session).ok


def test_event_is_sealed_only_on_commit(session, engine):
    with writing():
        event = audit.record(session, action="a.pending", actor=SYSTEM)
        assert event.seq is None
        session.flush()
        with Session(engine) as other:
            assert other.scalar(select(func.count()).select_from(AuditEvent)) == 0
        session.commit()
    assert event.seq == 1
    assert event.prev_hash == GENESIS_HASH
    assert head(session) == (1, event.hash)


def test_rollback_discards_a_pending_event(session):
    with writing():
        audit.record(session, action="a.first", actor=SYSTEM)
        session.commit()
    before = head(session)
    with writing():
        audit.record(session, action="a.discarded", actor=SYSTEM)
        session.rollback()
    with writing():
        session.commit()  # nothing pending any more
    assert head(session) == before
    assert session.scalar(select(AuditEvent.action).where(AuditEvent.seq == 2)) is None
    assert session.scalar(select(func.count()).select_from(AuditEvent)) == 1


def test_record_apart_commits_and_drops_the_callers_pending_work(session, engine):
    """A failed attempt's event lands on its own; the caller's pending event does not."""
    with writing():
        head(session)
        audit.record(session, action="a.pending", actor=SYSTEM)
    audit.record_apart(
        session, action="a.failed", actor=ALICE, outcome="failure", details={"reason": "x"}
    )
    with Session(engine) as other:
        actions = other.scalars(select(AuditEvent.action)).all()
    assert actions == ["a.failed"]


@pytest.mark.parametrize("then", ["rollback_and_commit", "record_apart"])
def test_rollback_discards_an_event_recorded_before_any_query(session, engine, caplog, then):
    """``record`` only parks the event on the session; if no SQL has run yet, the session
    has no transaction, and ``rollback()`` must still discard the event: it may not be
    sealed by the next commit (nor by the next ``record_apart``), nor logged."""
    caplog.set_level(logging.INFO, logger="flask_aaa.audit")
    with writing():
        audit.record(session, action="a.discarded", actor=ALICE)
        session.rollback()
    if then == "record_apart":
        audit.record_apart(session, action="a.failed", actor=ALICE, outcome="failure")
    else:
        with writing():
            session.commit()
    with Session(engine) as other:
        actions = other.scalars(select(AuditEvent.action)).all()
    assert "a.discarded" not in actions
    assert all(line["action"] != "a.discarded" for line in mirrored(caplog))


def test_events_carry_who_what_where(session):
    facts = RequestFacts(
        ip="2001:db8::1", user_agent="Mozilla", request_id="req", session_hash="ab"
    )
    target = audit.Target("note", "17", "Groceries")
    with writing():
        audit.record(
            session, action="notes.deleted", actor=ALICE, target=target, facts=facts, details={}
        )
        session.commit()
    event = session.scalar(select(AuditEvent))
    assert (event.actor_type, event.actor_id, event.actor_name) == ("user", 1, "alice")
    assert (event.target_type, event.target_id, event.target_label) == ("note", "17", "Groceries")
    assert (event.ip, event.user_agent, event.request_id) == ("2001:db8::1", "Mozilla", "req")
    assert event.session_hash == "ab"
    assert event.outcome == "success"


def test_long_fields_are_clipped(session):
    facts = RequestFacts(ip="1" * 100, user_agent="U" * 5000, request_id="R" * 500)
    with writing():
        audit.record(session, action="a.b", actor=user_actor(3, "n" * 1000), facts=facts)
        session.commit()
    event = session.scalar(select(AuditEvent))
    assert (len(event.ip), len(event.user_agent), len(event.request_id)) == (45, 512, 64)
    assert len(event.actor_name) == 320
    assert verify(session).ok


@pytest.mark.parametrize(
    "kwargs",
    [{"outcome": "maybe"}, {"action": ""}, {"action": "a" * 65}, {"target": object()}],
)
def test_invalid_events_refused(session, kwargs):
    values = {"action": "a.b", "actor": SYSTEM, **kwargs}
    with pytest.raises((ValueError, TypeError)):
        audit.record(session, **values)
    with writing():
        session.commit()
    assert head(session) == (0, GENESIS_HASH)


# -- L04: secrets in details --


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "new_password",
        "token",
        "api_token",
        "session_token",
        "secret",
        "client_secret",
        "otp",
        "recovery_code",
        "api_key",
        "newPassword",
        "accessToken",
        "clientSecret",
        "passwords",
    ],
)
def test_L04_secret_keys_in_details_refused(key):
    with pytest.raises(ValueError, match="secret"):
        audit.record(Session(), action="a.b", actor=SYSTEM, details={key: "hunter2-hunter2"})


def test_L04_refused_details_leave_nothing_pending(session):
    with pytest.raises(ValueError, match="secret"):
        audit.record(session, action="a.b", actor=SYSTEM, details={"password": "hunter2"})
    with writing():
        session.commit()
    assert head(session) == (0, GENESIS_HASH)


def test_L04_secret_keys_refused_by_record_apart(session):
    with pytest.raises(ValueError, match="secret"):
        audit.record_apart(
            session, action="a.b", actor=SYSTEM, outcome="failure", details={"token": "t"}
        )
    assert head(session) == (0, GENESIS_HASH)


@pytest.mark.parametrize(
    "details",
    [
        {"form": {"password": "hunter2-hunter2"}},
        {"changes": [{"field": "x", "token": "abc"}]},
    ],
)
def test_L04_nested_secret_keys_in_details_refused(details):
    """A secret one level down (a form or change set logged whole) is still a secret."""
    with pytest.raises(ValueError, match="secret"):
        audit.record(Session(), action="a.b", actor=SYSTEM, details=details)


def test_L04_harmless_keys_allowed(session):
    details = {"reason": "bad_password", "hash_upgraded": True, "other_sessions_ended": 2}
    with writing():
        audit.record(session, action="a.b", actor=SYSTEM, details=details)
        session.commit()
    assert json.loads(session.scalar(select(AuditEvent.details))) == details


# -- L05: the chain and its tampering --


def test_L05_clean_chain_verifies(session):
    seed(session, 20)
    report = verify(session)
    assert report.ok
    assert (report.checked, report.last_seq, report.first_bad_seq) == (20, 20, None)


def test_L05_empty_chain_verifies(session):
    report = verify(session)
    assert report.ok
    assert (report.checked, report.last_seq) == (0, 0)


def test_L05_clean_chain_verifies_in_small_batches(session):
    seed(session, 20)
    assert verify(session, batch=3).ok


def test_L05_links_chain_each_event_to_the_one_before(session):
    seed(session, 5)
    session.rollback()
    events = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
    assert events[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash
    for event in events:
        assert audit.event_hash(audit._fields(event)) == event.hash
    assert head(session) == (5, events[-1].hash)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor_name", "mallory"),
        ("actor_id", 99),
        ("action", "auth.logout"),
        ("outcome", "success"),
        ("ip", "10.0.0.1"),
        ("details", '{"i":7,"note":"nothing to see"}'),
        ("target_label", "someone"),
        ("ts", "2001-01-01 00:00:00.000000"),
        ("hash", "f" * 64),
        ("prev_hash", "0" * 64),
    ],
)
def test_L05_updated_row_is_named(session, engine, column, value):
    seed(session, 20)
    assert row(engine, 7)["outcome"] != "success"  # so that the 'outcome' edit changes it
    tamper(engine, f"UPDATE aaa_audit_events SET {column} = :v WHERE seq = 7", v=value)  # noqa: S608
    report = verify(session)
    assert not report.ok
    assert report.first_bad_seq == 7
    assert report.problem


def test_L05_updated_row_found_across_batches(session, engine):
    seed(session, 20)
    tamper(engine, "UPDATE aaa_audit_events SET actor_name = 'mallory' WHERE seq = 14")
    assert verify(session, batch=4).first_bad_seq == 14


@pytest.mark.parametrize("seq", [1, 10, 19])
def test_L05_deleted_row_is_named(session, engine, seq):
    seed(session, 20)
    tamper(engine, "DELETE FROM aaa_audit_events WHERE seq = :s", s=seq)
    report = verify(session)
    assert not report.ok
    assert report.first_bad_seq == seq


def test_L05_renumbered_rows_after_a_delete_are_caught(session, engine):
    """Delete 10 and shift 11..20 down to close the gap: the hashes cover ``seq``."""
    seed(session, 20)
    tamper(
        engine,
        "DELETE FROM aaa_audit_events WHERE seq = 10",
        "UPDATE aaa_audit_events SET seq = seq - 1 WHERE seq > 10",
    )
    report = verify(session)
    assert not report.ok
    assert report.first_bad_seq == 10


def test_L05_swapped_rows_are_named(session, engine):
    """Rows 5 and 12 exchange their whole contents (everything but ``seq``)."""
    seed(session, 20)
    five, twelve = row(engine, 5), row(engine, 12)
    columns = [c for c in five if c != "seq"]
    assignments = ", ".join(f"{c} = :{c}" for c in columns)
    statement = f"UPDATE aaa_audit_events SET {assignments} WHERE seq = :seq"  # noqa: S608
    with engine.begin() as connection:
        connection.execute(text(statement), {**{c: twelve[c] for c in columns}, "seq": 5})
        connection.execute(text(statement), {**{c: five[c] for c in columns}, "seq": 12})
    report = verify(session)
    assert not report.ok
    assert report.first_bad_seq == 5


def test_L05_swapped_seq_numbers_are_named(session, engine):
    seed(session, 20)
    tamper(
        engine,
        "UPDATE aaa_audit_events SET seq = -5 WHERE seq = 5",
        "UPDATE aaa_audit_events SET seq = 5 WHERE seq = 12",
        "UPDATE aaa_audit_events SET seq = 12 WHERE seq = -5",
    )
    assert verify(session).first_bad_seq == 5


def test_L05_deleted_tail_is_named(session, engine):
    seed(session, 20)
    tamper(engine, "DELETE FROM aaa_audit_events WHERE seq > 17")
    report = verify(session)
    assert not report.ok
    assert report.first_bad_seq == 18
    assert report.last_seq == 17


def test_L05_deleting_everything_is_caught(session, engine):
    seed(session, 20)
    tamper(engine, "DELETE FROM aaa_audit_events")
    report = verify(session)
    assert not report.ok
    assert report.first_bad_seq == 1


def forge(engine, seq: int, prev_hash: str, *, proper_hash: bool) -> None:
    """Insert a forged event at ``seq``, its hash computed as the library does (an attacker
    who knows the algorithm) or just made up."""
    fields = {
        "seq": seq,
        "ts": "2030-03-01T12:30:00.000000",
        "actor_type": "system",
        "actor_id": None,
        "actor_name": "cleanup",
        "action": "role.granted",
        "outcome": "success",
        "target_type": "user",
        "target_id": "2",
        "target_label": "bob",
        "ip": None,
        "user_agent": None,
        "request_id": None,
        "session_hash": None,
        "details": '{"role":"admin"}',
        "prev_hash": prev_hash,
    }
    digest = audit.event_hash(fields) if proper_hash else "e" * 64
    tamper(
        engine,
        "INSERT INTO aaa_audit_events (seq, ts, actor_type, actor_id, actor_name, action, "
        "outcome, target_type, target_id, target_label, ip, user_agent, request_id, "
        "session_hash, details, prev_hash, hash) VALUES (:seq, :ts_db, :actor_type, "
        ":actor_id, :actor_name, :action, :outcome, :target_type, :target_id, :target_label, "
        ":ip, :user_agent, :request_id, :session_hash, :details, :prev_hash, :hash)",
        **fields,
        ts_db=fields["ts"].replace("T", " "),
        hash=digest,
    )


def test_L05_inserted_row_with_a_made_up_hash_is_named(session, engine):
    seed(session, 20)
    forge(engine, 21, str(row(engine, 20)["hash"]), proper_hash=False)
    report = verify(session)
    assert not report.ok
    assert report.first_bad_seq == 21


def test_L05_inserted_row_with_a_recomputed_hash_is_named(session, engine):
    """A well-forged event appended after the tail links and hashes correctly; only the head
    record betrays it, and the first bad event is the forged one, 21 (not 20, which is
    genuine)."""
    seed(session, 20)
    forge(engine, 21, str(row(engine, 20)["hash"]), proper_hash=True)
    report = verify(session)
    assert not report.ok
    assert report.first_bad_seq == 21


def test_L05_replaced_last_row_with_recomputed_hash_is_named(session, engine):
    """The last event swapped for a well-forged one (right link, right hash): the head
    record still holds the genuine hash, so event 20 is named."""
    seed(session, 20)
    tamper(engine, "DELETE FROM aaa_audit_events WHERE seq = 20")
    forge(engine, 20, str(row(engine, 19)["hash"]), proper_hash=True)
    report = verify(session)
    assert not report.ok
    assert report.first_bad_seq == 20


@pytest.mark.parametrize("seq", [0, -1])
def test_L05_inserted_row_before_the_first_is_caught(session, engine, seq):
    """A forged row numbered below 1 shows up in listings (``query``) but lies outside the
    range verify_chain walks; the chain must not be reported as intact."""
    seed(session, 20)
    forge(engine, seq, GENESIS_HASH, proper_hash=True)
    session.rollback()
    listed = [e.seq for e in audit.query(session, audit.AuditFilter(), limit=100).events]
    assert seq in listed
    report = verify(session)
    assert not report.ok
    assert report.first_bad_seq == seq


# -- query --


def listed(session, flt: audit.AuditFilter | None = None, **kwargs) -> list[int]:
    session.rollback()
    page = audit.query(session, flt or audit.AuditFilter(), **kwargs)
    return [e.seq for e in page.events]


def test_query_is_newest_first(session):
    seed(session, 6)
    assert listed(session) == [6, 5, 4, 3, 2, 1]


def test_query_by_actor(session):
    seed(session, 10)
    assert listed(session, audit.AuditFilter(actor_id=2)) == [10, 8, 6, 4, 2]
    assert listed(session, audit.AuditFilter(actor_id=3)) == []


def test_query_by_exact_action(session):
    seed(session, 10)
    assert listed(session, audit.AuditFilter(action="auth.login.failed")) == [7, 2]
    assert listed(session, audit.AuditFilter(action="auth.login")) == []


@pytest.mark.parametrize("prefix", ["auth.*", "auth."])
def test_query_by_action_prefix(session, prefix):
    seed(session, 10)
    assert listed(session, audit.AuditFilter(action=prefix)) == [7, 6, 2, 1]


def test_action_prefix_does_not_match_a_longer_word(session):
    """'auth.*' is the 'auth.' namespace; 'authz.denied' is not in it."""
    seed(session, 10)
    actions = set(
        session.scalars(
            select(AuditEvent.action).where(
                AuditEvent.seq.in_(listed(session, audit.AuditFilter(action="auth.*")))
            )
        )
    )
    assert actions == {"auth.login.succeeded", "auth.login.failed"}


def test_query_by_outcome(session):
    seed(session, 10)
    assert listed(session, audit.AuditFilter(outcome="denied")) == [9, 4]
    with pytest.raises(InvalidInput):
        audit.AuditFilter(outcome="whatever")


def test_query_by_ip(session):
    seed(session, 10)
    assert listed(session, audit.AuditFilter(ip="192.0.2.3")) == [3]


def test_query_by_time_range(session):
    seed(session, 10)  # event i (seq i + 1) at START + i minutes
    since, until = START + dt.timedelta(minutes=3), START + dt.timedelta(minutes=6)
    assert listed(session, audit.AuditFilter(since=since, until=until)) == [7, 6, 5, 4]
    assert listed(session, audit.AuditFilter(since=since)) == [10, 9, 8, 7, 6, 5, 4]
    assert listed(session, audit.AuditFilter(until=until)) == [7, 6, 5, 4, 3, 2, 1]
    with pytest.raises(InvalidInput):
        audit.AuditFilter(since=until, until=since)


def test_V03_time_range_in_another_timezone_means_the_same_instant(session):
    seed(session, 10)
    paris = dt.timezone(dt.timedelta(hours=2))
    since = (START + dt.timedelta(minutes=3)).astimezone(paris)
    until = (START + dt.timedelta(minutes=6)).astimezone(paris)
    assert since.hour == 14
    assert listed(session, audit.AuditFilter(since=since, until=until)) == [7, 6, 5, 4]


def test_Z01_involving_user_shows_own_actions_and_sign_in_attempts_on_the_account(session):
    """A user's own view: what they did, and failed sign-ins on their account by others; not
    what others did to other users, nor others' non-auth actions that target them."""
    alice_target = audit.Target("user", "1", "alice")
    with writing():
        audit.record(session, action="notes.created", actor=ALICE)  # 1: alice acts
        audit.record(session, action="notes.created", actor=BOB)  # 2: bob acts
        audit.record(  # 3: someone tries alice's password
            session,
            action="auth.login.failed",
            actor=Actor.anonymous(),
            outcome="failure",
            target=alice_target,
        )
        audit.record(  # 4: someone tries bob's password
            session,
            action="auth.login.failed",
            actor=Actor.anonymous(),
            outcome="failure",
            target=audit.Target("user", "2", "bob"),
        )
        audit.record(session, action="role.granted", actor=BOB, target=alice_target)  # 5
        audit.record(  # 6: target id "11" must not match user 1
            session,
            action="auth.login.failed",
            actor=Actor.anonymous(),
            outcome="failure",
            target=audit.Target("user", "11", "eleven"),
        )
        session.commit()
    assert listed(session, audit.AuditFilter(involving_user=1)) == [3, 1]
    assert listed(session, audit.AuditFilter(involving_user=2)) == [5, 4, 2]
    assert listed(session, audit.AuditFilter(involving_user=1, action="notes.*")) == [1]


def test_filters_combine(session):
    seed(session, 20)
    flt = audit.AuditFilter(actor_id=1, action="auth.*", outcome="success")
    assert listed(session, flt) == [11, 1]


def test_keyset_pagination(session):
    seed(session, 8)
    pages, before = [], None
    while True:
        session.rollback()
        page = audit.query(session, audit.AuditFilter(), limit=3, before=before)
        pages.append([e.seq for e in page.events])
        before = page.next_before
        if before is None:
            break
    assert pages == [[8, 7, 6], [5, 4, 3], [2, 1]]


def test_keyset_pagination_with_a_filter_and_exact_page_size(session):
    seed(session, 20)
    flt = audit.AuditFilter(actor_id=2)  # seqs 2, 4, ..., 20
    session.rollback()
    first = audit.query(session, flt, limit=5)
    assert [e.seq for e in first.events] == [20, 18, 16, 14, 12]
    second = audit.query(session, flt, limit=5, before=first.next_before)
    assert [e.seq for e in second.events] == [10, 8, 6, 4, 2]
    assert second.next_before is None


# -- L01: injection through filter values --


INJECTIONS = [
    "' OR 1=1--",
    "' OR '1'='1",
    "x'; DROP TABLE aaa_audit_events;--",
    '" OR ""="',
    "%",
    "_%",
    "auth.login.failed' --",
]


def test_L01_injection_in_filters_returns_nothing_and_changes_nothing(session, engine):
    seed(session, 10)
    before = [tuple(r) for r in session.execute(text("SELECT * FROM aaa_audit_events"))]
    for value in INJECTIONS:
        for flt in (
            audit.AuditFilter(action=value),
            audit.AuditFilter(action=value + "*"),
            audit.AuditFilter(ip=value),
        ):
            assert listed(session, flt) == [], flt
            assert list(audit.export_jsonl(session, flt)) == [], flt
    session.rollback()
    after = [tuple(r) for r in session.execute(text("SELECT * FROM aaa_audit_events"))]
    assert after == before
    assert verify(session).ok


@pytest.mark.parametrize("value", ["' OR 1=1--", "success' OR '1'='1"])
def test_L01_injection_in_outcome_is_invalid_input(value):
    with pytest.raises(InvalidInput):
        audit.AuditFilter(outcome=value)


def test_L01_like_wildcards_in_a_prefix_are_literal(session):
    seed(session, 10)
    assert listed(session, audit.AuditFilter(action="a_th.*")) == []
    assert listed(session, audit.AuditFilter(action="%.login.*")) == []


# -- export --


def test_export_jsonl_is_valid_json_lines_oldest_first(session):
    seed(session, 12)
    session.rollback()
    lines = list(audit.export_jsonl(session, audit.AuditFilter(), batch=5))
    assert len(lines) == 12
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == list(range(1, 13))
    first = records[0]
    assert first["details"] == {"i": 0, "note": "é\n<script>"}
    assert first["ts"] == "2030-03-01T12:00:00.000000Z"
    assert first["action"] == "auth.login.succeeded"
    assert first["prev_hash"] == GENESIS_HASH
    assert all(len(r["hash"]) == 64 for r in records)
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(records))


@pytest.mark.parametrize(
    "stored",
    ['{"i":\n1}', "{}\r\n", "not json", '{"i":1} {"j":2}', " {}", '{"i":1},"seq":0'],
)
def test_L05_tampered_details_cannot_break_or_add_to_an_exported_line(session, engine, stored):
    """Stored details are spliced into the line as they are only when they are exactly one
    JSON value on one line; anything else (a row edited in the database) is exported as a
    string, so every event is still one line and its other fields cannot be overwritten."""
    seed(session, 3)
    session.rollback()
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE aaa_audit_events SET details = :d WHERE seq = 2"), {"d": stored}
        )
    lines = list(audit.export_jsonl(session, audit.AuditFilter()))
    assert len(lines) == 3
    assert all(line.count("\n") == 1 for line in lines)
    second = json.loads(lines[1])
    assert second["details"] == stored
    assert second["seq"] == 2


def test_export_jsonl_applies_the_filter(session):
    seed(session, 12)
    session.rollback()
    lines = audit.export_jsonl(session, audit.AuditFilter(action="auth.*"), batch=2)
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 6, 7, 11, 12]


def test_export_jsonl_of_nothing(session):
    assert list(audit.export_jsonl(session, audit.AuditFilter())) == []


# -- the log mirror --


def test_log_mirror_one_json_line_per_committed_event(session, caplog):
    caplog.set_level(logging.INFO, logger="flask_aaa.audit")
    with writing():
        audit.record(session, action="a.one", actor=ALICE, details={"k": "v"})
        audit.record(session, action="a.two", actor=BOB)
        session.commit()
    lines = mirrored(caplog)
    assert [(line["seq"], line["action"]) for line in lines] == [(1, "a.one"), (2, "a.two")]
    assert lines[0]["details"] == {"k": "v"}
    assert lines[0]["actor_name"] == "alice"
    assert str(lines[0]["ts"]).endswith("Z")
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_log_mirror_silent_for_a_rolled_back_event(session, caplog):
    caplog.set_level(logging.INFO, logger="flask_aaa.audit")
    with writing():
        head(session)
        audit.record(session, action="a.discarded", actor=ALICE)
        session.rollback()
    with writing():
        session.commit()
    assert mirrored(caplog) == []


def test_log_mirror_covers_events_recorded_apart(session, caplog):
    caplog.set_level(logging.INFO, logger="flask_aaa.audit")
    with pytest.raises(PermissionDenied):
        rbac.deny(session, ALICE, "notes:read")
    [line] = mirrored(caplog)
    assert (line["action"], line["outcome"], line["seq"]) == ("authz.denied", "denied", 1)


def test_log_mirror_can_be_switched_off(session, caplog):
    caplog.set_level(logging.INFO, logger="flask_aaa.audit")
    with writing():
        audit.record(session, action="a.quiet", actor=ALICE, mirror=False)
        session.commit()
    assert mirrored(caplog) == []
    assert head(session)[0] == 1


def test_log_mirror_flag_is_per_event(session, caplog):
    """``mirror`` is an argument of each ``record`` call: a quiet event stays quiet when a
    mirrored one is recorded after it in the same transaction, and vice versa."""
    caplog.set_level(logging.INFO, logger="flask_aaa.audit")
    with writing():
        audit.record(session, action="a.quiet", actor=ALICE, mirror=False)
        audit.record(session, action="a.loud", actor=ALICE)
        audit.record(session, action="a.quiet2", actor=ALICE, mirror=False)
        audit.record(session, action="a.loud2", actor=ALICE)
        session.commit()
    assert [line["action"] for line in mirrored(caplog)] == ["a.loud", "a.loud2"]


# -- V03: UTC --


def test_V03_timestamps_are_utc_aware(session, engine):
    with freeze_time("2030-06-01 12:00:00+05:00"):
        with writing():
            audit.record(session, action="a.b", actor=SYSTEM)
            session.commit()
    with Session(engine) as other:
        ts = other.scalar(select(AuditEvent.ts))
    assert ts.tzinfo is not None
    assert ts.utcoffset() == dt.timedelta(0)
    assert ts == dt.datetime(2030, 6, 1, 7, 0, tzinfo=dt.UTC)


def test_V03_backward_clock_jump_keeps_seq_order(session):
    """Order is by ``seq``, not by the wall clock; the chain still verifies."""
    with freeze_time(START) as clock:
        with writing():
            audit.record(session, action="a.first", actor=SYSTEM)
            session.commit()
        clock.move_to(START - dt.timedelta(minutes=5))
        with writing():
            audit.record(session, action="a.second", actor=SYSTEM)
            session.commit()
    assert listed(session) == [2, 1]
    session.rollback()
    lines = [json.loads(line) for line in audit.export_jsonl(session, audit.AuditFilter())]
    assert [line["action"] for line in lines] == ["a.first", "a.second"]
    assert verify(session).ok


def test_L09_event_recorded_while_the_commit_flushes_is_sealed_in_that_commit(session):
    """An app's flush listener may record an event about what is being flushed; the commit
    flushes before it seals, so that event commits with the change, not later or never."""
    from sqlalchemy import event as sa_event

    from flask_aaa.models import Role

    def on_flush(db: Session, _context: object, _instances: object) -> None:
        for obj in db.new:
            if isinstance(obj, Role):
                audit.record(db, action="app.role_seen", actor=SYSTEM)

    sa_event.listen(session, "before_flush", on_flush)
    try:
        with writing():
            session.add(Role(name="flushed"))
            session.commit()
    finally:
        sa_event.remove(session, "before_flush", on_flush)
    assert seqs(session) == [1]
    assert session.scalar(select(AuditEvent.action)) == "app.role_seen"
    assert not session.info.get("aaa_audit_pending")
    assert verify(session).ok


def test_V03_time_range_pages_follow_the_clock_and_walk_every_event_once(session):
    """With a time range as the only filter a page is read off the time index: newest by
    ``ts`` (``seq`` breaking ties). Keyset pages still walk every match exactly once, even
    when the clock went back and ``ts`` and ``seq`` disagree."""
    stamps = [0, 10, 5, 20, 20, 15, 30]  # minutes after START; the clock went back twice
    with freeze_time(START) as clock:
        for minutes in stamps:
            clock.move_to(START + dt.timedelta(minutes=minutes))
            with writing():
                audit.record(session, action="a.tick", actor=SYSTEM)
                session.commit()
    flt = audit.AuditFilter(since=START, until=START + dt.timedelta(minutes=25))
    assert flt.by_time()
    walked, before = [], None
    while True:
        session.rollback()
        page = audit.query(session, flt, limit=2, before=before)
        walked += [e.seq for e in page.events]
        if page.next_before is None:
            break
        before = page.next_before
    # seq 1..6 are in range (seq 7 at 30 min is not); ts order, newest first, seq breaks ties
    assert walked == [5, 4, 6, 2, 3, 1]
    assert not audit.AuditFilter(since=START, actor_id=1).by_time()
