"""Account lockout: consecutive failed passwords lock an account for a while.

Each lockout lasts twice as long as the one before (``AAA_LOCKOUT_BASE_SECONDS`` doubling
up to ``AAA_LOCKOUT_MAX_SECONDS``), so an attacker can slow a victim down but never lock
them out for good; a password reset or an administrator lifts it at once. While locked,
every sign-in path gives the same answer as a wrong password.
"""

from __future__ import annotations

import datetime as dt
from typing import cast

from sqlalchemy import Table, update
from sqlalchemy.orm import Session

from ..config import Settings
from ..db import utcnow
from ..models import User
from . import audit, rbac
from .actors import Actor, RequestFacts


def is_locked(user: User, now: dt.datetime | None = None) -> bool:
    return user.locked_until is not None and user.locked_until > (now or utcnow())


def lock_duration(settings: Settings, lockouts: int) -> int:
    """Seconds of the ``lockouts``-th lockout in a row (1 = the first)."""
    exponent = min(max(lockouts - 1, 0), 30)
    seconds: int = settings.lockout_base_seconds * 2**exponent
    return min(seconds, settings.lockout_max_seconds)


#: The ``users`` table: the counting statements below are Core statements on the session's
#: connection (one round trip each, none of the ORM's bulk-update bookkeeping).
_USERS = cast(Table, User.__table__)
#: An id no account has (ids start at 1): the statement for a failure that counts for no
#: account finds no row.
_NO_ACCOUNT = -1


def register_failure(
    db: Session,
    account: User | audit.Target | None,
    *,
    settings: Settings,
    facts: RequestFacts | None = None,
) -> dt.datetime | None:
    """Count one failed password for the user ``account`` names (atomically, in ``db``'s
    transaction); lock the account when the count reaches the threshold and record
    ``auth.lockout``. Returns the end of the new lockout, if one started.

    ``account`` is None for a failure that counts for no account (an unknown login, a right
    password refused for another reason): the same statement is sent for no row, so every
    refused sign-in costs the same round trip (A02: time must not tell whether a login
    exists, or whether a locked account's password was right). Callers that count after
    :func:`audit.apart` pass the account's :class:`~flask_aaa.services.audit.Target`, taken
    before ``apart`` rolled back and expired the ORM object: reading that object again would
    be one more query, on one side only.

    The in-memory ``User`` is not updated; every caller commits (expiring it) next."""
    if isinstance(account, User):
        account = audit.Target.of(account)
    if account is None:
        user_id = _NO_ACCOUNT
    elif account.type == "user" and account.id is not None:
        user_id = int(account.id)
    else:
        raise ValueError("only a user account's failures are counted")
    counted = (
        db.connection()
        .execute(
            update(_USERS)
            .where(_USERS.c.id == user_id)
            .values(failed_logins=_USERS.c.failed_logins + 1)
            .returning(_USERS.c.failed_logins, _USERS.c.lockouts)
        )
        .first()
    )
    if counted is None or counted.failed_logins < settings.lockout_threshold:
        return None
    lockouts = counted.lockouts + 1
    seconds = lock_duration(settings, lockouts)
    until = utcnow() + dt.timedelta(seconds=seconds)
    db.connection().execute(
        update(_USERS)
        .where(_USERS.c.id == user_id)
        .values(failed_logins=0, lockouts=lockouts, locked_until=until)
    )
    audit.record(
        db,
        action="auth.lockout",
        actor=Actor.anonymous(),
        outcome="denied",
        target=account,
        facts=facts,
        details={"seconds": seconds, "lockouts_in_a_row": lockouts},
    )
    return until


def clear(user: User) -> None:
    """A successful sign-in (or a reset, or an administrator) ends the count."""
    user.failed_logins = 0
    user.lockouts = 0
    user.locked_until = None


def unlock(db: Session, *, actor: Actor, user: User, facts: RequestFacts | None = None) -> bool:
    """Lift a lockout by hand (``aaa:users:write``). False if the account was not locked."""
    rbac.check(db, actor, [rbac.MANAGE_USERS], facts=facts, target=user)
    was_locked = is_locked(user) or bool(user.failed_logins)
    clear(user)
    if was_locked:
        audit.record(db, action="user.unlocked", actor=actor, target=user, facts=facts)
    return was_locked
