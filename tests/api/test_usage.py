"""Usage figures in the API: ``GET /me`` (one's own) and ``GET /users/{id}`` (for
administrators), in the shape the OpenAPI document declares."""

from __future__ import annotations

import datetime as dt

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from flask_aaa.db import writing
from flask_aaa.models import LoginSession, User
from tests.api.conftest import API, bearer
from tests.conftest import app_engine, login

USAGE_FIELDS = {
    "last_login_at",
    "last_login_ip",
    "login_count",
    "active_sessions",
    "recent_sessions",
    "median_session_seconds",
    "longest_session_seconds",
}


def signed_in_twice(app: Flask, user: User, minutes: int) -> None:
    """Two sign-ins of ``user``, each session ``minutes`` long by now."""
    for _ in range(2):
        assert login(app.test_client(), user.username or "").status_code == 303
    with writing(), Session(app_engine(app)) as db:
        for record in db.scalars(select(LoginSession).where(LoginSession.user_id == user.id)):
            record.created_at = record.last_seen_at - dt.timedelta(minutes=minutes)
        db.commit()


def test_me_has_my_usage_with_a_token(app, client, make_user, token_for):
    alice = make_user("alice")
    signed_in_twice(app, alice, 90)
    body = client.get(f"{API}/me", headers=bearer(token_for(alice))).get_json()
    usage = body["usage"]
    assert set(usage) == USAGE_FIELDS
    assert usage["login_count"] == 2
    assert usage["last_login_ip"] == "127.0.0.1"
    assert usage["last_login_at"] == body["last_login_at"]
    assert usage["active_sessions"] == 2
    assert usage["recent_sessions"] == 2
    assert usage["median_session_seconds"] == usage["longest_session_seconds"] == 5400


def test_me_of_a_user_who_never_signed_in(client, make_user, token_for):
    usage = client.get(f"{API}/me", headers=bearer(token_for(make_user("bot")))).get_json()["usage"]
    assert usage == {
        "last_login_at": None,
        "last_login_ip": None,
        "login_count": 0,
        "active_sessions": 0,
        "recent_sessions": 0,
        "median_session_seconds": None,
        "longest_session_seconds": None,
    }


def test_an_administrator_reads_a_users_usage(app, client, admin, make_user, token_for):
    alice = make_user("alice")
    signed_in_twice(app, alice, 30)
    response = client.get(f"{API}/users/{alice.id}", headers=bearer(token_for(admin, ["*"])))
    assert response.status_code == 200
    body = response.get_json()
    assert body["usage"]["login_count"] == 2
    assert body["usage"]["longest_session_seconds"] == 1800
    assert body["usage"]["active_sessions"] == body["live_sessions"] == 2


def test_Z07_a_users_usage_needs_the_users_permission(app, client, make_user, token_for):
    alice, bob = make_user("alice"), make_user("bob")
    response = client.get(f"{API}/users/{bob.id}", headers=bearer(token_for(alice)))
    assert response.status_code == 403


def test_the_document_declares_the_usage(client):
    schemas = client.get(f"{API}/openapi.json").get_json()["components"]["schemas"]
    assert set(schemas["Usage"]["properties"]) == USAGE_FIELDS
    assert set(schemas["Usage"]["required"]) == USAGE_FIELDS
    for name in ("Me", "UserDetail"):
        assert schemas[name]["properties"]["usage"] == {"$ref": "#/components/schemas/Usage"}
        assert "usage" in schemas[name]["required"]
