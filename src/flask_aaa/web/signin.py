"""How a browser becomes signed in, shared by every sign-in path.

A sign-in is one or two steps. The password step (:mod:`.auth`) either completes it
(:func:`finish_login`) or, for accounts with two-factor authentication, leaves a short-lived
*pending* state in the cookie session (:func:`begin_pending`) that only the second step
(:mod:`.mfa`) can complete. No server session, and so nothing protected, exists before the
last step. Remember-me cookies (rotating, theft-detecting) restore a session here too.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from flask import Response, g, jsonify, redirect, request, session, url_for
from flask_login import login_user
from werkzeug.wrappers import Response as BaseResponse

from ..db import writing
from ..models import LoginSession, User
from ..services import accounts, audit, lockout, sessions
from ..services.actors import Actor
from .context import current_user, db_session, login_session, request_facts, state
from .security import safe_next, wants_json

#: Cookie-session key of a sign-in that passed its password step and awaits its second.
PENDING_KEY = "_aaa_pending"
#: Seconds a pending sign-in stays valid.
PENDING_TTL = 300
#: Cookie-session key of the browser's random id (see :func:`browser_id`).
BROWSER_KEY = "_aaa_browser"
#: Cookie-session key of an administrator's way back while acting as another user (see
#: ``web/impersonation.py``). A new sign-in clears it; a new session id keeps it.
IMPERSONATION_KEY = "_aaa_impersonation"


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "roles": sorted(user.grants.roles),
        "permissions": sorted(user.grants.permissions),
        "mfa_enabled": user.mfa_enabled,
    }


def remember_cookie_name() -> str:
    return "__Host-aaa_remember" if state().settings.secure_cookies else "aaa_remember"


def establish(user: User, token: str, record: LoginSession) -> None:
    """Bind a new server session to the browser with a fresh cookie session (and so a new
    CSRF token): nothing an attacker planted before it survives."""
    session.clear()
    user._aaa_session_token = token
    login_user(user, remember=False, fresh=True)
    g._aaa_login_session = record


def browser_id() -> str:
    """This browser's random id, kept in its signed cookie session. Ceremonies that leave the
    site and come back (third-party sign-in, passkeys) bind their challenge to it, so that a
    value from one browser is worthless in another. A new sign-in clears it."""
    value = session.get(BROWSER_KEY)
    if not isinstance(value, str) or len(value) != 43:
        value = secrets.token_urlsafe(32)
        session[BROWSER_KEY] = value
    return value


def home() -> str:
    endpoint = state().settings.home_endpoint
    return url_for(endpoint) if endpoint else "/"


# -- the pending second step --


def begin_pending(user: User, *, remember: bool, nxt: str | None) -> None:
    """The password was right and a second factor is due: remember that, briefly, in a
    fresh cookie session (a new CSRF token too). A session this browser already had ends
    now: the cookie that named it is about to be replaced."""
    previous = login_session() if current_user.is_authenticated else None
    if previous is not None:
        db = db_session()
        sessions.revoke(db, previous, reason="replaced")
        db.commit()
    session.clear()
    session[PENDING_KEY] = {
        "uid": user.id,
        "at": int(time.time()),
        "remember": bool(remember),
        "next": nxt,
        "tries": 0,
    }


def pending() -> dict[str, Any] | None:
    """The pending sign-in of this browser, if any and not expired."""
    data = session.get(PENDING_KEY)
    if not isinstance(data, dict) or int(time.time()) - int(data.get("at", 0)) > PENDING_TTL:
        session.pop(PENDING_KEY, None)
        return None
    return data


def pending_user() -> User | None:
    """The user of the pending sign-in, if it is still one who may sign in."""
    data = pending()
    if data is None:
        return None
    user = db_session().get(User, int(data["uid"]))
    if user is None or not user.active or lockout.is_locked(user):
        session.pop(PENDING_KEY, None)
        return None
    return user


def count_pending_failure() -> bool:
    """One more wrong second-factor code; False when the pending sign-in is used up (the
    user must start over with the password)."""
    data = pending()
    if data is None:
        return False
    data["tries"] = int(data.get("tries", 0)) + 1
    if data["tries"] >= state().settings.mfa_max_attempts:
        session.pop(PENDING_KEY, None)
        return False
    session[PENDING_KEY] = data
    return True


# -- completing a sign-in --


def finish_login(
    user: User,
    *,
    remember: bool,
    nxt: str | None,
    details: dict[str, object] | None = None,
) -> Response:
    """The last step passed: open the server session, set the cookies, commit, answer."""
    st = state()
    db = db_session()
    previous = login_session() if current_user.is_authenticated else None
    token, record = accounts.open_session(
        db, user, settings=st.settings, facts=request_facts(), replaces=previous, details=details
    )
    remember_value = (
        sessions.issue_remember(db, user, settings=st.settings)
        if remember and st.settings.remember_me
        else None
    )
    establish(user, token, record)
    db.commit()
    response: Response
    if wants_json():
        response = jsonify({"user": user_json(user)})
    else:
        response = redirect(safe_next(nxt) or home(), 303)  # type: ignore[assignment]
    if remember_value is not None:
        set_remember_cookie(response, remember_value)
    return response


def set_remember_cookie(response: BaseResponse, value: str) -> None:
    settings = state().settings
    response.set_cookie(
        remember_cookie_name(),
        value,
        max_age=settings.remember_days * 24 * 60 * 60,
        secure=settings.secure_cookies,
        httponly=True,
        samesite="Lax",
        path="/",
    )


def delete_remember_cookie(response: BaseResponse) -> None:
    settings = state().settings
    response.delete_cookie(
        remember_cookie_name(),
        secure=settings.secure_cookies,
        httponly=True,
        samesite="Lax",
        path="/",
    )


# -- request hooks: remember-me restore and privilege-change rotation --


def restore_from_remember() -> None:
    """Before a request: an anonymous browser with a remember-me cookie gets a new session
    (a rotated cookie too); a replayed cookie ends everything its user had."""
    name = remember_cookie_name()
    raw = request.cookies.get(name)
    if not raw or request.endpoint is None or request.endpoint.endswith("static"):
        return
    if current_user.is_authenticated or pending() is not None:
        return
    st = state()
    db = db_session()
    facts = request_facts()
    db.rollback()  # end the read transaction: this is a write, whatever the method
    with writing():
        result = sessions.redeem_remember(db, raw)
        user = result.user
        if result.theft and user is not None:
            ended = sessions.revoke_all(db, user, reason="remember_theft")
            audit.record(
                db,
                action="auth.remember.reused",
                actor=Actor.anonymous(),
                outcome="denied",
                target=user,
                facts=facts,
                details={"sessions_ended": ended},
            )
            db.commit()
            g._aaa_remember_cookie = None
            return
        if user is None or result.cookie is None or not _may_sign_in(user):
            db.commit()
            g._aaa_remember_cookie = None
            return
        token, record = accounts.open_session(
            db,
            user,
            settings=st.settings,
            facts=facts,
            details={"method": "remember_me"},
            password_checked=False,
        )
        record_grants(user, record)
        establish(user, token, record)
        db.commit()
    g._aaa_remember_cookie = result.cookie


def _may_sign_in(user: User) -> bool:
    settings = state().settings
    if not user.active or lockout.is_locked(user):
        return False
    return not (settings.confirm_email and user.email_confirmed_at is None)


def record_grants(user: User, record: LoginSession) -> None:
    st = state()
    user._aaa_grants = st.grants.get(db_session(), user.id, _version())
    g._aaa_login_session = record


def _version() -> int:
    from ..services import rbac

    return rbac.current_version(db_session())


def rotate_if_due() -> None:
    """Before a request: a session whose user's privileges changed gets a new id now.
    Static files are served without touching the session (no query on that path)."""
    if request.endpoint is None or request.endpoint.endswith("static"):
        return
    record = login_session()
    if record is None or not record.rotate_pending:
        return
    rotate_current(reason="privileges_changed")


def rotate_current(*, reason: str) -> None:
    """Give the signed-in browser a new session id (the old one ends) and commit."""
    record = login_session()
    if record is None:
        return
    st = state()
    db = db_session()
    user = current_user._get_current_object()
    facts = request_facts()
    db.rollback()
    with writing():
        fresh = db.get(LoginSession, record.id)
        if fresh is None or fresh.revoked_at is not None:
            return
        token, new_record = sessions.rotate(
            db, fresh, settings=st.settings, facts=facts, reason=reason
        )
        new_record.reauthenticated_at = fresh.reauthenticated_at
        db.commit()
    pending_csrf = session.get("csrf_token")
    way_back = session.get(IMPERSONATION_KEY)
    user = db.get(User, user.id)
    if user is None:
        return
    record_grants(user, new_record)
    establish(user, token, new_record)
    if pending_csrf is not None:
        # The page the user has open keeps a working form; the id is what had to change.
        session["csrf_token"] = pending_csrf
    if way_back is not None and new_record.impersonator_id is not None:
        # Still the same administrator acting as the same user: keep the way back.
        session[IMPERSONATION_KEY] = {**way_back, "sid": new_record.id}


def after_request(response: Response) -> Response:
    """Set or delete the remember-me cookie decided during the request."""
    if "_aaa_remember_cookie" not in g:
        return response
    value = g.pop("_aaa_remember_cookie")
    if value is None:
        delete_remember_cookie(response)
    else:
        set_remember_cookie(response, value)
    return response
