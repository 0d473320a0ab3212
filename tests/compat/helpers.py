"""Small helpers for driving the Flask-User pages through the test client."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient


def token(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def sign_in(
    client: FlaskClient, login: str, password: str, field: str = "username", **extra: Any
) -> Any:
    page = client.get("/user/sign-in")
    data = {field: login, "password": password, "csrf_token": token(page.text), **extra}
    return client.post("/user/sign-in", data=data)


def sign_out(client: FlaskClient) -> Any:
    page = client.get("/user/sign-out")
    return client.post("/user/sign-out", data={"csrf_token": token(page.text)})


def events(app: Any, action: str) -> list[Any]:
    from sqlalchemy import select

    from flask_aaa.models import AuditEvent

    with app.app_context():
        db = app.extensions["aaa"].db
        return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))
