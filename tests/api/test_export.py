"""Downloads of the audit trail through the API: ``GET /audit/export`` for administrators
and ``GET /me/activity/export`` for one's own events, as JSON Lines or CSV, with the
filters of the listings, streamed; a bad format or filter is a 400 (L01), another user's
events are out of reach (Z01), the permission is checked (Z07) and CSV cells are guarded
against spreadsheet formulas (L02)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from flask import Flask

from flask_aaa.models import User
from flask_aaa.services import audit
from tests.api.conftest import API, bearer, events
from tests.conftest import login

FORMULAS = ['=HYPERLINK("http://x")', "+cmd", "-2+3", "@SUM(1)"]


def read_csv(response: Any) -> list[dict[str, str]]:
    text = response.get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == list(audit.EXPORT_COLUMNS)
    assert all(len(row) == len(audit.EXPORT_COLUMNS) for row in rows)
    return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def read_jsonl(response: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines() if line]


@pytest.fixture
def world(app: Flask, admin: User, make_user: Any, token_for: Any) -> dict[str, Any]:
    """alice and bob, each signed in from a browser with a formula-like user agent, and a
    failed sign-in on bob's account; tokens for alice (own activity) and root (everything)."""
    alice, bob = make_user("alice"), make_user("bob")
    for name, agent in (("alice", FORMULAS[0]), ("bob", FORMULAS[1]), ("alice", FORMULAS[2])):
        browser = app.test_client()
        browser.environ_base["HTTP_USER_AGENT"] = agent
        assert login(browser, name).status_code == 303
    attacker = app.test_client()
    attacker.environ_base["HTTP_USER_AGENT"] = FORMULAS[3]
    assert login(attacker, "bob", "wrong-password-123456").status_code == 401
    return {
        "alice": alice,
        "bob": bob,
        "alice_token": bearer(token_for(alice, ["account:read"])),
        "root_token": bearer(token_for(admin, ["aaa:audit:read"])),
    }


def get(client: Any, path: str, headers: dict[str, str], **query: str) -> Any:
    return client.get(f"{API}{path}", query_string=query, headers=headers)


# -- administrators --


def test_audit_export_as_json_lines_has_every_event(client, db, world):
    response = get(client, "/audit/export", world["root_token"], format="jsonl")
    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    assert response.headers["Content-Disposition"] == 'attachment; filename="audit.jsonl"'
    rows = read_jsonl(response)
    assert [r["seq"] for r in rows] == [e.seq for e in events(db)]


def test_audit_export_as_csv_matches_the_json_lines(client, db, world):
    response = get(client, "/audit/export", world["root_token"], format="csv")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.headers["Content-Disposition"] == 'attachment; filename="audit.csv"'
    rows = read_csv(response)
    lines = read_jsonl(get(client, "/audit/export", world["root_token"], format="jsonl"))
    assert len(rows) == len(lines) == len(events(db))
    assert [r["hash"] for r in rows] == [line["hash"] for line in lines]


def test_audit_export_applies_the_filters_of_the_listing(client, world):
    token, bob = world["root_token"], world["bob"]
    for fmt in ("csv", "jsonl"):
        response = get(
            client,
            "/audit/export",
            token,
            format=fmt,
            action="auth.login.failed",
            outcome="failure",
        )
        rows = read_csv(response) if fmt == "csv" else read_jsonl(response)
        assert [(r["action"], str(r["target_id"])) for r in rows] == [
            ("auth.login.failed", str(bob.id))
        ], fmt
    rows = read_jsonl(get(client, "/audit/export", token, format="jsonl", actor=str(bob.id)))
    assert rows and {r["actor_id"] for r in rows} == {bob.id}
    listed = get(client, "/audit", token, actor=str(bob.id), limit="200").get_json()["items"]
    assert [r["seq"] for r in rows] == [e["seq"] for e in reversed(listed)]
    rows = read_csv(
        get(client, "/audit/export", token, format="csv", target_type="user", target_id="999")
    )
    assert rows == []


def test_L02_audit_export_csv_guards_formula_like_cells(client, world):
    rows = read_csv(get(client, "/audit/export", world["root_token"], format="csv"))
    agents = {r["user_agent"] for r in rows}
    assert {"'" + f for f in FORMULAS} <= agents
    assert not agents & set(FORMULAS)
    # JSON Lines is verbatim.
    lines = read_jsonl(get(client, "/audit/export", world["root_token"], format="jsonl"))
    assert set(FORMULAS) <= {line["user_agent"] for line in lines}


BAD_QUERIES = [
    ({}, "format"),
    ({"format": "xml"}, "format"),
    ({"format": "CSV"}, "format"),
    ({"format": "csv", "since": "yesterday"}, "since"),
    ({"format": "csv", "outcome": "maybe"}, "outcome"),
    ({"format": "csv", "actor": "' OR 1=1--"}, "actor"),
    ({"format": "csv", "target_type": "(SELECT 1)"}, "target_type"),
    ({"format": "csv", "limit": "10"}, "limit"),
    ({"format": "csv", "cursor": "abc"}, "cursor"),
    ({"format": "csv", "user": "bob"}, "user"),
]


@pytest.mark.parametrize(("query", "field"), BAD_QUERIES)
def test_L01_bad_audit_export_query_is_a_400_json_error(client, db, world, query, field):
    before = len(events(db))
    response = get(client, "/audit/export", world["root_token"], **query)
    assert response.status_code == 400
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"] == "invalid_input"
    assert field in body["fields"]
    assert len(events(db)) == before


def test_Z07_audit_export_needs_the_audit_permission(app, client, db, admin, world, token_for):
    """A plain user's token, a plain user's browser session, and an administrator's token
    without the scope: 403 each, each denial audited."""
    browser = app.test_client()
    assert login(browser, "bob").status_code == 303
    callers = [
        (client, world["alice_token"], world["alice"]),
        (browser, {}, world["bob"]),
        (client, bearer(token_for(admin, ["account:read"])), admin),
    ]
    for caller, headers, user in callers:
        before = len(events(db, "authz.denied", actor_id=user.id))
        response = get(caller, "/audit/export", headers, format="csv")
        assert response.status_code == 403
        assert response.get_json()["error"] == "permission_denied"
        assert len(events(db, "authz.denied", actor_id=user.id)) == before + 1


def test_audit_export_refuses_anonymous_callers(client, world):
    response = get(client, "/audit/export", {}, format="csv")
    assert response.status_code == 401
    assert response.get_json()["error"] == "login_required"


def test_audit_export_is_streamed(client, world):
    response = client.get(
        f"{API}/audit/export?format=csv", headers=world["root_token"], buffered=False
    )
    try:
        assert response.is_streamed
        assert next(iter(response.response)).startswith(b"seq,ts,")
    finally:
        response.close()


# -- one's own activity --


def own(db: Any, user: User) -> list[int]:
    return [
        e.seq
        for e in events(db)
        if e.actor_id == user.id
        or (e.target_type == "user" and e.target_id == str(user.id) and e.action[:5] == "auth.")
    ]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_Z01_my_activity_export_has_exactly_my_events(client, db, world, fmt):
    response = get(client, "/me/activity/export", world["alice_token"], format=fmt)
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == f'attachment; filename="my-activity.{fmt}"'
    rows = read_csv(response) if fmt == "csv" else read_jsonl(response)
    assert [int(r["seq"]) for r in rows] == own(db, world["alice"])
    assert str(world["bob"].id) not in {str(r["actor_id"]) for r in rows}
    assert str(world["bob"].id) not in {str(r["target_id"]) for r in rows}


def test_Z01_my_activity_export_refuses_naming_another_user(client, world):
    bob = world["bob"].id
    for query in ({"user": str(bob)}, {"actor": str(bob)}, {"involving_user": str(bob)}):
        response = get(client, "/me/activity/export", world["alice_token"], format="csv", **query)
        assert response.status_code == 400, query
        assert set(response.get_json()["fields"]) == set(query)


def test_my_activity_export_applies_my_filters(client, db, world):
    rows = read_csv(
        get(
            client,
            "/me/activity/export",
            world["alice_token"],
            format="csv",
            action="auth.login.succeeded",
        )
    )
    assert len(rows) == 2
    assert {r["user_agent"] for r in rows} == {"'" + FORMULAS[0], "'" + FORMULAS[2]}
    assert (
        read_csv(
            get(client, "/me/activity/export", world["alice_token"], format="csv", outcome="denied")
        )
        == []
    )


@pytest.mark.parametrize(("query", "field"), BAD_QUERIES[:5])
def test_L01_bad_my_activity_export_query_is_a_400(client, world, query, field):
    response = get(client, "/me/activity/export", world["alice_token"], **query)
    assert response.status_code == 400
    assert field in response.get_json()["fields"]


def test_my_activity_export_works_with_a_browser_session(app, world):
    browser = app.test_client()
    assert login(browser, "bob").status_code == 303
    response = browser.get(f"{API}/me/activity/export?format=csv")
    assert response.status_code == 200
    assert {r["actor_name"] for r in read_csv(response) if r["actor_id"]} == {"bob"}


def test_my_activity_export_refuses_anonymous_callers(client):
    response = client.get(f"{API}/me/activity/export?format=jsonl")
    assert response.status_code == 401


def test_my_activity_export_is_streamed(client, world):
    response = client.get(
        f"{API}/me/activity/export?format=jsonl", headers=world["alice_token"], buffered=False
    )
    try:
        assert response.is_streamed
        assert json.loads(next(iter(response.response)))["actor_name"] == "alice"
    finally:
        response.close()


def test_the_document_describes_the_downloads(client):
    document = client.get(f"{API}/openapi.json").get_json()
    for path in ("/audit/export", "/me/activity/export"):
        operation = document["paths"][path]["get"]
        ok = operation["responses"]["200"]
        assert set(ok["content"]) == {"application/x-ndjson", "text/csv"}
        assert "Content-Disposition" in ok["headers"]
        [fmt] = [p for p in operation["parameters"] if p["name"] == "format"]
        assert fmt["required"] is True
        assert fmt["schema"]["enum"] == ["jsonl", "csv"]
        assert "400" in operation["responses"]
