"""``Authorization: Bearer`` authentication with personal access tokens.

A request that carries a bearer token is authenticated by the token alone: the session
cookie is not consulted, so such a request can never ride on a browser's login (which is
also why it needs no CSRF token). Views choose what they accept with
:func:`~flask_aaa.web.decorators.auth_required`; a token sent to a view that accepts only
sessions is refused with 401 ``token_not_accepted``, and a token sent to a ``@public`` view
is ignored (the request is anonymous).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import cast

from flask import current_app, g, request
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from ..errors import InvalidInput, Throttled, TokenNotAccepted, TokenRejected
from ..models import ApiToken
from ..services import tokens
from .context import AnonymousUser, db_session, request_facts, state

#: Attribute naming the authentication methods a view accepts (see ``auth_required``).
AUTH_METHODS_ATTR = "_aaa_auth_methods"
SESSION = "session"
TOKEN = "token"  # noqa: S105 (a method name, not a secret)
METHODS = frozenset({SESSION, TOKEN})
_SESSION_ONLY = frozenset({SESSION})

#: Longest Authorization header value looked at; longer ones are refused unread.
MAX_HEADER = 512


_log = logging.getLogger("flask_aaa")
#: Where bearer attempts are counted while the shared storage fails (per process).
_MEMORY = MovingWindowRateLimiter(MemoryStorage())


def via() -> str:
    """How the current request authenticated: ``token`` or ``session``."""
    return cast("str", g.get("_aaa_via", SESSION))


def current_token() -> ApiToken | None:
    """The personal access token of the current request, if it came with one."""
    return cast("ApiToken | None", g.get("_aaa_token"))


def bearer_value() -> str | None:
    """The bearer token of the request (None without an ``Authorization: Bearer`` header)."""
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip()


def authenticate_request() -> None:
    """Before every request: authenticate a bearer token, if one was sent."""
    value = bearer_value()
    if value is None:
        return
    g._aaa_via = TOKEN
    g._login_user = AnonymousUser()  # the session cookie never counts on a token request
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None:
        return  # 404 or 405 follows
    methods = getattr(view, AUTH_METHODS_ATTR, _SESSION_ONLY)
    if TOKEN not in methods:
        from .decorators import GUARD_ATTR

        if getattr(view, GUARD_ATTR, None) == "public":
            return
        raise TokenNotAccepted()
    st = state()
    settings = st.settings
    if not settings.api_tokens:
        raise TokenRejected("disabled")
    _count_attempt()
    if len(value) > MAX_HEADER:
        raise InvalidInput({"authorization": "The bearer token is far too long."})
    db = db_session()
    facts = request_facts()
    found = tokens.authenticate(db, value, settings=settings, facts=facts)
    user = found.user
    user._aaa_grants = tokens.ScopedGrants(
        st.grants.get(db, user.id, found.authz_version), found.token.scope_list
    )
    g._login_user = user
    g._aaa_token = found.token
    tokens.touch(db, found.token, settings=settings, facts=request_facts())


@functools.lru_cache(maxsize=16)
def _parsed(limit: str) -> RateLimitItem:
    """The setting's limit, parsed once per value (not on every bearer request)."""
    return parse(limit)


def _count_attempt() -> None:
    """Bearer requests per client IP (bad tokens included): a brute force meets a 429."""
    strategy = state().limiter.limiter
    item = _parsed(state().settings.token_limit_per_ip)
    client = request.remote_addr or "unknown"
    try:
        allowed = strategy.hit(item, "aaa-bearer", client)
    except Exception as exc:
        # The shared storage (Redis) failed in the middle of the call, past Flask-Limiter's
        # own fallback: count in this process instead, never let the request through
        # uncounted, and never answer 500 for it.
        _log.warning("rate limit storage failed (%s); counting in memory", type(exc).__name__)
        strategy = _MEMORY
        allowed = strategy.hit(item, "aaa-bearer", client)
    if not allowed:
        stats = strategy.get_window_stats(item, "aaa-bearer", client)
        raise Throttled(retry_after=max(1, int(stats.reset_time - time.time()) + 1))


def csrf_protect() -> None:
    """Flask-WTF's CSRF check for every request that is not authenticated by a token."""
    if via() == TOKEN:
        return
    state().csrf.protect(apply_exemptions=True)
