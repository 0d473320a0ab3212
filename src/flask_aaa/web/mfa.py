"""Two-factor pages and endpoints: the second sign-in step, enrolment, recovery codes, and
turning it off; plus the request hook that sends users of ``AAA_MFA_REQUIRED_ROLES`` without
two-factor authentication to enrolment.

The password step (:mod:`.auth`) leaves a *pending* sign-in in the cookie session
(:func:`.signin.begin_pending`); :func:`verify` completes it with :func:`.signin.finish_login`.
Until then nothing protected is reachable: the pending state is not a session. Every
endpoint answers JSON to JSON clients (send ``X-CSRFToken``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import generate_csrf
from markupsafe import Markup

from ..db import utcnow
from ..errors import Conflict, InvalidInput, LoginRequired, ReauthenticationRequired, Throttled
from ..models import User
from ..services import mfa, otp, sessions
from . import mail
from .context import current_user, db_session, login_session, request_facts, signed_in_user, state
from .decorators import GUARD_ATTR, login_required
from .forms import read_fields
from .security import error_response, wants_json
from .signin import count_pending_failure, finish_login, pending, pending_user, rotate_current

F = TypeVar("F", bound=Callable[..., Any])

#: Cookie-session key of an enrolment awaiting its confirming code: the candidate secret
#: (shown to the user anyway) and when it was issued.
SETUP_KEY = "_aaa_mfa_setup"
#: Seconds a candidate secret stays valid. It is issued only to a fresh session, so
#: enabling two-factor authentication needs a recent password check (ASVS 6.4/7.5.1).
SETUP_TTL = 15 * 60

#: The second-step method name of a passkey (``auth.login.succeeded`` details ``mfa``).
PASSKEY = "passkey"

#: Endpoints a user who must enrol can still reach (static files are always allowed).
ENROLMENT_ENDPOINTS = frozenset(
    {"aaa_mfa.setup", "aaa_mfa.enable", "aaa_auth.logout", "aaa_auth.csrf", "aaa_account.reauth"}
)


def code_hasher() -> otp.RecoveryCodeHasher:
    """Recovery codes are keyed with the app's ``SECRET_KEY`` (and its fallbacks)."""
    return otp.RecoveryCodeHasher.from_secret_keys(
        current_app.secret_key, current_app.config.get("SECRET_KEY_FALLBACKS") or ()
    )


def pending_required(view: F) -> F:
    """Only a browser with a pending sign-in (password passed, second factor due) may call
    the view. Without one, browsers go to the login page and JSON clients get 401."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if pending_user() is None:
            if wants_json():
                raise LoginRequired()
            return redirect(url_for("aaa_auth.login"), 303)
        return view(*args, **kwargs)

    setattr(wrapper, GUARD_ATTR, "pending_2fa")
    return cast("F", wrapper)


def _json_error(exc: InvalidInput, status: int = 400) -> Response:
    body = jsonify({"error": exc.code, "message": exc.message, "fields": exc.errors})
    body.status_code = status
    return body


def _codes_page(codes: list[str], *, regenerated: bool) -> Any:
    if wants_json():
        return jsonify({"ok": True, "recovery_codes": codes})
    return render_template("aaa/mfa_recovery_codes.html", codes=codes, regenerated=regenerated)


def notify_disabled(user: User) -> None:
    """Tell the user by mail that two-factor authentication was turned off (M07); the mail
    leaves after the response. Accounts without an email address have the audit trail only."""
    if not user.email:
        return
    mail.send(
        "mfa_disabled",
        user.email,
        name=user.username or user.email,
        when=utcnow().strftime("%Y-%m-%d %H:%M"),
        ip=request_facts().ip,
    )


def create_blueprint() -> Blueprint:
    st = state()
    settings = st.settings
    limiter = st.limiter
    auth_prefix = settings.auth_url_prefix.rstrip("/")
    account_prefix = settings.account_url_prefix.rstrip("/")
    bp = Blueprint("aaa_mfa", __name__)

    def user_key() -> str:
        return f"user:{signed_in_user().id}"

    # -- the second step of a sign-in --

    @bp.route(f"{auth_prefix}/2fa", methods=["GET", "POST"], endpoint="verify")
    @pending_required
    @limiter.limit(
        lambda: settings.login_limit_per_ip, methods=["POST"], key_func=get_remote_address
    )
    def verify() -> Any:
        """A TOTP code or a recovery code completes the pending sign-in."""
        if request.method == "GET":
            if wants_json():
                methods = [otp.TOTP, otp.RECOVERY]
                if _passkey_offered():
                    methods.append(PASSKEY)
                return jsonify(
                    {"mfa_required": True, "methods": methods, "csrf_token": generate_csrf()}
                )
            return _verify_page({})
        try:
            fields = read_fields(["code"], required=["code"])
        except InvalidInput as exc:
            if wants_json():
                return _json_error(exc)
            return _verify_page(exc.errors, status=400)
        user = cast("User", pending_user())
        data = pending() or {}
        db = db_session()
        try:
            method = mfa.verify_second_factor(
                db,
                user,
                settings=settings,
                code=fields["code"],
                hasher=code_hasher(),
                facts=request_facts(),
            )
        except Throttled:
            count_pending_failure()
            raise
        if method is None:
            return _wrong_code()
        details: dict[str, object] = {"mfa": method}
        remaining = None
        if method == otp.RECOVERY:
            remaining = mfa.remaining_recovery_codes(db, user)
            details["remaining"] = remaining
        response = finish_login(
            user, remember=bool(data.get("remember")), nxt=data.get("next"), details=details
        )
        if remaining is not None and not wants_json():
            flash(
                f"You signed in with a recovery code; {remaining} of them are left. "
                "Make new ones on the two-factor page if you are running low.",
                "success" if remaining > 2 else "error",
            )
        return response

    def _wrong_code() -> Any:
        alive = count_pending_failure()
        if not alive:
            message = "Too many wrong codes. Please sign in again."
            if wants_json():
                return error_response(401, "login_required", message)
            flash(message, "error")
            return redirect(url_for("aaa_auth.login"), 303)
        data = pending() or {}
        left = max(settings.mfa_max_attempts - int(data.get("tries", 0)), 0)
        message = "That code is not valid."
        if wants_json():
            body = jsonify({"error": "invalid_code", "message": message, "attempts_left": left})
            body.status_code = 401
            return body
        return _verify_page({"code": message}, status=401)

    def _passkey_offered() -> bool:
        """Is a passkey a way to pass the pending second step (passkeys on, and the pending
        user has one)?"""
        user = pending_user()
        if not settings.passkeys or user is None:
            return False
        from ..services import passkeys  # needs the optional webauthn package

        return passkeys.has_passkeys(db_session(), user)

    def _verify_page(errors: dict[str, str], *, status: int = 200) -> Response:
        page = render_template("aaa/mfa_verify.html", errors=errors, passkey=_passkey_offered())
        return Response(page, status=status)

    # -- status and enrolment --

    @bp.get(f"{account_prefix}/2fa", endpoint="setup")
    @login_required
    def setup() -> Any:
        """With 2FA on: its status and management. Off: a new secret to enrol (QR code and
        text), issued only to a fresh session."""
        user = signed_in_user()
        if user.mfa_enabled:
            return _status_page(user)
        return _enrol_page(user, _candidate() or _new_candidate())

    @bp.post(f"{account_prefix}/2fa", endpoint="enable")
    @login_required
    @limiter.limit(lambda: settings.change_password_limit, key_func=user_key)
    def enable() -> Any:
        """A valid code from the user's app turns 2FA on; the recovery codes are shown once
        and the session gets a new id."""
        user = signed_in_user()
        if user.mfa_enabled:
            raise Conflict("Two-factor authentication is already on.")
        db = db_session()
        secret = _candidate()
        try:
            fields = read_fields(["code"], required=["code"])
            if secret is None:
                raise InvalidInput({"code": "The setup expired. Scan the new code and try again."})
            codes = mfa.enable(
                db,
                user,
                secret=secret,
                code=fields["code"],
                hasher=code_hasher(),
                facts=request_facts(),
            )
        except InvalidInput as exc:
            db.rollback()
            if wants_json():
                return _json_error(exc)
            return _enrol_page(user, secret or _new_candidate(), errors=exc.errors, status=400)
        db.commit()
        session.pop(SETUP_KEY, None)
        rotate_current(reason="mfa_enabled")
        return _codes_page(codes, regenerated=False)

    def _candidate() -> str | None:
        data = session.get(SETUP_KEY)
        if (
            not isinstance(data, dict)
            or not otp.is_secret(data.get("secret"))
            or int(time.time()) - int(data.get("at", 0)) > SETUP_TTL
        ):
            session.pop(SETUP_KEY, None)
            return None
        return cast("str", data["secret"])

    def _new_candidate() -> str:
        """A new candidate secret, for a session that signed in or confirmed its password
        within ``AAA_REAUTH_WINDOW`` only (else: confirm the password first)."""
        record = login_session()
        if record is None or not sessions.is_fresh(record, settings=settings):
            raise ReauthenticationRequired()
        secret = otp.new_secret()
        session[SETUP_KEY] = {"secret": secret, "at": int(time.time())}
        return secret

    def _enrol_page(
        user: User, secret: str, *, errors: dict[str, str] | None = None, status: int = 200
    ) -> Any:
        uri = otp.provisioning_uri(
            secret,
            account_name=user.email or user.label,
            issuer=settings.mfa_issuer or settings.app_name,
        )
        svg = otp.qr_svg(uri)
        if wants_json():
            return jsonify(
                {
                    "mfa_enabled": False,
                    "secret": secret,
                    "otpauth_uri": uri,
                    "qr_svg": svg,
                    "expires_in": SETUP_TTL,
                }
            )
        page = render_template(
            "aaa/mfa_setup.html",
            enabled=False,
            qr=Markup(svg),  # noqa: S704 (segno's own markup; the URI is escaped in it)
            secret=otp.format_secret(secret),
            uri=uri,
            errors=errors or {},
        )
        return Response(page, status=status)

    def _status_page(
        user: User, *, errors: dict[str, str] | None = None, form: str = "", status: int = 200
    ) -> Any:
        if user.mfa_enabled_at is None:
            # A form of the "2FA is on" page posted while it is off: nothing to show there.
            message = " ".join((errors or {}).values()) or "Two-factor authentication is off."
            return error_response(status if status >= 400 else 409, "mfa_not_enabled", message)
        remaining = mfa.remaining_recovery_codes(db_session(), user)
        if wants_json():
            return jsonify(
                {
                    "mfa_enabled": True,
                    "enabled_at": user.mfa_enabled_at.isoformat() if user.mfa_enabled_at else None,
                    "recovery_codes_left": remaining,
                }
            )
        page = render_template(
            "aaa/mfa_setup.html",
            enabled=True,
            enabled_at=user.mfa_enabled_at,
            remaining=remaining,
            errors=errors or {},
            form=form,
        )
        return Response(page, status=status)

    # -- managing it: new recovery codes, turning it off --

    @bp.post(f"{account_prefix}/2fa/recovery-codes", endpoint="recovery_codes")
    @login_required
    @limiter.limit(lambda: settings.change_password_limit, key_func=user_key)
    def recovery_codes() -> Any:
        """New recovery codes (the current password is required); the old ones stop working."""
        user = signed_in_user()
        db = db_session()
        try:
            fields = read_fields(["password"], required=["password"])
            codes = mfa.regenerate_recovery_codes(
                db,
                user,
                settings=settings,
                passwords=st.passwords,
                password=fields["password"],
                hasher=code_hasher(),
                facts=request_facts(),
            )
        except InvalidInput as exc:
            db.rollback()
            if wants_json():
                return _json_error(exc)
            return _status_page(user, errors=exc.errors, form="recovery", status=400)
        db.commit()
        return _codes_page(codes, regenerated=True)

    @bp.post(f"{account_prefix}/2fa/disable", endpoint="disable")
    @login_required
    @limiter.limit(lambda: settings.change_password_limit, key_func=user_key)
    def disable() -> Any:
        """Turn 2FA off (the current password is required); the user is notified."""
        user = signed_in_user()
        db = db_session()
        try:
            fields = read_fields(["password"], required=["password"])
            mfa.disable(
                db,
                user,
                settings=settings,
                passwords=st.passwords,
                password=fields["password"],
                facts=request_facts(),
            )
        except InvalidInput as exc:
            db.rollback()
            if wants_json():
                return _json_error(exc)
            return _status_page(user, errors=exc.errors, form="disable", status=400)
        db.commit()
        notify_disabled(user)
        if wants_json():
            return jsonify({"ok": True, "mfa_enabled": False})
        flash("Two-factor authentication is off.", "success")
        return redirect(url_for("aaa_mfa.setup"), 303)

    # -- "admins must use 2FA" --

    required_roles = frozenset(settings.mfa_required_roles)

    @bp.before_app_request
    def require_enrolment() -> Any:
        """A signed-in user holding a role of ``AAA_MFA_REQUIRED_ROLES`` without 2FA can
        reach only enrolment (and logout) until they enrol."""
        if not required_roles:
            return None
        endpoint = request.endpoint
        if (
            endpoint is None
            or endpoint in ENROLMENT_ENDPOINTS
            or endpoint == "static"
            or endpoint.endswith(".static")
            or not current_user.is_authenticated
        ):
            return None
        user = cast("User", current_user._get_current_object())
        if user.mfa_enabled or not required_roles & user.grants.roles:
            return None
        message = "Your role requires two-factor authentication. Set it up to continue."
        if wants_json():
            body = jsonify(
                {
                    "error": "mfa_enrolment_required",
                    "message": message,
                    "setup_url": url_for("aaa_mfa.setup"),
                }
            )
            body.status_code = 403
            return body
        flash(message, "error")
        return redirect(url_for("aaa_mfa.setup"), 303)

    return bp
