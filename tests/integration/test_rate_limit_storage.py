"""Rate-limit counters: shared through Redis between workers, and never unlimited without it."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import REDIS_URL, build_app, flush_redis, form_token, requires_redis


def failed_login(client, ip: str = "203.0.113.7"):
    token = form_token(client.get("/auth/login").get_data(as_text=True))
    return client.post(
        "/auth/login",
        data={"login": "nobody", "password": "wrong-password-123", "csrf_token": token},
        environ_base={"REMOTE_ADDR": ip},
    )


@pytest.fixture
def make_app(config):
    def make(**overrides):
        app = build_app({**config, **overrides})
        with app.app_context():
            app.extensions["aaa"].db.create_all()
        return app

    return make


def test_V02_redis_down_falls_back_to_local_limits_and_logs(make_app, caplog):
    """A limiter pointed at a port where nothing listens keeps limiting (in memory)."""
    app = make_app(
        AAA_RATELIMIT_STORAGE_URI="redis://127.0.0.1:1/0", AAA_LOGIN_LIMIT_PER_IP="3 per minute"
    )
    client = app.test_client()
    with caplog.at_level(logging.WARNING):
        statuses = [failed_login(client).status_code for _ in range(5)]
    assert statuses[:3] == [401, 401, 401]
    assert statuses[3:] == [429, 429]
    assert any("storage" in r.getMessage().lower() for r in caplog.records)


@requires_redis
def test_redis_counters_are_shared_between_workers(make_app):
    """Two app instances (as two gunicorn workers would be) draw on one Redis counter."""
    flush_redis()
    settings = {"AAA_RATELIMIT_STORAGE_URI": REDIS_URL, "AAA_LOGIN_LIMIT_PER_IP": "4 per minute"}
    first, second = make_app(**settings).test_client(), make_app(**settings).test_client()
    assert [failed_login(first).status_code for _ in range(2)] == [401, 401]
    assert [failed_login(second).status_code for _ in range(2)] == [401, 401]
    blocked = failed_login(first)
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) > 0
    import redis

    keys = redis.Redis.from_url(REDIS_URL).scan_iter(match="*aaa*")
    assert next(iter(keys), None) is not None
