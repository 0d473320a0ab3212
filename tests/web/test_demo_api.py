"""The demo's notes API: a script with a token reads and writes within its scopes."""

from __future__ import annotations

import re

from tests.conftest import form_token
from tests.web.test_demo import demo, sign_in  # noqa: F401 (the fixture)

TOKEN_RE = re.compile(r"aaa_pat_[0-9A-Za-z]{46}")


def mint(client, *scopes):
    token = form_token(client.get("/account/tokens").get_data(as_text=True))
    response = client.post(
        "/account/tokens",
        data={"name": "script", "scopes": list(scopes), "csrf_token": token},
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return TOKEN_RE.search(response.get_data(as_text=True)).group(0)


def test_a_script_writes_and_reads_notes_with_a_token(demo):  # noqa: F811
    app, passwords = demo
    browser = app.test_client()
    sign_in(browser, "alice", passwords["alice"])  # an editor
    secret = mint(browser, "notes:read", "notes:write")
    script = app.test_client()
    auth = {"Authorization": f"Bearer {secret}"}
    created = script.post("/api/notes", json={"title": "from a script", "body": "hi"}, headers=auth)
    assert created.status_code == 201, created.get_data(as_text=True)
    listed = script.get("/api/notes", headers=auth).get_json()["notes"]
    assert listed[0]["title"] == "from a script"
    assert script.post("/api/notes", json={"title": ""}, headers=auth).status_code == 400
    assert script.post("/api/notes", json={"x": 1}, headers=auth).status_code == 400
    # The browser session reads the same list, but may not use the token-only write.
    assert browser.get("/api/notes").status_code == 200


def test_a_read_only_token_cannot_write(demo):  # noqa: F811
    app, passwords = demo
    browser = app.test_client()
    sign_in(browser, "bob", passwords["bob"])
    secret = mint(browser, "notes:read")
    response = app.test_client().post(
        "/api/notes", json={"title": "nope"}, headers={"Authorization": f"Bearer {secret}"}
    )
    assert response.status_code == 403
