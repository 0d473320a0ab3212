"""The events of case 4's trail: a realistic mix over 90 days, chained as the library chains.

Users act about as often as Zipf's law says (user ``k`` about ``1/k`` as often as user 1),
mostly from an address of their own; anonymous failed sign-ins come from many addresses;
a few administrators and the command line change roles and accounts.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
from collections.abc import Iterator
from typing import Any

from flask_aaa import models
from flask_aaa.db import utcnow
from flask_aaa.services import audit

DAYS = 90
USERS = 5_000
#: An active but ordinary user (Zipf rank 100: about 0.12% of the events), whose events the
#: filtered pages look for.
WATCHED_USER = 100

_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "python-requests/2.32.3",
    "curl/8.11.0",
)
_ROLES = ("admin", "auditor", "editor", "writer", "reader", "support", "billing", "ops")


def _details(**values: Any) -> str:
    return json.dumps(values, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


#: (weight, action, outcome, who acts, what is acted on, details). Who: ``user`` (a Zipf-
#: distributed user), ``admin`` (users 1-5), ``anonymous`` or ``system``. What: ``self``
#: (the actor), ``user`` (some user), ``note``, ``token``, ``role``, ``session`` or None.
_MIX: tuple[tuple[float, str, str, str, str | None, str], ...] = (
    (28.0, "auth.login.succeeded", "success", "user", "self", _details(method="password")),
    (2.0, "auth.login.succeeded", "success", "user", "self", _details(method="passkey")),
    (18.0, "auth.logout", "success", "user", "self", "{}"),
    (14.0, "notes.created", "success", "user", "note", "{}"),
    (9.0, "notes.updated", "success", "user", "note", _details(fields=["title", "body"])),
    (3.0, "authz.denied", "denied", "user", None, _details(permission="notes:delete")),
    (1.5, "auth.reauthenticated", "success", "user", "self", "{}"),
    (1.5, "token.created", "success", "user", "token", _details(scopes=["notes:read"])),
    (0.7, "token.revoked", "success", "user", "token", "{}"),
    (1.5, "session.revoked", "success", "user", "session", "{}"),
    (0.6, "auth.password.changed", "success", "user", "self", "{}"),
    (0.3, "mfa.enabled", "success", "user", "self", _details(kind="totp")),
    (0.3, "auth.mfa.failed", "failure", "user", "self", "{}"),
    (9.0, "auth.login.failed", "failure", "anonymous", "user", _details(reason="bad_password")),
    (1.0, "auth.login.throttled", "denied", "anonymous", "user", "{}"),
    (1.0, "auth.reset.requested", "success", "anonymous", "user", "{}"),
    (0.6, "role.granted", "success", "admin", "user", _details(role="editor")),
    (0.3, "role.revoked", "success", "admin", "user", _details(role="editor")),
    (0.4, "user.created", "success", "admin", "user", "{}"),
    (0.2, "role.permission_added", "success", "admin", "role", _details(permission="x:read")),
    (0.1, "user.disabled", "success", "admin", "user", "{}"),
    (0.5, "user.created", "success", "system", "user", "{}"),
    (0.3, "token.revoked", "success", "system", "token", _details(reason="expired")),
)


def home_ip(user: int) -> str:
    """The address a user mostly comes from (in 198.18.0.0/15, set aside for benchmarks)."""
    return f"198.{18 + (user >> 16 & 1)}.{user >> 8 & 255}.{user & 255}"


def generate(size: int, seed: int = 8) -> Iterator[dict[str, Any]]:
    """``size`` chained events, oldest first, over the 90 days before now: rows ready for a
    Core insert into ``aaa_audit_events`` (``ts`` aware UTC, ``hash`` chained)."""
    rng = random.Random(seed)
    weights = list(itertools.accumulate(m[0] for m in _MIX))
    ts = utcnow() - dt.timedelta(days=DAYS)
    mean_gap = DAYS * 86_400e6 / size  # microseconds
    prev = models.GENESIS_HASH
    for seq in range(1, size + 1):
        ts += dt.timedelta(microseconds=int(rng.expovariate(1.0) * mean_gap) + 1)
        _w, action, outcome, who, what, details = rng.choices(_MIX, cum_weights=weights)[0]
        user = int(USERS ** rng.random())  # Zipf-like: user k acts about 1/k as often
        if who == "admin":
            user = 1 + user % 5
        acting = who in {"user", "admin"}
        other = int(USERS ** rng.random())
        target_user = user if what == "self" else other
        if acting:
            ip = home_ip(user) if rng.random() < 0.8 else home_ip(rng.randrange(1, USERS))
        elif who == "anonymous":
            ip = f"100.{64 + rng.randrange(8)}.{rng.randrange(256)}.{rng.randrange(256)}"
        else:
            ip = None
        if ip is not None and rng.random() < 0.05:
            ip = f"2001:db8::{rng.randrange(1 << 16):x}"
        target_type, target_id, target_label = _target(rng, what, target_user)
        row: dict[str, Any] = {
            "seq": seq,
            "ts": ts,
            "actor_type": "user" if acting else who,
            "actor_id": user if acting else None,
            "actor_name": f"user{user}@example.org" if acting else ("cli" if ip is None else None),
            "action": action,
            "outcome": outcome,
            "target_type": target_type,
            "target_id": target_id,
            "target_label": target_label,
            "ip": ip,
            "user_agent": _AGENTS[rng.randrange(len(_AGENTS))] if ip else "flask aaa (cli)",
            "request_id": f"{rng.getrandbits(128):032x}",
            "session_hash": f"{rng.getrandbits(256):064x}" if acting else None,
            "details": details,
            "prev_hash": prev,
        }
        fields = dict(row, ts=ts.replace(tzinfo=None).isoformat(timespec="microseconds"))
        row["hash"] = prev = audit.event_hash(fields)
        yield row


def _target(rng: random.Random, what: str | None, user: int) -> tuple[Any, Any, Any]:
    if what in {"self", "user"}:
        return "user", str(user), f"user{user}@example.org"
    if what == "note":
        number = rng.randrange(1, 200_000)
        return "note", str(number), f"note {number}"
    if what == "token":
        return "token", str(rng.randrange(1, 20_000)), "api token"
    if what == "role":
        role = rng.randrange(len(_ROLES))
        return "role", str(role + 1), _ROLES[role]
    if what == "session":
        return "session", f"{rng.getrandbits(64):016x}", None
    return None, None, None
