"""Flask-AAA: authentication, authorization and accounting for Flask.

The names below are imported on first use: ``import flask_aaa.services.audit`` (the
services know nothing of Flask) does not load the web layer, so a process that only runs
services (a CLI worker, a job) starts in a fraction of the time.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import AAAError as AAAError
from .errors import AuthenticationFailed as AuthenticationFailed
from .errors import ConfigurationError as ConfigurationError
from .errors import ExpiredToken as ExpiredToken
from .errors import ImpersonationForbidden as ImpersonationForbidden
from .errors import InvalidInput as InvalidInput
from .errors import InvalidToken as InvalidToken
from .errors import InvitationRequired as InvitationRequired
from .errors import LoginRequired as LoginRequired
from .errors import PermissionDenied as PermissionDenied
from .errors import ReauthenticationRequired as ReauthenticationRequired
from .errors import TokenNotAccepted as TokenNotAccepted
from .errors import TokenRejected as TokenRejected

#: Each public name and the module that defines it.
_LAZY = {
    "AAA": ".extension",
    "ApiToken": ".models",
    "AuditEvent": ".models",
    "Base": ".models",
    "Permission": ".models",
    "Role": ".models",
    "User": ".models",
    "Actor": ".services.actors",
    "RequestFacts": ".services.actors",
    "Target": ".services.audit",
    "Decision": ".services.rules",
    "Rule": ".services.rules",
    "current_token": ".web.bearer",
    "current_user": ".web.context",
    "record_event": ".web.context",
    "audited": ".web.decorators",
    "auth_required": ".web.decorators",
    "fresh_login_required": ".web.decorators",
    "login_required": ".web.decorators",
    "not_while_impersonating": ".web.decorators",
    "permissions_accepted": ".web.decorators",
    "permissions_required": ".web.decorators",
    "public": ".web.decorators",
    "roles_accepted": ".web.decorators",
    "roles_required": ".web.decorators",
    "filter_allowed": ".web.rules",
    "require": ".web.rules",
}

__all__ = [
    "AAA",
    "AAAError",
    "Actor",
    "ApiToken",
    "AuditEvent",
    "AuthenticationFailed",
    "Base",
    "ConfigurationError",
    "Decision",
    "ExpiredToken",
    "ImpersonationForbidden",
    "InvalidInput",
    "InvalidToken",
    "InvitationRequired",
    "LoginRequired",
    "Permission",
    "PermissionDenied",
    "ReauthenticationRequired",
    "RequestFacts",
    "Role",
    "Rule",
    "Target",
    "TokenNotAccepted",
    "TokenRejected",
    "User",
    "audited",
    "auth_required",
    "current_token",
    "current_user",
    "filter_allowed",
    "fresh_login_required",
    "login_required",
    "not_while_impersonating",
    "permissions_accepted",
    "permissions_required",
    "public",
    "record_event",
    "require",
    "roles_accepted",
    "roles_required",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


if TYPE_CHECKING:
    from .extension import AAA as AAA
    from .models import ApiToken as ApiToken
    from .models import AuditEvent as AuditEvent
    from .models import Base as Base
    from .models import Permission as Permission
    from .models import Role as Role
    from .models import User as User
    from .services.actors import Actor as Actor
    from .services.actors import RequestFacts as RequestFacts
    from .services.audit import Target as Target
    from .services.rules import Decision as Decision
    from .services.rules import Rule as Rule
    from .web.bearer import current_token as current_token
    from .web.context import current_user as current_user
    from .web.context import record_event as record_event
    from .web.decorators import audited as audited
    from .web.decorators import auth_required as auth_required
    from .web.decorators import fresh_login_required as fresh_login_required
    from .web.decorators import login_required as login_required
    from .web.decorators import not_while_impersonating as not_while_impersonating
    from .web.decorators import permissions_accepted as permissions_accepted
    from .web.decorators import permissions_required as permissions_required
    from .web.decorators import public as public
    from .web.decorators import roles_accepted as roles_accepted
    from .web.decorators import roles_required as roles_required
    from .web.rules import filter_allowed as filter_allowed
    from .web.rules import require as require
