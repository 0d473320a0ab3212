"""Request globals: the extension's state, the current user and the request facts.

This module (with the rest of ``web/``) is the only place that reads Flask's ``request``,
``g``, ``session`` and ``current_app``; services receive what they need as arguments.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from flask import current_app, g, has_request_context, request
from flask_login import current_user as _flask_login_current_user

from ..errors import LoginRequired
from ..models import LoginSession, User
from ..services import audit
from ..services.actors import Actor, RequestFacts
from ..services.rbac import Grants

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..extension import AAAState

#: The signed-in :class:`~flask_aaa.models.User`, or an anonymous user whose
#: ``is_authenticated`` is False and whose ``has_role``/``has_permission`` answer False.
current_user: Any = _flask_login_current_user

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def state() -> AAAState:
    """The Flask-AAA state of the current app."""
    try:
        return cast("AAAState", current_app.extensions["aaa"])
    except KeyError:
        raise RuntimeError(
            "Flask-AAA is not initialised on this app: call AAA(app) or aaa.init_app(app)"
        ) from None


def db_session() -> Session:
    return state().db.session()


def request_id() -> str:
    """The request's id: a sane incoming ``X-Request-ID``, else a new random one."""
    rid: str | None = g.get("_aaa_request_id")
    if rid is None:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _REQUEST_ID_RE.match(incoming) else secrets.token_hex(8)
        g._aaa_request_id = rid
    return rid


def login_session() -> LoginSession | None:
    """The server-side session record of the signed-in user in this request."""
    _ = current_user.is_authenticated  # make Flask-Login load the user (and the record)
    return cast("LoginSession | None", g.get("_aaa_login_session"))


def request_facts() -> RequestFacts:
    """Facts about the current request, for the audit trail."""
    if not has_request_context():
        return RequestFacts()
    record = g.get("_aaa_login_session")
    token = g.get("_aaa_token")
    if record is not None:
        session_hash = record.token_hash
    else:
        # An API token request names its token by id (its secret is not kept anywhere).
        session_hash = f"token:{token.id}" if token is not None else None
    impersonator = impersonator_of(record)
    return RequestFacts(
        ip=request.remote_addr,
        user_agent=request.headers.get("User-Agent", "")[:512] or None,
        request_id=request_id(),
        session_hash=session_hash,
        impersonator_id=impersonator[0] if impersonator else None,
        impersonator_name=impersonator[1] if impersonator else None,
    )


def impersonator_of(record: LoginSession | None) -> tuple[int, str] | None:
    """The administrator acting through ``record`` (an impersonation session): id and label,
    read once per request (an audit event may be built after a rollback)."""
    if record is None or record.impersonator_id is None:
        return None
    cached: tuple[int, int, str] | None = g.get("_aaa_impersonator")
    if cached is None or cached[0] != record.id:
        admin = record.impersonator
        label = admin.label if admin is not None else f"user-{record.impersonator_id}"
        cached = g._aaa_impersonator = (record.id, record.impersonator_id, label)
    return cached[1], cached[2]


def signed_in_user() -> User:
    """The signed-in user; raises :class:`LoginRequired` for anonymous requests."""
    if not current_user.is_authenticated:
        raise LoginRequired()
    return cast("User", current_user._get_current_object())


def current_actor() -> Actor:
    if current_user.is_authenticated:
        return Actor.of(cast("User", current_user._get_current_object()))
    return Actor.anonymous()


class AnonymousUser:
    """The null-object user of anonymous requests: signed out, no roles, no permissions."""

    is_authenticated = False
    is_active = False
    is_anonymous = True
    id = None
    label = "anonymous"

    @property
    def grants(self) -> Grants:
        return _NO_GRANTS

    def get_id(self) -> None:
        return None

    def has_role(self, *names: str) -> bool:
        return False

    def has_permission(self, *permissions: str) -> bool:
        return False


_NO_GRANTS = Grants((), ())


def record_event(
    action: str,
    *,
    target: object | None = None,
    outcome: str = "success",
    details: Mapping[str, Any] | None = None,
) -> None:
    """Record an app action by the current user in the request's transaction: it is
    written when the app commits ``db.session`` (together with the action's own changes)."""
    audit.record(
        db_session(),
        action=action,
        actor=current_actor(),
        outcome=outcome,
        target=target,
        details=details,
        facts=request_facts(),
    )
