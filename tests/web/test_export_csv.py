"""CSV downloads of the audit trail in the console (``/admin/audit.csv``) and of a user's
own activity (``/account/activity.csv``): well-formed CSV with the same rows as JSON Lines,
the console's filters, only one's own events (Z01), the permission (Z07), the spreadsheet
formula guard (L02), and a streamed answer."""

from __future__ import annotations

import csv
import io
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from sqlalchemy import select

from flask_aaa.models import AuditEvent, User
from flask_aaa.services import audit
from tests.conftest import fresh, login, post

JSON = {"Accept": "application/json"}

#: User agents a spreadsheet would run as formulas (or strip and then run).
FORMULAS = ['=HYPERLINK("http://x")', "+cmd", "-2+3", "@SUM(1)", "\t=1+1"]
#: A username that starts like a formula and still passes the username rules.
DASH_NAME = "-2-3"


def read_csv(response: Any) -> list[dict[str, str]]:
    """The rows of a CSV download, checked for its shape: the header line, CRLF line ends,
    and the same number of cells on every line."""
    text = response.get_data(as_text=True)
    assert text.endswith("\r\n")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == list(audit.EXPORT_COLUMNS)
    assert all(len(row) == len(audit.EXPORT_COLUMNS) for row in rows)
    return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def read_jsonl(response: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines() if line]


def all_events(db: Any) -> list[AuditEvent]:
    return list(fresh(db).scalars(select(AuditEvent).order_by(AuditEvent.seq)))


def assert_csv_download(response: Any, filename: str) -> None:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{filename}"'
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.fixture
def world(app: Flask, make_user: Any, admin: User) -> dict[str, Any]:
    """root (an administrator), mallory (a plain user), bob and "-2-3", each signed in from
    a browser whose user agent looks like a formula; a denial of mallory; a note by bob; a
    failed sign-in on bob's account."""
    users = {
        "root": admin,
        "mallory": make_user("mallory"),
        "bob": make_user("bob", roles=["writer"], perms={"writer": ["notes:write"]}),
        "dash": make_user(DASH_NAME),
    }
    clients = {}
    for name, agent in zip(("mallory", "bob", DASH_NAME), FORMULAS, strict=False):
        client = app.test_client()
        client.environ_base["HTTP_USER_AGENT"] = agent
        assert login(client, name).status_code == 303, name
        clients[name] = client
    assert clients["mallory"].get("/notes", headers=JSON).status_code == 403
    assert post(clients["bob"], "/notes").status_code == 201
    attacker = app.test_client()
    attacker.environ_base["HTTP_USER_AGENT"] = FORMULAS[3]
    assert login(attacker, "bob", "wrong-password-123456").status_code == 401
    extra = app.test_client()
    extra.environ_base["HTTP_USER_AGENT"] = FORMULAS[4]
    assert login(extra, "mallory").status_code == 303
    return {**users, "clients": clients}


@pytest.fixture
def as_admin(client: Any, world: dict[str, Any]) -> Any:
    assert login(client, "root").status_code == 303
    return client


# -- the console --


def test_admin_csv_has_every_event_oldest_first_like_json_lines(as_admin, db):
    response = as_admin.get("/admin/audit.csv")
    assert_csv_download(response, "audit.csv")
    rows = read_csv(response)
    assert [int(r["seq"]) for r in rows] == [e.seq for e in all_events(db)]
    jsonl = read_jsonl(as_admin.get("/admin/audit.jsonl"))
    assert len(rows) == len(jsonl)
    for row, line in zip(rows, jsonl, strict=True):
        assert row["hash"] == line["hash"]
        assert row["ts"] == line["ts"]
        assert json.loads(row["details"]) == line["details"]


def test_L02_admin_csv_guards_every_formula_like_cell(as_admin, db):
    rows = read_csv(as_admin.get("/admin/audit.csv"))
    agents = {r["user_agent"] for r in rows}
    for formula in FORMULAS:
        assert "'" + formula in agents, formula
        assert formula not in agents, formula
    names = {r["actor_name"] for r in rows} | {r["target_label"] for r in rows}
    assert "'" + DASH_NAME in names
    assert DASH_NAME not in names
    for row in rows:
        for column, value in row.items():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), (column, value)


def test_admin_csv_applies_the_console_filters(as_admin, world):
    rows = read_csv(as_admin.get("/admin/audit.csv?user=mallory&outcome=denied"))
    assert [(r["action"], r["actor_id"]) for r in rows] == [
        ("authz.denied", str(world["mallory"].id))
    ]
    rows = read_csv(as_admin.get("/admin/audit.csv?action=auth.login.failed"))
    assert [(r["action"], r["target_id"]) for r in rows] == [
        ("auth.login.failed", str(world["bob"].id))
    ]
    rows = read_csv(as_admin.get("/admin/audit.csv?action=auth.login.*&user=nobody"))
    assert rows == []


def test_L01_admin_csv_bad_filter_is_a_400_json_error(as_admin):
    for query, field in (({"since": "yesterday"}, "since"), ({"outcome": "maybe"}, "outcome")):
        response = as_admin.get("/admin/audit.csv", query_string=query, headers=JSON)
        assert response.status_code == 400
        assert response.mimetype == "application/json"
        assert field in response.get_json()["fields"]


@pytest.mark.parametrize("payload", ["' OR 1=1--", "1;DROP TABLE aaa_audit_events", "%"])
def test_L01_admin_csv_injection_matches_nothing(as_admin, db, payload):
    before = len(all_events(db))
    for field in ("user", "action", "ip"):
        response = as_admin.get("/admin/audit.csv", query_string={field: payload})
        assert response.status_code in (200, 400), (field, payload)
        if response.status_code == 200:
            assert read_csv(response) == [], (field, payload)
    assert len(all_events(db)) == before


def test_Z07_admin_csv_needs_the_audit_permission(app, db, world):
    client = app.test_client()
    assert login(client, "mallory").status_code == 303
    mark = all_events(db)[-1].seq
    assert client.get("/admin/audit.csv").status_code == 403
    response = client.get("/admin/audit.csv", headers=JSON)
    assert response.status_code == 403
    assert response.get_json()["error"] == "permission_denied"
    denied = [e for e in all_events(db) if e.seq > mark]
    assert [e.action for e in denied] == ["authz.denied", "authz.denied"]
    assert {json.loads(e.details)["requirement"] for e in denied} == {"aaa:audit:read"}


def test_admin_csv_is_open_to_an_auditor(app, make_user, world):
    make_user("auditor", roles=["auditors"], perms={"auditors": ["aaa:audit:read"]})
    client = app.test_client()
    assert login(client, "auditor").status_code == 303
    assert read_csv(client.get("/admin/audit.csv"))


def test_anonymous_is_sent_to_sign_in_from_the_admin_csv(client, world):
    response = client.get("/admin/audit.csv")
    assert response.status_code == 303
    assert urlsplit(response.headers["Location"]).path == "/auth/login"
    assert client.get("/admin/audit.csv", headers=JSON).status_code == 401


def test_the_trail_page_links_both_exports_with_its_filters(as_admin):
    page = as_admin.get("/admin/audit?action=auth.*&outcome=failure").get_data(as_text=True)
    assert 'href="/admin/audit.csv?action=auth.*&amp;outcome=failure"' in page
    assert 'href="/admin/audit.jsonl?action=auth.*&amp;outcome=failure"' in page
    assert "Export (CSV)" in page


def test_admin_csv_is_streamed(as_admin):
    """Constant memory: the answer is a generator read while it is sent, never a body
    built whole; the header line comes before any event is read."""
    response = as_admin.get("/admin/audit.csv", buffered=False)
    try:
        assert response.is_streamed
        chunks = iter(response.response)
        assert next(chunks) == ",".join(audit.EXPORT_COLUMNS).encode() + b"\r\n"
        assert next(chunks).startswith(b"1,")
    finally:
        response.close()


# -- my activity --


def test_Z01_my_csv_has_exactly_my_events(db, world):
    mallory, bob = world["mallory"], world["bob"]
    response = world["clients"]["bob"].get("/account/activity.csv")
    assert_csv_download(response, "my-activity.csv")
    rows = read_csv(response)
    own = [
        e.seq
        for e in all_events(db)
        if e.actor_id == bob.id
        or (e.target_type == "user" and e.target_id == str(bob.id) and e.action[:5] == "auth.")
    ]
    assert [int(r["seq"]) for r in rows] == own
    assert {"auth.login.succeeded", "auth.login.failed", "notes.created"} <= {
        r["action"] for r in rows
    }
    assert str(mallory.id) not in {r["actor_id"] for r in rows}
    assert len(rows) == len(read_jsonl(world["clients"]["bob"].get("/account/activity.jsonl")))


def test_Z01_my_csv_ignores_filters_naming_another_user(db, world):
    bob = world["clients"]["bob"]
    everything = read_csv(bob.get("/account/activity.csv"))
    for query in (f"?user={world['mallory'].id}", "?user=mallory", "?actor_id=1&action=authz.*"):
        assert read_csv(bob.get("/account/activity.csv" + query)) == everything, query


def test_L02_my_csv_guards_the_attackers_user_agent(world):
    """The failed sign-in on bob's account carries the attacker's user agent into bob's
    download: guarded like the rest."""
    rows = read_csv(world["clients"]["bob"].get("/account/activity.csv"))
    failed = [r for r in rows if r["action"] == "auth.login.failed"]
    assert [r["user_agent"] for r in failed] == ["'" + FORMULAS[3]]
    assert {r["user_agent"] for r in rows if r["action"] == "notes.created"} == {"'" + FORMULAS[1]}


def test_L02_my_csv_guards_a_username_that_looks_like_a_formula(world):
    rows = read_csv(world["clients"][DASH_NAME].get("/account/activity.csv"))
    assert rows
    assert {r["actor_name"] for r in rows if r["actor_id"]} == {"'" + DASH_NAME}
    assert {r["user_agent"] for r in rows} == {"'" + FORMULAS[2]}


def test_anonymous_cannot_download_activity_csv(client):
    response = client.get("/account/activity.csv")
    assert response.status_code == 303
    assert urlsplit(response.headers["Location"]).path == "/auth/login"
    response = client.get("/account/activity.csv", headers=JSON)
    assert response.status_code == 401
    assert response.get_json()["error"] == "login_required"


def test_the_activity_page_links_both_downloads(world):
    page = world["clients"]["bob"].get("/account/activity").get_data(as_text=True)
    assert 'href="/account/activity.csv"' in page
    assert 'href="/account/activity.jsonl"' in page


def test_my_csv_is_streamed(world):
    response = world["clients"]["bob"].get("/account/activity.csv", buffered=False)
    try:
        assert response.is_streamed
        assert next(iter(response.response)).startswith(b"seq,ts,")
    finally:
        response.close()
