"""The user side of a Flask-User app: ``UserMixin`` for its model, the anonymous user, and
reading the app's rows into :class:`~flask_aaa.compat.sync.AppAccount`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import inspect

from ..services.rbac import permission_matches
from .sync import AppAccount


def _role_names(user: object) -> set[str]:
    roles = getattr(user, "roles", None) or []
    return {str(role.name) for role in roles}


class UserMixin:
    """Mix into the app's ``User`` model, as with Flask-User.

    ``has_role(a, b)`` is a OR b; ``has_roles(a, (b, c))`` is a AND (b OR c). Both read the
    app's own ``roles`` relationship. ``has_permission`` reads the permissions of those
    roles (an app without a permission table holds none there), wildcards honoured."""

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_active(self) -> bool:
        return bool(getattr(self, "active", True))

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return str(getattr(self, "id", ""))

    def has_role(self, *role_names: str) -> bool:
        """True if the user has at least one of ``role_names``."""
        held = _role_names(self)
        return any(name in held for name in role_names)

    def has_roles(self, *requirements: str | Iterable[str]) -> bool:
        """True if every requirement holds: a role name must be held; a list or tuple of
        names needs one of them."""
        held = _role_names(self)
        if not held:
            return False
        for requirement in requirements:
            if isinstance(requirement, list | tuple):
                if not any(name in held for name in requirement):
                    return False
            elif requirement not in held:
                return False
        return True

    def has_permission(self, *permissions: str) -> bool:
        """True if the user's roles hold every one of ``permissions``."""
        held = frozenset(
            str(p.name)
            for role in getattr(self, "roles", None) or []
            for p in getattr(role, "permissions", None) or []
        )
        return all(permission_matches(held, p) for p in permissions)


class AnonymousUser:
    """Anonymous visitors: signed out, no roles, no permissions."""

    is_authenticated = False
    is_active = False
    is_anonymous = True
    id = None
    username = None
    email = None
    roles: tuple[Any, ...] = ()

    def get_id(self) -> None:
        return None

    def has_role(self, *role_names: str) -> bool:
        return False

    def has_roles(self, *requirements: object) -> bool:
        return False

    def has_permission(self, *permissions: str) -> bool:
        return False


ANONYMOUS = AnonymousUser()


def role_class(user_class: type[Any]) -> type[Any] | None:
    """The class the app's ``User.roles`` relationship points at, if any."""
    relationships = inspect(user_class).relationships
    if "roles" not in relationships:
        return None
    return relationships["roles"].mapper.class_  # type: ignore[no-any-return]


def read_account(user: Any, *, roles: bool = True) -> AppAccount:
    """What the app's row (and its roles and their permissions, unless ``roles`` is False)
    says about ``user``."""
    held: dict[str, frozenset[str] | None] = {}
    for role in (getattr(user, "roles", None) or []) if roles else []:
        perms = getattr(role, "permissions", None)
        held[str(role.name)] = None if perms is None else frozenset(str(p.name) for p in perms)
    return AppAccount(
        id=int(user.id),
        username=getattr(user, "username", None),
        email=getattr(user, "email", None),
        password=getattr(user, "password", None) or None,
        active=bool(getattr(user, "active", True)),
        email_confirmed_at=getattr(user, "email_confirmed_at", None),
        roles=held,
    )
