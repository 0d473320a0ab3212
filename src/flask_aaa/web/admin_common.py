"""Helpers shared by the administration views (:mod:`.admin`, :mod:`.admin_roles`,
:mod:`.admin_trail`): look-ups that 404, the one commit per change, query arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import flash, jsonify, redirect, request, url_for

from ..errors import InvalidInput, NotFound
from ..models import User
from ..services import lockout
from .context import db_session
from .security import wants_json


def find_user_or_404(user_id: int) -> User:
    user = db_session().get(User, user_id)
    if user is None:
        raise NotFound("No such user.")
    return user


def done(message: str, endpoint: str, **values: Any) -> Any:
    """Commit the change and its audit event together, then answer: ``{"ok": true}`` for
    JSON clients, a flash message and a 303 to ``endpoint`` for browsers."""
    db_session().commit()
    if wants_json():
        return jsonify({"ok": True, "message": message})
    flash(message, "success")
    return redirect(url_for(endpoint, **values), 303)


def query_arg(name: str, *, limit: int = 128, args: Mapping[str, str] | None = None) -> str:
    """A query-string argument, stripped; too long, NUL or lone surrogates are a 400."""
    value = (args if args is not None else request.args).get(name, "").strip()
    if len(value) > limit:
        raise InvalidInput({name: "Too long."})
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput({name: "Must be valid text."}) from None
    if "\x00" in value:
        raise InvalidInput({name: "Must be valid text."})
    return value


def user_row(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "active": user.active,
        "roles": [r.name for r in user.roles],
        "last_login_at": user.last_login_at.isoformat() if user.last_login_at else None,
        "login_count": user.login_count,
        "locked_until": (
            user.locked_until.isoformat()
            if user.locked_until is not None and lockout.is_locked(user)
            else None
        ),
        "mfa_enabled": user.mfa_enabled,
        "kind": user.kind,
    }
