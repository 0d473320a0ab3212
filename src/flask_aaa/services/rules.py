"""Object-level rules: on which objects a permission may be used, and which rows a user sees.

A permission says what a user may do in general (``notes:edit``); a :class:`Rule` says on which
objects (``owner``: the notes they own). A rule has a name, a predicate over one object and,
optionally, the same test as a SQL expression, so that a list can be filtered to exactly the
rows the predicate would let through (a list never shows what a detail view would refuse).

For a permission ``P`` checked with a rule:

- holding ``P:any`` lifts the rule: its holder may use ``P`` on every object. Wildcards count,
  so ``notes:*`` and ``*`` hold ``notes:edit:any``. Holding ``P:any`` alone is enough;
- holding ``P`` (and not ``P:any``) allows ``P`` on the objects for which the rule passes;
- holding neither allows nothing, and the rule is not evaluated.

A token request is checked with its scoped grants (``user.grants``): a token scoped to
``notes:edit`` does not carry ``notes:edit:any``, even if its owner holds ``notes:*``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, false, inspect
from sqlalchemy.orm import Session

from ..models import User
from . import rbac
from .actors import Actor, RequestFacts
from .audit import Target

#: Last segment of the permission that lifts every rule checked for the permission before it.
ANY = "any"

#: A rule's test of one object: may ``user`` act on ``obj``?
Check = Callable[[User, Any], bool]
#: The same test in SQL: a boolean expression over ``entity`` (the model being selected).
Where = Callable[[User, Any], ColumnElement[bool]]

_S = TypeVar("_S", bound=Select[Any])
_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_WORD_RE = re.compile(r"(?<!^)(?=[A-Z])")


class UnknownRule(LookupError):
    """A rule name that nobody registered: a programming error, found at start-up."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no rule named {name!r} is registered (known: {', '.join(known)})")
        self.name = name


def validate_rule_name(name: str) -> str:
    """Rule names are short lowercase words: ``owner``, ``same_tenant``, ``notes.public``."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"bad rule name {name!r}: use 1-64 of a-z, 0-9, '_', '.', '-', starting with a letter"
        )
    return name


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """A named object-level rule. Calling it runs its predicate: ``rule(user, obj)``."""

    name: str
    check: Check
    where: Where | None = None

    def __post_init__(self) -> None:
        validate_rule_name(self.name)

    def __call__(self, user: User, obj: object) -> bool:
        return bool(self.check(user, obj))

    def clause(self, user: User, entity: Any) -> ColumnElement[bool]:
        """The rule as a SQL condition on ``entity``; a rule without one cannot filter."""
        if self.where is None:
            raise _no_sql_form(self)
        return self.where(user, entity)


def _no_sql_form(rule: Rule) -> ValueError:
    return ValueError(
        f"rule {rule.name!r} has no SQL form: register it with where=... to filter queries with it"
    )


def owner(attribute: str = "owner_id", *, name: str = "owner") -> Rule:
    """The object's ``attribute`` is the user's id (``Model.<attribute> == user.id`` in SQL)."""

    def check(user: User, obj: object) -> bool:
        return user.id is not None and bool(getattr(obj, attribute) == user.id)

    def where(user: User, entity: Any) -> ColumnElement[bool]:
        if user.id is None:
            return false()
        return getattr(entity, attribute) == user.id  # type: ignore[no-any-return]

    return Rule(name, check, where)


def same_tenant(
    attribute: str = "tenant_id",
    user_attribute: str | Callable[[User], object] = "tenant_id",
    *,
    name: str = "same_tenant",
) -> Rule:
    """The object's ``attribute`` equals the user's tenant: the attribute ``user_attribute``
    of the user, or what it returns when it is a function (Flask-AAA's users have no tenant
    column: apps say where the tenant comes from). A user without a tenant shares none."""

    def tenant_of(user: User) -> object:
        if callable(user_attribute):
            return user_attribute(user)
        return getattr(user, user_attribute, None)

    def check(user: User, obj: object) -> bool:
        tenant = tenant_of(user)
        return tenant is not None and bool(getattr(obj, attribute) == tenant)

    def where(user: User, entity: Any) -> ColumnElement[bool]:
        tenant = tenant_of(user)
        if tenant is None:
            return false()
        return getattr(entity, attribute) == tenant  # type: ignore[no-any-return]

    return Rule(name, check, where)


class Rules:
    """The rules an app can name. ``owner`` (on ``owner_id``) is there from the start and may
    be replaced once; any other name may be registered only once."""

    def __init__(self) -> None:
        self._rules: dict[str, Rule] = {}
        self._defaults: set[str] = set()

    @classmethod
    def with_defaults(cls) -> Rules:
        rules = cls()
        rules.add(owner())
        rules._defaults.add("owner")
        return rules

    def add(self, rule: Rule) -> Rule:
        if rule.name in self._rules and rule.name not in self._defaults:
            raise ValueError(f"a rule named {rule.name!r} is registered already")
        self._defaults.discard(rule.name)
        self._rules[rule.name] = rule
        return rule

    def register(self, name: str, check: Check, *, where: Where | None = None) -> Rule:
        """Register a predicate (and its SQL form, for filtering lists) under ``name``."""
        return self.add(Rule(name, check, where))

    def get(self, name: str) -> Rule:
        try:
            return self._rules[name]
        except KeyError:
            raise UnknownRule(name, sorted(self._rules)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._rules

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules.values())


# -- decisions --


def override_of(permission: str) -> str:
    """The permission that lifts rules for ``permission``: ``notes:edit`` → ``notes:edit:any``."""
    return f"{permission}:{ANY}"


def check_permission_for_rules(permission: str) -> str:
    """A permission checked with a rule must be a plain name (no wildcard): its override is
    formed by appending ``:any``."""
    name = rbac.validate_permission_name(permission)
    if name.endswith("*"):
        raise ValueError(f"a rule needs a plain permission, not the wildcard {name!r}")
    return name


def may_hold(user: User | None, permission: str, *, with_rule: bool) -> bool:
    """Can ``user`` use ``permission`` on some object? With a rule, ``P:any`` is enough."""
    if user is None:
        return False
    grants = user.grants
    return grants.allows(permission) or (with_rule and grants.allows(override_of(permission)))


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one permission on one object, and why (for audit and explain)."""

    allowed: bool
    permission: str
    target: Target
    #: The rule that was checked (None when the check had no rule).
    rule: str | None
    #: What decided: ``override`` (``P:any`` held), ``rule`` (the rule passed or failed),
    #: ``permission`` (no rule, ``P`` held), ``missing`` (neither ``P`` nor ``P:any``) or
    #: ``system`` (the CLI and app code hold every right).
    by: str
    #: One line for people: what was held, which rule passed or failed.
    reason: str

    @property
    def requirement(self) -> str:
        """What was needed, as the audit trail names it: ``notes:edit on note 7 (rule owner)``
        when the rule refused, without the rule part when the permission itself was missing."""
        text = f"{self.permission} on {_describe_target(self.target)}"
        return f"{text} (rule {self.rule})" if self.by == "rule" and self.rule else text


def decide(user: User | None, permission: str, obj: object, rule: Rule | None = None) -> Decision:
    """May ``user`` (None: anonymous) use ``permission`` on ``obj``, under ``rule``?"""
    target = target_of(obj)
    what = _describe_target(target)

    def answer(allowed: bool, by: str, reason: str) -> Decision:
        name = rule.name if rule is not None else None
        return Decision(allowed, permission, target, name, by, reason)

    if user is None:
        return answer(False, "missing", "anonymous: holds nothing")
    grants = user.grants
    if rule is None:
        if grants.allows(permission):
            return answer(True, "permission", f"holds {permission}")
        return answer(False, "missing", f"does not hold {permission}")
    override = override_of(permission)
    if grants.allows(override):
        return answer(True, "override", f"holds {override}, which lifts rule {rule.name}")
    if not grants.allows(permission):
        return answer(False, "missing", f"holds neither {permission} nor {override}")
    if rule(user, obj):
        return answer(True, "rule", f"holds {permission}; rule {rule.name} passes for {what}")
    return answer(False, "rule", f"holds {permission}; rule {rule.name} fails for {what}")


def require(
    db: Session,
    actor: Actor,
    permission: str,
    obj: object,
    rule: Rule | None = None,
    *,
    facts: RequestFacts | None = None,
) -> Decision:
    """Raise :class:`~flask_aaa.errors.PermissionDenied` unless ``actor`` may use
    ``permission`` on ``obj`` under ``rule``. A denial is audited (``authz.denied``, in its own
    transaction) with the object as target and a requirement that names the rule."""
    if actor.is_system:
        return Decision(
            True,
            permission,
            target_of(obj),
            rule.name if rule is not None else None,
            "system",
            "a system actor holds every right",
        )
    decision = decide(actor.user, permission, obj, rule)
    if not decision.allowed:
        rbac.deny(
            db,
            actor,
            decision.requirement,
            facts=facts,
            target=decision.target,
            message=f"You do not have {permission!r} on this {decision.target.type}.",
            reason=decision.reason,
        )
    return decision


def filter_allowed(
    stmt: _S,
    user: User | None,
    permission: str,
    rule: Rule | None = None,
    *,
    model: Any = None,
) -> _S:
    """Restrict ``stmt`` to the rows on which ``user`` may use ``permission``.

    No rows without the permission (anonymous included); every row with ``P:any`` (or with
    ``P`` when there is no rule); otherwise the rows the rule's SQL form lets through.
    ``model`` is the entity the rule tests, by default the first one ``stmt`` selects."""
    if rule is not None and rule.where is None:
        raise _no_sql_form(rule)  # whoever asks: a missing SQL form is a programming error
    if user is None or not may_hold(user, permission, with_rule=rule is not None):
        return stmt.where(false())
    if rule is None or user.grants.allows(override_of(permission)):
        return stmt
    entity = model if model is not None else _first_entity(stmt)
    return stmt.where(rule.clause(user, entity))


# -- describing objects for the trail --


def target_of(obj: object) -> Target:
    """An audit :class:`Target` for any object: mapped objects by class and primary key."""
    try:
        return Target.of(obj)
    except TypeError:
        pass
    kind = _WORD_RE.sub("_", type(obj).__name__).lower()
    state = inspect(obj, raiseerr=False)
    if state is not None:
        key = state.mapper.primary_key_from_instance(obj)
        ident = ",".join(str(part) for part in key) if all(p is not None for p in key) else None
    else:
        raw = getattr(obj, "id", None)
        ident = str(raw) if raw is not None else None
    return Target(kind, ident)


def _describe_target(target: Target) -> str:
    return f"{target.type} {target.id}" if target.id is not None else target.type


def _first_entity(stmt: Select[Any]) -> Any:
    for description in stmt.column_descriptions:
        entity = description.get("entity")
        if entity is not None:
            return entity
    raise ValueError("cannot tell which model the query selects: pass model=")
