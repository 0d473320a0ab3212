"""The signed-in user's own pages: "my activity" (their events only) and its download."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request, stream_with_context

from ..services import audit
from .context import db_session, signed_in_user, state
from .decorators import login_required
from .forms import audit_filter, filter_args, parse_cursor
from .security import wants_json


def page_json(page: audit.Page) -> dict[str, Any]:
    return {"events": [audit.as_dict(e) for e in page.events], "next_before": page.next_before}


def create_blueprint() -> Blueprint:
    bp = Blueprint("aaa_account", __name__)

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
