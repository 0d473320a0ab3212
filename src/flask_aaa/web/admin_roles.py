"""Administration console: roles and their hierarchy, the permission catalogue, explain.

Registered on the ``aaa_admin`` blueprint by :func:`register`. Reading needs
``aaa:users:read``; changing a role needs ``aaa:roles:write`` (and, as the services check,
every permission the change hands on).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, render_template
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from ..errors import InvalidInput, NotFound
from ..models import Permission, Role, User, user_roles
from ..services import accounts, rbac
from .admin_common import done, query_arg
from .context import current_actor, db_session, request_facts, state
from .decorators import permissions_required
from .forms import read_fields
from .security import wants_json

#: The library's own permissions, each in one line (the permission catalogue shows them).
LIBRARY_PERMISSIONS = {
    rbac.SUPERUSER: "Everything: full administration. The last active holder always keeps it.",
    "aaa:*": "Every page and action of the administration console.",
    rbac.READ_USERS: "See users, their roles, permissions and sessions; roles; explain.",
    rbac.MANAGE_USERS: (
        "Create, enable and disable accounts; end sessions; unlock; reset two-factor; "
        "service accounts and their tokens."
    ),
    rbac.ASSIGN_ROLES: "Grant and revoke roles and direct permissions (only what one holds).",
    rbac.MANAGE_ROLES: "Create and delete roles; change their permissions and parents.",
    rbac.READ_AUDIT: "Read, export and verify the audit trail; the dashboard.",
    rbac.IMPERSONATE: "Act as another user, never one holding rights the actor lacks.",
}


def _holder_counts(db: Any) -> dict[int, int]:
    """How many users hold each role directly, with one grouped query."""
    rows = db.execute(
        select(user_roles.c.role_id, func.count()).group_by(user_roles.c.role_id)
    ).all()
    return {role_id: int(count) for role_id, count in rows}


def _inherited(role: Role) -> list[tuple[str, list[str]]]:
    """Permissions ``role`` gets from its ancestors and not from itself, each with the
    path of roles from ``role`` up to the one holding it (breadth first: the shortest)."""
    own = {p.name for p in role.permissions}
    found: dict[str, list[str]] = {}
    todo: list[tuple[Role, list[str]]] = [
        (parent, [role.name, parent.name]) for parent in role.parents
    ]
    seen = {role.id}
    while todo:
        current, path = todo.pop(0)
        if current.id in seen:
            continue
        seen.add(current.id)
        for permission in sorted(p.name for p in current.permissions):
            if permission not in own:
                found.setdefault(permission, path)
        todo.extend((parent, [*path, parent.name]) for parent in current.parents)
    return sorted(found.items())


def _role_json(role: Role) -> dict[str, Any]:
    return {
        "name": role.name,
        "description": role.description,
        "permissions": [p.name for p in role.permissions],
        "parents": sorted(r.name for r in role.parents),
    }


def register(bp: Blueprint) -> None:
    @bp.get("/roles")
    @permissions_required(rbac.READ_USERS)
    def roles() -> Any:
        """Every role with what it inherits from, its own permissions and its holders."""
        db = db_session()
        rows = list(
            db.scalars(
                select(Role)
                .order_by(Role.name)
                .options(selectinload(Role.permissions), selectinload(Role.parents))
            )
        )
        if wants_json():
            return jsonify({"roles": [_role_json(r) for r in rows]})
        return render_template(
            "aaa/admin_roles.html", roles=rows, holders=_holder_counts(db), errors={}
        )

    @bp.post("/roles")
    @permissions_required(rbac.MANAGE_ROLES)
    def create_role() -> Any:
        """A new role; with ``parent``, it inherits from that role from the start."""
        db = db_session()
        fields = read_fields(["name", "description", "parent"], required=["name"])
        parent = rbac.find_role(db, fields["parent"]) if fields.get("parent") else None
        actor, facts = current_actor(), request_facts()
        role = rbac.create_role(
            db,
            actor=actor,
            name=fields["name"],
            description=fields.get("description", ""),
            facts=facts,
        )
        if parent is not None:
            rbac.add_parent(db, actor=actor, role=role, parent=parent, facts=facts)
        return done(f"Created role {role.name}.", "aaa_admin.role_detail", name=role.name)

    def _role_page(role: Role, errors: dict[str, str] | None = None) -> Response:
        db = db_session()
        size = state().settings.page_size
        holders, more = accounts.list_users(db, limit=size, role=role.name)
        others = [
            r
            for r in db.scalars(select(Role).order_by(Role.name))
            if r.id != role.id and r not in role.parents
        ]
        return Response(
            render_template(
                "aaa/admin_role.html",
                role=role,
                inherited=_inherited(role),
                ancestors=sorted(r.name for r in rbac.ancestors(role)),
                others=others,
                holders=holders,
                holder_count=_holder_counts(db).get(role.id, 0),
                more_holders=more is not None,
                errors=errors or {},
            ),
            status=400 if errors else 200,
        )

    @bp.get("/roles/<name>")
    @permissions_required(rbac.READ_USERS)
    def role_detail(name: str) -> Any:
        """One role: its permissions (own and inherited, with the path), parents, children,
        the users holding it."""
        db = db_session()
        role = rbac.find_role(db, name)
        if wants_json():
            holders, _more = accounts.list_users(db, limit=state().settings.page_size, role=name)
            return jsonify(
                {
                    **_role_json(role),
                    "children": sorted(r.name for r in role.children),
                    "inherited": [{"permission": p, "via": via} for p, via in _inherited(role)],
                    "effective_permissions": rbac.effective_permissions(role),
                    "holder_count": _holder_counts(db).get(role.id, 0),
                    "holders": [u.label for u in holders],
                }
            )
        return _role_page(role)

    @bp.post("/roles/<name>/permissions")
    @permissions_required(rbac.MANAGE_ROLES)
    def add_permission(name: str) -> Any:
        db = db_session()
        role = rbac.find_role(db, name)
        permission = read_fields(["permission"], required=["permission"])["permission"]
        changed = rbac.add_permission(
            db, actor=current_actor(), role=role, permission=permission, facts=request_facts()
        )
        return done(
            f"Added {permission} to {role.name}."
            if changed
            else f"{role.name} already has {permission}.",
            "aaa_admin.role_detail",
            name=role.name,
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
        return done(
            f"Removed {permission} from {role.name}."
            if changed
            else f"{role.name} did not have {permission}.",
            "aaa_admin.role_detail",
            name=role.name,
        )

    @bp.post("/roles/<name>/parents")
    @permissions_required(rbac.MANAGE_ROLES)
    def add_parent(name: str) -> Any:
        """Make the role inherit from ``parent``. A cycle is a 400 shown on the page."""
        db = db_session()
        role = rbac.find_role(db, name)
        parent = rbac.find_role(db, read_fields(["parent"], required=["parent"])["parent"])
        try:
            changed = rbac.add_parent(
                db, actor=current_actor(), role=role, parent=parent, facts=request_facts()
            )
        except InvalidInput as exc:
            db.rollback()
            if wants_json():
                raise
            return _role_page(rbac.find_role(db, name), errors=exc.errors)
        return done(
            f"{role.name} now inherits from {parent.name}."
            if changed
            else f"{role.name} already inherits from {parent.name}.",
            "aaa_admin.role_detail",
            name=role.name,
        )

    @bp.post("/roles/<name>/parents/remove")
    @permissions_required(rbac.MANAGE_ROLES)
    def remove_parent(name: str) -> Any:
        db = db_session()
        role = rbac.find_role(db, name)
        parent = rbac.find_role(db, read_fields(["parent"], required=["parent"])["parent"])
        changed = rbac.remove_parent(
            db, actor=current_actor(), role=role, parent=parent, facts=request_facts()
        )
        return done(
            f"{role.name} no longer inherits from {parent.name}."
            if changed
            else f"{role.name} did not inherit from {parent.name}.",
            "aaa_admin.role_detail",
            name=role.name,
        )

    @bp.post("/roles/<name>/delete")
    @permissions_required(rbac.MANAGE_ROLES)
    def delete_role(name: str) -> Any:
        """Delete the role; ``confirm`` must repeat its name (the form asks for it)."""
        db = db_session()
        role = rbac.find_role(db, name)
        confirm = read_fields(["confirm"]).get("confirm", "").strip()
        if confirm != role.name:
            error = {"confirm": f"Type the role's name, {role.name}, to confirm."}
            if wants_json():
                raise InvalidInput(error)
            return _role_page(role, errors=error)
        label = role.name
        rbac.delete_role(db, actor=current_actor(), role=role, facts=request_facts())
        return done(f"Deleted role {label}.", "aaa_admin.roles")

    @bp.get("/permissions")
    @permissions_required(rbac.READ_USERS)
    def permissions() -> Any:
        """Every permission given to a role or a user, with the roles that hold it directly,
        and the library's own ``aaa:*`` permissions described."""
        db = db_session()
        after = query_arg("after", limit=128) or None
        rows, next_after = rbac.list_permissions(db, limit=state().settings.page_size, after=after)
        holders = {p.name: sorted(r.name for r in p.roles) for p in rows}
        if wants_json():
            return jsonify(
                {
                    "permissions": [
                        {
                            "name": p.name,
                            "roles": holders[p.name],
                            "description": LIBRARY_PERMISSIONS.get(p.name),
                        }
                        for p in rows
                    ],
                    "next_after": next_after,
                    "library": LIBRARY_PERMISSIONS,
                }
            )
        library_holders = {
            name: sorted(
                db.scalars(
                    select(Role.name)
                    .join(Role.permissions)
                    .where(Permission.name == name)
                    .order_by(Role.name)
                )
            )
            for name in LIBRARY_PERMISSIONS
        }
        return render_template(
            "aaa/admin_permissions.html",
            permissions=rows,
            holders=holders,
            next_after=next_after,
            library=LIBRARY_PERMISSIONS,
            library_holders=library_holders,
        )

    @bp.get("/explain")
    @permissions_required(rbac.READ_USERS)
    def explain() -> Any:
        """May this user do this, and why: the roles and paths that grant it, or what is
        missing, what they hold of the same resource, and which roles would grant it."""
        db = db_session()
        who = query_arg("user", limit=320)
        wanted = query_arg("permission", limit=128)
        answer: rbac.Explanation | None = None
        would_grant: list[str] = []
        errors: dict[str, str] = {}
        subject: User | None = None
        status = 200
        if who or wanted:
            subject = accounts.find_user(db, state().settings, who) if who else None
            if subject is None:
                errors["user"] = "No such user." if who else "Name a user."
                status = 404 if who else 400
            if not wanted:
                errors["permission"] = "Name a permission, e.g. notes:read."
                status = 400
        if subject is not None and wanted:
            try:
                answer = rbac.explain(db, subject, wanted)
            except InvalidInput as exc:
                errors.update(exc.errors)
                status = 400
        if answer is not None and not answer.allowed:
            would_grant = [
                r.name
                for r in db.scalars(select(Role).order_by(Role.name))
                if rbac.permission_matches(
                    frozenset(rbac.effective_permissions(r)), answer.permission
                )
            ]
        if wants_json():
            if status == 404:
                raise NotFound("No such user.")
            if errors:
                raise InvalidInput(errors)
            if answer is None:
                raise InvalidInput({"user": "Name a user.", "permission": "Name a permission."})
            return jsonify({**answer.as_dict(), "roles_that_would_grant": would_grant})
        return Response(
            render_template(
                "aaa/admin_explain.html",
                who=who,
                wanted=wanted,
                subject=subject,
                answer=answer,
                would_grant=would_grant,
                errors=errors,
            ),
            status=status,
        )
