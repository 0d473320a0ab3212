"""A02: an unknown login and a known one with a wrong password cannot be told apart by time.

Slow (real argon2id cost, 200 requests). Requests alternate so that machine noise falls on
both sides alike; medians compare.
"""

from __future__ import annotations

import statistics
import time

import pytest

from tests.conftest import form_token

ROUNDS = 100


@pytest.fixture
def config(config):
    config.update(
        AAA_PASSWORD_HASH_PRESET="owasp",
        AAA_LOGIN_LIMIT_PER_IP="100000 per minute",
        AAA_LOGIN_LIMIT_PER_ACCOUNT="100000 per minute",
    )
    return config


@pytest.mark.slow
def test_A02_unknown_and_wrong_password_take_the_same_time(client, make_user):
    make_user("alice")
    token = form_token(client.get("/auth/login").get_data(as_text=True))
    samples: dict[str, list[float]] = {"unknown": [], "known": []}

    def attempt(login: str) -> float:
        start = time.perf_counter()
        response = client.post(
            "/auth/login",
            data={"login": login, "password": "not-the-password-1", "csrf_token": token},
        )
        elapsed = time.perf_counter() - start
        assert response.status_code == 401
        return elapsed

    for _ in range(5):  # warm caches and the connection pool on both paths
        attempt("alice")
        attempt("nobody")
    for i in range(ROUNDS):
        order = ("unknown", "known") if i % 2 else ("known", "unknown")
        for kind in order:
            samples[kind].append(attempt("nobody" if kind == "unknown" else "alice"))
    unknown, known = statistics.median(samples["unknown"]), statistics.median(samples["known"])
    print(f"A02 medians: unknown {unknown * 1000:.2f} ms, known {known * 1000:.2f} ms")
    assert abs(unknown - known) / max(unknown, known) < 0.10, (unknown, known)
