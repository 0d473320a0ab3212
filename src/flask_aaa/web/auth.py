"""Sign-in pages and endpoints: login, logout, register, change password, CSRF token.

Each view parses its input, calls one service, commits, and renders or redirects. Every
endpoint answers JSON to JSON clients (send ``X-CSRFToken``; get one from ``/auth/csrf``).
"""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    Response,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_limiter.util import get_remote_address
from flask_login import login_user, logout_user
from flask_wtf.csrf import generate_csrf

from ..errors import AuthenticationFailed, InvalidInput
from ..models import LoginSession, User
from ..services import accounts, sessions
from .context import current_user, db_session, login_session, request_facts, signed_in_user, state
from .decorators import login_required, public
from .forms import peek, read_fields
from .security import safe_next, wants_json


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "roles": sorted(user.grants.roles),
        "permissions": sorted(user.grants.permissions),
    }


def start_session(user: User) -> str:
    """Sign ``user`` in with a brand-new server session and a fresh cookie session (new
    CSRF token too): nothing an attacker planted before login survives it."""
    st = state()
    token, record = sessions.create(db_session(), user, settings=st.settings, facts=request_facts())
    session.clear()
    user._aaa_session_token = token
    login_user(user, remember=False, fresh=True)
    g._aaa_login_session = record
    return token


def _home() -> str:
    endpoint = state().settings.home_endpoint
    return url_for(endpoint) if endpoint else "/"


def _form_error(template: str, exc: InvalidInput, status: int = 400, **context: Any) -> Response:
    if wants_json():
        body = jsonify({"error": exc.code, "message": exc.message, "fields": exc.errors})
        body.status_code = status
        return body
    return Response(render_template(template, errors=exc.errors, **context), status=status)


def create_blueprint() -> Blueprint:
    st = state()
    settings = st.settings
    limiter = st.limiter
    bp = Blueprint("aaa_auth", __name__)

    def account_key() -> str:
        return "login:" + accounts.login_key(peek("login"))

    def user_key() -> str:
        return f"user:{current_user.id}" if current_user.is_authenticated else get_remote_address()

    @bp.get("/csrf")
    @public
    def csrf() -> Response:
        """A CSRF token for JSON clients, to send back in the X-CSRFToken header."""
        return jsonify({"csrf_token": generate_csrf()})

    @bp.route("/login", methods=["GET", "POST"])
    @public
    @limiter.limit(
        lambda: settings.login_limit_per_ip, methods=["POST"], key_func=get_remote_address
    )
    @limiter.limit(
        lambda: settings.login_limit_per_account,
        methods=["POST"],
        key_func=account_key,
        deduct_when=lambda response: response.status_code == 401,
    )
    def login() -> Any:
        nxt = safe_next(request.values.get("next") if not request.is_json else None)
        if request.method == "GET":
            if current_user.is_authenticated:
                return redirect(nxt or _home())
            return render_template("aaa/login.html", next=nxt, errors={})
        try:
            fields = read_fields(["login", "password", "next"], required=["login", "password"])
        except InvalidInput as exc:
            return _form_error("aaa/login.html", exc, next=nxt)
        nxt = safe_next(fields.get("next")) or nxt
        db = db_session()
        try:
            user = accounts.authenticate(
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
            # One answer for unknown logins, wrong passwords and disabled accounts.
            if wants_json():
                body = jsonify({"error": exc.code, "message": exc.message})
                body.status_code = 401
                return body
            return Response(
                render_template("aaa/login.html", next=nxt, errors={"login": exc.message}),
                status=401,
            )
        start_session(user)
        db.commit()
        if wants_json():
            return jsonify({"user": user_json(user)})
        return redirect(nxt or _home(), 303)

    @bp.post("/logout")
    @login_required
    def logout() -> Any:
        user = signed_in_user()
        record = login_session()
        db = db_session()
        if record is not None:
            accounts.logout(db, user=user, session=record, facts=request_facts())
        db.commit()
        logout_user()
        session.clear()
        response = (
            jsonify({"ok": True}) if wants_json() else redirect(url_for("aaa_auth.login"), 303)
        )
        response.headers["Clear-Site-Data"] = '"cache", "storage"'
        return response

    @bp.route("/register", methods=["GET", "POST"])
    @public
    @limiter.limit(
        lambda: settings.register_limit_per_ip, methods=["POST"], key_func=get_remote_address
    )
    def register() -> Any:
        if not settings.enable_registration:
            return _form_error(
                "aaa/register.html",
                InvalidInput({"registration": "Registration is closed."}),
                status=403,
            )
        if request.method == "GET":
            return render_template("aaa/register.html", errors={}, values={})
        values: dict[str, str] = {}
        try:
            fields = read_fields(
                ["username", "email", "password", "confirm"], required=["password"]
            )
            values = {k: v for k, v in fields.items() if k in ("username", "email")}
            if "confirm" in fields and fields["confirm"] != fields["password"]:
                raise InvalidInput({"confirm": "The passwords do not match."})
            user = accounts.register(
                db_session(),
                settings=settings,
                passwords=st.passwords,
                username=fields.get("username"),
                email=fields.get("email"),
                password=fields["password"],
                facts=request_facts(),
            )
        except InvalidInput as exc:
            db_session().rollback()
            return _form_error("aaa/register.html", exc, values=values)
        db_session().commit()
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
        if record is not None:
            sessions.revoke(db, record, reason="rotated")
        start_session(user)
        db.commit()
        message = "Your password was changed."
        if ended:
            message += f" {ended} other session(s) were signed out."
        if wants_json():
            return jsonify({"ok": True, "other_sessions_ended": ended})
        flash(message, "success")
        return redirect(url_for("aaa_account.activity"), 303)

    return bp
