"""Security plumbing of the web layer, in one place: write intent, body limits, headers,
safe redirects, and every error turned into an HTML page or a JSON body.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from ..db import reset_write_intent, set_write_intent
from ..errors import (
    AAAError,
    InvalidInput,
    LoginRequired,
    ReauthenticationRequired,
    ServiceUnavailable,
    Throttled,
    TokenNotAccepted,
    TokenRejected,
)
from .context import AnonymousUser, db_session, request_id, state

if TYPE_CHECKING:
    from ..config import Settings

_log = logging.getLogger("flask_aaa")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: The library's own blueprints are named ``aaa_*``.
OWN_PREFIX = "aaa_"


def own_request() -> bool:
    """Is this request for one of the library's own pages?"""
    blueprint = request.blueprint or ""
    return blueprint.startswith(OWN_PREFIX) and blueprint != "aaa_assets"


def wants_json() -> bool:
    """JSON for API clients: a bearer token, the JSON API, a view only tokens may call, a
    JSON body, or an Accept header that prefers JSON."""
    if request.is_json or g.get("_aaa_via") == "token" or request.blueprint == "aaa_api":
        return True
    if not accepts_sessions():
        return True
    # Unrouted paths (404, 405) below the API's prefix have no blueprint, but are the API's.
    prefix = state().settings.api_url_prefix
    if request.path == prefix or request.path.startswith(prefix + "/"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return (
        best == "application/json"
        and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]
    )


def accepts_tokens() -> bool:
    """Does the requested view accept bearer tokens?"""
    from .bearer import AUTH_METHODS_ATTR, TOKEN

    view = current_app.view_functions.get(request.endpoint or "")
    return TOKEN in getattr(view, AUTH_METHODS_ATTR, ())


def accepts_sessions() -> bool:
    """Does the requested view accept browser sessions (every view but token-only ones)?"""
    from .bearer import AUTH_METHODS_ATTR, SESSION

    view = current_app.view_functions.get(request.endpoint or "")
    return SESSION in getattr(view, AUTH_METHODS_ATTR, (SESSION,))


def safe_next(target: str | None) -> str | None:
    """Return ``target`` if it is a same-origin path, else None.

    Refused: absolute and scheme-relative URLs (``//evil``, ``/\\evil``), backslashes,
    control characters, and anything a browser could read as another host."""
    if not target or len(target) > 2048:
        return None
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target) or "\\" in target:
        return None
    if not target.startswith("/") or target.startswith("//"):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    errors: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """One error, as JSON for API clients or as the error page for browsers."""
    if wants_json():
        body: dict[str, Any] = {"error": code, "message": message}
        if errors:
            body["fields"] = errors
        response = jsonify(body)
    else:
        response = Response(
            render_template(
                "aaa/error.html", status=status, code=code, message=message, errors=errors or {}
            ),
            mimetype="text/html",
        )
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def install(app: Flask, settings: Settings) -> None:
    """Register the request hooks and error handlers on ``app``."""

    def begin_request() -> None:
        # Before anything touches the database: a write transaction takes SQLite's write
        # lock when it begins (see db.py).
        if request.method not in SAFE_METHODS:
            g._aaa_write_token = set_write_intent(True)
        request_id()
        if own_request():
            request.max_content_length = settings.max_body_size

    # Runs first, before hooks the app registered earlier.
    app.before_request_funcs.setdefault(None, []).insert(0, begin_request)

    @app.teardown_request
    def end_request(_exc: BaseException | None) -> None:
        token = g.pop("_aaa_write_token", None)
        if token is not None:
            reset_write_intent(token)

    @app.after_request
    def add_headers(response: Response) -> Response:
        response.headers.setdefault("X-Request-ID", request_id())
        # Responses depend on the session cookie: shared caches must not mix users.
        response.headers.add("Vary", "Cookie")
        if not settings.security_headers:
            return response
        h = response.headers
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Referrer-Policy", "same-origin")
        h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        h.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
        h.setdefault("Content-Security-Policy", settings.content_security_policy)
        if request.is_secure:
            h.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        if own_request():
            # Pages with personal data: never stored by the browser or a proxy.
            h["Cache-Control"] = "no-store"

        return response

    @app.errorhandler(AAAError)
    def on_aaa_error(exc: AAAError) -> Response:
        try:
            return _aaa_error_response(exc)
        except (OperationalError, InterfaceError, PoolTimeout) as db_exc:
            # The database went away while the answer was made (its page shows the user).
            return on_database_error(db_exc)

    def _aaa_error_response(exc: AAAError) -> Response:
        db_session().rollback()
        headers: dict[str, str] = {}
        if isinstance(exc, Throttled | ServiceUnavailable):
            headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, TokenRejected):
            headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        elif isinstance(exc, LoginRequired | TokenNotAccepted) and accepts_tokens():
            headers["WWW-Authenticate"] = "Bearer"
        if (
            isinstance(exc, LoginRequired | ReauthenticationRequired)
            and not wants_json()
            and accepts_sessions()
        ):
            from flask import redirect, url_for

            target = request.full_path if request.method in SAFE_METHODS else None
            nxt = safe_next(target.rstrip("?") if target else None)
            endpoint = "aaa_auth.login" if isinstance(exc, LoginRequired) else "aaa_account.reauth"
            return redirect(url_for(endpoint, next=nxt), 303)  # type: ignore[return-value]
        errors = exc.errors if isinstance(exc, InvalidInput) else None
        return error_response(exc.status, exc.code, exc.message, errors=errors, headers=headers)

    @app.errorhandler(CSRFError)
    def on_csrf_error(exc: CSRFError) -> Response:
        return error_response(
            400,
            "csrf_failed",
            "The form expired or was not sent by this site. Reload and try again.",
        )

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(PoolTimeout)
    def on_database_error(exc: SQLAlchemyError) -> Response:
        # The database is down, unreachable or locked: tell the client to come back. Never
        # show SQL or connection strings; log the kind of failure only. (Other database
        # errors are bugs, and get Flask's generic 500.)
        _log.error("database failure: %s", type(exc).__name__)
        # The error page must not touch the database again (its header shows the user, the
        # impersonation banner its session): forget every record loaded from it.
        g._login_user = AnonymousUser()
        for name in ("_aaa_login_session", "_aaa_token", "_aaa_impersonator"):
            g.pop(name, None)
        try:
            db_session().rollback()
        except SQLAlchemyError:
            _log.warning("rollback after a database failure failed too")
        return error_response(
            503,
            "service_unavailable",
            "The service is temporarily unavailable. Try again shortly.",
            headers={"Retry-After": "5"},
        )

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException) -> Response | HTTPException:
        status = exc.code or 500
        if status == 429:
            # Only a refused request learns when to retry. Remaining-budget headers on every
            # answer (Flask-Limiter's X-RateLimit-*) would tell an attacker which names share
            # an account, so they are off.
            limit = state().limiter.current_limit
            retry = max(1, int(limit.reset_at - time.time()) + 1) if limit is not None else 60
            return error_response(
                429,
                "throttled",
                "Too many attempts. Try again later.",
                headers={"Retry-After": str(retry)},
            )
        if not wants_json() and not own_request():
            return exc  # the app's own pages keep Flask's (or the app's) rendering
        code = {
            400: "bad_request",
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
        }.get(status, "http_error")
        response = error_response(status, code, exc.description or exc.name)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response
