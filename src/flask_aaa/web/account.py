"""The signed-in user's own pages: "my activity" and its download (JSON Lines or CSV), the
list of their sessions with their usage figures (revoke one, or all others), their API
tokens (mint, list, revoke), and the password confirmation for sensitive actions.

Also the pieces other views share: how a session, a page of events, the usage figures and an
export download look, and the ``aaa_duration`` template filter."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

from flask import (
    Blueprint,
    Response,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from sqlalchemy.orm import Session

from ..db import utcnow
from ..errors import InvalidInput
from ..models import LoginSession
from ..services import accounts, audit, sessions, tokens
from .context import (
    current_actor,
    db_session,
    login_session,
    request_facts,
    signed_in_user,
    state,
)
from .decorators import fresh_login_required, login_required
from .forms import audit_filter, filter_args, parse_cursor, read_fields
from .security import safe_next, wants_json
from .signin import rotate_current


def session_json(record: LoginSession, current: LoginSession | None) -> dict[str, Any]:
    return {
        "id": record.id,
        "current": current is not None and record.id == current.id,
        "ip": record.ip,
        "user_agent": record.user_agent,
        "created_at": record.created_at.isoformat(),
        "last_seen_at": record.last_seen_at.isoformat(),
        "expires_at": record.expires_at.isoformat(),
    }


def page_json(page: audit.Page) -> dict[str, Any]:
    return {"events": [audit.as_dict(e) for e in page.events], "next_before": page.next_before}


def duration_text(value: dt.timedelta | None) -> str:
    """A duration as people read it: ``45 s``, ``12 min``, ``2 h 5 min``, ``3 d 4 h``
    (rounded down); ``—`` for None."""
    if value is None:
        return "—"
    seconds = max(int(value.total_seconds()), 0)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min"
    return f"{seconds} s"


def _seconds(value: dt.timedelta | None) -> int | None:
    return None if value is None else int(value.total_seconds())


def usage_json(usage: sessions.Usage) -> dict[str, Any]:
    """The usage figures for JSON clients; durations in whole seconds."""
    return {
        "last_login_at": usage.last_login_at.isoformat() if usage.last_login_at else None,
        "last_login_ip": usage.last_login_ip,
        "login_count": usage.login_count,
        "active_sessions": usage.active_sessions,
        "recent_sessions": usage.recent_sessions,
        "median_session_seconds": _seconds(usage.median_duration),
        "longest_session_seconds": _seconds(usage.longest_duration),
    }


def usage_of(db: Session, user_id: int) -> sessions.Usage:
    return sessions.usage(db, user_id, utcnow(), settings=state().settings)


#: The download formats of the audit trail: the service that writes each, and its type.
EXPORTS: dict[str, tuple[Callable[..., Iterator[str]], str]] = {
    "jsonl": (audit.export_jsonl, "application/x-ndjson"),
    "csv": (audit.export_csv, "text/csv"),
}


def export_download(flt: audit.AuditFilter, fmt: str, name: str) -> Response:
    """The events matching ``flt`` as the attachment ``name.<fmt>``, streamed: the rows are
    read in batches while the answer is sent, so memory stays flat however long the trail."""
    write, mimetype = EXPORTS[fmt]
    lines = write(db_session(), flt)
    response = Response(stream_with_context(lines), mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    return response


def create_blueprint() -> Blueprint:
    bp = Blueprint("aaa_account", __name__)
    limiter = state().limiter

    def user_key() -> str:
        return f"user:{signed_in_user().id}"

    # Registered here, on every app, for the account pages and the console alike.
    bp.add_app_template_filter(duration_text, "aaa_duration")

    @bp.get("/activity")
    @login_required
    def activity() -> Any:
        """The user's own events, newest first. The actor filter is always the user: no
        argument can widen it to someone else's events."""
        user = signed_in_user()
        flt = audit_filter(request.args, involving_user=user.id)
        page = audit.query(
            db_session(),
            flt,
            limit=state().settings.page_size,
            before=parse_cursor(request.args.get("before")),
        )
        if wants_json():
            return jsonify(page_json(page))
        return render_template(
            "aaa/activity.html", page=page, filters=filter_args(request.args), user=user
        )

    @bp.get("/sessions")
    @login_required
    def session_list() -> Any:
        """Where the user is signed in: device, address, when it started and was last used;
        and their usage figures (last sign-in, sign-ins, session durations)."""
        user = signed_in_user()
        current = login_session()
        db = db_session()
        live = sessions.live_sessions(db, user)
        usage = usage_of(db, user.id)
        if wants_json():
            return jsonify(
                {"sessions": [session_json(r, current) for r in live], "usage": usage_json(usage)}
            )
        return render_template(
            "aaa/sessions.html",
            sessions=live,
            current=current,
            usage=usage,
            usage_days=sessions.USAGE_DAYS,
        )

    @bp.post("/sessions/<int(max=2147483647):session_id>/revoke")
    @fresh_login_required  # ASVS 7.5.2: ending sessions needs a recent password
    def revoke_session(session_id: int) -> Any:
        user = signed_in_user()
        current = login_session()
        db = db_session()
        record = sessions.revoke_own(
            db, user=user, session_id=session_id, current=current, facts=request_facts()
        )
        db.commit()
        ended_current = current is not None and record.id == current.id
        if wants_json():
            return jsonify({"ok": True, "signed_out": ended_current})
        if ended_current:
            return redirect(url_for("aaa_auth.login"), 303)
        flash("That session is signed out.", "success")
        return redirect(url_for("aaa_account.session_list"), 303)

    @bp.post("/sessions/revoke-others")
    @fresh_login_required
    def revoke_other_sessions() -> Any:
        user = signed_in_user()
        db = db_session()
        ended = sessions.revoke_others(
            db, user=user, current=login_session(), facts=request_facts()
        )
        db.commit()
        if wants_json():
            return jsonify({"ok": True, "sessions_ended": ended})
        flash(f"Signed out everywhere else ({ended} session(s)).", "success")
        return redirect(url_for("aaa_account.session_list"), 303)

    def token_page(
        minted: tokens.Minted | None = None, errors: dict[str, str] | None = None
    ) -> Any:
        user = signed_in_user()
        offered = sorted(tokens.SELF_SCOPES) + sorted(user.grants.permissions)
        return Response(
            render_template(
                "aaa/tokens.html",
                tokens=tokens.tokens_of(db_session(), user),
                offered=offered,
                self_scopes=tokens.SELF_SCOPES,
                minted=minted,
                errors=errors or {},
                status=tokens.status,
                form=request.form if errors else {},
            ),
            status=400 if errors else 201 if minted else 200,
        )

    @bp.get("/tokens")
    @login_required
    def token_list() -> Any:
        """The user's personal access tokens (never their secrets), and the form for a new one."""
        return token_page()

    @bp.post("/tokens")
    @fresh_login_required
    def mint_token() -> Any:
        """Mint a token; its secret is on this one page and nowhere else."""
        user = signed_in_user()
        db = db_session()
        fields = read_fields(["name", "expires_in_days", "extra_scopes"])
        scopes = request.form.getlist("scopes") + fields.get("extra_scopes", "").split()
        try:
            minted = tokens.mint(
                db,
                user,
                actor=current_actor(),
                name=fields.get("name", ""),
                scopes=scopes,
                days=fields.get("expires_in_days"),
                settings=state().settings,
                facts=request_facts(),
            )
        except InvalidInput as exc:
            db.rollback()
            if wants_json():
                raise  # the JSON error answer, with the fields
            return token_page(errors=exc.errors)
        db.commit()
        return token_page(minted=minted)

    @bp.post("/tokens/<int(max=2147483647):token_id>/revoke")
    @login_required
    def revoke_token(token_id: int) -> Any:
        user = signed_in_user()
        db = db_session()
        token = tokens.get(db, token_id, owner=user)
        tokens.revoke(db, token, actor=current_actor(), facts=request_facts())
        db.commit()
        flash(f"The token {token.name!r} is revoked.", "success")
        return redirect(url_for("aaa_account.token_list"), 303)

    @bp.route("/reauth", methods=["GET", "POST"])
    @login_required
    @limiter.limit(
        lambda: state().settings.change_password_limit, methods=["POST"], key_func=user_key
    )
    def reauth() -> Any:
        """Confirm the password before a sensitive action; the session gets a new id."""
        nxt = safe_next(request.values.get("next") if not request.is_json else None)
        if request.method == "GET":
            return render_template("aaa/reauth.html", next=nxt, errors={})
        user = signed_in_user()
        record = login_session()
        db = db_session()
        try:
            fields = read_fields(["password", "next"], required=["password"])
            if record is None:
                raise InvalidInput({"password": "Sign in again."})
            accounts.reauthenticate(
                db,
                settings=state().settings,
                passwords=state().passwords,
                user=user,
                password=fields["password"],
                session=record,
                facts=request_facts(),
            )
        except InvalidInput as exc:
            db.rollback()
            if wants_json():
                body = jsonify({"error": exc.code, "message": exc.message, "fields": exc.errors})
                body.status_code = 400
                return body
            return Response(
                render_template("aaa/reauth.html", next=nxt, errors=exc.errors), status=400
            )
        db.commit()
        rotate_current(reason="reauthenticated")
        target = safe_next(fields.get("next")) or nxt or url_for("aaa_account.session_list")
        if wants_json():
            return jsonify({"ok": True})
        return redirect(target, 303)

    @bp.get("/activity.jsonl")
    @login_required
    def activity_export() -> Response:
        """Download of all the user's own events as JSON Lines."""
        flt = audit.AuditFilter(involving_user=signed_in_user().id)
        return export_download(flt, "jsonl", "my-activity")

    @bp.get("/activity.csv")
    @login_required
    def activity_export_csv() -> Response:
        """The same download as CSV, for a spreadsheet (formula-like cells are guarded)."""
        flt = audit.AuditFilter(involving_user=signed_in_user().id)
        return export_download(flt, "csv", "my-activity")

    return bp
