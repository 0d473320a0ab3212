"""The OpenAPI 3.1 document of the JSON API (served at ``<api prefix>/openapi.json``).

Built as plain data from the app's settings (mount point, token lifetimes, page size, cookie
name), so what it says is what this app does. ``tests/api/test_openapi_fuzz.py`` keeps it
true: it fuzzes every operation from this document and checks each answer against it. The
constraints declared here are the ones the views enforce, no looser and no tighter.
"""

from __future__ import annotations

from typing import Any

from ..config import Settings
from ..services import audit, sessions

JSON = "application/json"
#: The media types of the audit exports (see ``web.account.EXPORTS``).
JSON_LINES = "application/x-ndjson"
CSV = "text/csv"
_PERMISSION_PATTERN = r"^(\*|[a-z0-9_.-]+(:[a-z0-9_.-]+)*(:\*)?)$"
_ROLE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_MAX_ID = 2147483647
#: Every query-string value is at most this long (see ``api.query_args``).
_ARG_MAX = 256
#: The error statuses every authenticated operation can answer with.
_COMMON_ERRORS = ("400", "401", "403", "429", "503")
_WRITE_ERRORS = ("409", "413")

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str) -> Schema:
    return {"type": [kind, "null"]}


def _object(properties: dict[str, Schema], *, required: tuple[str, ...] | None = None) -> Schema:
    """A closed object; every property is required unless ``required`` names fewer."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties if required is None else required),
        "additionalProperties": False,
    }


def _page(item: str) -> Schema:
    return _object(
        {
            "items": {"type": "array", "items": _ref(item)},
            "next_cursor": {
                **_nullable("string"),
                "description": "Pass back as `cursor` for the next page; null on the last.",
            },
        }
    )


def _strings() -> Schema:
    return {"type": "array", "items": {"type": "string"}}


def _schemas(settings: Settings) -> dict[str, Schema]:
    user = {
        "id": {"type": "integer"},
        "username": _nullable("string"),
        "email": _nullable("string"),
        "kind": {"type": "string", "enum": ["person", "service"]},
        "active": {"type": "boolean"},
        "roles": _strings(),
        "created_at": _nullable("string"),
        "last_login_at": _nullable("string"),
        "mfa_enabled": {"type": "boolean"},
    }
    token = {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "hint": {"type": "string", "description": "The first characters, to recognise it."},
        "scopes": _strings(),
        "created_at": {"type": "string"},
        "expires_at": {"type": "string"},
        "last_used_at": _nullable("string"),
        "last_used_ip": _nullable("string"),
        "revoked_at": _nullable("string"),
        "status": {"type": "string", "enum": ["active", "expired", "revoked"]},
    }
    return {
        "Error": _object(
            {
                "error": {"type": "string", "description": "A stable, machine-readable code."},
                "message": {"type": "string"},
                "fields": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Per-field problems (invalid_input).",
                },
            },
            required=("error", "message"),
        ),
        "User": _object(user),
        "Usage": _object(
            {
                "last_login_at": _nullable("string"),
                "last_login_ip": _nullable("string"),
                "login_count": {"type": "integer", "minimum": 0},
                "active_sessions": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Sessions that would be accepted now: not revoked, not "
                    "past their lifetime, used within the idle timeout.",
                },
                "recent_sessions": {
                    "type": "integer",
                    "minimum": 0,
                    "description": f"Sign-ins the durations cover: the last "
                    f"{sessions.USAGE_SESSIONS} opened in the last {sessions.USAGE_DAYS} "
                    "days, impersonation left out.",
                },
                "median_session_seconds": {
                    **_nullable("integer"),
                    "description": "Median sign-in length (null without one).",
                },
                "longest_session_seconds": {
                    **_nullable("integer"),
                    "description": "Longest sign-in length (null without one).",
                },
            }
        ),
        "UserDetail": _object(
            {
                **user,
                "usage": _ref("Usage"),
                "live_sessions": {"type": "integer", "minimum": 0},
                "direct_permissions": _strings(),
            }
        ),
        "Explanation": _object(
            {
                "user": {"type": "string"},
                "permission": {"type": "string"},
                "allowed": {"type": "boolean"},
                "reason": {"type": "string"},
                "grants": {
                    "type": "array",
                    "items": _object({"via": _strings(), "grant": {"type": "string"}}),
                },
                "near": _strings(),
            }
        ),
        "Me": _object(
            {
                **user,
                "permissions": _strings(),
                "auth": _object(
                    {
                        "method": {"type": "string", "enum": ["session", "token"]},
                        "token_id": {"type": "integer"},
                        "scopes": _strings(),
                    },
                    required=("method",),
                ),
                "usage": _ref("Usage"),
            }
        ),
        "Session": _object(
            {
                "id": {"type": "integer"},
                "current": {"type": "boolean"},
                "ip": _nullable("string"),
                "user_agent": _nullable("string"),
                "created_at": {"type": "string"},
                "last_seen_at": {"type": "string"},
                "expires_at": {"type": "string"},
            }
        ),
        "Token": _object(token),
        "MintedToken": _object(
            {
                "token": _ref("Token"),
                "secret": {
                    "type": "string",
                    "description": "The token itself. Shown this once; it is not stored.",
                },
            }
        ),
        "NewToken": _object(
            {
                "name": {"type": "string", "minLength": 1, "maxLength": 64},
                "scopes": {
                    "type": "array",
                    "items": {"type": "string", "pattern": _PERMISSION_PATTERN, "maxLength": 128},
                    "minItems": 1,
                    "maxItems": 32,
                },
                "expires_in_days": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": settings.token_max_days,
                    "default": settings.token_default_days,
                },
            },
            required=("name", "scopes"),
        ),
        "UserChange": _object({"active": {"type": "boolean"}}),
        "NewServiceAccount": _object(
            {
                "name": {"type": "string", "minLength": 3, "maxLength": 32},
                "roles": {
                    "type": "array",
                    "items": {"type": "string", "pattern": _ROLE_PATTERN},
                },
            },
            required=("name",),
        ),
        "Role": _object(
            {
                "name": {"type": "string"},
                "description": {"type": "string"},
                "permissions": _strings(),
                "parents": _strings(),
                "effective_permissions": _strings(),
                "created_at": _nullable("string"),
            }
        ),
        "NewRole": _object(
            {
                "name": {"type": "string", "pattern": _ROLE_PATTERN},
                "description": {"type": "string", "maxLength": 255},
            },
            required=("name",),
        ),
        "Permission": _object(
            {"name": {"type": "string"}, "description": {"type": "string"}, "roles": _strings()}
        ),
        "AuditEvent": _object(
            {
                "seq": {"type": "integer"},
                "ts": {"type": "string"},
                "actor_type": {"type": "string"},
                "actor_id": _nullable("integer"),
                "actor_name": _nullable("string"),
                "action": {"type": "string"},
                "outcome": {"type": "string", "enum": list(audit.OUTCOMES)},
                "target_type": _nullable("string"),
                "target_id": _nullable("string"),
                "target_label": _nullable("string"),
                "ip": _nullable("string"),
                "user_agent": _nullable("string"),
                "request_id": _nullable("string"),
                "session_hash": _nullable("string"),
                "details": {"type": "object"},
                "prev_hash": _nullable("string"),
                "hash": _nullable("string"),
            }
        ),
        "UserPage": _page("User"),
        "SessionPage": _page("Session"),
        "TokenPage": _page("Token"),
        "RolePage": _page("Role"),
        "PermissionPage": _page("Permission"),
        "AuditPage": _page("AuditEvent"),
    }


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {JSON: {"schema": _ref("Error")}},
    }
    if headers:
        out["headers"] = headers
    return out


_RESPONSES: dict[str, dict[str, Any]] = {
    "400": _error(
        "invalid_input (with `fields`), csrf_failed, bad_request: the request is refused "
        "and nothing changed."
    ),
    "401": _error(
        "login_required, invalid_token (unknown, revoked or expired token) or token_not_accepted.",
        {"WWW-Authenticate": {"schema": {"type": "string"}}},
    ),
    "403": _error("permission_denied: a missing permission or token scope (audited)."),
    "404": _error("not_found: no such resource, or not one the caller may see."),
    "409": _error("conflict: the change would break an invariant (e.g. the last admin)."),
    "413": _error("too_large: the body exceeds AAA_MAX_BODY_SIZE."),
    "429": _error(
        "throttled: too many requests.",
        {"Retry-After": {"schema": {"type": "string"}, "required": True}},
    ),
    "503": _error(
        "service_unavailable: the database or the audit trail cannot serve it now.",
        {"Retry-After": {"schema": {"type": "string"}, "required": True}},
    ),
}


def _string_param(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", "minLength": 1, "maxLength": _ARG_MAX, **schema},
    }


def _id_param(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0, "maximum": _MAX_ID},
    }


def _name_param(name: str, pattern: str, max_length: int) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": pattern, "maxLength": max_length},
    }


def _paging(settings: Settings) -> list[dict[str, Any]]:
    return [
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": f"Items per page (default {min(settings.page_size, 200)}).",
            "schema": {"type": "integer", "minimum": 1, "maximum": 200},
        },
        _string_param("cursor", "The `next_cursor` of the previous page (opaque)."),
    ]


_TIME_RANGE = [
    _string_param("since", "ISO 8601 date or time (UTC if no offset); inclusive.", maxLength=128),
    _string_param("until", "ISO 8601 date or time (UTC if no offset); inclusive.", maxLength=128),
]
_ACTION = _string_param(
    "action",
    "An action, or a prefix ending in `*` or `.` (e.g. `auth.*`).",
    pattern=r"^[a-z0-9_.]{1,64}\*?$",
)
_OUTCOME = {
    "name": "outcome",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": list(audit.OUTCOMES)},
}
_FORMAT = {
    "name": "format",
    "in": "query",
    "required": True,
    "description": "`jsonl`: one JSON object per line; `csv`: a header line, then one record "
    "per event.",
    "schema": {"type": "string", "enum": ["jsonl", "csv"]},
}
_EXPORT_COLUMNS = ", ".join(audit.EXPORT_COLUMNS)
_EXPORT_CONTENT = {
    JSON_LINES: {
        "schema": {
            "type": "string",
            "description": "One AuditEvent object (see the schema) per line, oldest first.",
        }
    },
    CSV: {
        "schema": {
            "type": "string",
            "description": f"RFC 4180, CRLF line ends. Columns: {_EXPORT_COLUMNS}.",
        }
    },
}
_EXPORT_NOTE = (
    "Every matching event, oldest first, in one streamed answer (not paged): the media type "
    "follows `format`. In CSV, `details` is its JSON text, and a cell starting with `=`, `+`, "
    "`-`, `@`, a tab or a carriage return is prefixed with `'` so that a spreadsheet shows it "
    "as text; verify hashes from JSON Lines, which is verbatim."
)
_STATUS = {
    "name": "status",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["active", "expired", "revoked"]},
}


class _Paths:
    """Collects the operations, each with its security, parameters and every status."""

    def __init__(self) -> None:
        self.paths: dict[str, dict[str, Any]] = {}

    def add(
        self,
        method: str,
        path: str,
        operation_id: str,
        summary: str,
        *,
        tag: str,
        scope: str,
        ok: str,
        schema: str | None = None,
        params: list[dict[str, Any]] | None = None,
        body: str | None = None,
        not_found: bool = False,
        description: str | None = None,
        download: dict[str, Any] | None = None,
    ) -> None:
        """``download``: the success answer is a file of one of these media types (a
        streamed attachment) rather than JSON."""
        write = method != "get"
        security: list[dict[str, list[str]]] = [
            {"bearerAuth": [scope]},
            {"sessionCookie": [], "csrfHeader": []} if write else {"sessionCookie": []},
        ]
        responses: dict[str, Any] = {}
        success: dict[str, Any] = {"description": "Success."}
        if schema is not None:
            success["content"] = {JSON: {"schema": _ref(schema)}}
        if download is not None:
            success["content"] = download
            success["headers"] = {
                "Content-Disposition": {
                    "description": "attachment, with a file name",
                    "schema": {"type": "string"},
                    "required": True,
                }
            }
        if ok == "201":
            success["headers"] = {"Location": {"schema": {"type": "string"}}}
        responses[ok] = success
        codes = list(_COMMON_ERRORS)
        if not_found or "{" in path:
            codes.append("404")
        if write:
            codes.extend(_WRITE_ERRORS)
        for code in sorted(codes):
            responses[code] = {"$ref": f"#/components/responses/{code}"}
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "summary": summary,
            "tags": [tag],
            "security": security,
            "parameters": params or [],
            "responses": responses,
        }
        if description:
            operation["description"] = description
        if body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {JSON: {"schema": _ref(body)}},
            }
        self.paths.setdefault(path, {})[method] = operation


def _operations(settings: Settings) -> dict[str, dict[str, Any]]:
    p = _Paths()
    paging = _paging(settings)
    read, write = "account:read", "account:write"
    token_id, user_id, seq = _id_param("token_id"), _id_param("user_id"), _id_param("seq")
    role = _name_param("role", _ROLE_PATTERN, 64)
    role_name = _name_param("name", _ROLE_PATTERN, 64)
    permission = _name_param("permission", _PERMISSION_PATTERN, 128)

    p.add("get", "/me", "getMe", "The signed-in user", tag="self", scope=read, ok="200",
          schema="Me")  # fmt: skip
    p.add("get", "/me/sessions", "listMySessions", "My live sessions", tag="self", scope=read,
          ok="200", schema="SessionPage", params=paging)  # fmt: skip
    p.add("delete", "/me/sessions/{session_id}", "revokeMySession", "Sign one session out",
          tag="self", scope=write, ok="204", params=[_id_param("session_id")])  # fmt: skip
    p.add("get", "/me/tokens", "listMyTokens", "My API tokens", tag="self", scope=read,
          ok="200", schema="TokenPage", params=[_STATUS, *paging])  # fmt: skip
    p.add("post", "/me/tokens", "mintMyToken", "Mint an API token for myself", tag="self",
          scope=write, ok="201", schema="MintedToken", body="NewToken",
          description="Scopes must be covered by what the caller holds; a token can never "
          "mint a wider one. The secret is in this answer only.")  # fmt: skip
    p.add("get", "/me/tokens/{token_id}", "getMyToken", "One of my tokens", tag="self",
          scope=read, ok="200", schema="Token", params=[token_id])  # fmt: skip
    p.add("delete", "/me/tokens/{token_id}", "revokeMyToken", "Revoke one of my tokens",
          tag="self", scope=write, ok="204", params=[token_id])  # fmt: skip
    p.add("get", "/me/activity", "listMyActivity", "My activity (audit events)", tag="self",
          scope=read, ok="200", schema="AuditPage",
          params=[_ACTION, _OUTCOME, *_TIME_RANGE, *paging])  # fmt: skip
    p.add("get", "/me/activity/export", "exportMyActivity",
          "Download my activity (JSON Lines or CSV)", tag="self", scope=read, ok="200",
          download=_EXPORT_CONTENT, params=[_FORMAT, _ACTION, _OUTCOME, *_TIME_RANGE],
          description=_EXPORT_NOTE)  # fmt: skip
    p.add("get", "/me/activity/{seq}", "getMyEvent", "One of my events", tag="self",
          scope=read, ok="200", schema="AuditEvent", params=[seq])  # fmt: skip

    users_filters = [
        _string_param("q", "Part of the username or email (any case)."),
        {"name": "active", "in": "query", "required": False,
         "schema": {"type": "string", "enum": ["true", "false"]}},
        _string_param("role", "Holds this role.", pattern=_ROLE_PATTERN),
        {"name": "kind", "in": "query", "required": False,
         "schema": {"type": "string", "enum": ["person", "service"]}},
    ]  # fmt: skip
    p.add("get", "/users", "listUsers", "Users", tag="users", scope="aaa:users:read", ok="200",
          schema="UserPage", params=[*users_filters, *paging])  # fmt: skip
    p.add("get", "/users/{user_id}", "getUser", "One user", tag="users",
          scope="aaa:users:read", ok="200", schema="UserDetail", params=[user_id])  # fmt: skip
    p.add("patch", "/users/{user_id}", "updateUser", "Enable or disable a user", tag="users",
          scope="aaa:users:write", ok="200", schema="User", params=[user_id],
          body="UserChange", description="Only `active` may be sent: any other field is a "
          "400 and nothing changes. Disabling ends the user's sessions.")  # fmt: skip
    p.add("post", "/service-accounts", "createServiceAccount", "Create a service account",
          tag="users", scope="aaa:users:write", ok="201", schema="User",
          body="NewServiceAccount")  # fmt: skip
    p.add("put", "/users/{user_id}/roles/{role}", "grantRole", "Grant a role", tag="users",
          scope="aaa:roles:assign", ok="200", schema="User", params=[user_id, role])  # fmt: skip
    p.add("delete", "/users/{user_id}/roles/{role}", "revokeRole", "Revoke a role",
          tag="users", scope="aaa:roles:assign", ok="204", params=[user_id, role])  # fmt: skip
    p.add("get", "/users/{user_id}/tokens", "listUserTokens", "A user's API tokens",
          tag="tokens", scope="aaa:users:read", ok="200", schema="TokenPage",
          params=[user_id, _STATUS, *paging])  # fmt: skip
    p.add("post", "/users/{user_id}/tokens", "mintUserToken",
          "Mint a token for a user or service account", tag="tokens",
          scope="aaa:users:write", ok="201", schema="MintedToken", params=[user_id],
          body="NewToken")  # fmt: skip
    p.add("get", "/tokens/{token_id}", "getToken", "Any API token", tag="tokens",
          scope="aaa:users:read", ok="200", schema="Token", params=[token_id])  # fmt: skip
    p.add("delete", "/tokens/{token_id}", "revokeToken", "Revoke any API token", tag="tokens",
          scope="aaa:users:write", ok="204", params=[token_id])  # fmt: skip

    p.add("get", "/roles", "listRoles", "Roles", tag="roles", scope="aaa:users:read",
          ok="200", schema="RolePage", params=paging)  # fmt: skip
    p.add("post", "/roles", "createRole", "Create a role", tag="roles",
          scope="aaa:roles:write", ok="201", schema="Role", body="NewRole")  # fmt: skip
    p.add("get", "/roles/{name}", "getRole", "One role", tag="roles", scope="aaa:users:read",
          ok="200", schema="Role", params=[role_name])  # fmt: skip
    p.add("put", "/roles/{name}/permissions/{permission}", "addPermission",
          "Give a role a permission", tag="roles", scope="aaa:roles:write", ok="200",
          schema="Role", params=[role_name, permission],
          description="Nobody grants a permission they do not hold.")  # fmt: skip
    p.add("delete", "/roles/{name}/permissions/{permission}", "removePermission",
          "Take a permission from a role", tag="roles", scope="aaa:roles:write", ok="204",
          params=[role_name, permission])  # fmt: skip
    parent = _name_param("parent", _ROLE_PATTERN, 64)
    p.add("put", "/roles/{name}/parents/{parent}", "addParent",
          "Make a role inherit from another", tag="roles", scope="aaa:roles:write", ok="200",
          schema="Role", params=[role_name, parent],
          description="The role gains every permission of the parent and of what the parent "
          "inherits. A cycle is a 400; extending a role with permissions one lacks, a 403."
          )  # fmt: skip
    p.add("delete", "/roles/{name}/parents/{parent}", "removeParent",
          "Stop a role inheriting from another", tag="roles", scope="aaa:roles:write",
          ok="204", params=[role_name, parent])  # fmt: skip
    p.add("delete", "/roles/{name}", "deleteRole", "Delete a role", tag="roles",
          scope="aaa:roles:write", ok="204", params=[role_name],
          description="Its users lose it; roles inheriting from it stop doing so. Refused "
          "(409) if it would leave nobody with full administration.")  # fmt: skip
    p.add("put", "/users/{user_id}/permissions/{permission}", "grantUserPermission",
          "Grant a permission to a user directly", tag="users", scope="aaa:roles:assign",
          ok="200", schema="User", params=[user_id, permission])  # fmt: skip
    p.add("delete", "/users/{user_id}/permissions/{permission}", "revokeUserPermission",
          "Revoke a directly granted permission", tag="users", scope="aaa:roles:assign",
          ok="204", params=[user_id, permission])  # fmt: skip
    p.add("get", "/explain", "explain", "May a user use a permission, and why", tag="roles",
          scope="aaa:users:read", ok="200", schema="Explanation", not_found=True,
          params=[
              {"name": "user", "in": "query", "required": True, "description": "User id.",
               "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_ID}},
              {"name": "permission", "in": "query", "required": True,
               "schema": {"type": "string", "pattern": _PERMISSION_PATTERN, "maxLength": 128}},
          ])  # fmt: skip
    p.add("get", "/permissions", "listPermissions", "Known permissions", tag="roles",
          scope="aaa:users:read", ok="200", schema="PermissionPage", params=paging)  # fmt: skip

    audit_filters = [
        {"name": "actor", "in": "query", "required": False, "description": "Actor's user id.",
         "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_ID}},
        _string_param("target_type", "What was acted on: user, role, session, ...",
                      pattern=r"^[a-z_]{1,32}$"),
        _string_param("target_id", "Its id (with target_type).", maxLength=64),
        _ACTION,
        _OUTCOME,
        _string_param("ip", "Client address, exactly.", maxLength=128),
        *_TIME_RANGE,
    ]  # fmt: skip
    p.add("get", "/audit", "listAuditEvents", "The audit trail, newest first", tag="audit",
          scope="aaa:audit:read", ok="200", schema="AuditPage",
          params=[*audit_filters, *paging])  # fmt: skip
    p.add("get", "/audit/export", "exportAuditEvents",
          "Download the audit trail (JSON Lines or CSV)", tag="audit", scope="aaa:audit:read",
          ok="200", download=_EXPORT_CONTENT, params=[_FORMAT, *audit_filters],
          description=_EXPORT_NOTE)  # fmt: skip
    p.add("get", "/audit/{seq}", "getAuditEvent", "One audit event", tag="audit",
          scope="aaa:audit:read", ok="200", schema="AuditEvent", params=[seq])  # fmt: skip

    p.paths["/openapi.json"] = {
        "get": {
            "operationId": "getOpenAPI",
            "summary": "This document",
            "tags": ["meta"],
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.1 document.",
                    "content": {JSON: {"schema": {"type": "object"}}},
                },
                "429": {"$ref": "#/components/responses/429"},
                "503": {"$ref": "#/components/responses/503"},
            },
        }
    }
    return p.paths


def build(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for an app with ``settings``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{settings.app_name} — Flask-AAA API",
            "version": "1",
            "description": (
                "Authentication, authorization and audit. Authenticate with a personal "
                "access token (`Authorization: Bearer ...`) or a browser session; session "
                "writes also need the `X-CSRFToken` header (from "
                f"`{settings.auth_url_prefix}/csrf`). Errors are "
                '`{"error": code, "message": ..., "fields": {...}}`.'
            ),
        },
        "servers": [{"url": settings.api_url_prefix}],
        "tags": [{"name": name} for name in ("self", "users", "tokens", "roles", "audit", "meta")],
        "paths": _operations(settings),
        "components": {
            "schemas": _schemas(settings),
            "responses": _RESPONSES,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A personal access token. Its scopes narrow it: "
                    "`account:read`/`account:write` for your own account, `aaa:*` "
                    "permissions (that you hold) for administration.",
                },
                "sessionCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": settings.session_cookie_name,
                },
                "csrfHeader": {"type": "apiKey", "in": "header", "name": "X-CSRFToken"},
            },
        },
    }
