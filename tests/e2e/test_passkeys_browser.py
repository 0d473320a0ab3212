"""Passkeys end to end in a real browser: Debian's Chromium with a virtual authenticator
(CTAP2, internal transport, resident keys, user verification), set up through the Chrome
DevTools Protocol. The page's own script (static/aaa/passkeys.js) runs the ceremonies:
add a passkey, sign out, sign in with it alone, then remove it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from flask_aaa.models import AuditEvent, Passkey, User
from tests.conftest import PASSWORD, fresh
from tests.e2e.conftest import STEP_TIMEOUT_MS, LiveServer, requires_chromium

pytestmark = requires_chromium
sync_api = pytest.importorskip("playwright.sync_api")


def passkey_config(port: int) -> dict[str, Any]:
    return {
        "AAA_PASSKEYS": True,
        "AAA_PASSKEY_RP_ID": "localhost",
        "AAA_PASSKEY_ORIGIN": f"http://localhost:{port}",
    }


def virtual_authenticator(cdp: Any) -> str:
    cdp.send("WebAuthn.enable", {"enableUI": False})
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return str(added["authenticatorId"])


def test_add_sign_in_with_and_remove_a_passkey_in_chromium(
    live_server: Callable[..., LiveServer],
    browser: Any,
    make_user: Callable[..., User],
    db: Session,
) -> None:
    expect = sync_api.expect
    alice = make_user("alice")
    live = live_server(passkey_config)
    context = browser.new_context(base_url=live.url)
    context.set_default_timeout(STEP_TIMEOUT_MS)
    context.set_default_navigation_timeout(STEP_TIMEOUT_MS)
    try:
        page = context.new_page()
        console_errors: list[str] = []
        page.on("pageerror", lambda error: console_errors.append(str(error)))
        cdp = context.new_cdp_session(page)
        authenticator = virtual_authenticator(cdp)

        # Sign in with the password, then add a passkey (the sign-in is recent: fresh).
        page.goto("/auth/login")
        page.fill("#f-login", "alice")
        page.fill("#f-password", PASSWORD)
        page.get_by_role("button", name="Sign in", exact=True).click()
        page.wait_for_url(f"{live.url}/")
        page.goto("/account/passkeys")
        page.fill("#f-passkey-name", "Virtual key")
        page.get_by_role("button", name="Add a passkey").click()
        expect(page.get_by_label("Name of this passkey")).to_have_value(
            "Virtual key", timeout=STEP_TIMEOUT_MS
        )
        held = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})
        assert len(held["credentials"]) == 1
        assert held["credentials"][0]["isResidentCredential"] is True
        [row] = fresh(db).scalars(select(Passkey).where(Passkey.user_id == alice.id)).all()
        assert row.name == "Virtual key"

        # Sign out; sign in with the passkey alone (discoverable: no username typed).
        page.get_by_role("button", name="Sign out alice").click()
        page.wait_for_url("**/auth/login")
        expect(page.get_by_role("button", name="Sign in with a passkey")).to_be_visible(
            timeout=STEP_TIMEOUT_MS
        )
        page.get_by_role("button", name="Sign in with a passkey").click()
        page.wait_for_url(f"{live.url}/")
        assert json.loads(page.goto("/private").text())["user"] == "alice"
        succeeded = (
            fresh(db)
            .scalars(
                select(AuditEvent)
                .where(AuditEvent.action == "auth.login.succeeded")
                .order_by(AuditEvent.seq.desc())
            )
            .first()
        )
        assert succeeded is not None
        assert json.loads(succeeded.details)["method"] == "passkey"
        assert fresh(db).get(Passkey, row.id).last_used_at is not None  # type: ignore[union-attr]

        # Remove it (a passkey sign-in is a recent sign-in too).
        page.goto("/account/passkeys")
        page.get_by_role("button", name="remove").click()
        expect(page.get_by_text("No passkeys yet.")).to_be_visible(timeout=STEP_TIMEOUT_MS)
        assert fresh(db).scalars(select(Passkey)).all() == []
        assert console_errors == []
    finally:
        context.close()
