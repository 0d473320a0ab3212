"""Single-use values of sign-in ceremonies: OAuth ``state`` and WebAuthn challenges.

A ceremony begins in one browser and ends in the same one: :func:`begin` stores the SHA-256 of
a fresh random value, bound to a hash of the browser's own random id (kept in its signed
session), with the ceremony's private data (an OIDC nonce and PKCE verifier, say).
:func:`consume` takes it back exactly once: a missing, unknown, expired, already used or
other-browser value fails with :class:`InvalidToken`, and two parallel uses of one value
cannot both succeed. The private data is erased from the row when it is used.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import secrets
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ..db import utcnow
from ..errors import InvalidToken
from ..models import Challenge
from .actors import token_digest

#: What the user is told, whatever went wrong.
MESSAGE = "This sign-in attempt is not valid or has expired. Please start again."

#: Random bytes in a generated value (256 bits).
VALUE_BYTES = 32


@dataclasses.dataclass(frozen=True, slots=True)
class Taken:
    """A consumed challenge: what :func:`begin` was given."""

    kind: str
    purpose: str
    user_id: int | None
    data: Mapping[str, Any]


def begin(
    db: Session,
    *,
    kind: str,
    purpose: str,
    browser: str,
    ttl: int,
    user_id: int | None = None,
    data: Mapping[str, Any] | None = None,
    value: str | None = None,
) -> str:
    """Store a new challenge and return its value (generated unless ``value`` is given).

    ``browser`` is the browser's random id; only its hash is kept. Expired challenges are
    swept on the way (an indexed delete)."""
    if not browser:
        raise ValueError("a challenge must be bound to a browser")
    now = utcnow()
    db.execute(delete(Challenge).where(Challenge.expires_at < now))
    value = value or secrets.token_urlsafe(VALUE_BYTES)
    db.add(
        Challenge(
            kind=kind,
            purpose=purpose,
            value_hash=token_digest(value),
            browser_hash=token_digest(browser),
            user_id=user_id,
            data=json.dumps(dict(data or {}), separators=(",", ":")),
            created_at=now,
            expires_at=now + dt.timedelta(seconds=ttl),
        )
    )
    db.flush()
    return value


def consume(db: Session, *, kind: str, value: str | None, browser: str | None) -> Taken:
    """Use a challenge once. Raises :class:`InvalidToken` for every kind of failure alike."""
    if not value or not browser or len(value) > 512:
        raise InvalidToken("missing", message=MESSAGE)
    digest = token_digest(value)
    row = db.scalars(
        select(Challenge).where(Challenge.value_hash == digest, Challenge.kind == kind)
    ).one_or_none()
    now = utcnow()
    if row is None:
        raise InvalidToken("unknown", message=MESSAGE)
    if row.used_at is not None:
        raise InvalidToken("replayed", user_id=row.user_id, message=MESSAGE)
    if row.expires_at <= now:
        raise InvalidToken("expired", user_id=row.user_id, message=MESSAGE)
    if not secrets.compare_digest(row.browser_hash, token_digest(browser)):
        raise InvalidToken("other_browser", user_id=row.user_id, message=MESSAGE)
    # The conditional update is what makes the value single use under concurrency: only one
    # of two parallel requests sees a row count of one.
    taken = db.execute(
        update(Challenge)
        .where(Challenge.id == row.id, Challenge.used_at.is_(None))
        .values(used_at=now, data="{}")
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        raise InvalidToken("replayed", user_id=row.user_id, message=MESSAGE)
    data = json.loads(row.data)
    db.expire(row)
    return Taken(kind=row.kind, purpose=row.purpose, user_id=row.user_id, data=data)
