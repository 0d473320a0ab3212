"""Administration console: users (search, create, enable and disable, roles, permissions,
sessions and usage figures, tokens). Roles, permissions and explain are in
:mod:`.admin_roles`; the audit trail and the dashboard in :mod:`.admin_trail`; all three
share one blueprint, ``aaa_admin``.

Every page needs an ``aaa:*`` permission; every change goes through the same services as the
CLI, which check the actor's rights again (nobody grants what they do not hold) and audit it.
A view commits once: the change and its audit event together.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request, url_for
from sqlalchemy import select

from ..db import utcnow
from ..errors import InvalidInput
from ..models import SERVICE, LoginSession, Role, User
from ..services import accounts, lockout, mfa, rbac, sessions, tokens
from . import admin_roles, admin_trail
from .account import usage_json, usage_of
from .admin_common import done, find_user_or_404, query_arg, user_row
from .context import current_actor, db_session, request_facts, state
from .decorators import permissions_required
from .forms import parse_cursor, read_fields
from .security import wants_json

#: The filters of the users list, in the order the page shows them.
USER_FILTERS = ("q", "active", "role", "kind")


def _user_filters() -> dict[str, str]:
    """The recognised, non-empty filters of the users list (safe to hand to ``url_for``)."""
    values = {name: query_arg(name, limit=320 if name == "q" else 64) for name in USER_FILTERS}
    if values["active"] not in ("", "1", "0"):
        raise InvalidInput({"active": "Use 1 for active or 0 for disabled accounts."})
    if values["kind"] and values["kind"] not in accounts.KINDS:
        raise InvalidInput({"kind": f"Use one of {', '.join(accounts.KINDS)}."})
    return {name: value for name, value in values.items() if value}


def _session_row(record: LoginSession) -> dict[str, Any]:
    return {
        "id": record.id,
        "ip": record.ip,
        "user_agent": record.user_agent,
        "created_at": record.created_at.isoformat(),
        "last_seen_at": record.last_seen_at.isoformat(),
        "expires_at": record.expires_at.isoformat(),
        "impersonated_by": record.impersonator_id,
    }


def _effective_roles(user: User) -> list[tuple[str, str | None]]:
    """The user's roles, each once: ``(name, None)`` for one held directly, ``(name, via)``
    for one inherited through the held role ``via`` (the first path found)."""
    out: dict[str, str | None] = {role.name: None for role in user.roles}
    for role in sorted(user.roles, key=lambda r: r.name):
        for ancestor in rbac.ancestors(role):
            out.setdefault(ancestor.name, role.name)
    return sorted(out.items(), key=lambda item: (item[1] is not None, item[0]))


def create_blueprint() -> Blueprint:
    bp = Blueprint("aaa_admin", __name__)

    def _users_page(
        errors: dict[str, str] | None = None, form: dict[str, str] | None = None
    ) -> Any:
        db = db_session()
        filters = _user_filters()
        active = {"1": True, "0": False}.get(filters.get("active", ""))
        rows, next_after = accounts.list_users(
            db,
            limit=state().settings.page_size,
            after=parse_cursor(request.args.get("after"), "after"),
            q=filters.get("q"),
            active=active,
            role=filters.get("role"),
            kind=filters.get("kind"),
        )
        in_use = sessions.active_counts(
            db, (u.id for u in rows), settings=state().settings, now=utcnow()
        )
        if wants_json():
            return jsonify(
                {
                    "users": [
                        {**user_row(u), "active_sessions": in_use.get(u.id, 0)} for u in rows
                    ],
                    "next_after": next_after,
                }
            )
        return Response(
            render_template(
                "aaa/admin_users.html",
                users=rows,
                active_sessions=in_use,
                next_after=next_after,
                filters=filters,
                kinds=accounts.KINDS,
                roles=list(db.scalars(select(Role).order_by(Role.name))),
                errors=errors or {},
                form=form or {},
            ),
            status=400 if errors else 200,
        )

    @bp.get("/")
    @permissions_required(rbac.READ_USERS)
    def users() -> Any:
        """Users in id order, searched (``q``: part of the username or email) and filtered
        (``active``, ``role``, ``kind``), paged with ``after``."""
        return _users_page()

    @bp.post("/users")
    @permissions_required(rbac.MANAGE_USERS)
    def create_user() -> Any:
        """Create a person's account with a password (the policy applies) and, optionally,
        a role (which also needs ``aaa:roles:assign`` and every permission of the role)."""
        db = db_session()
        fields = read_fields(["username", "email", "password", "role"], required=["password"])
        st = state()
        try:
            roles = [rbac.find_role(db, fields["role"])] if fields.get("role") else []
            user = accounts.create_user(
                db,
                actor=current_actor(),
                settings=st.settings,
                passwords=st.passwords,
                username=fields.get("username") or None,
                email=fields.get("email") or None,
                password=fields["password"],
                roles=roles,
                facts=request_facts(),
            )
            db.flush()
        except InvalidInput as exc:
            db.rollback()
            if wants_json():
                raise
            kept = {k: v for k, v in fields.items() if k != "password"}
            return _users_page(errors=exc.errors, form=kept)
        return done(f"Created {user.label}.", "aaa_admin.user_detail", user_id=user.id)

    @bp.get("/users/<int(max=2147483647):user_id>")
    @permissions_required(rbac.READ_USERS)
    def user_detail(user_id: int) -> Any:
        db = db_session()
        user = find_user_or_404(user_id)
        live = sessions.live_sessions(db, user)
        if wants_json():
            return jsonify(
                {
                    "user": user_row(user),
                    "usage": usage_json(usage_of(db, user.id)),
                    "live_sessions": len(live),
                    "sessions": [_session_row(s) for s in live],
                    "effective_roles": [
                        {"name": name, "inherited_via": via} for name, via in _effective_roles(user)
                    ],
                    "direct_permissions": sorted(p.name for p in user.permissions),
                    "effective_permissions": sorted(rbac.load_grants(db, user.id).permissions),
                }
            )
        return _user_page(user, live=live)

    def _user_page(
        user: User,
        *,
        live: list[LoginSession] | None = None,
        minted: tokens.Minted | None = None,
        errors: dict[str, str] | None = None,
    ) -> Response:
        db = db_session()
        return Response(
            render_template(
                "aaa/admin_user.html",
                subject=user,
                roles=list(db.scalars(select(Role).order_by(Role.name))),
                effective_roles=_effective_roles(user),
                direct_permissions=sorted(p.name for p in user.permissions),
                effective_permissions=sorted(rbac.load_grants(db, user.id).permissions),
                live_sessions=live if live is not None else sessions.live_sessions(db, user),
                usage=usage_of(db, user.id),
                usage_days=sessions.USAGE_DAYS,
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
        return done(
            f"Service account {user.label} created. Mint it a token below.",
            "aaa_admin.user_detail",
            user_id=user.id,
        )

    @bp.post("/users/<int(max=2147483647):user_id>/tokens")
    @permissions_required(rbac.MANAGE_USERS)
    def mint_token(user_id: int) -> Any:
        """Mint a token for a service account; the secret is shown on this one page."""
        db = db_session()
        user = find_user_or_404(user_id)
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
            if wants_json():
                raise  # the JSON error answer, with the fields
            return _user_page(find_user_or_404(user_id), errors=exc.errors)
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
        return done(message, "aaa_admin.user_detail", user_id=token.user_id)

    @bp.post("/users/<int(max=2147483647):user_id>/roles")
    @permissions_required(rbac.ASSIGN_ROLES)
    def grant_role(user_id: int) -> Any:
        db = db_session()
        user = find_user_or_404(user_id)
        role = rbac.find_role(db, read_fields(["role"], required=["role"])["role"])
        changed = rbac.grant_role(
            db, actor=current_actor(), user=user, role=role, facts=request_facts()
        )
        message = (
            f"Granted {role.name} to {user.label}."
            if changed
            else f"{user.label} already has {role.name}."
        )
        return done(message, "aaa_admin.user_detail", user_id=user.id)

    @bp.post("/users/<int(max=2147483647):user_id>/roles/revoke")
    @permissions_required(rbac.ASSIGN_ROLES)
    def revoke_role(user_id: int) -> Any:
        db = db_session()
        user = find_user_or_404(user_id)
        role = rbac.find_role(db, read_fields(["role"], required=["role"])["role"])
        changed = rbac.revoke_role(
            db, actor=current_actor(), user=user, role=role, facts=request_facts()
        )
        message = (
            f"Revoked {role.name} from {user.label}."
            if changed
            else f"{user.label} did not have {role.name}."
        )
        return done(message, "aaa_admin.user_detail", user_id=user.id)

    @bp.post("/users/<int(max=2147483647):user_id>/permissions")
    @permissions_required(rbac.ASSIGN_ROLES)
    def grant_permission(user_id: int) -> Any:
        """Give the user one permission directly, outside any role."""
        user = find_user_or_404(user_id)
        permission = read_fields(["permission"], required=["permission"])["permission"]
        changed = rbac.grant_permission(
            db_session(),
            actor=current_actor(),
            user=user,
            permission=permission,
            facts=request_facts(),
        )
        message = (
            f"Granted {permission.strip()} to {user.label} directly."
            if changed
            else f"{user.label} already holds {permission.strip()} directly."
        )
        return done(message, "aaa_admin.user_detail", user_id=user.id)

    @bp.post("/users/<int(max=2147483647):user_id>/permissions/revoke")
    @permissions_required(rbac.ASSIGN_ROLES)
    def revoke_permission(user_id: int) -> Any:
        user = find_user_or_404(user_id)
        permission = read_fields(["permission"], required=["permission"])["permission"]
        changed = rbac.revoke_permission(
            db_session(),
            actor=current_actor(),
            user=user,
            permission=permission,
            facts=request_facts(),
        )
        message = (
            f"Revoked the direct grant of {permission.strip()} from {user.label}."
            if changed
            else f"{user.label} held no direct grant of {permission.strip()}."
        )
        return done(message, "aaa_admin.user_detail", user_id=user.id)

    @bp.post("/users/<int(max=2147483647):user_id>/active")
    @permissions_required(rbac.MANAGE_USERS)
    def set_active(user_id: int) -> Any:
        user = find_user_or_404(user_id)
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
        return done(message, "aaa_admin.user_detail", user_id=user.id)

    @bp.post("/users/<int(max=2147483647):user_id>/sessions/revoke")
    @permissions_required(rbac.MANAGE_USERS)
    def revoke_sessions(user_id: int) -> Any:
        user = find_user_or_404(user_id)
        ended = sessions.revoke_all_by_admin(
            db_session(), actor=current_actor(), user=user, facts=request_facts()
        )
        return done(
            f"{user.label} is signed out everywhere ({ended} session(s)).",
            "aaa_admin.user_detail",
            user_id=user.id,
        )

    @bp.post(
        "/users/<int(max=2147483647):user_id>/sessions/<int(max=2147483647):session_id>/revoke"
    )
    @permissions_required(rbac.MANAGE_USERS)
    def revoke_session(user_id: int, session_id: int) -> Any:
        """End one of the user's sessions: that browser's next request is signed out."""
        user = find_user_or_404(user_id)
        record = sessions.revoke_by_admin(
            db_session(),
            actor=current_actor(),
            user=user,
            session_id=session_id,
            facts=request_facts(),
        )
        where = f" from {record.ip}" if record.ip else ""
        return done(
            f"Ended a session of {user.label}{where}.",
            "aaa_admin.user_detail",
            user_id=user.id,
        )

    @bp.post("/users/<int(max=2147483647):user_id>/unlock")
    @permissions_required(rbac.MANAGE_USERS)
    def unlock(user_id: int) -> Any:
        user = find_user_or_404(user_id)
        changed = lockout.unlock(
            db_session(), actor=current_actor(), user=user, facts=request_facts()
        )
        message = f"{user.label} is unlocked." if changed else f"{user.label} was not locked."
        return done(message, "aaa_admin.user_detail", user_id=user.id)

    @bp.post("/users/<int(max=2147483647):user_id>/mfa/reset")
    @permissions_required(rbac.MANAGE_USERS)
    def reset_mfa(user_id: int) -> Any:
        user = find_user_or_404(user_id)
        changed = mfa.reset_by_admin(
            db_session(), actor=current_actor(), user=user, facts=request_facts()
        )
        message = (
            f"Two-factor authentication of {user.label} is off; they are signed out everywhere."
            if changed
            else f"{user.label} had no two-factor authentication."
        )
        return done(message, "aaa_admin.user_detail", user_id=user.id)

    admin_roles.register(bp)
    admin_trail.register(bp)

    @bp.app_context_processor
    def admin_navigation() -> dict[str, Any]:
        return {"aaa_admin_nav": _navigation}

    return bp


#: The console's sections: (endpoint, label, permission that opens it).
SECTIONS = (
    ("aaa_admin.dashboard", "Dashboard", rbac.READ_AUDIT),
    ("aaa_admin.users", "Users", rbac.READ_USERS),
    ("aaa_admin.roles", "Roles", rbac.READ_USERS),
    ("aaa_admin.permissions", "Permissions", rbac.READ_USERS),
    ("aaa_admin.explain", "Explain", rbac.READ_USERS),
    ("aaa_admin.audit_trail", "Audit", rbac.READ_AUDIT),
)

#: Pages that belong to a section without being its endpoint.
_SECTION_OF = {
    "aaa_admin.user_detail": "aaa_admin.users",
    "aaa_admin.role_detail": "aaa_admin.roles",
    "aaa_admin.audit_event": "aaa_admin.audit_trail",
}


def _navigation() -> list[tuple[str, str, bool]]:
    """``(url, label, current)`` of each section the signed-in user may open."""
    from .context import current_user

    here = _SECTION_OF.get(request.endpoint or "", request.endpoint)
    return [
        (url_for(endpoint), label, endpoint == here)
        for endpoint, label, permission in SECTIONS
        if current_user.is_authenticated and current_user.has_permission(permission)
    ]
