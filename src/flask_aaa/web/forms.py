"""Reading a request's fields, the same way for HTML forms and JSON bodies.

Every field is a string or absent. A JSON body that is not an object, a field of any other
type, or a missing required field is an :class:`InvalidInput` (400), never a 500.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping

from flask import g, request

from ..errors import InvalidInput
from ..services.audit import AuditFilter

_CURSOR_RE = re.compile(r"[0-9]{1,18}")
_ACTION_RE = re.compile(r"^[a-z0-9_.]{1,64}\*?$")
#: A target type: ``user``, ``role``, or an app's own such as ``note``.
_TARGET_TYPE_RE = re.compile(r"[a-z_]{1,32}")

#: Longest value accepted in any field; longer is refused before any work is done. The
#: password service has its own, lower, limit for passwords.
FIELD_MAX = 4096

#: Fields that carry passwords: hashed, never stored, so they keep every character (NUL too).
PASSWORD_FIELDS = frozenset({"password", "confirm", "current_password", "new_password"})


def _raw() -> dict[str, object]:
    cached: dict[str, object] | None = g.get("_aaa_fields")
    if cached is not None:
        return cached
    data: dict[str, object]
    if request.is_json:
        body = None
        # Refuse absurd nesting before the parser recurses into it: a RecursionError is
        # not only a 500, it can also leave the interpreter's recursion accounting off.
        if json_depth(request.get_data(cache=True)) <= MAX_JSON_DEPTH:
            try:
                body = request.get_json(silent=True)
            except RecursionError:
                body = None
        if not isinstance(body, dict):
            raise InvalidInput({"body": "Send a JSON object."})
        data = body
    else:
        data = {key: request.form.get(key) for key in request.form}
    g._aaa_fields = data
    return data


#: Deepest JSON nesting accepted (the library's bodies are flat objects).
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = bytes.maketrans(b"", b"")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """The deepest bracket nesting of a JSON text, ignoring brackets inside strings."""
    brackets = _JSON_STRING.sub(b"", raw).translate(_BRACKETS, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        depth += 1 if byte in (0x5B, 0x7B) else -1
        deepest = max(deepest, depth)
    return deepest


def json_object(allowed: Iterable[str]) -> dict[str, object]:
    """The request's JSON object body (the same reader and limits as :func:`read_fields`),
    with only ``allowed`` keys: any other key, or a body that is not JSON, is an
    :class:`InvalidInput` (an allowlist against mass assignment)."""
    if not request.is_json:
        raise InvalidInput({"body": "Send a JSON object (Content-Type: application/json)."})
    data = _raw()
    names = set(allowed)
    unknown = {str(key)[:64]: "Unknown field." for key in data if key not in names}
    if unknown:
        raise InvalidInput(unknown)
    return data


def read_fields(names: Iterable[str], *, required: Iterable[str] = ()) -> dict[str, str]:
    """The named fields of the request as strings; ``required`` ones must be non-empty."""
    data = _raw()
    out: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name in names:
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str):
            errors[name] = "Must be a string."
        elif len(value) > FIELD_MAX:
            errors[name] = "Too long."
        elif not _encodable(value) or ("\x00" in value and name not in PASSWORD_FIELDS):
            # NUL cannot be stored by PostgreSQL; passwords are hashed, never stored, and
            # keep every character they are given.
            errors[name] = "Must be valid text."
        else:
            out[name] = value
    for name in required:
        if name not in errors and not out.get(name):
            errors[name] = "This field is required."
    if errors:
        raise InvalidInput(errors)
    return out


def _encodable(value: str) -> bool:
    """False for strings with lone surrogates (possible in JSON), which no driver can store."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def peek(name: str) -> str:
    """A field's value for keying a rate limit; never raises, '' when unusable."""
    try:
        value = _raw().get(name)
    except InvalidInput:
        return ""
    return value[:FIELD_MAX] if isinstance(value, str) and _encodable(value) else ""


def read_flag(name: str) -> bool:
    value = _raw().get(name)
    return value is True or (isinstance(value, str) and value.lower() in ("1", "on", "true", "yes"))


def parse_time(name: str, value: str | None) -> dt.datetime | None:
    """An ISO 8601 date or time from a query string; naive values are taken as UTC."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
        return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise InvalidInput(
            {name: "Use an ISO 8601 date or time, e.g. 2026-01-31 or 2026-01-31T08:00."}
        ) from None


def parse_cursor(value: str | None, name: str = "before") -> int | None:
    """A keyset cursor from a query string: ASCII digits only (``str.isdigit`` would let
    ``²`` through to ``int()``)."""
    if not value:
        return None
    if not _CURSOR_RE.fullmatch(value):
        raise InvalidInput({name: "Must be a positive whole number."})
    return int(value)


#: The query arguments the audit listings understand; links on the pages carry only these.
FILTER_ARGS = ("user", "action", "outcome", "ip", "target_type", "target_id", "since", "until")


def filter_args(args: Mapping[str, str]) -> dict[str, str]:
    """The recognised, non-empty filter arguments (safe to hand to ``url_for``)."""
    return {name: value for name in FILTER_ARGS if (value := args.get(name, ""))}


def audit_filter(
    args: Mapping[str, str], *, actor_id: int | None = None, involving_user: int | None = None
) -> AuditFilter:
    """The audit filters a listing page accepts, validated (everything else is ignored)."""
    for name in (
        "action",
        "outcome",
        "ip",
        "since",
        "until",
        "before",
        "user",
        "target_type",
        "target_id",
    ):
        value = args.get(name, "")
        if len(value) > 128:
            raise InvalidInput({name: "Too long."})
        if not _encodable(value) or "\x00" in value:
            raise InvalidInput({name: "Must be valid text."})
    action = args.get("action") or None
    if action is not None and not _ACTION_RE.match(action):
        raise InvalidInput({"action": "Use a dotted action name, optionally ending in '*'."})
    target_type = args.get("target_type") or None
    if target_type is not None and not _TARGET_TYPE_RE.fullmatch(target_type):
        raise InvalidInput({"target_type": "Use a type name such as user or role."})
    target_id = args.get("target_id") or None
    if target_id is not None and len(target_id) > 64:
        raise InvalidInput({"target_id": "Too long."})
    return AuditFilter(
        actor_id=actor_id,
        involving_user=involving_user,
        target_type=target_type,
        target_id=target_id,
        action=action,
        outcome=args.get("outcome") or None,
        ip=args.get("ip") or None,
        since=parse_time("since", args.get("since")),
        until=parse_time("until", args.get("until")),
    )
