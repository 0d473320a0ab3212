"""View decorators: who may call a view, and which views record an audit event.

Anonymous callers get :class:`LoginRequired` (a login redirect for browsers, 401 JSON for
API clients); signed-in callers without the right get :class:`PermissionDenied` (403), and
the denial is audited. Each decorator marks the view, so deny-by-default mode knows it is
guarded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from flask import make_response
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..errors import (
    AAAError,
    LoginRequired,
    PermissionDenied,
    ReauthenticationRequired,
    ServiceUnavailable,
)
from ..services import audit, rbac, sessions
from ..services.rules import Rule
from . import bearer, rules
from .context import (
    current_actor,
    current_user,
    db_session,
    login_session,
    request_facts,
    signed_in_user,
    state,
)

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute set on a view by :func:`public` and by every requirement decorator.
GUARD_ATTR = "_aaa_guard"
#: Attribute set on a view that must never run while an administrator acts as another user
#: (impersonation): by :func:`fresh_login_required` and :func:`not_while_impersonating`.
SENSITIVE_ATTR = "_aaa_sensitive"


def _mark(view: Callable[..., Any], guard: str) -> None:
    setattr(view, GUARD_ATTR, guard)


def public(view: F) -> F:
    """Mark a view as open to everyone (needed when ``AAA_DENY_BY_DEFAULT`` is on)."""
    _mark(view, "public")
    return view


def _requirement(check: Callable[[], None], guard: str) -> Callable[[F], F]:
    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check()
            return view(*args, **kwargs)

        _mark(wrapper, guard)
        return cast("F", wrapper)

    return decorator


def _signed_in() -> None:
    signed_in_user()


def login_required(view: F) -> F:
    """Only signed-in, active users may call the view."""
    return _requirement(_signed_in, "login")(view)


def auth_required(*methods: str, scopes: Sequence[str] = ()) -> Callable[[F], F]:
    """The caller must be authenticated through one of ``methods``: ``"session"`` (a
    browser's login) or ``"token"`` (an ``Authorization: Bearer`` personal access token);
    both without arguments. Views without this decorator accept sessions only.

    A token request may do only what its scopes and its owner's current grants both allow
    (``@permissions_required`` checks that); ``scopes`` names further scopes a token must
    carry, such as the self-service ``account:read``. Session requests ignore ``scopes``."""
    chosen = frozenset(methods or bearer.METHODS)
    unknown = chosen - bearer.METHODS
    if unknown:
        raise ValueError(f"unknown authentication methods: {sorted(unknown)}")
    for scope in scopes:
        rbac.validate_permission_name(scope)

    def check() -> None:
        user = signed_in_user()
        how = bearer.via()
        if how not in chosen:
            raise LoginRequired()
        if how == bearer.TOKEN:
            missing = [s for s in scopes if not user.grants.allows(s)]
            if missing:
                rbac.deny(
                    db_session(), current_actor(), " and ".join(missing), facts=request_facts()
                )

    def decorator(view: F) -> F:
        wrapped = _requirement(check, "login")(view)
        setattr(wrapped, bearer.AUTH_METHODS_ATTR, chosen)
        return wrapped

    return decorator


def _fresh() -> None:
    signed_in_user()
    record = login_session()
    if record is None or not sessions.is_fresh(record, settings=state().settings):
        raise ReauthenticationRequired()


def fresh_login_required(view: F) -> F:
    """The user must have signed in or confirmed their password within
    ``AAA_REAUTH_WINDOW`` (browsers are sent to confirm it, then back). Such a view is
    sensitive: it is refused while an administrator acts as the user (impersonation)."""
    wrapped = _requirement(_fresh, "login")(view)
    setattr(wrapped, SENSITIVE_ATTR, True)
    return wrapped


def not_while_impersonating(view: F) -> F:
    """Refuse the view (403 ``impersonation_forbidden``, audited) while an administrator acts
    as the user. Views under ``fresh_login_required`` are refused already; use this for
    sensitive views that need no recent password. Put it right under the route decorator."""
    setattr(view, SENSITIVE_ATTR, True)
    return view


def _flatten(names: Sequence[str | Sequence[str]]) -> list[str]:
    out: list[str] = []
    for name in names:
        out.extend([name] if isinstance(name, str) else list(name))
    return out


def _roles(names: Sequence[str], mode: str) -> Callable[[], None]:
    def check() -> None:
        user = signed_in_user()
        held = user.grants.roles
        ok = all(n in held for n in names) if mode == "all" else any(n in held for n in names)
        if not ok:
            joined = (" and " if mode == "all" else " or ").join(f"role {n}" for n in names)
            rbac.deny(db_session(), current_actor(), joined, facts=request_facts())

    return check


def _permissions(names: Sequence[str], mode: str) -> Callable[[], None]:
    for name in names:
        rbac.validate_permission_name(name)

    def check() -> None:
        signed_in_user()
        rbac.check(db_session(), current_actor(), names, mode=mode, facts=request_facts())

    return check


def roles_required(*roles: str) -> Callable[[F], F]:
    """The user must have every one of ``roles``."""
    return _requirement(_roles(list(roles), "all"), "roles")


def roles_accepted(*roles: str | Sequence[str]) -> Callable[[F], F]:
    """The user must have at least one of ``roles``."""
    return _requirement(_roles(_flatten(roles), "any"), "roles")


def permissions_required(
    *permissions: str,
    on: Callable[..., object] | None = None,
    rule: str | Rule | None = None,
) -> Callable[[F], F]:
    """The user must hold every one of ``permissions`` (wildcards in grants honoured).

    With ``on`` (a loader given the view's keyword arguments, returning the object or None)
    and ``rule`` (a registered rule's name, or a :class:`Rule`), the permissions must also
    hold for that object: 403 without the permission (before loading), 404 for a missing
    object, 403 naming the rule when it refuses. The object is in ``g.aaa_object``."""
    if on is None:
        if rule is not None:
            raise ValueError("rule= needs on=, the loader of the object the rule is about")
        return _requirement(_permissions(list(permissions), "all"), "permissions")
    check = rules.object_check(permissions, on=on, rule=rule)

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check(kwargs)
            return view(*args, **kwargs)

        _mark(wrapper, "permissions")
        setattr(
            wrapper,
            rules.RULES_ATTR,
            (*getattr(view, rules.RULES_ATTR, ()), *rules.rule_names(rule)),
        )
        return cast("F", wrapper)

    return decorator


def permissions_accepted(*permissions: str) -> Callable[[F], F]:
    """The user must hold at least one of ``permissions``."""
    return _requirement(_permissions(list(permissions), "any"), "permissions")


def audited(action: str, *, target: Callable[..., object] | None = None) -> Callable[[F], F]:
    """Record ``action`` for every call of the view, in the same transaction as its changes.

    The event joins the request's database session before the view runs, so a
    ``db.session.commit()`` in the view commits it together with the view's own changes; if
    the view commits nothing, the decorator commits after a successful response. A view that
    raises or answers with a 4xx/5xx status is rolled back and recorded as a failure instead.
    ``target`` receives the view's keyword arguments and returns what was acted on.
    Stack it under a requirement decorator (``@permissions_required`` first)."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            db = db_session()
            tgt = target(**kwargs) if target is not None else None
            facts = request_facts()
            actor = current_actor()
            audit.record(db, action=action, actor=actor, target=tgt, facts=facts)

            def failed(details: dict[str, object]) -> None:
                # The view's changes (and the pending success event) are rolled back by
                # record_apart; the failure is recorded in a transaction of its own.
                audit.record_apart(
                    db,
                    action=action,
                    actor=actor,
                    outcome="failure",
                    target=tgt,
                    facts=facts,
                    details=details,
                )

            try:
                response = make_response(view(*args, **kwargs))
            except (PermissionDenied, ServiceUnavailable):
                db.rollback()  # a denial is audited where it is raised; a 503 cannot be
                raise
            except (OperationalError, InterfaceError, PoolTimeout):
                raise  # the database is unreachable: nothing can be recorded; the app's 503
            except AAAError as exc:
                failed({"error": exc.code})
                raise
            except Exception as exc:
                failed({"error": type(exc).__name__})
                raise
            if response.status_code >= 400:
                failed({"status": response.status_code})
            else:
                db.commit()
            return response

        guard = getattr(view, GUARD_ATTR, None)
        if guard is not None:
            _mark(wrapper, guard)
        return cast("F", wrapper)

    return decorator


__all__ = [
    "audited",
    "auth_required",
    "current_user",
    "fresh_login_required",
    "login_required",
    "not_while_impersonating",
    "permissions_accepted",
    "permissions_required",
    "public",
    "roles_accepted",
    "roles_required",
]
