"""Administration console: the audit trail (filters, detail, export as JSON Lines or CSV,
verification) and the dashboard of activity charts. Everything here needs
``aaa:audit:read``.

Registered on the ``aaa_admin`` blueprint by :func:`register`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from flask import (
    Blueprint,
    Response,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from ..db import utcnow
from ..errors import NotFound
from ..services import accounts, audit, rbac, sessions
from . import charts
from .account import export_download, page_json
from .context import db_session, state
from .decorators import permissions_required
from .forms import audit_filter, filter_args, parse_cursor
from .security import wants_json

#: Days the dashboard looks back, today included.
DASHBOARD_DAYS = 14
#: The actions each chart counts.
SIGN_IN_SUCCEEDED = ("auth.login.succeeded",)
SIGN_IN_FAILED = ("auth.login.failed", "auth.mfa.failed", "auth.passkey.failed", "auth.oidc.failed")
DENIED = ("authz.denied",)
NEW_USERS = ("user.created", "user.registered", "user.invitation_accepted")


def _days(today: dt.date) -> list[dt.date]:
    return [today - dt.timedelta(days=n) for n in range(DASHBOARD_DAYS - 1, -1, -1)]


def _per_day(
    counts: dict[str, dict[dt.date, int]], actions: tuple[str, ...], days: list[dt.date]
) -> tuple[int, ...]:
    return tuple(sum(counts[a].get(day, 0) for a in actions) for day in days)


def dashboard_data(db: Any, now: dt.datetime) -> dict[str, Any]:
    """The numbers behind the dashboard: one grouped query over the audit trail, one count
    and one bounded read of the sessions."""
    days = _days(now.date())
    since = dt.datetime.combine(days[0], dt.time(), tzinfo=dt.UTC)
    counts = audit.daily_counts(
        db, SIGN_IN_SUCCEEDED + SIGN_IN_FAILED + DENIED + NEW_USERS, since=since
    )
    per_day = sessions.active_per_day(db, days)
    return {
        "days": [d.isoformat() for d in days],
        "sign_ins": {
            "succeeded": _per_day(counts, SIGN_IN_SUCCEEDED, days),
            "failed": _per_day(counts, SIGN_IN_FAILED, days),
        },
        "denials": _per_day(counts, DENIED, days),
        "new_users": _per_day(counts, NEW_USERS, days),
        "sessions_per_day": tuple(per_day[d] for d in days),
        "active_sessions": sessions.active_count(db, settings=state().settings, now=now),
    }


def dashboard_charts(data: dict[str, Any]) -> list[charts.Chart]:
    labels = tuple(data["days"])
    span = f"the last {len(labels)} days (UTC), {labels[0]} to {labels[-1]}"
    return [
        charts.Chart(
            id="chart-sign-ins",
            title="Sign-ins per day",
            description=f"Sign-ins that succeeded and that failed on each of {span}.",
            labels=labels,
            series=(
                charts.Series("ok", "Succeeded", data["sign_ins"]["succeeded"]),
                charts.Series("bad", "Failed", data["sign_ins"]["failed"]),
            ),
        ),
        charts.Chart(
            id="chart-denials",
            title="Denials per day",
            description=f"Requests refused for lack of a permission on each of {span}.",
            labels=labels,
            series=(charts.Series("denied", "Denials", data["denials"]),),
        ),
        charts.Chart(
            id="chart-sessions",
            title="Sessions in use per day",
            description=f"Sessions opened by then and used on or after each of {span}.",
            labels=labels,
            series=(charts.Series("sessions", "Sessions", data["sessions_per_day"]),),
            kind="line",
        ),
        charts.Chart(
            id="chart-new-users",
            title="New users per day",
            description=f"Accounts registered, created or invited on each of {span}.",
            labels=labels,
            series=(charts.Series("users", "New users", data["new_users"]),),
        ),
    ]


def register(bp: Blueprint) -> None:
    @bp.get("/dashboard")
    @permissions_required(rbac.READ_AUDIT)
    def dashboard() -> Any:
        """Activity of the last two weeks as charts drawn on the server."""
        data = dashboard_data(db_session(), utcnow())
        if wants_json():
            return jsonify(data)
        return render_template(
            "aaa/admin_dashboard.html",
            data=data,
            charts=dashboard_charts(data),
            render_chart=charts.render,
        )

    def _filter_from_args() -> audit.AuditFilter:
        actor_id = None
        name = request.args.get("user", "").strip()
        if name:
            found = accounts.find_user(db_session(), state().settings, name[:320])
            actor_id = found.id if found is not None else -1  # an unknown user matches nothing
        return audit_filter(request.args, actor_id=actor_id)

    @bp.get("/audit")
    @permissions_required(rbac.READ_AUDIT)
    def audit_trail() -> Any:
        page = audit.query(
            db_session(),
            _filter_from_args(),
            limit=state().settings.page_size,
            before=parse_cursor(request.args.get("before")),
        )
        if wants_json():
            return jsonify(page_json(page))
        return render_template(
            "aaa/admin_audit.html",
            page=page,
            filters=filter_args(request.args),
            outcomes=audit.OUTCOMES,
        )

    @bp.get("/audit/<int(max=2147483647):seq>")
    @permissions_required(rbac.READ_AUDIT)
    def audit_event(seq: int) -> Any:
        """One event: every field, its details, its neighbours, and whether its hash and
        its link to the event before it still hold."""
        db = db_session()
        found = audit.get(db, audit.AuditFilter(), seq)
        if found is None:
            raise NotFound("No such event.")
        check = audit.check_event(db, found)
        before, after = audit.neighbours(db, seq)
        data = audit.as_dict(found)
        if wants_json():
            return jsonify(
                {
                    "event": data,
                    "check": {"hash_ok": check.hash_ok, "link_ok": check.link_ok},
                    "previous": before,
                    "next": after,
                }
            )
        return render_template(
            "aaa/admin_audit_event.html",
            event=found,
            details=json.dumps(data["details"], indent=2, ensure_ascii=False, sort_keys=True),
            check=check,
            previous=before,
            following=after,
        )

    @bp.get("/audit.jsonl")
    @permissions_required(rbac.READ_AUDIT)
    def audit_export() -> Response:
        """The events matching the page's filters, oldest first, as JSON Lines."""
        return export_download(_filter_from_args(), "jsonl", "audit")

    @bp.get("/audit.csv")
    @permissions_required(rbac.READ_AUDIT)
    def audit_export_csv() -> Response:
        """The same as CSV, for a spreadsheet. Cells that would run as a formula start with
        ``'``, so check hashes against the JSON Lines export, which is verbatim."""
        return export_download(_filter_from_args(), "csv", "audit")

    @bp.post("/audit/verify")
    @permissions_required(rbac.READ_AUDIT)
    def audit_verify() -> Any:
        report = audit.verify_chain(db_session())
        data = {
            "ok": report.ok,
            "checked": report.checked,
            "last_seq": report.last_seq,
            "first_bad_seq": report.first_bad_seq,
            "problem": report.problem,
            "first_seq": report.first_seq,
            "checkpoints": report.checkpoints,
            "signed": report.signed,
        }
        if wants_json():
            return jsonify(data)
        if report.ok:
            signed = (
                f"{report.checkpoints} signed checkpoints matched, head signature valid"
                if report.signed
                else "signatures not checked: no signing key"
            )
            flash(
                f"Chain verified from event {report.first_seq} to {report.last_seq}: "
                f"{report.checked} events, chain intact; {signed}.",
                "success",
            )
        else:
            flash(
                f"The audit trail is BROKEN at event {report.first_bad_seq}: {report.problem} "
                f"(verified up to event {max((report.first_bad_seq or 1) - 1, 0)}).",
                "error",
            )
        return redirect(url_for("aaa_admin.audit_trail"), 303)
