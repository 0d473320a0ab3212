"""The versioned JSON API (``AAA_API_URL_PREFIX``, default ``/aaa/api/v1``).

Every view accepts a browser session (with the ``X-CSRFToken`` header on writes) and a
personal access token (``Authorization: Bearer``). Self-service views need the token scopes
``account:read`` or ``account:write``; administration views need an ``aaa:*`` permission,
which a token has only if its scopes and its owner's current grants both hold it.

Views are thin: read the query or the JSON body (an allowlist: any other field is a 400),
call the same service as the HTML pages and the CLI, and serialize. Services record the
audit event of every change in the transaction the view commits once. Lists are
``{"items": [...], "next_cursor": ...}`` with keyset pagination behind an opaque cursor;
exports of the trail are not paged but streamed, as JSON Lines or CSV.
The OpenAPI document that describes all of it is :mod:`flask_aaa.web.openapi`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from flask import Blueprint, Response, jsonify, request, url_for

from ..errors import InvalidInput, NotFound
from ..models import ApiToken, AuditEvent, Permission, Role, User
from ..services import accounts, audit, rbac, sessions, tokens
from . import openapi
from .account import EXPORTS, export_download, session_json, usage_json, usage_of
from .bearer import current_token, via
from .context import current_actor, db_session, login_session, request_facts, signed_in_user, state
from .decorators import auth_required, permissions_required, public
from .forms import audit_filter, json_object, parse_cursor, read_fields

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

#: Largest page a client may ask for.
MAX_LIMIT = 200
#: Longest query-string value looked at.
_ARG_MAX = 256
_LIMIT_RE = re.compile(r"[0-9]{1,3}")
_MAX_ID = 2147483647
#: Id segments are plain ``int`` (an out-of-range value is refused in ``ids_in_range``:
#: with ``int(max=...)`` Werkzeug answers 405 instead of 404 to a write method).
_ID = "<int:{}>"

#: Guards: every view has one, so deny-by-default mode leaves the API open to its users.
self_read = auth_required(scopes=("account:read",))
self_write = auth_required(scopes=("account:write",))


def admin(permission: str) -> Callable[[F], F]:
    """Session or token, holding ``permission`` (a denial is audited by rbac)."""

    def decorator(view: F) -> F:
        return auth_required()(permissions_required(permission)(view))

    return decorator


# -- reading the request --


def query_args(allowed: Iterable[str], *, paged: bool = True) -> dict[str, str]:
    """The query arguments named in ``allowed`` (plus ``limit`` and ``cursor`` if
    ``paged``). Any other name is a 400, so a misspelt filter never silently lists
    everything; so is an empty value, which would otherwise mean "no filter"."""
    names = set(allowed) | ({"limit", "cursor"} if paged else set())
    errors = {key[:64]: "Unknown parameter." for key in request.args if key not in names}
    out: dict[str, str] = {}
    for name in names:
        value = request.args.get(name)
        if value is None:
            continue
        if not value:
            errors[name] = "Must not be empty."
        elif len(value) > _ARG_MAX:
            errors[name] = "Too long."
        elif any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            errors[name] = "Must be valid text."
        else:
            out[name] = value
    if errors:
        raise InvalidInput(errors)
    return out


def page_limit(args: dict[str, str]) -> int:
    value = args.get("limit")
    if value is None:
        return min(state().settings.page_size, MAX_LIMIT)
    if not _LIMIT_RE.fullmatch(value) or not 1 <= int(value) <= MAX_LIMIT:
        raise InvalidInput({"limit": f"Use a whole number from 1 to {MAX_LIMIT}."})
    return int(value)


def encode_cursor(listing: str, value: object) -> str | None:
    """An opaque cursor for ``listing`` that resumes after ``value`` (None: no more)."""
    if value is None:
        return None
    raw = f"{listing}:{value}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(listing: str, args: dict[str, str]) -> str | None:
    """The position a cursor of ``listing`` holds; a cursor of another listing, or not a
    cursor at all, is a 400."""
    value = args.get("cursor")
    if value is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raw = ""
    kind, sep, position = raw.partition(":")
    if not sep or kind != listing or not position or "\x00" in position:
        raise InvalidInput({"cursor": "Pass back a next_cursor of this same listing."})
    return position


def id_cursor(listing: str, args: dict[str, str]) -> int | None:
    position = decode_cursor(listing, args)
    if position is None:
        return None
    try:
        return parse_cursor(position, "cursor")
    except InvalidInput:
        raise InvalidInput({"cursor": "Pass back a next_cursor of this same listing."}) from None


def page(items: Iterable[dict[str, Any]], next_cursor: str | None) -> Response:
    return jsonify({"items": list(items), "next_cursor": next_cursor})


def newest_first(
    rows: Sequence[T], listing: str, args: dict[str, str], key: Callable[[T], int]
) -> tuple[list[T], str | None]:
    """Keyset pagination, by id descending, over one user's small lists (sessions,
    tokens), already loaded by their service."""
    before = id_cursor(listing, args)
    ordered = sorted(rows, key=key, reverse=True)
    if before is not None:
        ordered = [row for row in ordered if key(row) < before]
    chosen = ordered[: page_limit(args)]
    more = len(ordered) > len(chosen)
    return chosen, encode_cursor(listing, key(chosen[-1])) if more and chosen else None


def body(allowed: Iterable[str]) -> dict[str, object]:
    return json_object(allowed)


def body_bool(data: dict[str, object], name: str) -> bool:
    value = data.get(name)
    if not isinstance(value, bool):
        raise InvalidInput({name: "Use true or false."})
    return value


def body_strings(data: dict[str, object], name: str, *, required: bool = False) -> list[str]:
    value = data.get(name)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidInput({name: "Send a list of strings."})
    return value


def body_days(data: dict[str, object]) -> object:
    value = data.get("expires_in_days")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidInput({"expires_in_days": "Use a whole number of days."})
    return value


def int_arg(args: dict[str, str], name: str) -> int | None:
    """A database id from the query string: 1 to 2**31 - 1."""
    value = args.get(name)
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,10}", value) or not 1 <= int(value) <= _MAX_ID:
        raise InvalidInput({name: f"Use a whole number from 1 to {_MAX_ID}."})
    return int(value)


def flag(args: dict[str, str], name: str) -> bool | None:
    value = args.get(name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise InvalidInput({name: "Use true or false."})
    return value == "true"


def exact(value: str, validate: Callable[[str], str], field: str) -> str:
    """``value`` if it is already a valid name. (The services forgive surrounding spaces;
    the API takes names exactly as its document describes them.)"""
    try:
        if validate(value) == value:
            return value
    except InvalidInput:
        pass
    raise InvalidInput({field: "Not a valid name."})


def known_roles(names: Sequence[str]) -> list[Role]:
    db = db_session()
    found = []
    for name in names:
        try:
            found.append(rbac.find_role(db, exact(name, rbac.validate_role_name, "roles")))
        except (InvalidInput, NotFound):
            raise InvalidInput({"roles": f"No role named {name[:64]!r}."}) from None
    return found


def role_named(name: str) -> Role:
    """The role called exactly ``name`` (404 otherwise)."""
    if name != name.strip():
        raise NotFound("No such role.")
    return rbac.find_role(db_session(), name)


def user_by_id(user_id: int) -> User:
    user = db_session().get(User, user_id)
    if user is None:
        raise NotFound("No such user.")
    return user


# -- serializing --


def iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "kind": user.kind,
        "active": user.active,
        "roles": [role.name for role in user.roles],
        "created_at": iso(user.created_at),
        "last_login_at": iso(user.last_login_at),
        "mfa_enabled": user.mfa_enabled,
    }


def role_json(role: Role) -> dict[str, Any]:
    return {
        "name": role.name,
        "description": role.description,
        "permissions": sorted(p.name for p in role.permissions),
        "parents": [r.name for r in role.parents],
        "effective_permissions": rbac.effective_permissions(role),
        "created_at": iso(role.created_at),
    }


def permission_json(permission: Permission) -> dict[str, Any]:
    return {
        "name": permission.name,
        "description": permission.description,
        "roles": sorted(r.name for r in permission.roles),
    }


def minted_json(minted: tokens.Minted) -> Response:
    response = jsonify({"token": tokens.describe(minted.token), "secret": minted.secret})
    response.status_code = 201
    return response


def no_content() -> Response:
    return Response(status=204)


def events_page(flt: audit.AuditFilter, listing: str, args: dict[str, str]) -> Response:
    found = audit.query(db_session(), flt, limit=page_limit(args), before=id_cursor(listing, args))
    return page((audit.as_dict(e) for e in found.events), encode_cursor(listing, found.next_before))


#: The filters of the administrators' trail, listed and exported alike.
AUDIT_FILTERS = ("actor", "target_type", "target_id", "action", "outcome", "ip", "since", "until")
#: The filters of a user's own activity, listed and exported alike.
ACTIVITY_FILTERS = ("action", "outcome", "since", "until")


def trail_filter(args: dict[str, str]) -> audit.AuditFilter:
    """The administrators' filters of the trail, validated (see :data:`AUDIT_FILTERS`)."""
    return audit_filter(args, actor_id=int_arg(args, "actor"))


def export(flt: audit.AuditFilter, args: dict[str, str], name: str) -> Response:
    """The events matching ``flt`` as a streamed download in the ``format`` the query
    names (``jsonl`` or ``csv``); a missing or unknown format is a 400 before anything is
    read."""
    fmt = args.get("format")
    if fmt not in EXPORTS:
        raise InvalidInput({"format": f"Use one of {', '.join(EXPORTS)}."})
    return export_download(flt, fmt, name)


def token_status(args: dict[str, str]) -> str | None:
    value = args.get("status")
    if value is not None and value not in ("active", "expired", "revoked"):
        raise InvalidInput({"status": "Use active, expired or revoked."})
    return value


def tokens_page(owner: User, listing: str, args: dict[str, str]) -> Response:
    wanted = token_status(args)
    rows: Sequence[ApiToken] = tokens.tokens_of(db_session(), owner)
    if wanted is not None:
        rows = [t for t in rows if tokens.status(t) == wanted]
    chosen, nxt = newest_first(rows, listing, args, lambda t: t.id)
    return page((tokens.describe(t) for t in chosen), nxt)


def mint_from_body(owner: User) -> Response:
    data = body(["name", "scopes", "expires_in_days"])
    db = db_session()
    minted = tokens.mint(
        db,
        owner,
        actor=current_actor(),
        name=data.get("name"),
        scopes=body_strings(data, "scopes", required=True),
        days=body_days(data),
        settings=state().settings,
        facts=request_facts(),
    )
    db.commit()
    return minted_json(minted)


def create_blueprint() -> Blueprint:
    bp = Blueprint("aaa_api", __name__)

    @bp.url_value_preprocessor
    def ids_in_range(_endpoint: str | None, values: dict[str, Any] | None) -> None:
        """No row has an id past the database's integer range: such a URL is a 404 before
        anything (a database driver included) sees the number."""
        for value in (values or {}).values():
            if isinstance(value, int) and value > _MAX_ID:
                raise NotFound("No such resource.")

    @bp.get("/openapi.json")
    @public
    def openapi_document() -> Any:
        return jsonify(openapi.build(state().settings))

    # -- the signed-in user --

    @bp.get("/me")
    @self_read
    def me() -> Any:
        query_args(())
        user = signed_in_user()
        grants = user.grants
        held = grants.owner if isinstance(grants, tokens.ScopedGrants) else grants
        token = current_token()
        auth: dict[str, Any] = {"method": via()}
        if token is not None:
            auth.update(token_id=token.id, scopes=token.scope_list)
        return jsonify(
            {
                **user_json(user),
                "permissions": sorted(held.permissions),
                "auth": auth,
                "usage": usage_json(usage_of(db_session(), user.id)),
            }
        )

    @bp.get("/me/sessions")
    @self_read
    def my_sessions() -> Any:
        args = query_args(())
        current = login_session()
        live = sessions.live_sessions(db_session(), signed_in_user())
        chosen, nxt = newest_first(live, "me-sessions", args, lambda s: s.id)
        return page((session_json(s, current) for s in chosen), nxt)

    @bp.delete(f"/me/sessions/{_ID.format('session_id')}")
    @self_write
    def revoke_my_session(session_id: int) -> Any:
        db = db_session()
        sessions.revoke_own(
            db,
            user=signed_in_user(),
            session_id=session_id,
            current=login_session(),
            facts=request_facts(),
        )
        db.commit()
        return no_content()

    @bp.get("/me/tokens")
    @self_read
    def my_tokens() -> Any:
        return tokens_page(signed_in_user(), "me-tokens", query_args(("status",)))

    @bp.post("/me/tokens")
    @self_write
    def mint_my_token() -> Any:
        return mint_from_body(signed_in_user())

    @bp.get(f"/me/tokens/{_ID.format('token_id')}")
    @self_read
    def my_token(token_id: int) -> Any:
        query_args(())
        return jsonify(tokens.describe(tokens.get(db_session(), token_id, owner=signed_in_user())))

    @bp.delete(f"/me/tokens/{_ID.format('token_id')}")
    @self_write
    def revoke_my_token(token_id: int) -> Any:
        db = db_session()
        token = tokens.get(db, token_id, owner=signed_in_user())
        tokens.revoke(db, token, actor=current_actor(), facts=request_facts())
        db.commit()
        return no_content()

    @bp.get("/me/activity")
    @self_read
    def my_activity() -> Any:
        """The user's own events. No argument names another user: the filter is always
        the caller, so nobody else's events can be asked for."""
        args = query_args(ACTIVITY_FILTERS)
        flt = audit_filter(args, involving_user=signed_in_user().id)
        return events_page(flt, "me-activity", args)

    @bp.get("/me/activity/export")
    @self_read
    def export_my_activity() -> Any:
        """All the user's own events matching the filters, oldest first, as a download.
        As with the listing, the filter is always the caller."""
        args = query_args((*ACTIVITY_FILTERS, "format"), paged=False)
        flt = audit_filter(args, involving_user=signed_in_user().id)
        return export(flt, args, "my-activity")

    @bp.get(f"/me/activity/{_ID.format('seq')}")
    @self_read
    def my_event(seq: int) -> Any:
        query_args(())
        flt = audit.AuditFilter(involving_user=signed_in_user().id)
        return jsonify(event_or_404(audit.get(db_session(), flt, seq)))

    # -- administration: users --

    @bp.get("/users")
    @admin(rbac.READ_USERS)
    def users() -> Any:
        args = query_args(("q", "active", "role", "kind"))
        role = args.get("role")
        if role is not None:
            role = exact(role, rbac.validate_role_name, "role")
        rows, after = accounts.list_users(
            db_session(),
            limit=page_limit(args),
            after=id_cursor("users", args),
            q=args.get("q"),
            active=flag(args, "active"),
            role=role,
            kind=args.get("kind"),
        )
        return page((user_json(u) for u in rows), encode_cursor("users", after))

    @bp.get(f"/users/{_ID.format('user_id')}")
    @admin(rbac.READ_USERS)
    def user(user_id: int) -> Any:
        query_args(())
        subject = user_by_id(user_id)
        db = db_session()
        live = sessions.live_sessions(db, subject)
        return jsonify(
            {
                **user_json(subject),
                "usage": usage_json(usage_of(db, subject.id)),
                "live_sessions": len(live),
                "direct_permissions": [p.name for p in subject.permissions],
            }
        )

    @bp.patch(f"/users/{_ID.format('user_id')}")
    @admin(rbac.MANAGE_USERS)
    def update_user(user_id: int) -> Any:
        """Only ``active`` may be changed here (an allowlist): roles have their own
        endpoints, and nothing else of an account is an administrator's to set."""
        subject = user_by_id(user_id)
        data = body(["active"])
        if "active" not in data:
            raise InvalidInput({"active": "This field is required."})
        db = db_session()
        accounts.set_active(
            db,
            actor=current_actor(),
            user=subject,
            active=body_bool(data, "active"),
            facts=request_facts(),
        )
        db.commit()
        return jsonify(user_json(subject))

    @bp.post("/service-accounts")
    @admin(rbac.MANAGE_USERS)
    def create_service_account() -> Any:
        data = body(["name", "roles"])
        name = read_fields(["name"], required=["name"])["name"]
        roles = known_roles(body_strings(data, "roles"))
        db = db_session()
        try:
            created = accounts.create_service_account(
                db, actor=current_actor(), name=name, roles=roles, facts=request_facts()
            )
        except InvalidInput as exc:
            # The service names the field after the column; the API's field is ``name``.
            errors = {("name" if k == "username" else k): v for k, v in exc.errors.items()}
            raise InvalidInput(errors) from None
        db.commit()
        response = jsonify(user_json(created))
        response.status_code = 201
        response.headers["Location"] = url_for("aaa_api.user", user_id=created.id)
        return response

    @bp.put(f"/users/{_ID.format('user_id')}/roles/<role>")
    @admin(rbac.ASSIGN_ROLES)
    def grant_role(user_id: int, role: str) -> Any:
        db = db_session()
        subject = user_by_id(user_id)
        rbac.grant_role(
            db,
            actor=current_actor(),
            user=subject,
            role=role_named(role),
            facts=request_facts(),
        )
        db.commit()
        return jsonify(user_json(subject))

    @bp.delete(f"/users/{_ID.format('user_id')}/roles/<role>")
    @admin(rbac.ASSIGN_ROLES)
    def revoke_role(user_id: int, role: str) -> Any:
        db = db_session()
        subject = user_by_id(user_id)
        rbac.revoke_role(
            db,
            actor=current_actor(),
            user=subject,
            role=role_named(role),
            facts=request_facts(),
        )
        db.commit()
        return no_content()

    # -- administration: tokens --

    @bp.get(f"/users/{_ID.format('user_id')}/tokens")
    @admin(rbac.READ_USERS)
    def user_tokens(user_id: int) -> Any:
        args = query_args(("status",))
        return tokens_page(user_by_id(user_id), "user-tokens", args)

    @bp.post(f"/users/{_ID.format('user_id')}/tokens")
    @admin(rbac.MANAGE_USERS)
    def mint_user_token(user_id: int) -> Any:
        return mint_from_body(user_by_id(user_id))

    @bp.get(f"/tokens/{_ID.format('token_id')}")
    @admin(rbac.READ_USERS)
    def token(token_id: int) -> Any:
        query_args(())
        return jsonify(tokens.describe(tokens.get(db_session(), token_id)))

    @bp.delete(f"/tokens/{_ID.format('token_id')}")
    @admin(rbac.MANAGE_USERS)
    def revoke_token(token_id: int) -> Any:
        db = db_session()
        found = tokens.get(db, token_id)
        tokens.revoke(db, found, actor=current_actor(), facts=request_facts())
        db.commit()
        return no_content()

    # -- administration: roles and permissions --

    @bp.get("/roles")
    @admin(rbac.READ_USERS)
    def roles() -> Any:
        args = query_args(())
        rows, after = rbac.list_roles(
            db_session(), limit=page_limit(args), after=decode_cursor("roles", args)
        )
        return page((role_json(r) for r in rows), encode_cursor("roles", after))

    @bp.post("/roles")
    @admin(rbac.MANAGE_ROLES)
    def create_role() -> Any:
        body(["name", "description"])
        fields = read_fields(["name", "description"], required=["name"])
        if len(fields.get("description", "")) > 255:
            # The service would clip it; an API client is told instead.
            raise InvalidInput({"description": "Use at most 255 characters."})
        db = db_session()
        created = rbac.create_role(
            db,
            actor=current_actor(),
            name=fields["name"],
            description=fields.get("description", ""),
            facts=request_facts(),
        )
        db.commit()
        response = jsonify(role_json(created))
        response.status_code = 201
        response.headers["Location"] = url_for("aaa_api.role", name=created.name)
        return response

    @bp.get("/roles/<name>")
    @admin(rbac.READ_USERS)
    def role(name: str) -> Any:
        query_args(())
        return jsonify(role_json(role_named(name)))

    @bp.put("/roles/<name>/permissions/<permission>")
    @admin(rbac.MANAGE_ROLES)
    def add_permission(name: str, permission: str) -> Any:
        db = db_session()
        found = role_named(name)
        rbac.add_permission(
            db,
            actor=current_actor(),
            role=found,
            permission=exact(permission, rbac.validate_permission_name, "permission"),
            facts=request_facts(),
        )
        db.commit()
        return jsonify(role_json(found))

    @bp.delete("/roles/<name>/permissions/<permission>")
    @admin(rbac.MANAGE_ROLES)
    def remove_permission(name: str, permission: str) -> Any:
        db = db_session()
        found = role_named(name)
        rbac.remove_permission(
            db,
            actor=current_actor(),
            role=found,
            permission=exact(permission, rbac.validate_permission_name, "permission"),
            facts=request_facts(),
        )
        db.commit()
        return no_content()

    @bp.put("/roles/<name>/parents/<parent>")
    @admin(rbac.MANAGE_ROLES)
    def add_parent(name: str, parent: str) -> Any:
        db = db_session()
        found = role_named(name)
        rbac.add_parent(
            db, actor=current_actor(), role=found, parent=role_named(parent), facts=request_facts()
        )
        db.commit()
        return jsonify(role_json(found))

    @bp.delete("/roles/<name>/parents/<parent>")
    @admin(rbac.MANAGE_ROLES)
    def remove_parent(name: str, parent: str) -> Any:
        db = db_session()
        rbac.remove_parent(
            db,
            actor=current_actor(),
            role=role_named(name),
            parent=role_named(parent),
            facts=request_facts(),
        )
        db.commit()
        return no_content()

    @bp.delete("/roles/<name>")
    @admin(rbac.MANAGE_ROLES)
    def delete_role(name: str) -> Any:
        db = db_session()
        rbac.delete_role(db, actor=current_actor(), role=role_named(name), facts=request_facts())
        db.commit()
        return no_content()

    @bp.put(f"/users/{_ID.format('user_id')}/permissions/<permission>")
    @admin(rbac.ASSIGN_ROLES)
    def grant_user_permission(user_id: int, permission: str) -> Any:
        db = db_session()
        subject = user_by_id(user_id)
        rbac.grant_permission(
            db,
            actor=current_actor(),
            user=subject,
            permission=exact(permission, rbac.validate_permission_name, "permission"),
            facts=request_facts(),
        )
        db.commit()
        return jsonify(user_json(subject))

    @bp.delete(f"/users/{_ID.format('user_id')}/permissions/<permission>")
    @admin(rbac.ASSIGN_ROLES)
    def revoke_user_permission(user_id: int, permission: str) -> Any:
        db = db_session()
        rbac.revoke_permission(
            db,
            actor=current_actor(),
            user=user_by_id(user_id),
            permission=exact(permission, rbac.validate_permission_name, "permission"),
            facts=request_facts(),
        )
        db.commit()
        return no_content()

    @bp.get("/explain")
    @admin(rbac.READ_USERS)
    def explain() -> Any:
        """May this user use this permission, and why (or what is missing)?"""
        args = query_args(("user", "permission"))
        user_id = int_arg(args, "user")
        if user_id is None or "permission" not in args:
            raise InvalidInput({"user": "Give user (an id) and permission."})
        permission = exact(args["permission"], rbac.validate_permission_name, "permission")
        return jsonify(rbac.explain(db_session(), user_by_id(user_id), permission).as_dict())

    @bp.get("/permissions")
    @admin(rbac.READ_USERS)
    def permissions() -> Any:
        args = query_args(())
        rows, after = rbac.list_permissions(
            db_session(), limit=page_limit(args), after=decode_cursor("permissions", args)
        )
        return page((permission_json(p) for p in rows), encode_cursor("permissions", after))

    # -- administration: the audit trail --

    @bp.get("/audit")
    @admin(rbac.READ_AUDIT)
    def audit_events() -> Any:
        args = query_args(AUDIT_FILTERS)
        return events_page(trail_filter(args), "audit", args)

    @bp.get("/audit/export")
    @admin(rbac.READ_AUDIT)
    def export_audit_events() -> Any:
        """Every event matching the filters of ``GET /audit``, oldest first, as a
        download (JSON Lines or CSV), streamed."""
        args = query_args((*AUDIT_FILTERS, "format"), paged=False)
        return export(trail_filter(args), args, "audit")

    @bp.get(f"/audit/{_ID.format('seq')}")
    @admin(rbac.READ_AUDIT)
    def audit_event(seq: int) -> Any:
        query_args(())
        return jsonify(event_or_404(audit.get(db_session(), audit.AuditFilter(), seq)))

    return bp


def event_or_404(found: AuditEvent | None) -> dict[str, Any]:
    if found is None:
        raise NotFound("No such event.")
    return audit.as_dict(found)


__all__ = ["create_blueprint"]
