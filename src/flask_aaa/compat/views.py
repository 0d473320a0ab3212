"""The ``user.*`` endpoints at Flask-User's URLs, with its forms and templates.

Sign-in, sign-out, registration and the password change are served here through
Flask-AAA's services; the mail-based flows (forgotten password, confirmation) forward to
Flask-AAA's own pages. Thin views: parse, link, call a service, commit once, answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import (
    Flask,
    Response,
    abort,
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
from flask_login import logout_user

from ..db import writing
from ..errors import AuthenticationFailed, InvalidInput, InvalidToken, RegistrationClosed
from ..models import User
from ..services import accounts, audit, recovery, sessions
from ..services.actors import Actor
from ..web import recovery as recovery_web
from ..web.auth import login_limits
from ..web.context import (
    current_actor,
    db_session,
    login_session,
    request_facts,
    signed_in_user,
    state,
)
from ..web.context import current_user as aaa_current_user
from ..web.decorators import GUARD_ATTR
from ..web.security import safe_next, wants_json
from ..web.signin import (
    begin_pending,
    delete_remember_cookie,
    establish,
    finish_login,
    remember_cookie_name,
)
from . import signals
from .decorators import current_user, login_required, unauthorized_view
from .forms import ChangePasswordForm, LoginForm, LogoutForm, RegisterForm
from .sync import APP_DISABLED

if TYPE_CHECKING:
    from ..extension import AAAState
    from .manager import UserManager

#: Flask-User's message for every failed sign-in (it never said which part was wrong).
BAD_LOGIN = "Incorrect Username/Email and/or Password."

#: The permission Flask-AAA's invitations need.
INVITE = "aaa:users:invite"

#: Flask-AAA field names -> Flask-User field names.
_FIELDS = {"login": "username", "confirm": "retype_password"}


def _app() -> Flask:
    """The app object itself (signals are sent with it as sender)."""
    return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


def _endpoint_url(endpoint: str) -> str:
    return url_for(endpoint) if endpoint else "/"


def _next(um: UserManager, field: str, after: str) -> str:
    return safe_next(request.values.get(field)) or _endpoint_url(um.settings[after])


def _errors(form: Any, exc: InvalidInput, extra: dict[str, str] | None = None) -> None:
    for field, message in exc.errors.items():
        name = (extra or {}).get(field, _FIELDS.get(field, field))
        target = getattr(form, name, None)
        if target is not None and hasattr(target, "errors"):
            target.errors = [*list(target.errors or ()), message]
        else:
            flash(message, "error")


def _page(template: str, status: int = 200, **context: Any) -> Any:
    return Response(render_template(template, **context), status=status)


def _status_page(template: str, status: int, context: dict[str, Any]) -> Any:
    return Response(render_template(template, **context), status=status)


def _public(view: Any) -> Any:
    setattr(view, GUARD_ATTR, "public")
    return view


def _typed_login() -> str:
    """What the sign-in form names, whichever of its fields the app uses."""
    return (request.form.get("username") or request.form.get("email") or "")[:256]


def register(app: Flask, um: UserManager) -> None:
    """Add the ``user.*`` URL rules to ``app``."""
    s = um.settings
    st: AAAState = app.extensions["aaa"]
    limiter = st.limiter
    aaa_settings = st.settings

    def forward(endpoint: str, enabled: bool, **values: Any) -> Any:
        if not enabled or endpoint not in current_app.view_functions:
            abort(404)
        return redirect(url_for(endpoint, **values), 307 if request.method == "POST" else 303)

    def account_id(typed: str) -> int | None:
        """The app's and Flask-AAA's ids are one: the app's user counts even before it is
        linked, so the budget is not split when the link is made."""
        found = um.find_app_user(typed) or accounts.find_by_login(db_session(), aaa_settings, typed)
        return found.id if found is not None else None

    def user_key() -> str:
        return f"user:{aaa_current_user.id}"

    def linked_login(typed: str) -> str:
        """The Flask-AAA login of the app's user named ``typed``, linked (and synced)
        first when needed; ``typed`` itself when the app has no such user."""
        db = db_session()
        app_user = um.find_app_user(typed)
        if app_user is None:
            return typed
        if um.in_sync(app_user):
            linked = accounts.assert_user(db.get(User, app_user.id))
        else:
            db.rollback()
            with writing():
                linked = um.sync_user(app_user)
                db.commit()
        return linked.username or linked.email or typed

    def refuse_for_the_app(user_id: int) -> AuthenticationFailed:
        """Flask-AAA would let the account in (its last administrator stays enabled, say),
        but the app's own row says no: recorded as a failed sign-in, answered as one."""
        db = db_session()
        db.rollback()
        audit.record_apart(
            db,
            action="auth.login.failed",
            actor=Actor.anonymous(),
            outcome="failure",
            facts=request_facts(),
            target=db.get(User, user_id),
            details={"reason": APP_DISABLED},
        )
        return AuthenticationFailed(APP_DISABLED)

    def refused(form: LoginForm, template: str, context: dict[str, Any], exc: Any) -> Any:
        """The one answer to every failed sign-in (A01)."""
        if wants_json():
            body = jsonify({"error": exc.code, "message": exc.message})
            body.status_code = 401
            return body
        form.username.errors = [BAD_LOGIN]
        form.password.errors = [BAD_LOGIN]
        return _status_page(template, 401, context)

    @_public
    @login_limits(limiter, aaa_settings, typed_login=_typed_login, account_id=account_id)
    def login() -> Any:
        nxt = _next(um, "next", "USER_AFTER_LOGIN_ENDPOINT")
        signed_in = aaa_current_user.is_authenticated and request.method == "GET"
        if signed_in and s["USER_AUTO_LOGIN_AT_LOGIN"]:
            return redirect(nxt)
        form = LoginForm()
        template = s["USER_LOGIN_TEMPLATE"]
        context: dict[str, Any] = {
            "form": form,
            "login_form": form,
            "register_form": RegisterForm(),
        }
        if request.method != "POST":
            form.next.data = nxt
            return _status_page(template, 200, context)
        typed = (form.username.data if s["USER_ENABLE_USERNAME"] else form.email.data) or ""
        if not form.validate() or not typed or not form.password.data:
            field = form.username if s["USER_ENABLE_USERNAME"] else form.email
            if not typed:
                field.errors = [*list(field.errors or ()), "This field is required."]
            if not form.password.data:
                form.password.errors = [*list(form.password.errors or ()), "Password is required"]
            return _status_page(template, 400, context)
        db = db_session()
        try:
            user, upgraded = accounts.verify_credentials(
                db,
                settings=aaa_settings,
                passwords=state().passwords,
                login=linked_login(typed),
                password=form.password.data,
                facts=request_facts(),
            )
        except InvalidInput as exc:
            db.rollback()
            _errors(form, exc, {"login": "username", "password": "password"})
            return _status_page(template, 400, context)
        except AuthenticationFailed as exc:
            return refused(form, template, context, exc)
        if not um.may_sign_in(user.id):
            return refused(form, template, context, refuse_for_the_app(user.id))
        remember = bool(form.remember_me.data) and bool(s["USER_ENABLE_REMEMBER_ME"])
        if user.mfa_enabled:
            db.commit()  # keeps an upgraded hash and the cleared failure count
            begin_pending(user, remember=remember, nxt=nxt)
            verify_url = url_for("aaa_mfa.verify")
            if wants_json():
                return jsonify({"mfa_required": True, "verify_url": verify_url})
            return redirect(verify_url, 303)
        response = finish_login(
            user, remember=remember, nxt=nxt, details={"hash_upgraded": True} if upgraded else {}
        )
        app_user = um.load_app_user(user.id)
        signals.user_logged_in.send(_app(), user=app_user)
        if not wants_json():
            flash("You have signed in successfully.", "success")
        return response

    @_public
    def logout() -> Any:
        after = _next(um, "next", "USER_AFTER_LOGOUT_ENDPOINT")
        if not aaa_current_user.is_authenticated:
            return redirect(after)
        form = LogoutForm()
        if request.method != "POST":
            # Signing out changes state: it takes a POST with a CSRF token (a link or an
            # image cannot sign anyone out). The page offers the button.
            form.next.data = after
            return _page(s["USER_LOGOUT_TEMPLATE"], form=form)
        app_user = current_user._get_current_object()
        signals.user_logged_out.send(_app(), user=app_user)
        user = signed_in_user()
        db = db_session()
        record = login_session()
        if record is not None:
            accounts.logout(db, user=user, session=record, facts=request_facts())
        remembered = request.cookies.get(remember_cookie_name())
        if remembered:
            sessions.forget_remember(db, remembered)
        db.commit()
        logout_user()
        session.clear()
        if wants_json():
            response: Any = jsonify({"ok": True})
        else:
            flash("You have signed out successfully.", "success")
            response = redirect(after)
        delete_remember_cookie(response)
        response.headers["Clear-Site-Data"] = '"cache", "storage"'
        return response

    @_public
    @limiter.limit(
        lambda: aaa_settings.register_limit_per_ip, methods=["POST"], key_func=get_remote_address
    )
    @recovery_web.mail_limits(
        aaa_settings, per_ip=False, exempt_when=lambda: not aaa_settings.confirm_email
    )
    def register_view() -> Any:
        if not s["USER_ENABLE_REGISTER"]:
            abort(404)
        if not aaa_settings.enable_registration:
            raise RegistrationClosed()
        invitation = request.args.get("token") or request.args.get("invite")
        if invitation or aaa_settings.invite_only:
            # Invitations are accepted on Flask-AAA's registration page (Flask-User's links
            # carried ``?token=``); it creates the app's row too.
            values = {"invite": invitation} if invitation else {}
            return forward("aaa_auth.register", True, **values)
        form = RegisterForm()
        template = s["USER_REGISTER_TEMPLATE"]
        context: dict[str, Any] = {"form": form, "register_form": form, "login_form": LoginForm()}
        reg_next = _next(um, "reg_next", "USER_AFTER_REGISTER_ENDPOINT")
        if request.method != "POST":
            form.next.data = _next(um, "next", "USER_AFTER_LOGIN_ENDPOINT")
            form.reg_next.data = reg_next
            return _status_page(template, 200, context)
        if not form.validate():
            return _status_page(template, 400, context)
        db = db_session()
        try:
            if not form.password.data:
                raise InvalidInput({"password": "Password is required"})
            if (
                s["USER_REQUIRE_RETYPE_PASSWORD"]
                and form.retype_password.data != form.password.data
            ):
                raise InvalidInput({"confirm": "Password and Retype Password did not match"})
            with writing():
                # The new account gets an id free in both tables and its app row at the
                # flush (see manager.py).
                result = recovery.register(
                    db,
                    settings=aaa_settings,
                    passwords=state().passwords,
                    username=form.username.data if s["USER_ENABLE_USERNAME"] else None,
                    email=form.email.data if s["USER_ENABLE_EMAIL"] else None,
                    password=form.password.data,
                    facts=request_facts(),
                )
                db.commit()
        except InvalidToken:
            db.rollback()
            abort(400)
        except InvalidInput as exc:
            db.rollback()
            _errors(form, exc)
            return _status_page(template, 400, context)
        return registered(result, reg_next)

    def registered(result: recovery.Registered, reg_next: str) -> Any:
        """Mail, signal and answer once a registration is committed."""
        app_user = um.load_app_user(result.user.id) if result.user is not None else None
        recovery_web.send(result.mail)
        if app_user is not None:
            signals.user_registered.send(_app(), user=app_user, user_invitation=None)
        if result.must_confirm:
            message = (
                "A confirmation email has been sent with instructions to complete "
                "your registration."
            )
            if wants_json():
                return recovery_web.accepted(message)
            flash(message, "success")
            return redirect(
                reg_next if s["USER_AFTER_REGISTER_ENDPOINT"] else url_for("user.login")
            )
        user = accounts.assert_user(result.user)
        if s["USER_AUTO_LOGIN_AFTER_REGISTER"] and not aaa_settings.confirm_email:
            response = finish_login(user, remember=False, nxt=reg_next)
            flash("You have registered successfully.", "success")
            return response
        flash("You have registered successfully.", "success")
        return redirect(url_for("user.login", next=reg_next))

    @login_required
    @limiter.limit(lambda: aaa_settings.change_password_limit, methods=["POST"], key_func=user_key)
    def change_password() -> Any:
        if not s["USER_ENABLE_CHANGE_PASSWORD"]:
            abort(404)
        form = ChangePasswordForm()
        template = s["USER_CHANGE_PASSWORD_TEMPLATE"]
        if request.method != "POST":
            return _page(template, form=form)
        user = signed_in_user()
        record = login_session()
        db = db_session()
        try:
            if not form.validate():
                raise InvalidInput({})
            if (
                s["USER_REQUIRE_RETYPE_PASSWORD"]
                and form.retype_password.data != form.new_password.data
            ):
                raise InvalidInput({"confirm": "New Password and Retype Password did not match"})
            accounts.change_password(
                db,
                settings=aaa_settings,
                passwords=state().passwords,
                user=user,
                current=form.old_password.data or "",
                new=form.new_password.data or "",
                session=record,
                facts=request_facts(),
            )
        except InvalidInput as exc:
            db.rollback()
            _errors(form, exc, {"current_password": "old_password", "confirm": "retype_password"})
            return _page(template, 400, form=form)
        if record is not None:
            sessions.revoke(db, record, reason="rotated")
        token, new_record = sessions.create(db, user, settings=aaa_settings, facts=request_facts())
        establish(user, token, new_record)
        db.commit()
        signals.user_changed_password.send(_app(), user=um.load_app_user(user.id))
        flash("Your password has been changed successfully.", "success")
        return redirect(_next(um, "next", "USER_AFTER_CHANGE_PASSWORD_ENDPOINT"))

    @_public
    def forgot_password() -> Any:
        return forward("aaa_recovery.forgot", s["USER_ENABLE_FORGOT_PASSWORD"])

    @_public
    def reset_password(token: str) -> Any:
        return forward("aaa_recovery.reset_link", s["USER_ENABLE_FORGOT_PASSWORD"], token=token)

    @_public
    def confirm_email(token: str) -> Any:
        return forward("aaa_recovery.confirm_link", s.confirm_required, token=token)

    @_public
    def resend_email_confirmation() -> Any:
        return forward("aaa_recovery.resend_confirmation", s.confirm_required)

    @login_required
    def edit_user_profile() -> Any:
        return forward("aaa_account.activity", True)

    @_public
    def change_username() -> Any:
        # Usernames name people in the audit trail; administrators change them.
        abort(404)

    @login_required
    def invite_user() -> Any:
        if not s["USER_ENABLE_INVITE_USER"]:
            abort(404)
        # Flask-User let any signed-in user invite; here it takes the permission.
        if not current_actor().allows(INVITE):
            return unauthorized_view(INVITE)
        return forward("aaa_recovery.invite", True)

    both = ["GET", "POST"]
    rules: list[tuple[str, str, Any, list[str]]] = [
        ("USER_LOGIN_URL", "login", login, both),
        ("USER_LOGOUT_URL", "logout", logout, both),
        ("USER_REGISTER_URL", "register", register_view, both),
        ("USER_CHANGE_PASSWORD_URL", "change_password", change_password, both),
        ("USER_FORGOT_PASSWORD_URL", "forgot_password", forgot_password, both),
        ("USER_RESET_PASSWORD_URL", "reset_password", reset_password, both),
        ("USER_CONFIRM_EMAIL_URL", "confirm_email", confirm_email, ["GET"]),
        (
            "USER_RESEND_EMAIL_CONFIRMATION_URL",
            "resend_email_confirmation",
            resend_email_confirmation,
            both,
        ),
        ("USER_EDIT_USER_PROFILE_URL", "edit_user_profile", edit_user_profile, both),
        ("USER_CHANGE_USERNAME_URL", "change_username", change_username, both),
        ("USER_INVITE_USER_URL", "invite_user", invite_user, both),
    ]
    for setting, name, view, methods in rules:
        app.add_url_rule(s[setting], f"user.{name}", view, methods=methods)
