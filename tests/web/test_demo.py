"""The demo application's own flows, as the README promises them to a first-time user."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import form_token


@pytest.fixture
def demo(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASK_AAA_DEMO_DIR", str(tmp_path / "demo"))
    from flask_aaa.demo import create_app
    from flask_aaa.demo.__main__ import seed

    app = create_app({"TESTING": True, "AAA_PASSWORD_HASH_PRESET": "fast"})
    with app.app_context():
        credentials = seed()
    yield app, {name: rest.split("\t")[0] for name, rest in credentials.items()}
    with app.app_context():
        app.extensions["aaa"].db.engine.dispose()


def sign_in(client, username, password):
    token = form_token(client.get("/auth/login").get_data(as_text=True))
    response = client.post(
        "/auth/login", data={"login": username, "password": password, "csrf_token": token}
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    return response


def test_refused_then_granted_from_the_cli_then_in(demo):
    app, passwords = demo
    client = app.test_client()
    sign_in(client, "carol", passwords["carol"])
    assert client.get("/notes").status_code == 403
    result = app.test_cli_runner().invoke(args=["aaa", "grant-role", "carol", "reader"])
    assert result.exit_code == 0, result.output
    page = client.get("/notes")
    assert page.status_code == 200
    assert "Welcome" in page.get_data(as_text=True)


def test_editor_writes_and_deletes_notes_and_reads_the_activity(demo):
    app, passwords = demo
    client = app.test_client()
    sign_in(client, "alice", passwords["alice"])
    token = form_token(client.get("/notes").get_data(as_text=True))
    assert (
        client.post(
            "/notes", data={"title": "Groceries", "body": "milk", "csrf_token": token}
        ).status_code
        == 303
    )
    page = client.get("/notes").get_data(as_text=True)
    assert "Groceries" in page
    assert client.post("/notes/1/delete", data={"csrf_token": token}).status_code == 303
    activity = client.get("/account/activity").get_data(as_text=True)
    assert "notes.created" in activity and "notes.deleted" in activity
    assert "auth.login.succeeded" in activity


def test_reader_cannot_write_and_the_denial_is_visible_to_the_admin(demo):
    app, passwords = demo
    bob = app.test_client()
    sign_in(bob, "bob", passwords["bob"])
    token = form_token(bob.get("/notes").get_data(as_text=True))
    assert bob.post("/notes", data={"title": "x", "csrf_token": token}).status_code == 403
    admin = app.test_client()
    sign_in(admin, "admin", passwords["admin"])
    trail = admin.get("/admin/audit?action=authz.*").get_data(as_text=True)
    assert "authz.denied" in trail and "notes:write" in trail
    token = form_token(admin.get("/admin/audit").get_data(as_text=True))
    verified = admin.post("/admin/audit/verify", data={"csrf_token": token}, follow_redirects=True)
    assert "chain intact" in verified.get_data(as_text=True)


def test_demo_denies_by_default_and_registration_works(demo):
    app, _ = demo
    client = app.test_client()
    assert client.get("/").status_code == 200
    assert client.get("/notes").status_code == 303  # to the login page
    token = form_token(client.get("/auth/register").get_data(as_text=True))
    fields = {
        "username": "erin",
        "email": "erin@example.org",
        "password": "kettle-orbit-saffron-7",
        "confirm": "kettle-orbit-saffron-7",
        "csrf_token": token,
    }
    assert client.post("/auth/register", data=fields, buffered=True).status_code == 303
    # The demo confirms addresses: the link is on the demo's /mail page.
    confirm = follow_mailed_link(client, "erin@example.org", "/auth/confirm/")
    assert confirm.headers["Location"] == "/auth/confirm"
    token = form_token(client.get("/auth/confirm").get_data(as_text=True))
    assert client.post("/auth/confirm", data={"csrf_token": token}).status_code == 303
    sign_in(client, "erin", "kettle-orbit-saffron-7")
    assert client.get("/notes").status_code == 403


def follow_mailed_link(client, address, path):
    """Find the newest mail to ``address`` on the /mail page and follow its link to ``path``."""
    page = client.get("/mail")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert address in html
    match = re.search(r'href="http://127\.0\.0\.1:5000(' + re.escape(path) + r'[^"]+)"', html)
    assert match, html
    response = client.get(match.group(1).replace("&amp;", "&"))
    assert response.status_code == 303
    return response


def test_forgotten_password_through_the_mail_page(demo):
    app, _ = demo
    client = app.test_client()
    assert "Forgot your password?" in client.get("/auth/login").get_data(as_text=True)
    token = form_token(client.get("/auth/forgot").get_data(as_text=True))
    response = client.post(
        "/auth/forgot", data={"email": "bob@example.org", "csrf_token": token}, buffered=True
    )
    assert response.status_code == 303
    follow_mailed_link(client, "bob@example.org", "/auth/reset/")
    page = client.get("/auth/reset")
    assert page.headers["Referrer-Policy"] == "no-referrer"
    token = form_token(page.get_data(as_text=True))
    new = "quartz-lantern-meadow-5"
    response = client.post("/auth/reset", data={"password": new, "csrf_token": token})
    assert response.status_code == 303
    sign_in(app.test_client(), "bob", new)


def test_the_admin_invites_and_the_guest_registers(demo):
    app, passwords = demo
    admin = app.test_client()
    sign_in(admin, "admin", passwords["admin"])
    assert "Invite someone" in admin.get("/").get_data(as_text=True)
    token = form_token(admin.get("/auth/invite").get_data(as_text=True))
    response = admin.post(
        "/auth/invite", data={"email": "gus@example.org", "csrf_token": token}, buffered=True
    )
    assert response.status_code == 303
    guest = app.test_client()
    follow_mailed_link(guest, "gus@example.org", "/auth/register?invite=")
    form = guest.get("/auth/register").get_data(as_text=True)
    assert "gus@example.org" in form
    fields = {
        "username": "gus",
        "password": "kettle-orbit-saffron-7",
        "csrf_token": form_token(form),
    }
    assert guest.post("/auth/register", data=fields).status_code == 303
    sign_in(guest, "gus", "kettle-orbit-saffron-7")


def test_the_quick_start_entry_point_seeds_and_prints_how_to_sign_in(tmp_path):
    env = {"FLASK_AAA_DEMO_DIR": str(tmp_path / "demo"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "flask_aaa.demo", "--setup-only"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "http://127.0.0.1:5000/" in result.stdout
    for name in ("admin", "alice", "bob", "carol"):
        assert name in result.stdout
    assert (tmp_path / "demo" / "demo.db").exists()
    again = subprocess.run(
        [sys.executable, "-m", "flask_aaa.demo", "--setup-only"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0 and again.stdout.count("alice") == result.stdout.count("alice")


def test_an_author_edits_only_his_own_notes_and_an_editor_anyones(demo):
    app, passwords = demo
    dave = app.test_client()
    sign_in(dave, "dave", passwords["dave"])
    token = form_token(dave.get("/notes").get_data(as_text=True))
    fields = {"title": "Dave's", "body": "draft", "csrf_token": token}
    assert dave.post("/notes", data=fields).status_code == 303
    page = dave.get("/notes").get_data(as_text=True)
    # Only his own note (3) offers edit and delete: the list is filtered like the views.
    assert "/notes/3/edit" in page and "/notes/3/delete" in page
    assert "/notes/1/edit" not in page and "/notes/1/delete" not in page
    assert "Dave&#39;s" in dave.get("/notes/3/edit").get_data(as_text=True)
    fields = {"title": "Dave's, edited", "body": "", "csrf_token": token}
    assert dave.post("/notes/3/edit", data=fields).status_code == 303
    assert dave.get("/notes/1/edit").status_code == 403  # alice's
    assert dave.post("/notes/1/delete", data={"csrf_token": token}).status_code == 403
    assert dave.get("/notes/99/edit").status_code == 404
    alice = app.test_client()
    sign_in(alice, "alice", passwords["alice"])
    assert "/notes/3/edit" in alice.get("/notes").get_data(as_text=True)
    assert alice.get("/notes/3/edit").status_code == 200  # notes:* holds notes:edit:any
    admin = app.test_client()
    sign_in(admin, "admin", passwords["admin"])
    trail = admin.get("/admin/audit?action=authz.*").get_data(as_text=True)
    assert "notes:edit on note 1 (rule owner)" in trail
    assert "notes.updated" in admin.get("/admin/audit").get_data(as_text=True)
