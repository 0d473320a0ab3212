"""Account lockout: consecutive failed passwords lock an account for a while.

Each lockout lasts twice as long as the one before (``AAA_LOCKOUT_BASE_SECONDS`` doubling
up to ``AAA_LOCKOUT_MAX_SECONDS``), so an attacker can slow a victim down but never lock
them out for good; a password reset or an administrator lifts it at once. While locked,
every sign-in path gives the same answer as a wrong password.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
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


def register_failure(
    db: Session, user: User, *, settings: Settings, facts: RequestFacts | None = None
) -> dt.datetime | None:
    """Count one failed password for ``user`` (atomically, in ``db``'s transaction); lock the
    account when the count reaches the threshold and record ``auth.lockout``. Returns the
    end of the new lockout, if one started."""
    db.execute(update(User).where(User.id == user.id).values(failed_logins=User.failed_logins + 1))
    failures, lockouts = db.execute(
        select(User.failed_logins, User.lockouts).where(User.id == user.id)
    ).one()
    if failures < settings.lockout_threshold:
        return None
    lockouts += 1
    seconds = lock_duration(settings, lockouts)
    until = utcnow() + dt.timedelta(seconds=seconds)
    db.execute(
        update(User)
        .where(User.id == user.id)
        .values(failed_logins=0, lockouts=lockouts, locked_until=until)
    )
    audit.record(
        db,
        action="auth.lockout",
        actor=Actor.anonymous(),
        outcome="denied",
        target=user,
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
