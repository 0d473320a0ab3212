"""Flask-User's email quickstart: sign-in by address, confirmation before sign-in."""

from __future__ import annotations

import re
from typing import Any

import pytest

from .apps import email_app
from .helpers import sign_in, token


@pytest.fixture
def app(database_uri: str, built: Any) -> Any:
    app, _, _ = email_app(database_uri)
    built(app)
    return app


def _register(client: Any, email: str) -> Any:
    page = client.get("/user/register")
    assert 'name="email"' in page.text and 'name="retype_password"' in page.text
    return client.post(
        "/user/register",
        data={
            "email": email,
            "password": "velvet-orchard-compass-3",
            "retype_password": "velvet-orchard-compass-3",
            "csrf_token": token(page.text),
        },
        buffered=True,  # mail goes out once the response is sent
    )


def _outbox(app: Any) -> list[Any]:
    return list(getattr(app.extensions["mailman"], "outbox", []))


def test_unconfirmed_cannot_sign_in_until_the_link_is_used(app: Any) -> None:
    client = app.test_client()
    registered = _register(client, "dana@example.org")
    assert registered.status_code in (302, 303)
    assert (
        sign_in(client, "dana@example.org", "velvet-orchard-compass-3", field="email").status_code
        == 401
    )
    mail = [m for m in _outbox(app) if "dana@example.org" in m.to][-1]
    link = re.search(r"https?://[^/\s]+(/auth/confirm/[A-Za-z0-9_-]+)", mail.body)
    assert link, mail.body
    flask_user_link = link.group(1).replace("/auth/confirm/", "/user/confirm-email/")
    moved = client.get(flask_user_link)  # Flask-User's URL still leads there
    assert moved.status_code == 303
    stashed = client.get(moved.headers["Location"])  # Flask-AAA moves the token out of the URL
    page = client.get(stashed.headers["Location"])
    form = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert form
    done = client.post("/auth/confirm", data={"csrf_token": form.group(1)})
    assert done.status_code == 303
    with app.app_context():
        row = app.User.query.filter_by(email="dana@example.org").one()
        assert row.email_confirmed_at is not None  # mirrored into the app's own column
    signed = sign_in(client, "dana@example.org", "velvet-orchard-compass-3", field="email")
    assert signed.status_code in (302, 303)
    assert client.get("/members").text == "members"


def test_signed_in_without_a_confirmed_address_is_not_sent_round_in_circles(
    database_uri: str, built: Any
) -> None:
    app, _, _ = email_app(database_uri, USER_ALLOW_LOGIN_WITHOUT_CONFIRMED_EMAIL=True)
    built(app)
    client = app.test_client()
    registered = _register(client, "dana@example.org")
    assert registered.status_code in (302, 303)
    assert client.get("/promotion").text == "promotion"  # @allow_unconfirmed_email
    answer = client.get("/members")
    assert answer.status_code == 302
    # Flask-AAA sends no confirmation mail while sign-in is allowed without one, so there
    # is no page to send them to: back home, with the message, and no loop.
    assert answer.headers["Location"] == "/"
    assert client.get("/").status_code == 200
    assert client.get("/members", headers={"Accept": "application/json"}).status_code == 403
