"""The signed-in user's own pages: "my activity" and its download, the list of their
sessions (revoke one, or all others), their API tokens (mint, list, revoke), and the
password confirmation for sensitive actions."""

from __future__ import annotations

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


def create_blueprint() -> Blueprint:
    bp = Blueprint("aaa_account", __name__)
    limiter = state().limiter

    def user_key() -> str:
        return f"user:{signed_in_user().id}"

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
        """Where the user is signed in: device, address, when it started and was last used."""
        user = signed_in_user()
        current = login_session()
        live = sessions.live_sessions(db_session(), user)
        if wants_json():
            return jsonify({"sessions": [session_json(r, current) for r in live]})
        return render_template("aaa/sessions.html", sessions=live, current=current)

    @bp.post("/sessions/<int(max=2147483647):session_id>/revoke")
    @login_required
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
    @login_required
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
        """Download of the user's own events as JSON Lines."""
        user = signed_in_user()
        flt = audit.AuditFilter(involving_user=user.id)
        lines = audit.export_jsonl(db_session(), flt)
        response = Response(stream_with_context(lines), mimetype="application/x-ndjson")
        response.headers["Content-Disposition"] = 'attachment; filename="my-activity.jsonl"'
        return response

    return bp
