"""Black-box tests of "my activity": a user sees and downloads only their own events,
whatever they send (Z01), its filters refuse bad values cleanly (L01), and what others
control renders escaped (L02)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from sqlalchemy import func, inspect, select

from flask_aaa.models import AuditEvent, User
from tests.conftest import fresh, login, post

JSON = {"Accept": "application/json"}
SCRIPT = "<script>alert(1)</script>"


def events(db: Any) -> list[AuditEvent]:
    return list(fresh(db).scalars(select(AuditEvent).order_by(AuditEvent.seq)))


def _get(event_: Any, name: str) -> Any:
    return event_[name] if isinstance(event_, dict) else getattr(event_, name)


def involves(event_: Any, user: User) -> bool:
    """Is the event one of ``user``'s own: done by them, or a sign-in attempt on their
    account (``auth.*`` with them as the target)?"""
    if _get(event_, "actor_id") == user.id:
        return True
    return (
        _get(event_, "target_type") == "user"
        and _get(event_, "target_id") == str(user.id)
        and _get(event_, "action").startswith("auth.")
    )


def assert_only_own(listed: list[Any], owner: User, other: User) -> None:
    for event_ in listed:
        assert involves(event_, owner), event_
        assert _get(event_, "actor_id") != other.id, event_
        assert not (
            _get(event_, "target_type") == "user" and _get(event_, "target_id") == str(other.id)
        ), event_


def own_seqs(db: Any, user: User) -> list[int]:
    """The user's events, newest first (the listing's order)."""
    return sorted((e.seq for e in events(db) if involves(e, user)), reverse=True)


def activity(client: Any, **query: str) -> dict[str, Any]:
    response = client.get("/account/activity", query_string=query, headers=JSON)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return response.get_json()


def read_jsonl(response: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines() if line]


@pytest.fixture
def pair(app: Flask, make_user: Any) -> dict[str, Any]:
    """alice and bob, both with a history: logins, a denial, an audited note, a failed login.
    Returns the users and a signed-in client for each."""
    alice = make_user("alice", roles=["writer"], perms={"writer": ["notes:write"]})
    bob = make_user("bob", roles=["writer"])
    clients = {}
    for name in ("alice", "bob"):
        client = app.test_client()
        assert login(app.test_client(), name, "not-the-password-123").status_code == 401
        assert login(client, name).status_code == 303
        assert client.get("/notes").status_code == 403
        assert post(client, "/notes").status_code == 201
        clients[name] = client
    return {"alice": alice, "bob": bob, "a": clients["alice"], "b": clients["bob"]}


# -- Z01: only one's own events --


def test_Z01_activity_json_lists_exactly_own_events(db, pair):
    got = activity(pair["a"])["events"]
    assert [e["seq"] for e in got] == own_seqs(db, pair["alice"])
    assert_only_own(got, pair["alice"], pair["bob"])
    assert {"auth.login.succeeded", "auth.login.failed", "authz.denied", "notes.created"} <= {
        e["action"] for e in got
    }


def test_Z01_bob_has_events_of_his_own(db, pair):
    """The control for the tests below: there is something of bob's to leak."""
    assert len(own_seqs(db, pair["bob"])) >= 4


WIDENING_QUERIES = [
    {"user": "bob"},
    {"user": "#{bob}"},
    {"actor_id": "{bob}"},
    {"actor": "bob"},
    {"user_id": "{bob}"},
    {"actor_id": "{bob}", "user": "bob", "action": "auth.*"},
]


def test_Z01_filters_cannot_widen_activity_to_another_user(db, pair):
    bob = pair["bob"].id
    for query in WIDENING_QUERIES:
        filled = {k: v.format(bob=bob) for k, v in query.items()}
        got = activity(pair["a"], **filled)["events"]
        assert got, f"alice's own events are still listed for {filled}"
        expected = [
            e.seq
            for e in events(db)
            if involves(e, pair["alice"]) and ("action" not in query or e.action[:5] == "auth.")
        ]
        assert [e["seq"] for e in got] == expected[::-1], filled
        assert_only_own(got, pair["alice"], pair["bob"])


def test_Z01_repeated_query_arguments_cannot_widen_activity(db, pair):
    bob = pair["bob"].id
    response = pair["a"].get(
        f"/account/activity?user=alice&user=bob&actor_id={bob}&actor_id={bob}", headers=JSON
    )
    assert_only_own(response.get_json()["events"], pair["alice"], pair["bob"])


def test_Z01_activity_html_shows_no_event_of_another_user(db, pair):
    bob_events = [e for e in events(db) if involves(e, pair["bob"])]
    for query in ("?user=bob", "?actor_id={bob}", "?user=%23{bob}"):
        response = pair["a"].get("/account/activity" + query.format(bob=pair["bob"].id))
        assert response.status_code == 200
        body = response.get_data(as_text=True)
        for event_ in bob_events:
            assert f"<td>{event_.seq}</td>" not in body, query
        for seq in own_seqs(db, pair["alice"]):
            assert f"<td>{seq}</td>" in body, query


def test_Z01_export_contains_only_own_events(db, pair):
    response = pair["a"].get("/account/activity.jsonl")
    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = read_jsonl(response)
    assert [r["seq"] for r in rows] == sorted(own_seqs(db, pair["alice"]))
    assert_only_own(rows, pair["alice"], pair["bob"])


def test_Z01_export_ignores_filters_naming_another_user(db, pair):
    for query in ("?user=bob", "?actor_id={bob}", "?user=%23{bob}&action=auth.*"):
        url = "/account/activity.jsonl" + query.format(bob=pair["bob"].id)
        rows = read_jsonl(pair["a"].get(url))
        assert rows, query
        assert [r["seq"] for r in rows] == sorted(own_seqs(db, pair["alice"])), query
        assert_only_own(rows, pair["alice"], pair["bob"])


def test_Z01_activity_does_not_show_events_about_the_user_by_others(app, db, pair, admin):
    """An administrator's change to alice is the administrator's event, not alice's."""
    root = app.test_client()
    assert login(root, "root").status_code == 303
    assert (
        post(root, f"/admin/users/{pair['alice'].id}/roles/revoke", {"role": "writer"}).status_code
        == 303
    )
    got = activity(pair["a"])["events"]
    assert "role.revoked" not in {e["action"] for e in got}
    assert root.get("/admin/audit?action=role.revoked", headers=JSON).get_json()["events"]


def test_Z01_failed_sign_in_on_alices_account_is_not_listed_for_bob(app, db, pair):
    """A failed sign-in on alice's account (from bob's machine) belongs to alice's view, not
    to bob's, however bob filters."""
    attacker = app.test_client()
    assert login(attacker, "alice", "guess-guess-guess-1").status_code == 401
    attempt = [e for e in events(db) if e.action == "auth.login.failed"][-1]
    assert attempt.seq in {e["seq"] for e in activity(pair["a"])["events"]}
    for query in ({}, {"user": "alice"}, {"action": "auth.login.failed"}):
        got = activity(pair["b"], **query)["events"]
        assert attempt.seq not in {e["seq"] for e in got}
        assert_only_own(got, pair["bob"], pair["alice"])


def test_Z01_anonymous_cannot_read_activity(client):
    response = client.get("/account/activity")
    assert response.status_code == 303
    assert urlsplit(response.headers["Location"]).path == "/auth/login"
    response = client.get("/account/activity.jsonl", headers=JSON)
    assert response.status_code == 401
    assert client.get("/account/activity", headers=JSON).status_code == 401


# -- own filters and pagination --


def test_activity_filter_by_action_prefix_and_outcome(db, pair):
    got = activity(pair["a"], action="auth.*")["events"]
    assert got
    assert all(e["action"].startswith("auth.") for e in got)
    denied = activity(pair["a"], outcome="denied")["events"]
    assert [e["action"] for e in denied] == ["authz.denied"]
    failed = activity(pair["a"], action="auth.login.failed", outcome="failure")["events"]
    assert len(failed) == 1


def test_activity_filter_by_time(db, pair):
    now = dt.datetime.now(dt.UTC)
    later = (now + dt.timedelta(hours=1)).isoformat()
    earlier = (now - dt.timedelta(hours=1)).isoformat()
    assert activity(pair["a"], since=later)["events"] == []
    assert len(activity(pair["a"], since=earlier, until=later)["events"]) == len(
        own_seqs(db, pair["alice"])
    )


class TestSmallPages:
    @pytest.fixture
    def config(self, config: dict[str, Any]) -> dict[str, Any]:
        return {**config, "AAA_PAGE_SIZE": 2}

    def test_activity_keyset_pagination_walks_own_events_once(self, db, pair):
        seen: list[int] = []
        before: int | None = None
        for _ in range(50):
            page = activity(pair["a"], **({"before": str(before)} if before else {}))
            assert len(page["events"]) <= 2
            seen.extend(e["seq"] for e in page["events"])
            before = page["next_before"]
            if before is None:
                break
        assert seen == own_seqs(db, pair["alice"])

    def test_activity_cursor_cannot_reach_other_users_events(self, db, pair):
        """A cursor just past one of bob's events still lists only alice's."""
        bob_seq = max(e.seq for e in events(db) if e.actor_id == pair["bob"].id)
        got = activity(pair["a"], before=str(bob_seq + 1))["events"]
        assert_only_own(got, pair["alice"], pair["bob"])


# -- L01: injection and bad values --

INJECTIONS = ["' OR 1=1--", "1;DROP TABLE aaa_audit_events", "(SELECT 1)"]
FILTERS = ["user", "action", "outcome", "ip", "since", "until", "before"]


def _fingerprint(db: Any) -> tuple[int, int]:
    session = fresh(db)
    tables = int(inspect(session.connection()).has_table("aaa_audit_events"))
    return int(tables or 0), int(session.scalar(select(func.count()).select_from(AuditEvent)))


@pytest.mark.parametrize("field", FILTERS)
def test_L01_injection_in_activity_filters(db, pair, field):
    before = _fingerprint(db)
    for payload in INJECTIONS:
        response = pair["a"].get("/account/activity", query_string={field: payload}, headers=JSON)
        assert response.status_code in (200, 400), (payload, response.status_code)
        body = response.get_json()
        if response.status_code == 200:
            assert_only_own(body["events"], pair["alice"], pair["bob"])
            if field != "user":  # "user" is ignored on this page; the others match nothing
                assert body["events"] == [], payload
        else:
            assert body["error"] == "invalid_input"
            assert field in body["fields"]
        assert _fingerprint(db) == before


BAD_FILTERS = [
    ({"since": "2026-02-30"}, "since"),
    ({"until": "tomorrow"}, "until"),
    ({"since": "2026-02-01", "until": "2026-01-01"}, "since"),
    ({"before": "x1"}, "before"),
    ({"before": "1.5"}, "before"),
    ({"outcome": "succeeded"}, "outcome"),
    ({"action": "auth/login"}, "action"),
]


def test_L01_bad_activity_filters_are_400_json_with_field_errors(pair):
    for query, field in BAD_FILTERS:
        response = pair["a"].get("/account/activity", query_string=query, headers=JSON)
        assert response.status_code == 400, query
        assert response.mimetype == "application/json"
        body = response.get_json()
        assert body["error"] == "invalid_input"
        assert field in body["fields"], query


def test_L01_bad_activity_filter_is_a_400_page_for_browsers(pair):
    response = pair["a"].get("/account/activity?since=yesterday")
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert "since" in response.get_data(as_text=True)


def test_L01_unicode_digit_activity_cursor_is_400_not_500(pair):
    response = pair["a"].get("/account/activity", query_string={"before": "\u00b2"}, headers=JSON)
    assert response.status_code == 400


# -- L02: escaping --


def test_L02_user_agent_renders_escaped_on_activity(app, make_user):
    make_user("carol")
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = SCRIPT
    assert login(client, "carol").status_code == 303
    response = client.get("/account/activity")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert SCRIPT not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "Content-Security-Policy" in response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_L02_attacker_user_agent_in_a_failed_login_renders_escaped_for_the_victim(app, make_user):
    """A failed login against carol is listed on carol's page, with the attacker's UA."""
    make_user("carol")
    attacker = app.test_client()
    attacker.environ_base["HTTP_USER_AGENT"] = '"><img src=x onerror=alert(1)>'
    assert login(attacker, "carol", "wrong-password-0000").status_code == 401
    client = app.test_client()
    assert login(client, "carol").status_code == 303
    body = client.get("/account/activity").get_data(as_text=True)
    assert "<img src=x" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body


def test_L02_activity_json_and_export_are_not_html(app, make_user):
    make_user("carol")
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = SCRIPT
    assert login(client, "carol").status_code == 303
    response = client.get("/account/activity", headers=JSON)
    assert response.mimetype == "application/json"
    assert SCRIPT in {e["user_agent"] for e in response.get_json()["events"]}
    export = client.get("/account/activity.jsonl")
    assert export.mimetype == "application/x-ndjson"
    assert export.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("field", ["action", "outcome", "before"])
def test_L02_reflected_activity_filters_are_escaped(pair, field):
    response = pair["a"].get("/account/activity", query_string={field: SCRIPT})
    assert SCRIPT not in response.get_data(as_text=True)


def test_L02_markup_is_refused_as_a_username(client, db):
    """The username payload cannot even be stored: usernames allow letters, digits, . _ -."""
    fields = {
        "username": 'x"><img src=x onerror=alert(1)>',
        "email": "x@example.org",
        "password": "plum-harbor-violin-42",
    }
    response = post(client, "/auth/register", fields, headers=JSON)
    assert response.status_code == 400
    assert "username" in response.get_json()["fields"]
    assert fresh(db).scalar(select(func.count()).select_from(User)) == 0
