"""S04 across processes: the demo under gunicorn with several workers, on PostgreSQL and
Redis. A session revoked from another process fails on its very next request, on every
worker; nothing is cached per worker that could let it through."""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.conftest import DATABASE_URL, REDIS_URL, empty_database, flush_redis

pytestmark = [
    pytest.mark.skipif(
        not (DATABASE_URL or "").startswith("postgresql") or not REDIS_URL,
        reason="needs AAA_TEST_DATABASE_URL (PostgreSQL) and AAA_TEST_REDIS_URL",
    ),
    pytest.mark.slow,
]

WORKERS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Browser:
    """Just enough of a browser: one cookie jar, a new connection per request (so that
    gunicorn hands requests to whichever worker is free)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict[str, str] | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read().decode()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                cookie_value = rest.split(";", 1)[0]
                if cookie_value:
                    self.cookies[key] = cookie_value
                else:
                    self.cookies.pop(key, None)
        connection.close()
        return response.status, dict(response.getheaders()), text

    def sign_in(self, username: str, password: str) -> None:
        _, _, page = self.request("GET", "/auth/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        status, _, _ = self.request(
            "POST", "/auth/login", {"login": username, "password": password, "csrf_token": token}
        )
        assert status == 303


def burst(browser: Browser, path: str) -> list:
    """Concurrent requests: a sync worker serves one at a time, so they spread over all."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=3 * WORKERS) as pool:
        futures = [pool.submit(browser.request, "GET", path) for _ in range(3 * WORKERS)]
        return [future.result() for future in futures]


@pytest.fixture
def demo_server(tmp_path: Path):
    empty_database(DATABASE_URL)
    flush_redis()
    env = {
        **os.environ,
        "FLASK_AAA_DEMO_DIR": str(tmp_path / "demo"),
        "FLASK_AAA_DEMO_DATABASE_URL": DATABASE_URL,
        "AAA_RATELIMIT_STORAGE_URI": REDIS_URL,
    }
    setup = subprocess.run(
        [sys.executable, "-m", "flask_aaa.demo", "--setup-only"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert setup.returncode == 0, setup.stderr
    passwords = {
        line.split()[0]: line.split()[1]
        for line in (tmp_path / "demo" / "credentials.txt").read_text().splitlines()
    }
    port = free_port()
    log = tmp_path / "access.log"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            str(WORKERS),
            "--bind",
            f"127.0.0.1:{port}",
            "--access-logfile",
            str(log),
            "--access-logformat",
            "%(p)s %(s)s %(U)s",
            "flask_aaa.demo:create_app()",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        server.kill()
        pytest.fail("gunicorn did not start: " + (server.stderr.read() if server.stderr else ""))
    yield port, passwords, env, log
    server.terminate()
    server.wait(20)


def test_S04_revoked_session_is_refused_on_every_worker(demo_server):
    port, passwords, env, log = demo_server
    alice = Browser(port)
    alice.sign_in("alice", passwords["alice"])
    statuses = [status for status, _, _ in burst(alice, "/notes")]
    assert statuses == [200] * (3 * WORKERS)

    # Revoke from another process altogether: the CLI.
    revoke = subprocess.run(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "flask_aaa.demo",
            "aaa",
            "revoke-sessions",
            "alice",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert revoke.returncode == 0, revoke.stderr

    after = burst(alice, "/notes")
    assert all(
        status == 303 and "/auth/login" in headers["Location"] for status, headers, _ in after
    )

    time.sleep(0.5)  # let gunicorn flush its access log
    served = [line.split() for line in log.read_text().splitlines() if "/notes" in line]
    refused_by = {pid for pid, status, _ in served if status == "303"}
    assert len({pid for pid, _, _ in served}) >= 2, "requests did not reach several workers"
    assert len(refused_by) >= 2
