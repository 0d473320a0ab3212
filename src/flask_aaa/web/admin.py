"""Administration pages: users and their roles, roles and their permissions, the audit trail.

Every page needs an ``aaa:*`` permission; every change goes through the same services as the
CLI, which check the actor's rights again (nobody grants what they do not hold) and audit it.
"""

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
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from ..errors import InvalidInput, NotFound
from ..models import SERVICE, Role, User
from ..services import accounts, audit, lockout, mfa, rbac, sessions, tokens
from .account import page_json
from .context import current_actor, db_session, request_facts, state
from .decorators import permissions_required
from .forms import audit_filter, filter_args, parse_cursor, read_fields
from .security import wants_json


def _user(user_id: int) -> User:
    user = db_session().get(User, user_id)
    if user is None:
        raise NotFound("No such user.")
    return user


def _done(message: str, endpoint: str, **values: Any) -> Any:
    db_session().commit()
    if wants_json():
        return jsonify({"ok": True, "message": message})
    flash(message, "success")
    return redirect(url_for(endpoint, **values), 303)


def _user_row(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "active": user.active,
        "roles": [r.name for r in user.roles],
        "last_login_at": user.last_login_at.isoformat() if user.last_login_at else None,
        "login_count": user.login_count,
        "locked_until": (
            user.locked_until.isoformat()
            if user.locked_until is not None and lockout.is_locked(user)
            else None
        ),
        "mfa_enabled": user.mfa_enabled,
        "kind": user.kind,
    }


def create_blueprint() -> Blueprint:
    bp = Blueprint("aaa_admin", __name__)

    @bp.get("/")
    @permissions_required(rbac.READ_USERS)
    def users() -> Any:
        db = db_session()
        after = parse_cursor(request.args.get("after"), "after") or 0
        size = state().settings.page_size
        rows = list(
            db.scalars(
                select(User)
                .where(User.id > after)
                .order_by(User.id)
                .limit(size + 1)
                .options(selectinload(User.roles))
            )
        )
        more = len(rows) > size
        rows = rows[:size]
        next_after = rows[-1].id if more else None
        if wants_json():
            return jsonify({"users": [_user_row(u) for u in rows], "next_after": next_after})
        total = db.scalar(select(func.count()).select_from(User))
        return render_template(
            "aaa/admin_users.html",
            users=rows,
            next_after=next_after,
            total=total,
            roles=list(db.scalars(select(Role).order_by(Role.name))),
        )

    @bp.get("/users/<int(max=2147483647):user_id>")
    @permissions_required(rbac.READ_USERS)
    def user_detail(user_id: int) -> Any:
        db = db_session()
        user = _user(user_id)
        roles = list(db.scalars(select(Role).order_by(Role.name)))
        live = sessions.live_sessions(db, user)
        if wants_json():
            return jsonify({"user": _user_row(user), "live_sessions": len(live)})
        return _user_page(user, roles=roles, live=live)

    def _user_page(
        user: User,
        *,
        roles: list[Role] | None = None,
        live: Any = None,
        minted: tokens.Minted | None = None,
        errors: dict[str, str] | None = None,
    ) -> Response:
        db = db_session()
        if roles is None:
            roles = list(db.scalars(select(Role).order_by(Role.name)))
        return Response(
            render_template(
                "aaa/admin_user.html",
                subject=user,
                roles=roles,
                live_sessions=live if live is not None else sessions.live_sessions(db, user),
                locked=lockout.is_locked(user),
                tokens=tokens.tokens_of(db, user),
                token_status=tokens.status,
                minted=minted,
                errors=errors or {},
            ),
            status=400 if errors else 201 if minted else 200,
        )

    @bp.post("/service-accounts")
    @permissions_required(rbac.MANAGE_USERS)
    def create_service_account() -> Any:
        """A non-human account that acts only through the API tokens minted for it here."""
        db = db_session()
        fields = read_fields(["name", "role"], required=["name"])
        roles = [rbac.find_role(db, fields["role"])] if fields.get("role") else []
        user = accounts.create_service_account(
            db, actor=current_actor(), name=fields["name"], roles=roles, facts=request_facts()
        )
        db.flush()
        return _done(
            f"Service account {user.label} created. Mint it a token below.",
            "aaa_admin.user_detail",
            user_id=user.id,
        )

    @bp.post("/users/<int(max=2147483647):user_id>/tokens")
    @permissions_required(rbac.MANAGE_USERS)
    def mint_token(user_id: int) -> Any:
        """Mint a token for a service account; the secret is shown on this one page."""
        db = db_session()
        user = _user(user_id)
        if user.kind != SERVICE:
            raise InvalidInput(
                {"user": "People mint their own tokens; administrators mint for services."}
            )
        fields = read_fields(["name", "scopes", "expires_in_days"])
        try:
            minted = tokens.mint(
                db,
                user,
                actor=current_actor(),
                name=fields.get("name", ""),
                scopes=fields.get("scopes", "").split(),
                days=fields.get("expires_in_days"),
                settings=state().settings,
                facts=request_facts(),
            )
        except InvalidInput as exc:
            db.rollback()
            return _user_page(_user(user_id), errors=exc.errors)
        db.commit()
        return _user_page(user, minted=minted)

    @bp.post("/tokens/<int(max=2147483647):token_id>/revoke")
    @permissions_required(rbac.MANAGE_USERS)
    def revoke_token(token_id: int) -> Any:
        db = db_session()
        token = tokens.get(db, token_id)
        changed = tokens.revoke(db, token, actor=current_actor(), facts=request_facts())
        message = (
            f"The token {token.name!r} is revoked."
            if changed
            else f"The token {token.name!r} was already revoked."
        )
        return _done(message, "aaa_admin.user_detail", user_id=token.user_id)

    @bp.post("/users/<int(max=2147483647):user_id>/roles")
    @permissions_required(rbac.ASSIGN_ROLES)
    def grant_role(user_id: int) -> Any:
        db = db_session()
        user = _user(user_id)
        role = rbac.find_role(db, read_fields(["role"], required=["role"])["role"])
        changed = rbac.grant_role(
            db, actor=current_actor(), user=user, role=role, facts=request_facts()
        )
        message = (
            f"Granted {role.name} to {user.label}."
            if changed
            else f"{user.label} already has {role.name}."
        )
        return _done(message, "aaa_admin.user_detail", user_id=user.id)

    @bp.post("/users/<int(max=2147483647):user_id>/roles/revoke")
    @permissions_required(rbac.ASSIGN_ROLES)
    def revoke_role(user_id: int) -> Any:
        db = db_session()
        user = _user(user_id)
        role = rbac.find_role(db, read_fields(["role"], required=["role"])["role"])
        changed = rbac.revoke_role(
            db, actor=current_actor(), user=user, role=role, facts=request_facts()
        )
        message = (
            f"Revoked {role.name} from {user.label}."
            if changed
            else f"{user.label} did not have {role.name}."
        )
        return _done(message, "aaa_admin.user_detail", user_id=user.id)

    @bp.post("/users/<int(max=2147483647):user_id>/active")
    @permissions_required(rbac.MANAGE_USERS)
    def set_active(user_id: int) -> Any:
        user = _user(user_id)
        value = read_fields(["active"], required=["active"])["active"]
        if value not in ("0", "1"):
            raise InvalidInput({"active": "Use 1 to enable or 0 to disable."})
        changed = accounts.set_active(
            db_session(),
            actor=current_actor(),
            user=user,
            active=value == "1",
            facts=request_facts(),
        )
        if not changed:
            message = f"{user.label} was already {'enabled' if value == '1' else 'disabled'}."
        elif value == "1":
            message = f"{user.label} is enabled."
        else:
            message = f"{user.label} is disabled and signed out everywhere."
        return _done(message, "aaa_admin.user_detail", user_id=user.id)

    @bp.post("/users/<int(max=2147483647):user_id>/sessions/revoke")
    @permissions_required(rbac.MANAGE_USERS)
    def revoke_sessions(user_id: int) -> Any:
        user = _user(user_id)
        ended = sessions.revoke_all_by_admin(
            db_session(), actor=current_actor(), user=user, facts=request_facts()
        )
        return _done(
            f"{user.label} is signed out everywhere ({ended} session(s)).",
            "aaa_admin.user_detail",
            user_id=user.id,
        )

    @bp.post("/users/<int(max=2147483647):user_id>/unlock")
    @permissions_required(rbac.MANAGE_USERS)
    def unlock(user_id: int) -> Any:
        user = _user(user_id)
        changed = lockout.unlock(
            db_session(), actor=current_actor(), user=user, facts=request_facts()
        )
        message = f"{user.label} is unlocked." if changed else f"{user.label} was not locked."
        return _done(message, "aaa_admin.user_detail", user_id=user.id)

    @bp.post("/users/<int(max=2147483647):user_id>/mfa/reset")
    @permissions_required(rbac.MANAGE_USERS)
    def reset_mfa(user_id: int) -> Any:
        user = _user(user_id)
        changed = mfa.reset_by_admin(
            db_session(), actor=current_actor(), user=user, facts=request_facts()
        )
        message = (
            f"Two-factor authentication of {user.label} is off; they are signed out everywhere."
            if changed
            else f"{user.label} had no two-factor authentication."
        )
        return _done(message, "aaa_admin.user_detail", user_id=user.id)

    @bp.get("/roles")
    @permissions_required(rbac.READ_USERS)
    def roles() -> Any:
        rows = list(
            db_session().scalars(
                select(Role).order_by(Role.name).options(selectinload(Role.permissions))
            )
        )
        if wants_json():
            return jsonify(
                {
                    "roles": [
                        {
                            "name": r.name,
                            "description": r.description,
                            "permissions": [p.name for p in r.permissions],
                        }
                        for r in rows
                    ]
                }
            )
        return render_template("aaa/admin_roles.html", roles=rows)

    @bp.post("/roles")
    @permissions_required(rbac.MANAGE_ROLES)
    def create_role() -> Any:
        fields = read_fields(["name", "description"], required=["name"])
        role = rbac.create_role(
            db_session(),
            actor=current_actor(),
            name=fields["name"],
            description=fields.get("description", ""),
            facts=request_facts(),
        )
        return _done(f"Created role {role.name}.", "aaa_admin.roles")

    @bp.post("/roles/<name>/permissions")
    @permissions_required(rbac.MANAGE_ROLES)
    def add_permission(name: str) -> Any:
        db = db_session()
        role = rbac.find_role(db, name)
        permission = read_fields(["permission"], required=["permission"])["permission"]
        changed = rbac.add_permission(
            db, actor=current_actor(), role=role, permission=permission, facts=request_facts()
        )
        return _done(
            f"Added {permission} to {role.name}."
            if changed
            else f"{role.name} already has {permission}.",
            "aaa_admin.roles",
        )

    @bp.post("/roles/<name>/permissions/remove")
    @permissions_required(rbac.MANAGE_ROLES)
    def remove_permission(name: str) -> Any:
        db = db_session()
        role = rbac.find_role(db, name)
        permission = read_fields(["permission"], required=["permission"])["permission"]
        changed = rbac.remove_permission(
            db, actor=current_actor(), role=role, permission=permission, facts=request_facts()
        )
        return _done(
            f"Removed {permission} from {role.name}."
            if changed
            else f"{role.name} did not have {permission}.",
            "aaa_admin.roles",
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

    @bp.get("/audit.jsonl")
    @permissions_required(rbac.READ_AUDIT)
    def audit_export() -> Response:
        lines = audit.export_jsonl(db_session(), _filter_from_args())
        response = Response(stream_with_context(lines), mimetype="application/x-ndjson")
        response.headers["Content-Disposition"] = 'attachment; filename="audit.jsonl"'
        return response

    @bp.post("/audit/verify")
    @permissions_required(rbac.READ_AUDIT)
    def audit_verify() -> Any:
        report = audit.verify_chain(db_session())
        data = {
            "ok": report.ok,
            "checked": report.checked,
            "first_bad_seq": report.first_bad_seq,
            "problem": report.problem,
        }
        if wants_json():
            return jsonify(data)
        if report.ok:
            flash(f"The audit trail verifies: {report.checked} events, chain intact.", "success")
        else:
            flash(
                f"The audit trail is BROKEN at event {report.first_bad_seq}: {report.problem}",
                "error",
            )
        return redirect(url_for("aaa_admin.audit_trail"), 303)

    return bp
