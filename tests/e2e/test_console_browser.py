"""The administration console in a real browser (Debian's Chromium through Playwright), used
as an operator would: sign in, build a role hierarchy, grant it, watch the user gain access,
explain a denial, end the user's session, read the audit trail and open one event.

Every console page is saved as a full-page screenshot at desktop and at phone width under
``artifacts/screenshots/`` (git-ignored). No page may log a console error (a blocked script or
style, a CSP violation) and no request may leave the test server's host.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from flask_aaa.models import User
from tests.conftest import PASSWORD
from tests.e2e.conftest import STEP_TIMEOUT_MS, LiveServer, requires_chromium

pytestmark = requires_chromium
sync_api = pytest.importorskip("playwright.sync_api")

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


class Watch:
    """Collects console errors, uncaught page errors and requests to any other host."""

    def __init__(self, base_url: str) -> None:
        self.host = urlsplit(base_url).netloc
        self.errors: list[str] = []
        self.foreign: list[str] = []

    def attach(self, page: Any, *, console: bool = True) -> Any:
        if console:
            page.on("console", lambda msg: self._console(page, msg))
            page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
            page.on("response", self._response)
        page.on("request", self._request)
        return page

    def _console(self, page: Any, msg: Any) -> None:
        # A failed load is also a response, judged in _response (the browser's own favicon
        # request is allowed its 404); anything else logged as an error fails the test.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            self.errors.append(f"{page.url}: {msg.text}")

    def _response(self, response: Any) -> None:
        if response.status >= 400 and urlsplit(response.url).path != "/favicon.ico":
            self.errors.append(f"{response.status} {response.url}")

    def _request(self, request: Any) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != self.host:
            self.foreign.append(request.url)


def new_page(
    browser: Any, live: LiveServer, watch: Watch, viewport: dict[str, int], **kw: Any
) -> Any:
    context = browser.new_context(base_url=live.url, viewport=viewport)
    context.set_default_timeout(STEP_TIMEOUT_MS)
    context.set_default_navigation_timeout(STEP_TIMEOUT_MS)
    return watch.attach(context.new_page(), **kw)


def sign_in(page: Any, live: LiveServer, name: str) -> None:
    page.goto("/auth/login")
    page.fill("#f-login", name)
    page.fill("#f-password", PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(f"{live.url}/")


def shoot(page: Any, name: str, width: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}-{width}.png"
    page.screenshot(path=str(path), full_page=True, timeout=STEP_TIMEOUT_MS)
    assert path.stat().st_size > 0
    return path


def test_an_operator_builds_grants_explains_revokes_and_audits(
    live_server: Callable[..., LiveServer],
    browser: Any,
    make_user: Callable[..., User],
) -> None:
    expect = sync_api.expect
    make_user("root", roles=["admin"], perms={"admin": ["*"]})
    eve = make_user("eve")
    live = live_server(lambda port: {})
    watch = Watch(live.url)
    page = new_page(browser, live, watch, DESKTOP)
    # Eve's browser meets a 403 on purpose: only the hosts her pages reach are watched there.
    eve_page = new_page(browser, live, watch, DESKTOP, console=False)
    pages: dict[str, str] = {}

    sign_in(page, live, "root")
    sign_in(eve_page, live, "eve")
    assert eve_page.goto("/notes").status == 403

    page.goto("/admin/dashboard")
    expect(page.get_by_role("heading", name="Sign-ins per day")).to_be_visible()
    expect(page.locator("svg.aaa-chart")).to_have_count(4)
    pages["dashboard"] = "/admin/dashboard"
    shoot(page, "dashboard", "desktop")

    # A role "reader" with notes:read, and "editor" inheriting it, with notes:write.
    page.goto("/admin/roles")
    page.fill("#r-name", "reader")
    page.fill("#r-description", "Reads notes")
    page.get_by_role("button", name="Create role").click()
    page.wait_for_url(f"{live.url}/admin/roles/reader")
    page.fill("#add-permission", "notes:read")
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.get_by_text("Added notes:read to reader.")).to_be_visible()
    page.goto("/admin/roles")
    page.fill("#r-name", "editor")
    page.select_option("#r-parent", "reader")
    page.get_by_role("button", name="Create role").click()
    page.wait_for_url(f"{live.url}/admin/roles/editor")
    page.fill("#add-permission", "notes:write")
    page.get_by_role("button", name="Add", exact=True).click()
    inherited = page.locator(
        "section", has=page.get_by_role("heading", name="Inherited permissions")
    )
    expect(inherited).to_contain_text("notes:read")
    expect(inherited).to_contain_text("from reader")
    pages["role"] = "/admin/roles/editor"
    shoot(page, "role", "desktop")
    page.goto("/admin/roles")
    expect(page.get_by_role("row", name=re.compile(r"^editor"))).to_contain_text("reader")
    pages["roles"] = "/admin/roles"
    shoot(page, "roles", "desktop")

    # Grant editor to eve: she can read notes on her very next request.
    page.goto("/admin/?q=eve")
    pages["users"] = "/admin/?q=eve"
    expect(page.get_by_role("link", name="eve", exact=True)).to_be_visible()
    shoot(page, "users", "desktop")
    page.get_by_role("link", name="eve", exact=True).click()
    page.wait_for_url(f"{live.url}/admin/users/{eve.id}")
    page.select_option("#grant-role", "editor")
    page.locator("form:has(#grant-role) button").click()
    expect(page.get_by_text("Granted editor to eve.")).to_be_visible()
    expect(page.get_by_text("inherited through editor")).to_be_visible()
    response = eve_page.goto("/notes")
    assert response.status == 200
    assert eve_page.content().count("notes") >= 1

    # Explain why she still may not delete one.
    page.fill("#explain-permission", "notes:delete")
    page.locator("form:has(#explain-permission) button").click()
    page.wait_for_url(re.compile(r".*/admin/explain\?.*permission=notes%3Adelete.*"))
    verdict = page.get_by_role("status").filter(has_text="Denied")
    expect(verdict).to_contain_text("notes:delete")
    expect(page.locator("section", has_text="Held of the same resource")).to_contain_text(
        "notes:write"
    )
    pages["explain"] = page.url.removeprefix(live.url)
    shoot(page, "explain", "desktop")

    # End her session from her page: her next page load lands on the sign-in page.
    page.goto(f"/admin/users/{eve.id}")
    pages["user"] = f"/admin/users/{eve.id}"
    shoot(page, "user", "desktop")
    page.get_by_role("button", name=re.compile(r"^End session")).click()
    expect(page.get_by_text("Ended a session of eve")).to_be_visible()
    expect(page.get_by_text("No live sessions.")).to_be_visible()
    eve_page.goto("/notes")
    assert urlsplit(eve_page.url).path == "/auth/login"

    page.goto("/admin/permissions")
    expect(page.get_by_role("row", name=re.compile(r"^notes:read"))).to_contain_text("reader")
    pages["permissions"] = "/admin/permissions"
    shoot(page, "permissions", "desktop")

    # The audit trail shows what happened; one event opens in detail.
    page.goto("/admin/audit")
    expect(page.get_by_role("cell", name="session.revoked", exact=True)).to_be_visible()
    page.get_by_role("button", name="Verify the hash chain").click()
    expect(page.get_by_text(re.compile(r"Chain verified from event 1 to \d+"))).to_be_visible()
    pages["audit"] = "/admin/audit"
    shoot(page, "audit", "desktop")
    row = page.get_by_role("row").filter(has_text="session.revoked").first
    row.get_by_role("link", name=re.compile(r"^Open event")).click()
    page.wait_for_url(re.compile(r".*/admin/audit/\d+$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("session.revoked")
    expect(page.get_by_text("Intact.")).to_be_visible()
    expect(page.locator("pre")).to_contain_text('"name": "eve"')
    pages["audit-event"] = page.url.removeprefix(live.url)
    shoot(page, "audit-event", "desktop")

    # The same pages on a phone: nothing wider than the screen but the tables' own scroll.
    phone = new_page(browser, live, watch, PHONE)
    sign_in(phone, live, "root")
    for name, url in pages.items():
        phone.goto(url)
        expect(phone.get_by_role("navigation", name="Administration")).to_be_visible()
        overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (name, overflow)
        shoot(phone, name, "phone")

    assert watch.errors == []
    assert watch.foreign == []
