"""Sign-in pages and endpoints: login, logout, register, change password, CSRF token.

Each view parses its input, calls one service, commits, and renders or redirects. Every
endpoint answers JSON to JSON clients (send ``X-CSRFToken``; get one from ``/auth/csrf``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import (
    Blueprint,
    Response,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import logout_user
from flask_wtf.csrf import generate_csrf
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ..config import Settings
from ..errors import (
    AuthenticationFailed,
    InvalidInput,
    InvalidToken,
    RegistrationClosed,
)
from ..models import LoginSession, User
from ..services import accounts, audit, recovery, sessions
from . import impersonation, mail
from . import recovery as recovery_web
from .context import (
    current_actor,
    current_user,
    db_session,
    login_session,
    request_facts,
    signed_in_user,
    state,
)
from .decorators import login_required, public
from .forms import peek, read_fields, read_flag
from .security import safe_next, wants_json
from .signin import (
    begin_pending,
    delete_remember_cookie,
    establish,
    finish_login,
    home,
    remember_cookie_name,
)


class _Recently:
    """Remembers keys for ``window`` seconds (bounded: it forgets everything when full)."""

    def __init__(self, window: float, size: int = 10_000) -> None:
        self._window = window
        self._size = size
        self._seen: dict[str, float] = {}

    def seen(self, key: str) -> bool:
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last < self._window:
            return True
        if len(self._seen) >= self._size:
            self._seen.clear()
        self._seen[key] = now
        return False


_log = logging.getLogger("flask_aaa")
F = TypeVar("F", bound=Callable[..., Any])


def _form_error(template: str, exc: InvalidInput, status: int = 400, **context: Any) -> Response:
    if wants_json():
        body = jsonify({"error": exc.code, "message": exc.message, "fields": exc.errors})
        body.status_code = status
        return body
    return Response(render_template(template, errors=exc.errors, **context), status=status)


def login_limits(
    limiter: Limiter,
    settings: Settings,
    *,
    typed_login: Callable[[], str],
    account_id: Callable[[str], int | None] | None = None,
) -> Callable[[F], F]:
    """The two limits of a sign-in view: per client address, and per account (failed
    attempts only), whichever of its identifiers is typed (``account_id`` finds the
    account's id, by default Flask-AAA's lookup; unknown logins are limited by their
    normalized text). A breach is a security event, ``auth.login.throttled``, recorded once
    a minute per limit and key per process (a flood of refused requests must not become a
    flood of writes), with the account, when the login names one, as its target.

    Nothing here may raise: Flask-Limiter would take a database error for a failure of its
    own storage and move every limit to per-process memory. With the database down the
    login text is the key and the breach goes unrecorded (logged); the view answers 503."""
    recently_audited = _Recently(window=60.0)

    def find(typed: str) -> User | None:
        return accounts.find_by_login(db_session(), settings, typed)

    def find_id(typed: str) -> int | None:
        found = find(typed)
        return found.id if found is not None else None

    def account_key() -> str:
        typed = typed_login()
        try:
            found = (account_id or find_id)(typed)
        except SQLAlchemyError:
            db_session().rollback()
            found = None
        return f"user:{found}" if found is not None else "login:" + accounts.login_key(typed)

    def audit_throttled(limit: Any) -> None:
        if recently_audited.seen(str(getattr(limit, "key", limit.limit))):
            return
        db = db_session()
        try:
            target = find(typed_login())
        except SQLAlchemyError:
            db.rollback()
            _log.error("throttled sign-in not audited: the database is unavailable")
            return
        audit.record_apart(
            db,
            action="auth.login.throttled",
            actor=current_actor(),
            outcome="denied",
            facts=request_facts(),
            target=target,
            details={"limit": str(limit.limit)},
        )

    def decorate(view: F) -> F:
        limited = limiter.limit(
            lambda: settings.login_limit_per_account,
            methods=["POST"],
            key_func=account_key,
            deduct_when=lambda response: response.status_code == 401,
            on_breach=audit_throttled,
        )(view)
        return cast(
            F,
            limiter.limit(
                lambda: settings.login_limit_per_ip,
                methods=["POST"],
                key_func=get_remote_address,
                on_breach=audit_throttled,
            )(limited),
        )

    return decorate


def create_blueprint() -> Blueprint:
    st = state()
    settings = st.settings
    limiter = st.limiter
    bp = Blueprint("aaa_auth", __name__)

    def user_key() -> str:
        try:
            signed_in = current_user.is_authenticated
        except SQLAlchemyError:  # see login_limits: a key function must not raise
            db_session().rollback()
            signed_in = False
        return f"user:{current_user.id}" if signed_in else get_remote_address()

    @bp.get("/csrf")
    @public
    def csrf() -> Response:
        """A CSRF token for JSON clients, to send back in the X-CSRFToken header."""
        return jsonify({"csrf_token": generate_csrf()})

    @bp.route("/login", methods=["GET", "POST"])
    @public
    @login_limits(limiter, settings, typed_login=lambda: peek("login"))
    def login() -> Any:
        nxt = safe_next(request.values.get("next") if not request.is_json else None)
        if request.method == "GET":
            if current_user.is_authenticated:
                return redirect(nxt or home())
            return render_template("aaa/login.html", next=nxt, errors={})
        try:
            fields = read_fields(["login", "password", "next"], required=["login", "password"])
        except InvalidInput as exc:
            return _form_error("aaa/login.html", exc, next=nxt)
        nxt = safe_next(fields.get("next")) or nxt
        db = db_session()
        try:
            user, upgraded = accounts.verify_credentials(
                db,
                settings=settings,
                passwords=st.passwords,
                login=fields["login"],
                password=fields["password"],
                facts=request_facts(),
            )
        except InvalidInput as exc:
            # Malformed or over-long input is refused before any account is looked up,
            # so this answer says nothing about which accounts exist.
            db.rollback()
            return _form_error("aaa/login.html", exc, next=nxt)
        except AuthenticationFailed as exc:
            # One answer for unknown logins, wrong passwords, disabled, locked and
            # unconfirmed accounts.
            if wants_json():
                body = jsonify({"error": exc.code, "message": exc.message})
                body.status_code = 401
                return body
            return Response(
                render_template("aaa/login.html", next=nxt, errors={"login": exc.message}),
                status=401,
            )
        remember = read_flag("remember")
        if user.mfa_enabled:
            db.commit()  # keeps an upgraded hash and the cleared failure count
            begin_pending(user, remember=remember, nxt=nxt)
            verify_url = url_for("aaa_mfa.verify")
            if wants_json():
                return jsonify({"mfa_required": True, "verify_url": verify_url})
            return redirect(verify_url, 303)
        return finish_login(
            user, remember=remember, nxt=nxt, details={"hash_upgraded": True} if upgraded else {}
        )

    @bp.post("/logout")
    @login_required
    def logout() -> Any:
        user = signed_in_user()
        record = login_session()
        db = db_session()
        impersonation.end_for_logout()  # acting as someone: the administrator signs out too
        if record is not None:
            accounts.logout(db, user=user, session=record, facts=request_facts())
        remembered = request.cookies.get(remember_cookie_name())
        if remembered:
            sessions.forget_remember(db, remembered)
        db.commit()
        logout_user()
        session.clear()
        response = (
            jsonify({"ok": True}) if wants_json() else redirect(url_for("aaa_auth.login"), 303)
        )
        delete_remember_cookie(response)
        response.headers["Clear-Site-Data"] = '"cache", "storage"'
        return response

    def register_after_the_answer(db: Session, fields: dict[str, str]) -> Response:
        """With ``AAA_CONFIRM_EMAIL`` the answer is "check your email" whatever the address,
        so it is given first. The request checks the fields (a bad one is a 400, which says
        nothing about the address) and hashes the password, the same work for every
        address; what differs (the new account or the owner's notice, the event, the link)
        is written after the response. Its time cannot tell whether the address has an
        account (A01, A02)."""
        username, email, password = fields.get("username"), fields.get("email"), fields["password"]
        password_hash = accounts.prepare_quiet_registration(
            db,
            settings=settings,
            passwords=st.passwords,
            username=username,
            email=email,
            password=password,
        )
        db.rollback()  # it only read
        facts = request_facts()
        recovery_web.later(
            lambda later_db: (
                recovery.register(
                    later_db,
                    settings=settings,
                    passwords=st.passwords,
                    username=username,
                    email=email,
                    password=password,
                    facts=facts,
                    password_hash=password_hash,
                ).mail
            )
        )
        return recovery_web.accepted(recovery_web.CHECK_EMAIL)

    @bp.route("/register", methods=["GET", "POST"])
    @public
    @limiter.limit(
        lambda: settings.register_limit_per_ip, methods=["POST"], key_func=get_remote_address
    )
    @recovery_web.mail_limits(
        settings, per_ip=False, exempt_when=lambda: not settings.confirm_email
    )
    def register() -> Any:
        """Self-service registration. With ``AAA_CONFIRM_EMAIL`` the answer is "check your
        email" whether or not the address has an account (A01); with an invitation
        (``?invite=...``) the invited address is used; ``AAA_INVITE_ONLY`` requires one."""
        if not settings.enable_registration:
            raise RegistrationClosed()
        if request.method == "GET":
            return recovery_web.registration_page(settings)
        invitation = recovery_web.invitation_token()
        values: dict[str, str] = {}
        db = db_session()
        try:
            fields = read_fields(
                ["username", "email", "password", "confirm", "invite"], required=["password"]
            )
            values = {k: v for k, v in fields.items() if k in ("username", "email")}
            if mail.flows().invite:
                invitation = fields.get("invite") or invitation
            if "confirm" in fields and fields["confirm"] != fields["password"]:
                raise InvalidInput({"confirm": "The passwords do not match."})
            if recovery.answers_before_registering(settings, invitation):
                return register_after_the_answer(db, fields)
            result = recovery.register(
                db,
                settings=settings,
                passwords=st.passwords,
                username=fields.get("username"),
                email=fields.get("email"),
                password=fields["password"],
                facts=request_facts(),
                invitation=invitation,
            )
        except InvalidToken as exc:
            recovery_web.drop(recovery_web.INVITE_KEY)
            return recovery_web.token_error(exc, "aaa/register.html", values=values)
        except InvalidInput as exc:
            db.rollback()
            invited = recovery_web.invited_address(invitation)
            return _form_error("aaa/register.html", exc, values=values, invited=invited)
        db.commit()
        recovery_web.drop(recovery_web.INVITE_KEY)
        recovery_web.send(result.mail)
        if result.must_confirm:
            # The same answer whether the address was new or already had an account.
            return recovery_web.accepted(recovery_web.CHECK_EMAIL)
        user = accounts.assert_user(result.user)  # only a hidden address has none
        if wants_json():
            response = jsonify(
                {"user": {"id": user.id, "username": user.username, "email": user.email}}
            )
            response.status_code = 201
            return response
        flash("Your account is ready. Please sign in.", "success")
        return redirect(url_for("aaa_auth.login"), 303)

    @bp.route("/password", methods=["GET", "POST"])
    @login_required
    @limiter.limit(lambda: settings.change_password_limit, methods=["POST"], key_func=user_key)
    def change_password() -> Any:
        if request.method == "GET":
            return render_template("aaa/change_password.html", errors={})
        user = signed_in_user()
        record: LoginSession | None = login_session()
        db = db_session()
        try:
            fields = read_fields(
                ["current_password", "new_password", "confirm"],
                required=["current_password", "new_password"],
            )
            if "confirm" in fields and fields["confirm"] != fields["new_password"]:
                raise InvalidInput({"confirm": "The passwords do not match."})
            ended = accounts.change_password(
                db,
                settings=settings,
                passwords=st.passwords,
                user=user,
                current=fields["current_password"],
                new=fields["new_password"],
                session=record,
                facts=request_facts(),
            )
        except InvalidInput as exc:
            db.rollback()
            return _form_error("aaa/change_password.html", exc)
        # A new session id after the change (the old one is ended, as are all others).
        if record is not None:
            sessions.revoke(db, record, reason="rotated")
        token, new_record = sessions.create(db, user, settings=settings, facts=request_facts())
        establish(user, token, new_record)
        db.commit()
        message = "Your password was changed."
        if ended:
            message += f" {ended} other session(s) were signed out."
        if wants_json():
            return jsonify({"ok": True, "other_sessions_ended": ended})
        flash(message, "success")
        return redirect(url_for("aaa_account.activity"), 303)

    return bp
