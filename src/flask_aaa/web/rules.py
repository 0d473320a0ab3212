"""Object-level rules in views: ``@permissions_required(..., on=..., rule=...)``,
:func:`require` and :func:`filter_allowed` for the current request.

The rules themselves live in :mod:`flask_aaa.services.rules`; this module finds them in the
app's registry (``aaa.rules``) and supplies the request's actor and facts for the audit trail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from flask import abort, g
from sqlalchemy import Select

from ..errors import LoginRequired
from ..models import User
from ..services import rbac
from ..services import rules as service
from ..services.actors import Actor
from ..services.rules import Decision, Rule
from .context import current_actor, current_user, db_session, request_facts, signed_in_user, state

_S = TypeVar("_S", bound=Select[Any])

#: Attribute listing the rule names a view uses (checked against the registry at start-up).
RULES_ATTR = "_aaa_rules"


def resolve(rule: str | Rule | None) -> Rule | None:
    """The rule itself: a :class:`Rule` as given, a name looked up in the app's registry."""
    if rule is None or isinstance(rule, Rule):
        return rule
    return state().rules.get(rule)


def _unwrap(user: Any) -> Any:
    """``current_user`` is a proxy: the services want the user object itself."""
    getter = getattr(user, "_get_current_object", None)
    return getter() if getter is not None else user


def _actor_for(user: Any) -> Actor:
    if not user.is_authenticated:
        raise LoginRequired()
    if current_user.is_authenticated and user.id == current_user.id:
        return current_actor()  # the request's own actor, as every other denial names it
    return Actor.of(cast("User", user))


def require(user: Any, permission: str, obj: object, *, rule: str | Rule | None = None) -> Decision:
    """In a view: raise :class:`~flask_aaa.errors.PermissionDenied` (audited, 403) unless
    ``user`` (usually ``current_user``) may use ``permission`` on ``obj`` under ``rule``;
    anonymous users get :class:`~flask_aaa.errors.LoginRequired`. Returns the decision."""
    rbac.validate_permission_name(permission)
    actor = _actor_for(_unwrap(user))
    return service.require(
        db_session(), actor, permission, obj, resolve(rule), facts=request_facts()
    )


def filter_allowed(
    stmt: _S,
    user: Any,
    permission: str,
    *,
    rule: str | Rule | None = None,
    model: Any = None,
) -> _S:
    """``stmt`` restricted to the rows on which ``user`` (usually ``current_user``) may use
    ``permission`` under ``rule``: what a detail view guarded the same way would show."""
    real = _unwrap(user)
    principal = cast("User", real) if real.is_authenticated else None
    return service.filter_allowed(stmt, principal, permission, resolve(rule), model=model)


def object_check(
    permissions: Sequence[str],
    *,
    on: Callable[..., object],
    rule: str | Rule | None,
) -> Callable[[Mapping[str, Any]], None]:
    """The check behind ``@permissions_required(*permissions, on=..., rule=...)``.

    In this order: the user must hold each permission (or, with a rule, its ``:any``
    override), else 403 before anything is loaded, so users without the right cannot probe
    which ids exist; then ``on(**view_kwargs)`` loads the object, and a missing one (None or
    its own 404) answers 404; then the rule decides, 403 naming the rule. The object is left
    in ``g.aaa_object`` for the view."""
    names = [
        service.check_permission_for_rules(p)
        if rule is not None
        else rbac.validate_permission_name(p)
        for p in permissions
    ]
    if not names:
        raise ValueError("name at least one permission")
    if isinstance(rule, str):
        service.validate_rule_name(rule)

    def check(kwargs: Mapping[str, Any]) -> None:
        user = signed_in_user()
        resolved = resolve(rule)
        db, actor, facts = db_session(), current_actor(), request_facts()
        if rule is None:
            rbac.check(db, actor, names, facts=facts)
        else:
            lacking = [p for p in names if not service.may_hold(user, p, with_rule=True)]
            if lacking:
                why = [f"holds neither {p} nor {service.override_of(p)}" for p in lacking]
                rbac.deny(db, actor, " and ".join(lacking), facts=facts, reason="; ".join(why))
        obj = on(**kwargs)
        if obj is None:
            abort(404)
        g.aaa_object = obj
        for permission in names:
            service.require(db, actor, permission, obj, resolved, facts=facts)

    return check


def rule_names(rule: str | Rule | None) -> tuple[str, ...]:
    """The registry names a view depends on (a :class:`Rule` passed as is needs none)."""
    return (rule,) if isinstance(rule, str) else ()
