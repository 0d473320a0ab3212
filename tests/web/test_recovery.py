"""The mail-based flows over HTTP: forgotten password, email confirmation, change of address
and invitations. The attacks first: enumeration by answer (A01), reuse and cross-use of reset
links (A18), expiry (A19), Host-header poisoning (A20), tokens at rest and in the Referer
(A21), reset and two factors (A22), confirmation (A23), reset against a lockout (A08); then the
flows themselves, their JSON variants, CSRF on every POST, throttling and the audit trail.

Mail leaves when the response is closed: requests that send mail use ``buffered=True``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from freezegun import freeze_time
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from flask_aaa.db import utcnow
from flask_aaa.models import AuditEvent, LoginSession, OneTimeToken, User
from flask_aaa.services import onetime
from flask_aaa.services.actors import token_digest
from tests.conftest import (
    PASSWORD,
    app_engine,
    csrf_token,
    dump_database,
    form_token,
    fresh,
    login,
    post,
    post_json,
)

JSON = {"Accept": "application/json"}
NEW_PASSWORD = "saffron-meadow-lantern-88"
BASE = "http://localhost"
TOKEN_RE = r"[A-Za-z0-9_-]{20,}"


@pytest.fixture
def config(config: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    """The shared test config plus this test's ``AAA_*`` overrides (see :func:`with_config`)."""
    config.update(getattr(request, "param", {}))
    return config


def with_config(**values: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("config", [values], indirect=True, ids=["config"])


confirming = with_config(AAA_CONFIRM_EMAIL=True)


# -- helpers --


def outbox(app: Flask) -> list[Any]:
    return app.extensions["mailman"].outbox if hasattr(app.extensions["mailman"], "outbox") else []


def mails_to(app: Flask, address: str) -> list[Any]:
    return [m for m in outbox(app) if address in m.to]


def last_mail(app: Flask, address: str) -> Any:
    found = mails_to(app, address)
    assert found, f"no mail to {address}; outbox: {[(m.to, m.subject) for m in outbox(app)]}"
    return found[-1]


def link_in(message: Any, path: str) -> str:
    """The link to ``path`` in a mail's text, checked to be in the HTML part too."""
    match = re.search(rf"(https?://[^\s/]+){re.escape(path)}({TOKEN_RE})", message.body)
    assert match, message.body
    url = match.group(0)
    html = message.alternatives[0][0]
    assert url in html
    return url


def token_of(url: str) -> str:
    return re.split(r"[/=]", url)[-1]


def local(url: str) -> str:
    """The path (and query) of an absolute link, to follow it with the test client."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def request_reset(client: Any, email: str = "alice@example.org", **kwargs: Any) -> Any:
    return post(client, "/auth/forgot", {"email": email}, buffered=True, **kwargs)


def reset_url(app: Flask, client: Any, email: str = "alice@example.org") -> str:
    assert request_reset(client, email).status_code == 303
    return link_in(last_mail(app, email), "/auth/reset/")


def set_password(client: Any, url: str, password: str = NEW_PASSWORD) -> Any:
    """Follow a reset link as a browser: the link, then the form."""
    moved = client.get(local(url))
    assert moved.status_code == 303
    assert moved.headers["Location"] == "/auth/reset"
    return post(client, "/auth/reset", {"password": password, "confirm": password}, buffered=True)


def actions(db: Any) -> list[str]:
    return list(fresh(db).scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


def events(db: Any, action: str) -> list[AuditEvent]:
    return list(
        fresh(db).scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        )
    )


def user_named(db: Any, username: str) -> User:
    user = fresh(db).scalar(select(User).where(User.username_key == username))
    assert user is not None
    return user


def signed_in(client: Any) -> bool:
    return client.get("/private", headers=JSON).status_code == 200


def from_ip(app: Flask, ip: str) -> Any:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = ip
    return client


VOLATILE = {"X-Request-ID", "X-RateLimit-Reset", "Content-Length", "Set-Cookie", "Date"}


def shape(response: Any) -> tuple[Any, ...]:
    """What an attacker compares: status, body (JSON) or location, header and cookie names."""
    headers = sorted(k for k, _ in response.headers.items() if k not in VOLATILE)
    cookies = sorted(c.split("=", 1)[0] for c in response.headers.getlist("Set-Cookie"))
    body = response.get_json(silent=True) if response.is_json else response.headers.get("Location")
    return response.status_code, body, headers, cookies


def unconfirmed(app: Flask, client: Any, username: str = "erin") -> str:
    """Register ``username`` under email confirmation; return the confirmation link."""
    email = f"{username}@example.org"
    response = post(
        client,
        "/auth/register",
        {"username": username, "email": email, "password": PASSWORD, "confirm": PASSWORD},
        buffered=True,
    )
    assert response.status_code == 303
    return link_in(last_mail(app, email), "/auth/confirm/")


def confirm_with(client: Any, url: str) -> Any:
    moved = client.get(local(url))
    assert moved.status_code == 303
    assert moved.headers["Location"] == "/auth/confirm"
    return post(client, "/auth/confirm", buffered=True)


# -- A01: one answer for known and unknown addresses --


@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json"])
def test_A01_forgot_answers_alike_for_known_unknown_and_disabled(app, make_user, as_json):
    make_user("alice")
    make_user("dora", active=False)
    answers = []
    for n, email in enumerate(["alice@example.org", "nobody@example.org", "dora@example.org"]):
        client = from_ip(app, f"10.1.0.{n + 1}")
        if as_json:
            response = post_json(client, "/auth/forgot", {"email": email}, buffered=True)
        else:
            response = request_reset(client, email)
        answers.append(shape(response))
    assert answers[0] == answers[1] == answers[2]
    status, body = answers[0][:2]
    if as_json:
        assert status == 202
        assert body == {
            "ok": True,
            "message": "If an account exists for that address, we sent a link to reset the "
            "password.",
        }
    else:
        assert (status, body) == (303, "/auth/login")
    assert [m.to for m in outbox(app)] == [["alice@example.org"]]


def test_A01_forgot_page_shows_the_same_message_whatever_the_address(app, make_user):
    make_user("alice")
    pages = []
    for n, email in enumerate(["alice@example.org", "nobody@example.org"]):
        client = from_ip(app, f"10.2.0.{n + 1}")
        request_reset(client, email)
        html = client.get("/auth/login").get_data(as_text=True)
        pages.append(re.sub(r'(value|content)="[^"]+"', "", html))
    assert pages[0] == pages[1]
    assert "If an account exists for that address" in pages[0]


@confirming
def test_A01_resend_confirmation_answers_alike(app, client, make_user, db):
    unconfirmed(app, client)
    make_user("carl")  # confirmed below
    fresh(db).execute(update(User).values(email_confirmed_at=utcnow()).where(User.id > 0))
    db.execute(update(User).where(User.username_key == "erin").values(email_confirmed_at=None))
    db.commit()
    before = len(outbox(app))
    answers = []
    for n, email in enumerate(["erin@example.org", "nobody@example.org", "carl@example.org"]):
        c = from_ip(app, f"10.3.0.{n + 1}")
        answers.append(
            shape(post_json(c, "/auth/resend-confirmation", {"email": email}, buffered=True))
        )
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == 202
    assert [m.to for m in outbox(app)[before:]] == [["erin@example.org"]]


@confirming
@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json"])
def test_A01_registering_a_taken_address_answers_like_a_new_one(app, make_user, db, as_json):
    """Under confirmation, registration no longer tells whether an address has an account:
    same answer; the owner gets a notice instead of a link; nobody is created."""
    make_user("owner", email="dora@example.org")
    answers = []
    for n, (username, email) in enumerate(
        [("dora", "DORA@example.org"), ("fresh", "fresh@example.org")]
    ):
        client = from_ip(app, f"10.4.0.{n + 1}")
        fields = {"username": username, "email": email, "password": PASSWORD}
        if as_json:
            response = post_json(client, "/auth/register", fields, buffered=True)
        else:
            response = post(client, "/auth/register", fields, buffered=True)
        answers.append(shape(response))
    assert answers[0] == answers[1]
    if as_json:
        assert answers[0][:2] == (
            202,
            {
                "ok": True,
                "message": "Check your email: we sent a link to confirm your address before "
                "you sign in.",
            },
        )
    else:
        assert answers[0][:2] == (303, "/auth/login")
    notice = last_mail(app, "dora@example.org")
    assert "already belongs to your account" in notice.body
    assert "/auth/confirm/" not in notice.body
    assert "/auth/confirm/" in last_mail(app, "fresh@example.org").body
    assert fresh(db).scalar(select(func.count()).select_from(User)) == 2
    [refused] = events(db, "user.registration_refused")
    assert refused.target_label == "owner"


# -- the work after the answer (A02: these requests answer before anything differs) --


def test_A02_forgot_does_its_work_only_after_the_response(app, make_user, db):
    """The answer is complete before the address is even looked up: until the response is
    closed there is no link, no event and no mail; closing it does all three."""
    make_user("alice")
    response = post(app.test_client(), "/auth/forgot", {"email": "alice@example.org"})
    assert response.status_code == 303
    assert events(db, "auth.reset.requested") == []
    assert fresh(db).scalar(select(func.count()).select_from(OneTimeToken)) == 0
    assert outbox(app) == []
    response.close()
    assert len(events(db, "auth.reset.requested")) == 1
    assert fresh(db).scalar(select(func.count()).select_from(OneTimeToken)) == 1
    assert [m.to for m in outbox(app)] == [["alice@example.org"]]


@confirming
def test_A02_registration_under_confirmation_writes_only_after_the_response(app, db):
    response = post(
        app.test_client(),
        "/auth/register",
        {"username": "fresh", "email": "fresh@example.org", "password": PASSWORD},
    )
    assert response.status_code == 303
    assert fresh(db).scalar(select(func.count()).select_from(User)) == 0
    response.close()
    assert user_named(db, "fresh").email == "fresh@example.org"
    assert "/auth/confirm/" in last_mail(app, "fresh@example.org").body


def test_A02_email_change_checks_the_password_now_and_makes_the_link_after(app, make_user, db):
    make_user("alice")
    client = app.test_client()
    login(client, "alice")
    wrong = post(client, "/auth/email", {"email": "new@example.org", "password": "nope" * 4})
    assert wrong.status_code == 400, "the password is checked before the answer"
    response = post(client, "/auth/email", {"email": "new@example.org", "password": PASSWORD})
    assert response.status_code == 303
    assert events(db, "user.email_change_requested") == []
    assert fresh(db).scalar(select(func.count()).select_from(OneTimeToken)) == 0
    response.close()
    [requested] = events(db, "user.email_change_requested")
    assert json.loads(requested.details) == {"new_email": "new@example.org"}
    assert "/auth/email/confirm/" in last_mail(app, "new@example.org").body


@pytest.mark.parametrize("email", ["not-an-address", "a@b@example.org", "x" * 400 + "@ex.org"])
def test_A02_a_malformed_address_is_refused_in_the_request(app, make_user, db, email):
    """Whether the field is an address at all says nothing about accounts: a 400 at once,
    and no work is left for after the response."""
    make_user("alice")
    response = post_json(app.test_client(), "/auth/forgot", {"email": email}, buffered=True)
    assert response.status_code == 400
    assert set(response.get_json()["fields"]) == {"email"}
    assert events(db, "auth.reset.requested") == []
    assert outbox(app) == []


@confirming
def test_A02_a_bad_registration_field_is_refused_in_the_request(app, make_user, db):
    make_user("taken")
    response = post_json(
        app.test_client(),
        "/auth/register",
        {"username": "taken", "email": "new@example.org", "password": PASSWORD},
        buffered=True,
    )
    assert response.status_code == 400
    assert set(response.get_json()["fields"]) == {"username"}
    assert fresh(db).scalar(select(func.count()).select_from(User)) == 1
    assert outbox(app) == []


def test_A02_work_after_the_response_that_fails_is_logged_and_keeps_nothing(
    app, make_user, db, monkeypatch, caplog
):
    """The database fails after the answer has gone: the client keeps its answer, the
    failure is logged, and neither the link nor its event is kept."""
    make_user("alice")

    def failing_issue(*args: Any, **kwargs: Any) -> str:
        raise OperationalError("INSERT", {}, Exception("the database went away"))

    monkeypatch.setattr(onetime, "issue", failing_issue)
    with caplog.at_level("ERROR", logger="flask_aaa"):
        response = request_reset(app.test_client())
    assert response.status_code == 303
    assert "work after the response failed (OperationalError)" in caplog.text
    assert "went away" not in caplog.text, "the error's text (its SQL parameters) is not logged"
    assert events(db, "auth.reset.requested") == []
    assert fresh(db).scalar(select(func.count()).select_from(OneTimeToken)) == 0
    assert outbox(app) == []
    # The next request is served as usual.
    monkeypatch.undo()
    assert request_reset(from_ip(app, "10.9.0.1")).status_code == 303
    assert len(events(db, "auth.reset.requested")) == 1


@confirming
def test_A01_taken_username_is_still_reported_under_confirmation(client, make_user):
    make_user("dora", email="someone@example.org")
    response = post_json(
        client,
        "/auth/register",
        {"username": "dora", "email": "new@example.org", "password": PASSWORD},
    )
    assert response.status_code == 400
    assert set(response.get_json()["fields"]) == {"username"}


# -- A18: a reset link works once, for its own account, with the password it was sent for --


def test_A18_reset_link_works_once(app, client, make_user, db):
    make_user("alice")
    url = reset_url(app, client)
    assert set_password(client, url).status_code == 303
    again = client.get(local(url))
    assert again.status_code == 303
    second = post_json(client, "/auth/reset", {"password": "another-fine-passphrase-7"})
    assert second.status_code == 400
    assert second.get_json() == {"error": "invalid_token", "message": "This link is not valid."}
    assert login(app.test_client(), "alice", NEW_PASSWORD).status_code == 303
    assert login(app.test_client(), "alice", "another-fine-passphrase-7").status_code == 401
    [failed] = events(db, "auth.reset.failed")
    assert json.loads(failed.details) == {"error": "invalid_token", "reason": "used"}


def test_A18_token_of_A_resets_A_even_from_B_s_browser(app, make_user, db):
    make_user("alice")
    make_user("bob")
    bob = app.test_client()
    login(bob, "bob")
    url = reset_url(app, app.test_client())
    assert set_password(bob, url).status_code == 303
    assert login(app.test_client(), "alice", NEW_PASSWORD).status_code == 303
    assert login(app.test_client(), "bob", PASSWORD).status_code == 303
    assert signed_in(bob)  # bob's own session is untouched


def test_A18_another_password_change_kills_the_reset_link(app, make_user, db):
    make_user("alice")
    url = reset_url(app, app.test_client())
    alice = app.test_client()
    login(alice, "alice")
    changed = post(
        alice, "/auth/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    )
    assert changed.status_code == 303
    response = set_password(app.test_client(), url, "another-fine-passphrase-7")
    assert response.status_code == 400
    assert "This link is not valid." in response.get_data(as_text=True)
    assert login(app.test_client(), "alice", NEW_PASSWORD).status_code == 303


def test_A18_a_newer_link_replaces_the_older(app, client, make_user):
    make_user("alice")
    first = reset_url(app, client)
    second = reset_url(app, client)
    assert first != second
    assert set_password(app.test_client(), first).status_code == 400
    assert set_password(app.test_client(), second).status_code == 303


def test_A18_a_confirmation_link_cannot_reset_a_password(app, client, make_user, db):
    """One purpose per token: a link of another flow is not valid on the reset page."""
    make_user("alice")
    url = reset_url(app, client)
    fresh(db).execute(update(OneTimeToken).values(purpose="confirm"))
    db.commit()
    response = post_json(client, "/auth/reset", {"token": token_of(url), "password": NEW_PASSWORD})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_token"


# -- A19: expiry --


def test_A19_reset_link_past_its_lifetime_is_expired(app, client, make_user):
    make_user("alice")
    url = reset_url(app, client)
    client.get(local(url))
    with freeze_time(utcnow() + dt.timedelta(seconds=3600 + 1)):
        response = post_json(client, "/auth/reset", {"password": NEW_PASSWORD})
        assert response.status_code == 400
        assert response.get_json() == {
            "error": "expired_token",
            "message": "This link has expired.",
        }
        page = set_password(app.test_client(), url)
        assert page.status_code == 400
        assert "This link has expired." in page.get_data(as_text=True)
    assert login(app.test_client(), "alice").status_code == 303


# -- A20: Host-header poisoning --


@with_config(AAA_BASE_URL="https://app.example.org")
@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.example"},
        {"X-Forwarded-Host": "evil.example"},
        {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"},
        {"X-Forwarded-Prefix": "@evil.example"},
    ],
    ids=["host", "x-forwarded-host", "both", "prefix"],
)
def test_A20_links_use_the_canonical_url_whatever_the_headers(app, client, make_user, headers):
    make_user("alice")
    # The attacker's own session, obtained through the same forged headers.
    token = client.get("/auth/csrf", headers=headers).get_json()["csrf_token"]
    response = client.post(
        "/auth/forgot",
        json={"email": "alice@example.org"},
        headers={"X-CSRFToken": token, **headers},
        environ_overrides={"SCRIPT_NAME": ""},
        buffered=True,
    )
    assert response.status_code == 202
    message = last_mail(app, "alice@example.org")
    url = link_in(message, "/auth/reset/")
    assert url.startswith("https://app.example.org/auth/reset/")
    for part in (message.body, message.alternatives[0][0], message.subject):
        assert "evil" not in part


# -- A21: the token at rest and in the Referer --


def test_A21_only_the_hash_of_a_reset_token_is_stored(app, client, make_user):
    make_user("alice")
    token = token_of(reset_url(app, client))
    dump = dump_database(app_engine(app))
    assert token not in dump
    assert token_digest(token) in dump


def test_A21_the_token_leaves_the_url_and_no_referrer_is_sent(app, client, make_user):
    make_user("alice")
    url = reset_url(app, client)
    token = token_of(url)
    moved = client.get(local(url))
    assert moved.status_code == 303
    assert moved.headers["Location"] == "/auth/reset"
    assert token not in moved.headers["Location"]
    assert moved.headers["Referrer-Policy"] == "no-referrer"
    page = client.get("/auth/reset")
    assert page.status_code == 200
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-store"
    html = page.get_data(as_text=True)
    assert token not in html
    assert '<meta name="referrer" content="no-referrer">' in html
    assert 'name="password"' in html
    final = client.get(local(url), follow_redirects=True)
    assert final.request.path == "/auth/reset"
    assert token not in final.request.url


def test_A21_tokens_of_every_flow_are_stored_hashed(app, make_user, admin, db):
    make_user("alice")
    boss = app.test_client()
    login(boss, "root")
    assert (
        post(boss, "/auth/invite", {"email": "guest@example.org"}, buffered=True).status_code == 303
    )
    assert request_reset(app.test_client()).status_code == 303
    alice = app.test_client()
    login(alice, "alice")
    post(alice, "/auth/email", {"email": "new@example.org", "password": PASSWORD}, buffered=True)
    tokens = [re.search(r"[/=](" + TOKEN_RE + r")\s", m.body) for m in outbox(app)]
    assert len(tokens) == 3
    dump = dump_database(app_engine(app))
    for match in tokens:
        assert match is not None
        assert match.group(1) not in dump
        assert token_digest(match.group(1)) in dump


# -- A22 and A08: a reset never signs in, and lifts a lockout --


def test_A22_reset_of_a_two_factor_user_signs_nobody_in(app, client, make_user, db):
    user = make_user("alice")
    fresh(db).execute(
        update(User)
        .where(User.id == user.id)
        .values(totp_secret="JBSWY3DPEHPK3PXP", mfa_enabled_at=utcnow())
    )
    db.commit()
    other = app.test_client()
    login(other, "alice")  # a pending second step: no session either
    url = reset_url(app, client)
    response = set_password(client, url)
    assert response.status_code == 303
    assert response.headers["Location"] == "/auth/login"
    assert not signed_in(client)
    assert fresh(db).scalar(select(func.count()).select_from(LoginSession)) == 0
    assert user_named(db, "alice").mfa_enabled
    # The new password is only the first step: the second factor is still asked for.
    step = post_json(app.test_client(), "/auth/login", {"login": "alice", "password": NEW_PASSWORD})
    assert step.status_code == 200
    assert step.get_json()["mfa_required"] is True
    assert fresh(db).scalar(select(func.count()).select_from(LoginSession)) == 0


def test_reset_ends_every_session_and_says_so(app, make_user, db):
    make_user("alice")
    phone, laptop = app.test_client(), app.test_client()
    login(phone, "alice")
    login(laptop, "alice", remember="1")
    assert signed_in(phone) and signed_in(laptop)
    client = app.test_client()
    url = reset_url(app, client)
    client.get(local(url))
    response = post_json(client, "/auth/reset", {"password": NEW_PASSWORD}, buffered=True)
    assert response.status_code == 200
    body = response.get_json()
    assert body["sessions_ended"] == 2 and body["signed_in"] is False
    assert "2 session(s) were signed out" in body["message"]
    assert not signed_in(phone)
    laptop.delete_cookie("aaa_session")
    assert not signed_in(laptop)  # the remember-me series ended too
    notice = last_mail(app, "alice@example.org")
    assert "reset" in notice.subject and "2 session(s)" in notice.body
    assert not signed_in(client)


def test_A08_reset_lifts_a_lockout(app, client, make_user, db):
    user = make_user("alice")
    fresh(db).execute(
        update(User)
        .where(User.id == user.id)
        .values(locked_until=utcnow() + dt.timedelta(hours=1), failed_logins=0, lockouts=3)
    )
    db.commit()
    assert login(app.test_client(), "alice").status_code == 401  # locked
    assert set_password(client, reset_url(app, client)).status_code == 303
    assert login(app.test_client(), "alice", NEW_PASSWORD).status_code == 303
    [event] = events(db, "auth.reset.succeeded")
    assert json.loads(event.details)["lockout_cleared"] is True


def test_reset_password_must_pass_the_policy_and_keeps_the_link(app, client, make_user):
    make_user("alice")
    url = reset_url(app, client)
    client.get(local(url))
    weak = post(client, "/auth/reset", {"password": "password123"})
    assert weak.status_code == 400
    assert weak.headers["Referrer-Policy"] == "no-referrer"
    assert 'id="e-password"' in weak.get_data(as_text=True)
    mismatch = post_json(client, "/auth/reset", {"password": NEW_PASSWORD, "confirm": "x"})
    assert mismatch.status_code == 400
    assert set(mismatch.get_json()["fields"]) == {"confirm"}
    assert post(client, "/auth/reset", {"password": NEW_PASSWORD}).status_code == 303


def test_reset_page_without_a_link_explains(client):
    page = client.get("/auth/reset")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'name="password"' not in html and "/auth/forgot" in html
    assert client.get("/auth/reset", headers=JSON).get_json() == {"pending": False}
    response = post_json(client, "/auth/reset", {"password": NEW_PASSWORD})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_token"


def test_reset_json_client_may_send_the_token_in_the_body(app, client, make_user):
    make_user("alice")
    token = token_of(reset_url(app, client))
    api = app.test_client()
    assert api.get(f"/auth/reset/{token}", headers=JSON).get_json() == {
        "ok": True,
        "next": "/auth/reset",
    }
    other = app.test_client()
    response = post_json(other, "/auth/reset", {"token": token, "password": NEW_PASSWORD})
    assert response.status_code == 200
    assert response.get_json()["ok"] is True
    assert login(app.test_client(), "alice", NEW_PASSWORD).status_code == 303


def test_login_page_offers_the_forgotten_password_link(client):
    html = client.get("/auth/login").get_data(as_text=True)
    assert 'href="/auth/forgot"' in html
    assert "/auth/resend-confirmation" not in html  # confirmation is off


# -- A23: email confirmation --


@confirming
def test_A23_register_confirm_then_sign_in(app, client, db):
    url = unconfirmed(app, client)
    assert login(app.test_client(), "erin").status_code == 401
    response = confirm_with(client, url)
    assert response.status_code == 303
    assert response.headers["Location"] == "/auth/login"
    assert user_named(db, "erin").email_confirmed_at is not None
    assert login(app.test_client(), "erin").status_code == 303
    assert {"user.registered", "auth.confirm.sent", "auth.confirm.succeeded"} <= set(actions(db))


@confirming
def test_A23_unconfirmed_login_is_the_generic_failure(app, client, make_user, db):
    unconfirmed(app, client)
    make_user("alice")
    fresh(db).execute(
        update(User).where(User.username_key == "alice").values(email_confirmed_at=utcnow())
    )
    db.commit()
    wrong = post_json(app.test_client(), "/auth/login", {"login": "alice", "password": "x" * 16})
    unconf = post_json(app.test_client(), "/auth/login", {"login": "erin", "password": PASSWORD})
    assert unconf.status_code == wrong.status_code == 401
    assert unconf.get_json() == wrong.get_json()
    reasons = [json.loads(e.details)["reason"] for e in events(db, "auth.login.failed")]
    assert reasons == ["bad_password", "unconfirmed"]


@confirming
def test_A23_confirmation_link_works_once(app, client, db):
    url = unconfirmed(app, client)
    assert confirm_with(client, url).status_code == 303
    again = confirm_with(app.test_client(), url)
    assert again.status_code == 400
    assert "This link is not valid." in again.get_data(as_text=True)
    api = post_json(app.test_client(), "/auth/confirm", {"token": token_of(url)})
    assert (api.status_code, api.get_json()["error"]) == (400, "invalid_token")
    assert len(events(db, "auth.confirm.failed")) == 2


@confirming
def test_A23_confirmation_link_expires(app, client, db):
    url = unconfirmed(app, client)
    with freeze_time(utcnow() + dt.timedelta(days=1, seconds=1)):
        response = post_json(app.test_client(), "/auth/confirm", {"token": token_of(url)})
    assert response.status_code == 400
    assert response.get_json() == {"error": "expired_token", "message": "This link has expired."}
    assert user_named(db, "erin").email_confirmed_at is None


@confirming
def test_A23_a_confirmation_is_for_the_address_it_was_sent_to(app, client, db):
    url = unconfirmed(app, client)
    fresh(db).execute(
        update(User)
        .where(User.username_key == "erin")
        .values(email="other@example.org", email_key="other@example.org")
    )
    db.commit()
    response = post_json(app.test_client(), "/auth/confirm", {"token": token_of(url)})
    assert response.status_code == 400
    assert user_named(db, "erin").email_confirmed_at is None


@confirming
def test_A23_a_get_never_uses_the_link(app, client, db):
    """Mail scanners fetch links: only the POST from the page confirms."""
    url = unconfirmed(app, client)
    for _ in range(2):
        client.get(local(url))
        page = client.get("/auth/confirm")
        assert page.status_code == 200
        assert page.headers["Referrer-Policy"] == "no-referrer"
        assert "Confirm my address" in page.get_data(as_text=True)
    assert fresh(db).scalar(select(OneTimeToken.used_at)) is None
    assert user_named(db, "erin").email_confirmed_at is None
    assert confirm_with(client, url).status_code == 303


@confirming
def test_resend_confirmation_sends_a_new_link_that_replaces_the_old(app, client, db):
    first = unconfirmed(app, client)
    page = client.get("/auth/resend-confirmation")
    assert page.status_code == 200 and 'name="email"' in page.get_data(as_text=True)
    response = post(
        client, "/auth/resend-confirmation", {"email": "ERIN@example.org"}, buffered=True
    )
    assert response.status_code == 303
    second = link_in(last_mail(app, "erin@example.org"), "/auth/confirm/")
    assert second != first
    assert confirm_with(app.test_client(), first).status_code == 400
    assert confirm_with(app.test_client(), second).status_code == 303
    assert [json.loads(e.details)["reason"] for e in events(db, "auth.confirm.sent")] == [
        "registration",
        "resend",
    ]


@confirming
def test_login_page_offers_the_resend_link_under_confirmation(client):
    html = client.get("/auth/login").get_data(as_text=True)
    assert 'href="/auth/resend-confirmation"' in html


# -- invitations --


def invite(client: Any, email: str = "guest@example.org", **kwargs: Any) -> Any:
    return post(client, "/auth/invite", {"email": email}, buffered=True, **kwargs)


def inviter(app: Flask, make_user: Any) -> Any:
    make_user("host", roles=["hosts"], perms={"hosts": ["aaa:users:invite"]})
    client = app.test_client()
    assert login(client, "host").status_code == 303
    return client


def test_inviting_needs_the_permission(app, client, make_user, db):
    assert post_json(client, "/auth/invite", {"email": "guest@example.org"}).status_code == 401
    make_user("alice")
    login(client, "alice")
    assert client.get("/auth/invite").status_code == 403
    response = post_json(client, "/auth/invite", {"email": "guest@example.org"}, buffered=True)
    assert response.status_code == 403
    assert outbox(app) == []
    assert any("aaa:users:invite" in e.details for e in events(db, "authz.denied"))


def test_invitation_registers_the_invited_address_once(app, make_user, db):
    host = inviter(app, make_user)
    page = host.get("/auth/invite")
    assert page.status_code == 200
    assert invite(host).status_code == 303
    message = last_mail(app, "guest@example.org")
    assert "host invited you" in message.body
    url = link_in(message, "/auth/register?invite=")
    guest = app.test_client()
    moved = guest.get(local(url))
    assert (moved.status_code, moved.headers["Location"]) == (303, "/auth/register")
    form = guest.get("/auth/register").get_data(as_text=True)
    assert "guest@example.org" in form and 'name="email"' not in form
    token = form_token(form)
    response = guest.post(
        "/auth/register",
        data={"username": "guest", "email": "other@example.org", "password": PASSWORD,
              "csrf_token": token},
    )  # fmt: skip
    assert response.status_code == 303
    user = user_named(db, "guest")
    assert (user.email, user.email_confirmed_at is not None) == ("guest@example.org", True)
    assert login(app.test_client(), "guest").status_code == 303
    reuse = post_json(
        app.test_client(),
        "/auth/register",
        {"username": "guest2", "password": PASSWORD, "invite": token_of(url)},
    )
    assert (reuse.status_code, reuse.get_json()["error"]) == (400, "invalid_token")
    assert {"user.invited", "user.invitation_accepted", "user.invitation_failed"} <= set(
        actions(db)
    )


def test_invitation_expires(app, make_user, db):
    host = inviter(app, make_user)
    invite(host)
    token = token_of(link_in(last_mail(app, "guest@example.org"), "/auth/register?invite="))
    with freeze_time(utcnow() + dt.timedelta(days=7, seconds=1)):
        response = post_json(
            app.test_client(),
            "/auth/register",
            {"username": "guest", "password": PASSWORD, "invite": token},
        )
    assert response.get_json() == {"error": "expired_token", "message": "This link has expired."}
    assert (
        fresh(db).scalar(select(func.count()).select_from(User).where(User.username_key == "guest"))
        == 0
    )


def test_invitation_json_flow(app, make_user, db):
    host = inviter(app, make_user)
    response = post_json(host, "/auth/invite", {"email": "Guest@Example.org"}, buffered=True)
    assert response.status_code == 202
    assert response.get_json() == {
        "ok": True,
        "message": "We sent an invitation to Guest@example.org.",
    }
    token = token_of(link_in(last_mail(app, "Guest@example.org"), "/auth/register?invite="))
    created = post_json(
        app.test_client(),
        "/auth/register",
        {"username": "guest", "password": PASSWORD, "invite": token},
    )
    assert created.status_code == 201
    assert created.get_json()["user"]["email"] == "Guest@example.org"


def test_inviting_an_existing_account_answers_alike_and_sends_nothing(app, make_user):
    host = inviter(app, make_user)
    make_user("guest")
    existing = post_json(host, "/auth/invite", {"email": "guest@example.org"}, buffered=True)
    other = post_json(host, "/auth/invite", {"email": "new@example.org"}, buffered=True)
    assert existing.status_code == other.status_code == 202
    assert [m.to for m in outbox(app)] == [["new@example.org"]]


@with_config(AAA_INVITE_ONLY=True)
def test_invite_only_registration(app, make_user, db):
    stranger = app.test_client()
    page = stranger.get("/auth/register")
    assert page.status_code == 403
    assert "Registration is by invitation only." in page.get_data(as_text=True)
    response = post_json(
        stranger,
        "/auth/register",
        {"username": "erin", "email": "erin@example.org", "password": PASSWORD},
    )
    assert response.status_code == 403
    assert response.get_json()["error"] == "invitation_required"
    assert "No account?" not in stranger.get("/auth/login").get_data(as_text=True)
    host = inviter(app, make_user)
    invite(host, "erin@example.org")
    url = link_in(last_mail(app, "erin@example.org"), "/auth/register?invite=")
    erin = app.test_client()
    erin.get(local(url))
    assert erin.get("/auth/register").status_code == 200
    assert (
        post(erin, "/auth/register", {"username": "erin", "password": PASSWORD}).status_code == 303
    )
    assert user_named(db, "erin").email == "erin@example.org"


def test_a_bad_invitation_link_shows_an_error(app, client):
    client.get("/auth/register?invite=" + "x" * 43)
    page = client.get("/auth/register")
    assert page.status_code == 400
    assert "This link is not valid." in page.get_data(as_text=True)
    assert client.get("/auth/register").status_code == 200  # the bad link is forgotten


# -- change of email address --


def change_email(client: Any, email: str = "new@example.org", password: str = PASSWORD) -> Any:
    return post(client, "/auth/email", {"email": email, "password": password}, buffered=True)


def confirm_change(client: Any, url: str) -> Any:
    moved = client.get(local(url))
    assert moved.headers["Location"] == "/auth/email/confirm"
    return post(client, "/auth/email/confirm", buffered=True)


def test_email_change_needs_the_password(app, client, make_user, db):
    make_user("alice")
    login(client, "alice")
    response = change_email(client, password="not-the-password-at-all")
    assert response.status_code == 400
    assert 'id="e-password"' in response.get_data(as_text=True)
    assert outbox(app) == []
    assert len(events(db, "user.email_change_failed")) == 1
    assert (
        post_json(app.test_client(), "/auth/email", {"email": "x@example.org"}).status_code == 401
    )


def test_email_change_confirms_the_new_address_and_notifies_the_old(app, client, make_user, db):
    make_user("alice")
    login(client, "alice")
    assert "alice@example.org" in client.get("/auth/email").get_data(as_text=True)
    response = change_email(client)
    assert (response.status_code, response.headers["Location"]) == (303, "/auth/email")
    url = link_in(last_mail(app, "new@example.org"), "/auth/email/confirm/")
    assert user_named(db, "alice").email == "alice@example.org"
    other = app.test_client()  # another browser: the link is enough
    other.get(local(url))
    page = other.get("/auth/email/confirm").get_data(as_text=True)
    assert "<strong>alice</strong>" in page and "<strong>new@example.org</strong>" in page
    done = confirm_change(other, url)
    assert done.status_code == 303
    alice = user_named(db, "alice")
    assert (alice.email, alice.email_key) == ("new@example.org", "new@example.org")
    notice = last_mail(app, "alice@example.org")
    assert "new@example.org" in notice.body and "changed" in notice.subject
    assert login(app.test_client(), "new@example.org").status_code == 303
    assert login(app.test_client(), "alice@example.org").status_code == 401
    assert {"user.email_change_requested", "user.email_changed"} <= set(actions(db))
    assert confirm_change(app.test_client(), url).status_code == 400


def test_email_change_kills_older_links(app, client, make_user):
    """A second request kills the first link; the change kills links sent to the old
    address (a reset link, say)."""
    make_user("alice")
    reset = reset_url(app, app.test_client())
    login(client, "alice")
    change_email(client, "one@example.org")
    first = link_in(last_mail(app, "one@example.org"), "/auth/email/confirm/")
    change_email(client, "two@example.org")
    second = link_in(last_mail(app, "two@example.org"), "/auth/email/confirm/")
    assert confirm_change(app.test_client(), first).status_code == 400
    assert confirm_change(app.test_client(), second).status_code == 303
    assert set_password(app.test_client(), reset).status_code == 400


def test_email_change_to_a_taken_address_answers_alike(app, make_user, db):
    make_user("alice")
    make_user("bob")
    alice = app.test_client()
    login(alice, "alice")
    taken = post_json(
        alice, "/auth/email", {"email": "bob@example.org", "password": PASSWORD}, buffered=True
    )
    free = post_json(
        alice, "/auth/email", {"email": "new@example.org", "password": PASSWORD}, buffered=True
    )
    assert taken.status_code == free.status_code == 202
    assert set(taken.get_json()) == set(free.get_json()) == {"ok", "message"}
    assert "already belongs to your account" in last_mail(app, "bob@example.org").body
    assert user_named(db, "bob").email == "bob@example.org"


def test_a_bad_email_change_link_says_so_before_the_button(client):
    client.get("/auth/email/confirm/" + "x" * 43)
    page = client.get("/auth/email/confirm")
    assert page.status_code == 400
    html = page.get_data(as_text=True)
    assert "This link is not valid." in html and "<form" not in html.split("</header>")[1]


def test_Z03_email_cannot_change_without_the_mailed_link(app, client, make_user, db):
    """The address changes only through the link sent to it, never by a request field."""
    make_user("alice")
    login(client, "alice")
    post_json(
        client, "/auth/email", {"email": "new@example.org", "password": PASSWORD}, buffered=True
    )
    assert post_json(client, "/auth/email/confirm", {}).status_code == 400
    assert post_json(client, "/auth/email/confirm", {"token": "x" * 43}).status_code == 400
    assert user_named(db, "alice").email == "alice@example.org"


# -- CSRF on every POST --


POSTS = [
    ("/auth/forgot", {"email": "alice@example.org"}),
    ("/auth/reset", {"password": NEW_PASSWORD}),
    ("/auth/confirm", {}),
    ("/auth/resend-confirmation", {"email": "alice@example.org"}),
    ("/auth/email", {"email": "new@example.org", "password": PASSWORD}),
    ("/auth/email/confirm", {}),
    ("/auth/invite", {"email": "guest@example.org"}),
    ("/auth/register", {"username": "erin", "email": "erin@example.org", "password": PASSWORD}),
]


@confirming
@pytest.mark.parametrize(("path", "fields"), POSTS, ids=[p for p, _ in POSTS])
def test_Z05_every_post_needs_the_csrf_token(app, client, admin, path, fields, db):
    login(client, "root")
    before = actions(db)
    for kwargs in (
        {"data": fields},
        {"json": fields},
        {"json": fields, "headers": {"X-CSRFToken": "forged"}},
    ):
        response = client.post(path, buffered=True, **kwargs)
        assert response.status_code == 400, (path, kwargs)
    assert actions(db) == before
    assert outbox(app) == []


@confirming
def test_Z05_link_pages_answer_get_only(client):
    """The link pages only move the token into the session; nothing is done on them."""
    token = csrf_token(client)
    for path in ("/auth/reset/abc", "/auth/confirm/abc", "/auth/email/confirm/abc"):
        assert client.post(path, headers={"X-CSRFToken": token}).status_code == 405


# -- throttling --


@with_config(AAA_MAIL_LIMIT="2 per hour")
def test_mail_requests_are_limited_per_address_whatever_the_ip(app, make_user):
    make_user("alice")
    for n in range(2):
        assert request_reset(from_ip(app, f"10.5.0.{n}")).status_code == 303
    throttled = request_reset(from_ip(app, "10.5.0.9"))
    assert throttled.status_code == 429
    assert "Retry-After" in throttled.headers
    assert len(outbox(app)) == 2
    # Unknown addresses are limited the same way (no enumeration through the limit).
    for n in range(2):
        assert request_reset(from_ip(app, f"10.6.0.{n}"), "nobody@example.org").status_code == 303
    assert request_reset(from_ip(app, "10.6.0.9"), "nobody@example.org").status_code == 429


@with_config(AAA_MAIL_LIMIT="2 per hour", AAA_CONFIRM_EMAIL=True)
def test_mail_requests_are_limited_per_ip_across_endpoints(app, db):
    client = from_ip(app, "10.7.0.1")
    assert request_reset(client, "a@example.org").status_code == 303
    assert post(client, "/auth/resend-confirmation", {"email": "b@example.org"}).status_code == 303
    assert request_reset(client, "c@example.org").status_code == 429
    assert request_reset(from_ip(app, "10.7.0.2"), "c@example.org").status_code == 303
    assert "auth.mail.throttled" in actions(db)


# -- mail: after the response, templates, configuration --


def test_mail_leaves_only_after_the_response_is_closed(app, client, make_user):
    make_user("alice")
    response = post(client, "/auth/forgot", {"email": "alice@example.org"})
    assert response.status_code == 303
    assert outbox(app) == []
    response.close()
    assert len(outbox(app)) == 1


def test_mail_has_text_and_html_and_the_configured_sender(app, client, make_user):
    make_user("alice")
    url = reset_url(app, client)
    message = last_mail(app, "alice@example.org")
    assert message.from_email == "no-reply@localhost"
    assert message.subject == "Reset your Flask-AAA password"
    html, mimetype = message.alternatives[0]
    assert mimetype == "text/html"
    assert f'href="{url}"' in html
    assert "expires in 1 hour" in message.body


def test_apps_override_mail_templates(app, client, make_user, tmp_path):
    folder = tmp_path / "templates" / "aaa" / "mail"
    folder.mkdir(parents=True)
    (folder / "reset.txt").write_text("Custom reset text: {{ link }}")
    app.template_folder = str(tmp_path / "templates")
    vars(app).pop("jinja_loader", None)
    make_user("alice")
    url = reset_url(app, client)
    assert last_mail(app, "alice@example.org").body == f"Custom reset text: {url}"


def test_production_needs_a_canonical_url_for_confirmation(tmp_path):
    from flask_sqlalchemy import SQLAlchemy

    from flask_aaa import AAA, Base, ConfigurationError
    from tests.conftest import SECRET

    app = Flask("prod")
    app.config.update(
        SECRET_KEY=SECRET,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'p.db'}",
        AAA_CONFIRM_EMAIL=True,
    )
    with pytest.raises(ConfigurationError, match="AAA_BASE_URL"):
        AAA(app, SQLAlchemy(model_class=Base))
    app = Flask("prod2")
    app.config.update(
        SECRET_KEY=SECRET,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'p2.db'}",
        AAA_CONFIRM_EMAIL=True,
        AAA_BASE_URL="https://app.example.org",
    )
    AAA(app, SQLAlchemy(model_class=Base))
    assert app.extensions["aaa_mail"].reset is True


def test_production_without_a_canonical_url_offers_no_mail_links(tmp_path, caplog):
    from flask_sqlalchemy import SQLAlchemy

    from flask_aaa import AAA, Base
    from tests.conftest import SECRET

    app = Flask("prod")
    app.config.update(SECRET_KEY=SECRET, SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'p.db'}")
    AAA(app, SQLAlchemy(model_class=Base))
    assert "AAA_BASE_URL is not set" in caplog.text
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert not any(e.startswith("aaa_recovery.") for e in endpoints)
    html = app.test_client().get("/auth/login").get_data(as_text=True)
    assert "Forgot your password?" not in html


@with_config(AAA_ENABLE_REGISTRATION=False)
def test_no_invitations_while_registration_is_closed(app, client, admin):
    login(client, "root")
    assert client.get("/auth/invite").status_code == 404
    assert client.get("/auth/forgot").status_code == 200


# -- the trail --


@confirming
def test_every_flow_writes_its_events(app, make_user, admin, db):
    """One run through each flow; each leaves its events, none carries a token."""
    client = app.test_client()
    confirm_with(client, unconfirmed(app, client))
    post(client, "/auth/resend-confirmation", {"email": "nobody@example.org"}, buffered=True)
    set_password(app.test_client(), reset_url(app, client, "erin@example.org"))
    set_password(app.test_client(), reset_url(app, client, "erin@example.org") + "x")
    request_reset(client, "nobody@example.org")
    erin = app.test_client()
    assert login(erin, "erin", NEW_PASSWORD).status_code == 303
    assert change_email(erin, password=NEW_PASSWORD).status_code == 303
    confirm_change(
        app.test_client(), link_in(last_mail(app, "new@example.org"), "/auth/email/confirm/")
    )
    change_email(erin, "other@example.org", password="wrong-password-here")
    boss = app.test_client()
    fresh(db).execute(update(User).where(User.id == admin.id).values(email_confirmed_at=utcnow()))
    db.commit()
    assert login(boss, "root").status_code == 303
    invite(boss)
    guest_url = link_in(last_mail(app, "guest@example.org"), "/auth/register?invite=")
    guest = app.test_client()
    guest.get(local(guest_url))
    post(guest, "/auth/register", {"username": "guest", "password": PASSWORD})
    seen = set(actions(db))
    expected = {
        "user.registered",
        "auth.confirm.sent",
        "auth.confirm.succeeded",
        "auth.confirm.not_sent",
        "auth.reset.requested",
        "auth.reset.succeeded",
        "auth.reset.failed",
        "user.email_change_requested",
        "user.email_changed",
        "user.email_change_failed",
        "user.invited",
        "user.invitation_accepted",
    }
    assert expected <= seen, expected - seen
    trail = "\n".join(e.details for e in fresh(db).scalars(select(AuditEvent)))
    for message in outbox(app):
        for token in re.findall(TOKEN_RE, message.body):
            if len(token) >= 43:
                assert token not in trail
    assert PASSWORD not in trail and NEW_PASSWORD not in trail
