"""Flask-Limiter's per-request hook runs only when an app-wide limit exists.

Flask-AAA skips that hook when no default, application, blueprint or meta limit is set (it
resolves to nothing then, at a tenth of the cost of a protected request). These tests pin
the other half: every kind of app-wide limit an app sets on Flask-AAA's limiter still holds,
including one added after the app was built.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask

from flask_aaa import public

from ..conftest import DATABASE_URL, build_app, flush_redis, login, reset_database


def make(config: dict[str, Any], **extra: Any) -> Flask:
    flush_redis()
    if DATABASE_URL:
        reset_database(config["SQLALCHEMY_DATABASE_URI"])
    app = build_app({**config, **extra})
    with app.app_context():
        if not DATABASE_URL:
            app.extensions["aaa"].db.create_all()
    return app


def statuses(app: Flask, path: str, count: int) -> list[int]:
    client = app.test_client()
    return [client.get(path).status_code for _ in range(count)]


def test_no_app_wide_limit_means_the_hook_does_no_work(config, monkeypatch):
    app = make(config)
    manager = app.extensions["aaa"].limiter.limit_manager
    calls: list[Any] = []
    real = manager.resolve_limits

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(manager, "resolve_limits", spy)
    assert statuses(app, "/", 3) == [200, 200, 200]
    assert calls == []
    # The sign-in page's own limits are still resolved, by its decorator.
    login(app.test_client(), "nobody", "not-the-password")
    assert calls


def test_a_default_limit_from_the_config_still_holds(config):
    app = make(config, RATELIMIT_DEFAULT="2 per minute")
    assert statuses(app, "/", 3) == [200, 200, 429]


def test_an_application_limit_still_holds(config):
    app = make(config, RATELIMIT_APPLICATION="2 per minute")
    assert statuses(app, "/", 3) == [200, 200, 429]


def test_a_blueprint_limit_added_after_the_app_was_built_still_holds(config):
    app = make(config)
    limiter = app.extensions["aaa"].limiter
    pages = Blueprint("pages", __name__)

    @pages.get("/page")
    @public
    def page() -> str:
        return "page"

    limiter.limit("2 per minute")(pages)
    app.register_blueprint(pages)
    assert statuses(app, "/page", 3) == [200, 200, 429]
    assert statuses(app, "/", 3) == [200, 200, 200]  # other routes are not limited
