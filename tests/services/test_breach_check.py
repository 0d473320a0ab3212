"""A12: the breach check asks a k-anonymity range service with a 5-character SHA-1 prefix
only, refuses breached passwords, and, when the service is down, fails open with a log line
or closed with a 503, as configured."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from flask_aaa.config import Settings
from flask_aaa.errors import InvalidInput, ServiceUnavailable
from flask_aaa.services.passwords import PasswordService

BREACHED = "correct horse battery staple 1"
CLEAN = "violet-walrus-sings-at-dawn-42"


def sha1(value: str) -> str:
    return hashlib.sha1(value.encode(), usedforsecurity=False).hexdigest().upper()


class RangeService:
    """A local stand-in for the Pwned Passwords range API."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.paths.append(self.path)
                service.headers.append(dict(self.headers))
                time.sleep(delay)
                prefix = self.path.rsplit("/", 1)[-1]
                full = sha1(BREACHED)
                lines = [
                    "0018A45C4D1DEF81644B54AB7F969B88D65:1",
                    "00D4F6E8FA6EECAD2A3AA415EEC418D38EC:0",
                ]
                if full.startswith(prefix):
                    lines.append(f"{full[5:]}:3861493")
                data = "\r\n".join(lines).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/range/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service() -> Iterator[RangeService]:
    running = RangeService()
    yield running
    running.stop()


def passwords_for(url: str, **options: object) -> PasswordService:
    config = {
        "AAA_PASSWORD_HASH_PRESET": "fast",
        "AAA_PASSWORD_BREACH_CHECK": True,
        "AAA_PASSWORD_BREACH_URL": url,
        **{f"AAA_{k.upper()}": v for k, v in options.items()},
    }
    return PasswordService(Settings.from_config(config, debug=False, testing=True))


def test_a12_only_a_five_character_prefix_leaves_the_server(service):
    checker = passwords_for(service.url)
    checker.check_policy(CLEAN)
    assert service.paths == [f"/range/{sha1(CLEAN)[:5]}"]
    assert sha1(CLEAN)[5:] not in "".join(service.paths) + repr(service.headers)
    assert CLEAN not in repr(service.headers)
    assert service.headers[0].get("Add-Padding") == "true"


def test_a12_a_breached_password_is_refused(service):
    with pytest.raises(InvalidInput) as caught:
        passwords_for(service.url).check_policy(BREACHED)
    assert "breaches" in caught.value.errors["password"]


def test_a12_a_suffix_with_a_zero_count_is_padding_not_a_match(service):
    checker = passwords_for(service.url)
    assert not checker.breached(CLEAN)


def test_a12_timeout_fails_open_with_a_log_line(caplog):
    slow = RangeService(delay=2.0)
    try:
        checker = passwords_for(slow.url, password_breach_timeout=0.2)
        with caplog.at_level(logging.WARNING, logger="flask_aaa"):
            began = time.monotonic()
            assert checker.check_policy(BREACHED) == BREACHED  # accepted: the service is down
            assert time.monotonic() - began < 1.5
        assert "breach check unavailable" in caplog.text
    finally:
        slow.stop()


def test_a12_timeout_fails_closed_with_503_when_configured():
    slow = RangeService(delay=2.0)
    try:
        checker = passwords_for(
            slow.url, password_breach_timeout=0.2, password_breach_fail_open=False
        )
        with pytest.raises(ServiceUnavailable):
            checker.check_policy(CLEAN)
    finally:
        slow.stop()


def test_a12_an_unreachable_service_is_handled_like_a_timeout():
    checker = passwords_for("http://127.0.0.1:9/range/", password_breach_fail_open=False)
    with pytest.raises(ServiceUnavailable):
        checker.check_policy(CLEAN)


def test_the_check_is_off_by_default_and_asks_nobody(service, settings):
    assert not settings.password_breach_check
    checker = PasswordService(dataclasses.replace(settings, password_breach_url=service.url))
    checker.check_policy(BREACHED)
    assert service.paths == []


def test_registration_refuses_a_breached_password_with_400(config, service):
    from tests.conftest import build_app, form_token

    config.update(AAA_PASSWORD_BREACH_CHECK=True, AAA_PASSWORD_BREACH_URL=service.url)
    app = build_app(config)
    with app.app_context():
        app.extensions["aaa"].db.create_all()
    client = app.test_client()
    token = form_token(client.get("/auth/register").get_data(as_text=True))
    response = client.post(
        "/auth/register",
        data={
            "username": "newbie",
            "email": "newbie@example.org",
            "password": BREACHED,
            "confirm": BREACHED,
            "csrf_token": token,
        },
    )
    assert response.status_code == 400
    assert "breaches" in response.get_data(as_text=True)
