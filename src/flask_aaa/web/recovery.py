"""Mail-based account flows over HTTP: forgotten password, email confirmation, change of
email address and invitations (the blueprint ``aaa_recovery``, under ``AAA_AUTH_URL_PREFIX``).

A link from a mail carries its token in the path only until the browser arrives: the
``GET .../<token>`` endpoints move it into the (signed, HttpOnly) cookie session and redirect
to a page without it, so the token never stays in the address bar, the history or a
``Referer``; those pages also send ``Referrer-Policy: no-referrer``. A GET never uses a token
(mail scanners fetch links); a POST from the page does. JSON clients may instead send the
token in the body (``"token"``).

Requests that name an address answer the same, with the same status, whether it has an
account or not; mail leaves after the response (see :mod:`.mail`). "Forgot password" and
"resend confirmation" do all their work after the response (looking the address up, making
the link, recording the event), so their time cannot tell either. The mail-sending endpoints
are throttled with ``AAA_MAIL_LIMIT`` per target address, and per client IP (anonymous
requests) or per user (signed-in ones: email change, invitations).
"""

from __future__ import annotations

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
    session,
    url_for,
)
from flask import request as flask_request
from flask_limiter.util import get_remote_address
from sqlalchemy.orm import Session

from ..config import Settings
from ..db import writing
from ..errors import InvalidInput, InvalidToken, InvitationRequired
from ..models import User
from ..services import accounts, audit, recovery
from ..services.recovery import INVITE_USERS, Outgoing
from . import mail
from .context import (
    current_actor,
    current_user,
    db_session,
    request_facts,
    signed_in_user,
    state,
)
from .decorators import login_required, permissions_required, public
from .forms import peek, read_fields
from .security import wants_json
from .signin import home

F = TypeVar("F", bound=Callable[..., Any])

#: Cookie-session keys of the tokens a browser brought from a mail.
RESET_KEY = "_aaa_reset_token"
CONFIRM_KEY = "_aaa_confirm_token"
EMAIL_KEY = "_aaa_email_token"
INVITE_KEY = "_aaa_invite_token"

#: Longest token kept from a link (real ones have 43 characters).
TOKEN_MAX = 128

#: The one answer to a request that names an address, whether it has an account or not.
SENT_RESET = "If an account exists for that address, we sent a link to reset the password."
SENT_CONFIRM = (
    "If an account that still needs confirming exists for that address, we sent a new "
    "confirmation link."
)
CHECK_EMAIL = "Check your email: we sent a link to confirm your address before you sign in."

#: Which endpoint (and argument) a mail's token link points to.
_LINKS = {
    "confirm": ("aaa_recovery.confirm_link", "token"),
    "reset": ("aaa_recovery.reset_link", "token"),
    "email_change": ("aaa_recovery.email_link", "token"),
    "invite": ("aaa_auth.register", "invite"),
}


# -- tokens brought by links --


def stash(key: str, token: str) -> None:
    """Keep a link's token in the cookie session (a later POST uses it)."""
    if token and len(token) <= TOKEN_MAX:
        session[key] = token
    else:
        session.pop(key, None)


def stashed(key: str) -> str | None:
    value = session.get(key)
    return value if isinstance(value, str) and value else None


def drop(key: str) -> None:
    session.pop(key, None)


def no_referrer(response: Response) -> Response:
    """Pages reached through a token link tell the browser to send no ``Referer`` (A21)."""
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def moved(key: str, token: str, endpoint: str) -> Response:
    """Stash the token of a link and send the browser on to the page without it."""
    stash(key, token)
    target = url_for(endpoint)
    if wants_json():
        return no_referrer(jsonify({"ok": True, "next": target}))
    return no_referrer(redirect(target, 303))  # type: ignore[arg-type]


def token_from(fields: dict[str, str], key: str) -> str:
    """The token of a POST: from the body (JSON clients), else the one the link stashed."""
    raw = fields.get("token") or stashed(key)
    if not raw:
        raise InvalidToken("missing")
    return raw


# -- answers --


def form_error(template: str, exc: InvalidInput, status: int = 400, **context: Any) -> Response:
    if wants_json():
        body = jsonify({"error": exc.code, "message": exc.message, "fields": exc.errors})
        body.status_code = status
        return body
    return Response(render_template(template, errors=exc.errors, **context), status=status)


def token_error(exc: InvalidToken, template: str, **context: Any) -> Response:
    """A bad link: 400 with its code (``invalid_token`` or ``expired_token``)."""
    if wants_json():
        body = jsonify({"error": exc.code, "message": exc.message})
        body.status_code = exc.status
        return body
    page = render_template(template, errors={}, token_error=exc.message, **context)
    return no_referrer(Response(page, status=exc.status))


def accepted(message: str, endpoint: str = "aaa_auth.login", **extra: Any) -> Response:
    """The answer to a request that sends mail: 202 JSON, or a redirect with the message."""
    if wants_json():
        body = jsonify({"ok": True, "message": message, **extra})
        body.status_code = 202
        return body
    flash(message, "info")
    return redirect(url_for(endpoint), 303)  # type: ignore[return-value]


def done(message: str, endpoint: str | None = None, **extra: Any) -> Response:
    """The answer to a completed flow: 200 JSON, or a redirect with the message."""
    if wants_json():
        return jsonify({"ok": True, "message": message, **extra})
    flash(message, "success")
    target = url_for(endpoint) if endpoint else home()
    return redirect(target, 303)  # type: ignore[return-value]


# -- mail --


def _lifetime(seconds: int) -> str:
    if seconds % 86400 == 0:
        days = seconds // 86400
        return f"{days} day{'s' if days != 1 else ''}"
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours != 1 else ''}"
    minutes = max(1, seconds // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def send(out: Outgoing | None) -> None:
    """Queue the mail a service asked for, with its links built from ``AAA_BASE_URL``."""
    if out is None or not out.to:
        return
    settings = state().settings
    flows = mail.flows()
    context: dict[str, Any] = dict(out.context)
    context["name"] = (out.user.username or out.user.email) if out.user is not None else None
    context["login_link"] = mail.link("aaa_auth.login")
    context["forgot_link"] = mail.link("aaa_recovery.forgot") if flows.reset else None
    if out.token is not None:
        endpoint, argument = _LINKS[out.template]
        context["link"] = mail.link(endpoint, **{argument: out.token})
    ttl = {
        "confirm": settings.confirm_ttl,
        "email_change": settings.confirm_ttl,
        "reset": settings.reset_ttl,
        "invite": settings.invite_ttl,
    }.get(out.template)
    context["expires_in"] = _lifetime(ttl) if ttl else None
    mail.send(out.template, out.to, **context)


# -- throttling --


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


_recently_audited = _Recently(window=60.0)


def _audit_throttled(limit: Any) -> None:
    """A breached mail limit is recorded, once a minute per key and process."""
    if _recently_audited.seen(str(getattr(limit, "key", limit.limit))):
        return
    audit.record_apart(
        db_session(),
        action="auth.mail.throttled",
        actor=current_actor(),
        outcome="denied",
        facts=request_facts(),
        details={"limit": str(limit.limit), "endpoint": flask_request.endpoint or ""},
    )


def address_key(field: str = "email") -> Callable[[], str]:
    """Throttling key: the normalized address the request names (known or not)."""

    def key() -> str:
        return "mail:" + accounts.login_key(peek(field))

    return key


def mail_limits(
    settings: Settings,
    *,
    field: str = "email",
    per_ip: bool = True,
    exempt_when: Callable[[], bool] | None = None,
) -> Callable[[F], F]:
    """``AAA_MAIL_LIMIT`` per target address (shared by every endpoint that mails an address)
    and, with ``per_ip``, per client IP (shared by the mail endpoints). POSTs only."""
    limiter = state().limiter

    def decorate(view: F) -> F:
        limited = limiter.shared_limit(
            settings.mail_limit,
            scope="aaa_mail_address",
            key_func=address_key(field),
            methods=["POST"],
            exempt_when=exempt_when,
            on_breach=_audit_throttled,
        )(view)
        if per_ip:
            limited = limiter.shared_limit(
                settings.mail_limit,
                scope="aaa_mail_ip",
                key_func=get_remote_address,
                methods=["POST"],
                exempt_when=exempt_when,
                on_breach=_audit_throttled,
            )(limited)
        return cast("F", limited)

    return decorate


# -- invitations on the registration page (used by the register view of ``.auth``) --


def invitation_token() -> str | None:
    """The invitation this browser brought (``/register?invite=...``), if any."""
    return stashed(INVITE_KEY) if mail.flows().invite else None


def invited_address(invitation: str | None) -> str | None:
    """The address of a live invitation, else None (to show it on the form again)."""
    if invitation is None:
        return None
    try:
        return recovery.invitation(db_session(), raw=invitation).email
    except InvalidToken:
        return None


def registration_page(settings: Settings) -> Response:
    """GET /register: stash an invitation from the link, or show the form (with the invited
    address, when there is an invitation). ``AAA_INVITE_ONLY`` needs one."""
    if "invite" in flask_request.args and mail.flows().invite:
        return moved(INVITE_KEY, flask_request.args["invite"], "aaa_auth.register")
    invitation = invitation_token()
    invited = None
    if invitation is not None:
        try:
            invited = recovery.invitation(db_session(), raw=invitation).email
        except InvalidToken as exc:
            drop(INVITE_KEY)
            return token_error(exc, "aaa/register.html", values={}, invited=None)
    elif settings.invite_only:
        raise InvitationRequired()
    page = render_template("aaa/register.html", errors={}, values={}, invited=invited)
    return no_referrer(Response(page)) if invited else Response(page)


def later(work: Callable[[Session], Outgoing | None]) -> None:
    """Run ``work`` after the response, as a writer in a session of its own, commit, then
    send the mail it returns. For flows whose answer must not take longer when an account
    is involved: the answer is ready before the work begins (see :func:`mail.after_response`)."""

    def job() -> None:
        db = db_session()
        with writing():
            out = work(db)
            db.commit()
        send(out)

    mail.after_response(job)


def by_mail_later(service: Callable[..., Outgoing | None], email: str) -> None:
    """Check that ``email`` is an address (a field error now, which says nothing about
    accounts), then run ``service`` (:func:`recovery.request_reset`,
    :func:`recovery.request_confirmation`) for it after the response: the lookup, the link,
    the audit event, the commit, then the mail. So its time cannot tell whether the address
    has an account (A01, A02)."""
    accounts.normalize_email(email)
    settings, facts = state().settings, request_facts()
    later(lambda db: service(db, settings=settings, email=email, facts=facts))


# -- the blueprint --


def create_blueprint() -> Blueprint:
    st = state()
    settings = st.settings
    flows = mail.flows()
    bp = Blueprint("aaa_recovery", __name__)

    def user_key() -> str:
        return f"user:{current_user.id}" if current_user.is_authenticated else get_remote_address()

    if flows.reset:

        @bp.route("/forgot", methods=["GET", "POST"])
        @public
        @mail_limits(settings)
        def forgot() -> Any:
            """Ask for a reset link. Known or unknown address: one answer (A01)."""
            if flask_request.method == "GET":
                return render_template("aaa/forgot.html", errors={}, values={})
            values: dict[str, str] = {}
            try:
                values = read_fields(["email"], required=["email"])
                by_mail_later(recovery.request_reset, values["email"])
            except InvalidInput as exc:
                return form_error("aaa/forgot.html", exc, values=values)
            return accepted(SENT_RESET)

        @bp.get("/reset/<token>")
        @public
        def reset_link(token: str) -> Any:
            return moved(RESET_KEY, token, "aaa_recovery.reset")

        @bp.route("/reset", methods=["GET", "POST"])
        @public
        def reset() -> Any:
            """Choose a new password. Ends every session of the account; signs nobody in."""
            pending = stashed(RESET_KEY) is not None
            if flask_request.method == "GET":
                if wants_json():
                    return no_referrer(jsonify({"pending": pending}))
                page = render_template("aaa/reset.html", errors={}, pending=pending)
                return no_referrer(Response(page))
            db = db_session()
            try:
                fields = read_fields(["password", "confirm", "token"], required=["password"])
                if "confirm" in fields and fields["confirm"] != fields["password"]:
                    raise InvalidInput({"confirm": "The passwords do not match."})
                raw = token_from(fields, RESET_KEY)
                result = recovery.reset_password(
                    db,
                    settings=settings,
                    passwords=st.passwords,
                    raw=raw,
                    new=fields["password"],
                    facts=request_facts(),
                )
            except InvalidToken as exc:
                drop(RESET_KEY)
                return token_error(exc, "aaa/reset.html", pending=False)
            except InvalidInput as exc:
                db.rollback()  # the link stays usable
                return no_referrer(form_error("aaa/reset.html", exc, pending=pending))
            db.commit()
            drop(RESET_KEY)
            send(result.mail)
            ended = result.sessions_ended
            message = "Your password was reset."
            if ended:
                message += f" {ended} session(s) were signed out."
            message += " Please sign in with your new password."
            return no_referrer(
                done(message, "aaa_auth.login", sessions_ended=ended, signed_in=False)
            )

    if flows.confirm:

        @bp.get("/confirm/<token>")
        @public
        def confirm_link(token: str) -> Any:
            return moved(CONFIRM_KEY, token, "aaa_recovery.confirm")

        @bp.route("/confirm", methods=["GET", "POST"])
        @public
        def confirm() -> Any:
            """Confirm the address with the link's token (a POST: scanners only GET)."""
            pending = stashed(CONFIRM_KEY) is not None
            if flask_request.method == "GET":
                if wants_json():
                    return no_referrer(jsonify({"pending": pending}))
                page = render_template("aaa/confirm.html", errors={}, pending=pending)
                return no_referrer(Response(page))
            db = db_session()
            try:
                raw = token_from(read_fields(["token"]), CONFIRM_KEY)
                user = recovery.confirm_email(db, raw=raw, facts=request_facts())
            except InvalidToken as exc:
                drop(CONFIRM_KEY)
                return token_error(exc, "aaa/confirm.html", pending=False)
            db.commit()
            drop(CONFIRM_KEY)
            message = "Your email address is confirmed."
            if current_user.is_authenticated:
                return no_referrer(done(message, email=user.email))
            return no_referrer(
                done(message + " You can sign in now.", "aaa_auth.login", email=user.email)
            )

        @bp.route("/resend-confirmation", methods=["GET", "POST"])
        @public
        @mail_limits(settings)
        def resend_confirmation() -> Any:
            """A new confirmation link. Known or unknown address: one answer (A01)."""
            if flask_request.method == "GET":
                return render_template("aaa/resend_confirmation.html", errors={}, values={})
            values: dict[str, str] = {}
            try:
                values = read_fields(["email"], required=["email"])
                by_mail_later(recovery.request_confirmation, values["email"])
            except InvalidInput as exc:
                return form_error("aaa/resend_confirmation.html", exc, values=values)
            return accepted(SENT_CONFIRM)

    if flows.email_change:

        @bp.route("/email", methods=["GET", "POST"])
        @login_required
        @limiter_per_user(settings, user_key)
        @mail_limits(settings, per_ip=False)
        def change_email() -> Any:
            """Move the account to another address: the current password, then the link
            mailed to the new address. The old address is told once it is done."""
            user = signed_in_user()
            if flask_request.method == "GET":
                if wants_json():
                    return jsonify({"email": user.email})
                return render_template("aaa/change_email.html", errors={}, values={})
            values: dict[str, str] = {}
            db = db_session()
            facts = request_facts()
            try:
                fields = read_fields(["email", "password"], required=["email", "password"])
                values = {"email": fields["email"]}
                new = recovery.check_email_change(
                    db,
                    settings=settings,
                    passwords=st.passwords,
                    user=user,
                    password=fields["password"],
                    new_email=fields["email"],
                    facts=facts,
                )
            except InvalidInput as exc:
                db.rollback()
                return form_error("aaa/change_email.html", exc, values=values)
            db.rollback()  # the checks only read
            # Whether the new address has an account changes the work (a link, or a notice
            # to its owner), not the answer: that work runs after the response (A02).
            user_id = user.id
            later(
                lambda later_db: recovery.issue_email_change(
                    later_db,
                    settings=settings,
                    user=accounts.assert_user(later_db.get(User, user_id)),
                    new=new,
                    facts=facts,
                )
            )
            return accepted(
                f"We sent a link to {new.display}. Your address changes when you open it.",
                "aaa_recovery.change_email",
            )

        @bp.get("/email/confirm/<token>")
        @public
        def email_link(token: str) -> Any:
            return moved(EMAIL_KEY, token, "aaa_recovery.confirm_email_change")

        @bp.route("/email/confirm", methods=["GET", "POST"])
        @public
        def confirm_email_change() -> Any:
            """Use the link mailed to the new address: the account moves to it."""
            raw_stashed = stashed(EMAIL_KEY)
            if flask_request.method == "GET":
                if wants_json():
                    return no_referrer(jsonify({"pending": raw_stashed is not None}))
                change = None
                if raw_stashed is not None:
                    # Say which account would move to which address before the button.
                    try:
                        change = recovery.email_change(db_session(), raw=raw_stashed)
                    except InvalidToken as exc:
                        drop(EMAIL_KEY)
                        return token_error(exc, "aaa/confirm_email_change.html", pending=False)
                page = render_template(
                    "aaa/confirm_email_change.html",
                    errors={},
                    pending=change is not None,
                    change=change,
                )
                return no_referrer(Response(page))
            db = db_session()
            try:
                raw = token_from(read_fields(["token"]), EMAIL_KEY)
                user, notice = recovery.confirm_email_change(db, raw=raw, facts=request_facts())
            except InvalidToken as exc:
                drop(EMAIL_KEY)
                return token_error(exc, "aaa/confirm_email_change.html", pending=False)
            except InvalidInput as exc:
                db.rollback()
                drop(EMAIL_KEY)
                return no_referrer(form_error("aaa/confirm_email_change.html", exc, pending=False))
            db.commit()
            drop(EMAIL_KEY)
            send(notice)
            message = f"Your email address is now {user.email}."
            endpoint = None if current_user.is_authenticated else "aaa_auth.login"
            return no_referrer(done(message, endpoint, email=user.email))

    if flows.invite:

        @bp.route("/invite", methods=["GET", "POST"])
        @permissions_required(INVITE_USERS)
        @limiter_per_user(settings, user_key)
        @mail_limits(settings, per_ip=False)
        def invite() -> Any:
            """Invite someone by email to register (``aaa:users:invite``)."""
            if flask_request.method == "GET":
                return render_template("aaa/invite.html", errors={}, values={})
            values: dict[str, str] = {}
            db = db_session()
            try:
                fields = read_fields(["email"], required=["email"])
                values = fields
                out = recovery.invite(
                    db,
                    settings=settings,
                    actor=current_actor(),
                    email=fields["email"],
                    facts=request_facts(),
                )
            except InvalidInput as exc:
                db.rollback()
                return form_error("aaa/invite.html", exc, values=values)
            db.commit()
            send(out)
            address = accounts.normalize_email(fields["email"]).display
            return accepted(f"We sent an invitation to {address}.", "aaa_recovery.invite")

    return bp


def limiter_per_user(settings: Settings, key: Callable[[], str]) -> Callable[[F], F]:
    """``AAA_MAIL_LIMIT`` per signed-in user (email change, invitations)."""
    limit = state().limiter.limit(
        settings.mail_limit,
        methods=["POST"],
        key_func=key,
        on_breach=_audit_throttled,
    )
    return cast("Callable[[F], F]", limit)
