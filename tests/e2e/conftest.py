"""Browser tests: a live server of a test app, driven by Debian's Chromium through Playwright.

The browser is never downloaded (no ``playwright install``): Chromium is launched from
``/usr/bin/chromium``. Without it the tests are skipped with the reason. The server is
werkzeug's, in a thread, on 127.0.0.1 and an ephemeral port; the browser reaches it as
``localhost`` (a secure context, which WebAuthn needs, without TLS).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from tests.conftest import build_app

CHROMIUM = "/usr/bin/chromium"
#: Longest wait for any one browser step, in milliseconds.
STEP_TIMEOUT_MS = 15_000

if os.environ.get("AAA_TEST_REQUIRE_BROWSER") and shutil.which(CHROMIUM) is None:
    # CI installs chromium and sets this: there a missing browser is a failure, not a skip.
    raise RuntimeError(f"AAA_TEST_REQUIRE_BROWSER is set but {CHROMIUM} is missing")

requires_chromium = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium)",
)


class LiveServer:
    """A started server: its app and the URL the browser uses."""

    def __init__(self, app: Flask, server: BaseWSGIServer) -> None:
        self.app = app
        self.server = server
        self.url = f"http://localhost:{server.server_port}"


@pytest.fixture
def live_server(config: dict[str, Any]) -> Iterator[Callable[..., LiveServer]]:
    """Start the test app with extra config (which may depend on the port) in a thread:
    ``live_server(lambda port: {...})``. Stopped after the test."""
    started: list[tuple[BaseWSGIServer, threading.Thread, Flask]] = []

    def start(extra: Callable[[int], dict[str, Any]]) -> LiveServer:
        holder: dict[str, Flask] = {}

        def wsgi(environ: Any, start_response: Any) -> Any:
            return holder["app"](environ, start_response)

        server = make_server("127.0.0.1", 0, wsgi, threaded=True)
        app = build_app({**config, **extra(server.server_port)})
        with app.app_context():
            app.extensions["aaa"].db.create_all()
        holder["app"] = app
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append((server, thread, app))
        return LiveServer(app, server)

    yield start
    for server, thread, app in started:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        with app.app_context():
            for engine in app.extensions["aaa"].db.engines.values():
                engine.dispose()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian Chromium (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            timeout=STEP_TIMEOUT_MS * 2,
            # localhost is the relying party: make sure it is the IPv4 loopback we listen on.
            args=["--host-resolver-rules=MAP localhost 127.0.0.1"],
        )
        try:
            yield chromium
        finally:
            chromium.close()
