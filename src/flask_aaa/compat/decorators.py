"""Flask-User's ``current_user`` and view decorators, answered by Flask-AAA.

Browsers get what Flask-User gave them: a flash message and a redirect to the sign-in page
(with ``next``) or to ``USER_UNAUTHORIZED_ENDPOINT``. JSON clients get 401 / 403 JSON
instead. Every refusal of a signed-in user is recorded as ``authz.denied``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import quote

from flask import current_app, flash, g, has_request_context, redirect, request, url_for
from werkzeug.local import LocalProxy

from ..errors import LoginRequired, PermissionDenied
from ..services import rbac
from ..web.context import current_actor, db_session, request_facts
from ..web.context import current_user as aaa_current_user
from ..web.decorators import GUARD_ATTR
from ..web.security import error_response, wants_json
from .models import ANONYMOUS

if TYPE_CHECKING:
    from .manager import UserManager

F = TypeVar("F", bound=Callable[..., Any])

#: ``g`` flag set by :func:`allow_unconfirmed_email` while its view runs.
ALLOW_UNCONFIRMED = "_flask_user_allow_unconfirmed_email"
#: ``g`` key of the app's user object for this request.
CURRENT = "_flask_user_current"


def manager() -> UserManager:
    """The ``UserManager`` of the current app."""
    try:
        return cast("UserManager", current_app.extensions["flask_user_compat"])
    except KeyError:
        raise RuntimeError("UserManager(app, db, User) has not been set up on this app") from None


def _current_app_user() -> Any:
    if not has_request_context():
        return ANONYMOUS
    if CURRENT in g:
        return g.get(CURRENT)
    user: Any = ANONYMOUS
    if aaa_current_user.is_authenticated:
        user = manager().load_app_user(aaa_current_user.id) or ANONYMOUS
    setattr(g, CURRENT, user)
    return user


#: The signed-in user as an instance of the app's own ``User`` class (anonymous visitors:
#: an object whose ``is_authenticated`` is False and whose role checks answer False).
current_user: Any = LocalProxy(_current_app_user)


def _confirmed(user: Any) -> bool:
    if not manager().settings.confirm_required or g.get(ALLOW_UNCONFIRMED, False):
        return True
    return getattr(user, "email_confirmed_at", None) is not None


def unauthenticated_view() -> Any:
    """Flask-User's answer to an anonymous visitor: back to the sign-in page with ``next``."""
    if wants_json():
        raise LoginRequired()
    flash(f"You must be signed in to access '{request.path}'.", "error")
    endpoint = manager().settings["USER_UNAUTHENTICATED_ENDPOINT"] or "user.login"
    target = request.full_path.rstrip("?") if request.method == "GET" else request.path
    return redirect(f"{url_for(endpoint)}?next={quote(target)}")


def unconfirmed_view() -> Any:
    """A signed-in user whose address is not confirmed (``USER_ALLOW_LOGIN_WITHOUT_
    CONFIRMED_EMAIL``). Flask-User sent them to the sign-in page, which sends a signed-in
    visitor straight back (``USER_AUTO_LOGIN_AT_LOGIN``): a loop. Here: the page that mails
    a new confirmation link when there is one, else the unauthorized endpoint; 403 JSON."""
    message = f"You must confirm your email address to access '{request.path}'."
    if wants_json():
        return error_response(403, "email_unconfirmed", message)
    flash(message, "error")
    if "aaa_recovery.resend_confirmation" in current_app.view_functions:
        return redirect(url_for("user.resend_email_confirmation"))
    endpoint = manager().settings["USER_UNAUTHORIZED_ENDPOINT"]
    return redirect(url_for(endpoint) if endpoint else "/")


def unauthorized_view(requirement: str) -> Any:
    """A signed-in user lacks a role: audited; a flash and a redirect (403 for JSON)."""
    try:
        rbac.deny(db_session(), current_actor(), requirement, facts=request_facts())
    except PermissionDenied:
        if wants_json():
            raise
    flash(f"You do not have permission to access '{request.path}'.", "error")
    endpoint = manager().settings["USER_UNAUTHORIZED_ENDPOINT"]
    return redirect(url_for(endpoint) if endpoint else "/")


def _guarded(check: Callable[[Any], Any], guard: str) -> Callable[[F], F]:
    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = current_user._get_current_object()
            if not user.is_authenticated:
                return unauthenticated_view()
            if not _confirmed(user):
                return unconfirmed_view()
            refusal = check(user)
            if refusal is not None:
                return refusal
            return view(*args, **kwargs)

        setattr(wrapper, GUARD_ATTR, guard)
        return cast("F", wrapper)

    return decorator


def login_required(view: F) -> F:
    """Signed in, with a confirmed address when confirmation is on."""
    return _guarded(lambda user: None, "login")(view)


def _describe(requirements: Iterable[str | Iterable[str]]) -> str:
    parts = []
    for req in requirements:
        if isinstance(req, str):
            parts.append(f"role {req}")
        else:
            parts.append("(" + " or ".join(f"role {r}" for r in req) + ")")
    return " and ".join(parts)


def roles_required(*requirements: str | Iterable[str]) -> Callable[[F], F]:
    """Every requirement must hold: a name is a role to have; a list or tuple of names
    needs one of them (``roles_required('a', ['b', 'c'])`` is a AND (b OR c))."""

    def check(user: Any) -> Any:
        if user.has_roles(*requirements):
            return None
        return unauthorized_view(_describe(requirements))

    return _guarded(check, "roles")


def roles_accepted(*role_names: str) -> Callable[[F], F]:
    """At least one of ``role_names``."""

    def check(user: Any) -> Any:
        if user.has_roles(role_names):
            return None
        return unauthorized_view(_describe([role_names]))

    return _guarded(check, "roles")


def allow_unconfirmed_email(view: F) -> F:
    """Let signed-in users without a confirmed address through this view (and through the
    requirement decorators under it)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setattr(g, ALLOW_UNCONFIRMED, True)
        try:
            return login_required(view)(*args, **kwargs)
        finally:
            setattr(g, ALLOW_UNCONFIRMED, False)

    setattr(wrapper, GUARD_ATTR, getattr(view, GUARD_ATTR, "login"))
    return cast("F", wrapper)
