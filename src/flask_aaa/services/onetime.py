"""Single-use, expiring tokens for the links the library sends by mail.

A token is 256 random bits from :mod:`secrets`, given to the caller once (to put in a link)
and stored only as its SHA-256. Each token has one ``purpose``: a confirmation token cannot
reset a password. It may also carry a ``binding``, a digest of the account state it was
issued for (the password hash of a reset, the address of a confirmation): when that state
changes the token dies, whatever its age. Issuing a token of a purpose for a user (or, for an
invitation, an address) deletes the older ones, so only the newest link works.

Consuming is atomic: ``UPDATE ... WHERE id = :id AND used_at IS NULL`` and a check of the row
count, so two requests racing with the same link cannot both succeed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Callable

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from ..db import utcnow
from ..errors import ExpiredToken, InvalidToken
from ..models import OneTimeToken, User
from .actors import token_digest

#: The purposes the library issues tokens for (``aaa_tokens.purpose`` holds 16 characters).
CONFIRM = "confirm"
RESET = "reset"
INVITE = "invite"
EMAIL_CHANGE = "email"
PURPOSES = frozenset({CONFIRM, RESET, INVITE, EMAIL_CHANGE})

#: Bytes of randomness in a token (256 bits).
TOKEN_BYTES = 32

#: What a token looks like (URL-safe base64). Anything else is refused before any query.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")


def _new_secret() -> tuple[str, str]:
    """A fresh raw token and its digest (the same work for real and throw-away tokens)."""
    raw = secrets.token_urlsafe(TOKEN_BYTES)
    return raw, token_digest(raw)


def bind(kind: str, value: str | None) -> str:
    """A digest of the account state a token is bound to (``kind`` keeps states apart)."""
    return hashlib.sha256(f"aaa-token-binding\x1f{kind}\x1f{value or ''}".encode()).hexdigest()


def password_binding(user: User) -> str:
    """A reset token dies with any change of the password (and so of its hash)."""
    return bind("password", user.password_hash)


def email_binding(user: User) -> str:
    """A confirmation or email-change token dies when the account's address changes."""
    return bind("email", user.email_key)


def issue(
    db: Session,
    *,
    purpose: str,
    ttl: int,
    user: User | None = None,
    email: str | None = None,
    binding: str | None = None,
    created_by: int | None = None,
) -> str:
    """Store a new token and return it raw (put it in a link; it is never stored).

    The older tokens of ``purpose`` for ``user`` (or, without a user, for ``email``) are
    deleted: only the newest link works."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    if user is None and email is None:
        raise ValueError("a token needs a user or an email address")
    stale = delete(OneTimeToken).where(OneTimeToken.purpose == purpose)
    if user is not None:
        stale = stale.where(OneTimeToken.user_id == user.id)
    else:
        stale = stale.where(
            OneTimeToken.user_id.is_(None), func.lower(OneTimeToken.email) == (email or "").lower()
        )
    db.execute(stale.execution_options(synchronize_session=False))
    raw, digest = _new_secret()
    now = utcnow()
    db.add(
        OneTimeToken(
            purpose=purpose,
            token_hash=digest,
            user_id=user.id if user is not None else None,
            email=email,
            binding=binding,
            created_by=created_by,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=ttl),
        )
    )
    db.flush()
    return raw


def throwaway() -> None:
    """The secret-making work of :func:`issue`, for a request that will send nothing (an
    unknown address): what the caller does should not depend on whether the account exists."""
    _new_secret()


def find(db: Session, *, purpose: str, raw: str, now: dt.datetime | None = None) -> OneTimeToken:
    """The live token of ``purpose`` for ``raw``, without using it (to show a page about it).

    Raises :class:`InvalidToken` (unknown, used, other purpose) or :class:`ExpiredToken`."""
    if not isinstance(raw, str) or not _TOKEN_RE.fullmatch(raw):
        raise InvalidToken("malformed")
    row = db.scalar(select(OneTimeToken).where(OneTimeToken.token_hash == token_digest(raw)))
    if row is None:
        raise InvalidToken("unknown")
    if row.purpose != purpose:
        raise InvalidToken("wrong_purpose", user_id=row.user_id)
    if row.used_at is not None:
        raise InvalidToken("used", user_id=row.user_id)
    if (now or utcnow()) >= row.expires_at:
        raise ExpiredToken(user_id=row.user_id)
    return row


def consume(
    db: Session,
    *,
    purpose: str,
    raw: str,
    binding_of: Callable[[OneTimeToken], str | None] | None = None,
) -> OneTimeToken:
    """Use the token ``raw`` once, in ``db``'s transaction (a rollback gives it back).

    ``binding_of`` returns the binding the token must still have (from the account's state
    now); a token whose binding differs is dead. Raises :class:`InvalidToken` or
    :class:`ExpiredToken`; two concurrent calls with one token never both succeed."""
    now = utcnow()
    row = find(db, purpose=purpose, raw=raw, now=now)
    if binding_of is not None:
        expected = binding_of(row)
        if (
            expected is None
            or row.binding is None
            or not secrets.compare_digest(row.binding, expected)
        ):
            raise InvalidToken("binding", user_id=row.user_id)
    result = db.execute(
        update(OneTimeToken)
        .where(OneTimeToken.id == row.id, OneTimeToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if int(getattr(result, "rowcount", 0) or 0) != 1:
        raise InvalidToken("used", user_id=row.user_id)
    set_committed_value(row, "used_at", now)  # as stored; no second UPDATE at flush
    return row


def revoke_all(db: Session, user: User, *, purposes: frozenset[str] = PURPOSES) -> None:
    """Delete every outstanding token of ``user`` (after an email change, say)."""
    db.execute(
        delete(OneTimeToken)
        .where(
            OneTimeToken.user_id == user.id,
            OneTimeToken.purpose.in_(sorted(purposes)),
            OneTimeToken.used_at.is_(None),
        )
        .execution_options(synchronize_session=False)
    )
