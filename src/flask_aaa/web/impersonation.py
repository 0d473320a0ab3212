"""Acting as another user in the browser: start, the way back, the banner, and the guard.

An administrator with ``aaa:users:impersonate`` and a fresh login starts from the user's admin
page; the browser then holds a new session of the user (a fresh cookie session, so a new
CSRF token too) and, in its signed cookie session, the administrator's own session token: the
way back. Returning gives the administrator's session a new id.

:func:`guard` runs before every browser request (bearer-token requests are never affected)
and is the one place where impersonation is limited:

- the impersonation lives only as long as the administrator's own session, their
  permission, and their holding everything the user holds; when it ends for any reason
  (time limit, idle, revoked, rights changed), the request is not performed: the browser
  returns to the administrator's session if it is still live, else it is signed out;
- sensitive views are refused (403 ``impersonation_forbidden``, audited): every view under
  ``fresh_login_required`` or ``not_while_impersonating``, the app's too; every state-changing
  request to the library's own endpoints (credentials, 2FA, passkeys, tokens, sessions,
  re-authentication, linked accounts, administration, another impersonation), HTML and JSON
  API alike; and the library's GET hops that would start a new sign-in. Only the way back
  and sign-out are allowed. New sensitive library views are covered without a list to update.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, NoReturn

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    request,
    session,
    url_for,
)
from flask_login import logout_user
from sqlalchemy import select

from ..db import writing
from ..errors import Conflict, ImpersonationForbidden, LoginRequired, NotFound
from ..models import LoginSession, User
from ..services import accounts, audit, impersonation, rbac, sessions
from . import bearer
from .context import (
    current_actor,
    current_user,
    db_session,
    impersonator_of,
    login_session,
    request_facts,
    signed_in_user,
    state,
)
from .decorators import SENSITIVE_ATTR, fresh_login_required, login_required, permissions_required
from .forms import read_fields
from .security import SAFE_METHODS, error_response, own_request, wants_json
from .signin import IMPERSONATION_KEY, establish, home, record_grants, user_json

#: Endpoints a browser acting as someone else may always call: the way back, and sign-out.
ALLOWED = frozenset({"aaa_impersonation.stop", "aaa_auth.logout"})
#: The library's only GET endpoints that change who the browser is signed in as (a
#: third-party sign-in and its return). Every other library GET is read-only.
SIGN_IN_HOPS = frozenset({"aaa_oidc.login", "aaa_oidc.callback"})

_MESSAGES = {
    impersonation.EXPIRED: "Your time acting as {user} is up.",
    impersonation.REVOKED: "The session in which you acted as {user} was ended.",
    impersonation.ADMIN_SESSION_ENDED: (
        "Your own session ended while you acted as {user}. Please sign in again."
    ),
    impersonation.RIGHTS_CHANGED: "You may no longer act as {user}.",
    impersonation.STOPPED: "You are back in your own account (you acted as {user}).",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Banner:
    """What the page banner shows while an administrator acts as another user."""

    user: str
    admin: str
    reason: str
    until: dt.datetime


def banner() -> Banner | None:
    """The impersonation under way in this browser, if any (for templates)."""
    if bearer.via() == bearer.TOKEN:
        return None
    record = login_session()
    who = impersonator_of(record)
    if record is None or who is None:
        return None
    return Banner(
        user=current_user.label,
        admin=who[1],
        reason=record.impersonation_reason or "",
        until=record.expires_at,
    )


def way_back() -> dict[str, Any] | None:
    """The administrator's way back kept in the signed cookie session, if well-formed."""
    data = session.get(IMPERSONATION_KEY)
    if not isinstance(data, dict):
        return None
    if not isinstance(data.get("back"), str) or not all(
        isinstance(data.get(k), int) for k in ("admin", "target", "sid")
    ):
        return None
    return data


# -- the guard --


def guard() -> Response | None:
    """Before every request (see the module's docstring)."""
    endpoint = request.endpoint
    if endpoint is None or endpoint.endswith("static") or bearer.via() == bearer.TOKEN:
        return None
    back = way_back()
    record = login_session()
    acting = record is not None and record.impersonator_id is not None
    if back is None:
        if record is not None and acting:
            # An impersonation session without its way back cannot come from the library's
            # own flows: end it and sign the browser out (fail closed).
            lost = {"sid": record.id, "admin": record.impersonator_id, "target": record.user_id}
            return _ended_response(*_end({**lost, "back": ""}, impersonation.REVOKED))
        return None
    if record is None:
        return _ended_response(*_end(back, None, restore=True))
    if not acting or record.impersonator_id != back["admin"] or record.user_id != back["target"]:
        return _ended_response(*_end(back, impersonation.REVOKED))
    if record.id != back["sid"]:
        session[IMPERSONATION_KEY] = {**back, "sid": record.id}
    st = state()
    db = db_session()
    own = impersonation.admin_session(
        db, back["back"], admin_id=back["admin"], settings=st.settings
    )
    if own is None:
        return _ended_response(*_end(back, impersonation.ADMIN_SESSION_ENDED))
    admin_grants = st.grants.get(db, own.user.id, own.authz_version)
    if not impersonation.may_continue(admin_grants, current_user.grants):
        return _ended_response(*_end(back, impersonation.RIGHTS_CHANGED, restore=True))
    # The administrator is active in this browser: their own session must not idle out.
    sessions.touch(db, own.session, settings=st.settings)
    if refused(endpoint):
        _refuse(endpoint)
    return None


def refused(endpoint: str) -> bool:
    """Is ``endpoint`` closed to a browser acting as another user?"""
    if endpoint in ALLOWED:
        return False
    view = current_app.view_functions.get(endpoint)
    if getattr(view, SENSITIVE_ATTR, False):
        return True
    if own_request():
        return request.method not in SAFE_METHODS or endpoint in SIGN_IN_HOPS
    return False


def _refuse(endpoint: str) -> NoReturn:
    audit.record_apart(
        db_session(),
        action="authz.denied",
        actor=current_actor(),
        outcome="denied",
        details={"requirement": "not while impersonating", "endpoint": endpoint},
        facts=request_facts(),
    )
    raise ImpersonationForbidden()


def _end(
    back: dict[str, Any], reason: str | None, *, restore: bool = False
) -> tuple[User | None, int, str, str]:
    """End the impersonation ``back`` names (``reason`` None: find out why it ended), then
    return to the administrator's own session (``restore``, if it is still live) or sign
    the browser out. Returns the administrator (None if signed out), the user's id and label,
    and the reason."""
    st = state()
    db = db_session()
    facts = request_facts()
    db.rollback()  # end the read transaction: this is a write, whatever the method
    with writing():
        record = db.scalar(
            select(LoginSession).where(LoginSession.id == back["sid"]).with_for_update()
        )
        if reason is None:
            reason = impersonation.ending(record)
        if record is not None and record.impersonator_id is not None:
            impersonation.stop(db, record=record, reason=reason, facts=facts)
        target = db.get(User, back["target"])
        label = target.label if target is not None else f"user-{back['target']}"
        resumed = (
            impersonation.resume(
                db, token=back["back"], admin_id=back["admin"], settings=st.settings, facts=facts
            )
            if restore
            else None
        )
        db.commit()
    session.pop(IMPERSONATION_KEY, None)
    if resumed is None:
        logout_user()
        session.clear()
        g.pop("_aaa_login_session", None)
        g.pop("_aaa_impersonator", None)
        return None, back["target"], label, reason
    token, own = resumed
    admin = own.user
    record_grants(admin, own)
    establish(admin, token, own)
    g.pop("_aaa_impersonator", None)
    return admin, back["target"], label, reason


def _ended_response(admin: User | None, target_id: int, label: str, reason: str) -> Response:
    """The answer to a request that arrived after its impersonation ended: it is not
    performed (it was meant to run as the user), whoever the browser is now."""
    message = _MESSAGES.get(reason, _MESSAGES[impersonation.REVOKED]).format(user=label)
    if wants_json():
        return error_response(401, "impersonation_ended", message)
    flash(message, "info")
    if admin is None:
        return redirect(url_for("aaa_auth.login"), 303)  # type: ignore[return-value]
    return _admin_page(target_id)


def _admin_page(user_id: int) -> Response:
    target = url_for("aaa_admin.user_detail", user_id=user_id)
    return redirect(target, 303)  # type: ignore[return-value]


def end_for_logout() -> None:
    """Signing out while acting as someone ends both sessions: the impersonation and the
    administrator's own (a sign-out must never leave a signed-in browser behind). Part of
    the logout transaction; the caller commits."""
    back = way_back()
    record = login_session()
    if back is None or record is None or record.impersonator_id is None:
        return
    db = db_session()
    facts = request_facts()
    impersonation.stop(db, record=record, reason=impersonation.LOGOUT, facts=facts)
    own = impersonation.admin_session(
        db, back["back"], admin_id=back["admin"], settings=state().settings
    )
    if own is not None:
        accounts.logout(
            db,
            user=own.user,
            session=own.session,
            facts=dataclasses.replace(
                facts,
                session_hash=own.session.token_hash,
                impersonator_id=None,
                impersonator_name=None,
            ),
        )


# -- the views --


def create_blueprint() -> Blueprint:
    bp = Blueprint("aaa_impersonation", __name__)
    settings = state().settings

    @bp.app_context_processor
    def _impersonation_globals() -> dict[str, Any]:
        return {"aaa_impersonation": banner}

    @bp.post(
        f"{settings.admin_url_prefix}/users/<int(max=2147483647):user_id>/impersonate",
        endpoint="start",
    )
    @permissions_required(rbac.IMPERSONATE)
    @fresh_login_required
    def start(user_id: int) -> Any:
        """Act as the user: the browser switches to a new session of theirs."""
        admin = signed_in_user()
        record = login_session()
        if record is None:
            raise LoginRequired()
        db = db_session()
        target = db.get(User, user_id)
        if target is None:
            raise NotFound("No such user.")
        fields = read_fields(["reason"], required=["reason"])
        back = admin.get_id()
        token, acting = impersonation.start(
            db,
            admin=admin,
            target=target,
            reason=fields["reason"],
            settings=state().settings,
            facts=request_facts(),
            admin_session=record,
        )
        db.commit()
        record_grants(target, acting)
        establish(target, token, acting)
        session[IMPERSONATION_KEY] = {
            "back": back,
            "admin": admin.id,
            "target": target.id,
            "sid": acting.id,
        }
        if wants_json():
            return jsonify(
                {"ok": True, "user": user_json(target), "until": acting.expires_at.isoformat()}
            )
        flash(f"You are now acting as {target.label}.", "info")
        return redirect(home(), 303)

    @bp.post(f"{settings.auth_url_prefix}/impersonation/stop", endpoint="stop")
    @login_required
    def stop() -> Any:
        """The way back: end the impersonation, return to the administrator's session."""
        back = way_back()
        record = login_session()
        if back is None or record is None or record.impersonator_id is None:
            raise Conflict("You are not acting as another user.")
        admin, target_id, label, reason = _end(back, impersonation.STOPPED, restore=True)
        message = _MESSAGES[reason].format(user=label)
        if admin is None:
            message = _MESSAGES[impersonation.ADMIN_SESSION_ENDED].format(user=label)
        if wants_json():
            return jsonify(
                {
                    "ok": True,
                    "user": user_json(admin) if admin is not None else None,
                    "signed_out": admin is None,
                }
            )
        flash(message, "info")
        if admin is None:
            return redirect(url_for("aaa_auth.login"), 303)
        return _admin_page(target_id)

    return bp
