"""Two-factor authentication: TOTP (RFC 6238) and single-use recovery codes.

A TOTP code is good once: the time step it belongs to is stored with an atomic
``UPDATE ... WHERE totp_last_step < :step``, so the same code (or one of an older step) fails
even when two requests race. Codes of the previous and next step are accepted (±30 s of
drift); the time is always the server's. Recovery codes are stored as HMAC-SHA256 under a key
derived from the app's ``SECRET_KEY`` (passed in: services never read Flask config) and are
spent with an atomic ``UPDATE ... WHERE used_at IS NULL``.

Guessing is bounded three ways: the web layer ends a pending sign-in after
``AAA_MFA_MAX_ATTEMPTS`` wrong codes; every wrong code counts towards the account lockout;
and, because a correct password clears that count, :func:`throttle_wait` also counts wrong
codes since the account's last completed second step (from the audit trail, which already
holds them) and, past ``AAA_LOCKOUT_THRESHOLD``, makes each further attempt wait
exponentially longer, up to ``AAA_LOCKOUT_MAX_SECONDS``.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import math

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ..config import Settings
from ..db import utcnow
from ..errors import Conflict, InvalidInput, ServiceUnavailable, Throttled
from ..models import AuditEvent, RecoveryCode, User
from . import accounts, audit, lockout, rbac, sessions
from .actors import Actor, RequestFacts
from .otp import (
    TOTP,
    RecoveryCodeHasher,
    code_method,
    display_recovery_code,
    is_secret,
    matching_step,
    new_recovery_code,
    normalize_recovery_code,
)
from .passwords import PasswordService, normalize_password

#: Recovery codes issued at enrolment and at each regeneration.
RECOVERY_CODE_COUNT = 10
#: How far back :func:`throttle_wait` looks for wrong codes.
THROTTLE_WINDOW = dt.timedelta(hours=24)
#: At most this many recent events are read by :func:`throttle_wait` (bounds its cost).
THROTTLE_LOOKBACK = 1000


# -- recovery codes at rest --


def _replace_recovery_codes(
    db: Session, user: User, hasher: RecoveryCodeHasher, now: dt.datetime
) -> list[str]:
    """Delete every recovery code of ``user`` and store :data:`RECOVERY_CODE_COUNT` new ones
    (their hashes); return the codes, for showing once."""
    db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = [new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    db.add_all(
        RecoveryCode(user_id=user.id, code_hash=hasher.digest(code), created_at=now)
        for code in codes
    )
    db.flush()
    return [display_recovery_code(code) for code in codes]


def remaining_recovery_codes(db: Session, user: User) -> int:
    return int(
        db.scalar(
            select(func.count())
            .select_from(RecoveryCode)
            .where(RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))
        )
        or 0
    )


# -- the second step of a sign-in --


def verify_totp(db: Session, user: User, code: str, now: dt.datetime | None = None) -> bool:
    """Accept ``code`` for ``user`` once: True if it is the code of a step within ±1 of the
    server's clock that is newer than the last step accepted, which it becomes (in ``db``,
    uncommitted). Run it in a write transaction; concurrent calls cannot both succeed."""
    return _check_totp(db, user, code, now or utcnow()) is None


def _check_totp(db: Session, user: User, code: str, now: dt.datetime) -> str | None:
    """None on success, else why not (for the audit trail)."""
    secret = user.totp_secret
    if secret is None or user.mfa_enabled_at is None:
        return "not_enabled"
    step = matching_step(secret, code, now)
    if step is None:
        return "wrong_code"
    result = db.execute(
        update(User)
        .where(
            User.id == user.id,
            or_(User.totp_last_step.is_(None), User.totp_last_step < step),
        )
        .values(totp_last_step=step)
    )
    return None if _rowcount(result) == 1 else "replayed"


def use_recovery_code(
    db: Session,
    user: User,
    code: str,
    *,
    hasher: RecoveryCodeHasher,
    now: dt.datetime | None = None,
) -> bool:
    """Spend one of ``user``'s recovery codes: True if ``code`` is one not used yet, which is
    now used (in ``db``, uncommitted). Concurrent calls with one code cannot both succeed."""
    return _check_recovery_code(db, user, code, hasher, now or utcnow()) is None


def _check_recovery_code(
    db: Session, user: User, code: str, hasher: RecoveryCodeHasher, now: dt.datetime
) -> str | None:
    normalized = normalize_recovery_code(code)
    if normalized is None:
        return "wrong_code"
    wanted = hasher.digests(normalized)
    rows = db.execute(
        select(RecoveryCode.id, RecoveryCode.code_hash).where(
            RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None)
        )
    ).all()
    match: int | None = None
    for row_id, stored in rows:
        for digest in wanted:
            if hmac.compare_digest(stored, digest) and match is None:
                match = row_id
    if match is None:
        return "wrong_code"
    result = db.execute(
        update(RecoveryCode)
        .where(RecoveryCode.id == match, RecoveryCode.used_at.is_(None))
        .values(used_at=now)
    )
    return None if _rowcount(result) == 1 else "replayed"


def throttle_wait(
    db: Session, user: User, *, settings: Settings, now: dt.datetime | None = None
) -> int:
    """Seconds before ``user`` may try another second-factor code (0: now).

    Counts ``auth.mfa.failed`` events of the last :data:`THROTTLE_WINDOW` since the
    account's last completed second step (a sign-in with ``mfa``, or enrolment). The first
    ``AAA_LOCKOUT_THRESHOLD`` are free; after that each attempt waits, from the last wrong
    code, as long as the lockout of that rank would last (doubling up to the maximum)."""
    now = now or utcnow()
    rows = db.execute(
        select(AuditEvent.action, AuditEvent.details, AuditEvent.ts)
        .where(
            AuditEvent.target_type == "user",
            AuditEvent.target_id == str(user.id),
            AuditEvent.action.in_(("auth.mfa.failed", "auth.login.succeeded", "mfa.enabled")),
            AuditEvent.ts > now - THROTTLE_WINDOW,
        )
        .order_by(AuditEvent.seq.desc())
        .limit(THROTTLE_LOOKBACK)
    ).all()
    failures = 0
    last_failure: dt.datetime | None = None
    for action, details, ts in rows:
        if action == "auth.mfa.failed":
            failures += 1
            last_failure = last_failure or ts
        elif action == "mfa.enabled" or _completed_second_step(details):
            break
    if last_failure is None or failures < settings.lockout_threshold:
        return 0
    delay = lockout.lock_duration(settings, failures - settings.lockout_threshold + 1)
    return max(0, math.ceil(delay - (now - last_failure).total_seconds()))


def _completed_second_step(details: str) -> bool:
    try:
        return bool(json.loads(details).get("mfa"))
    except (ValueError, AttributeError):
        return False


def verify_second_factor(
    db: Session,
    user: User,
    *,
    settings: Settings,
    code: str,
    hasher: RecoveryCodeHasher,
    facts: RequestFacts,
    now: dt.datetime | None = None,
) -> str | None:
    """The second step of a sign-in: ``code`` is a TOTP code or a recovery code.

    Returns the method that passed (:data:`TOTP` or :data:`RECOVERY`), with the code spent
    in ``db``; the caller completes the sign-in and commits (which records
    ``auth.login.succeeded``). On a wrong, replayed or malformed code it records
    ``auth.mfa.failed``, counts a failure towards the lockout, commits that, and returns
    None. While the account is throttled it records ``auth.mfa.throttled`` and raises
    :class:`Throttled` without looking at the code.

    Run it in a write transaction. It locks the user's row first (``FOR UPDATE``; SQLite's
    write transaction does the same), so concurrent guesses at one account are counted one
    after the other and none slips past the throttle."""
    now = now or utcnow()
    _lock(db, user)
    wait = throttle_wait(db, user, settings=settings, now=now)
    if wait > 0:
        audit.record_apart(
            db,
            action="auth.mfa.throttled",
            actor=Actor.anonymous(),
            outcome="denied",
            target=user,
            facts=facts,
            details={"retry_after": wait},
        )
        raise Throttled(wait, "Too many wrong codes. Try again later.")
    method = code_method(code)
    if method == TOTP:
        problem = _check_totp(db, user, code, now)
    else:
        problem = _check_recovery_code(db, user, code, hasher, now)
    if problem is None:
        return method
    _record_failure(db, user, settings=settings, facts=facts, method=method, reason=problem)
    return None


def _record_failure(
    db: Session,
    user: User,
    *,
    settings: Settings,
    facts: RequestFacts,
    method: str,
    reason: str,
) -> None:
    """Record a wrong code and count it towards the lockout, in the transaction that holds
    the user's row lock, then commit. That transaction has changed nothing (a failed check
    writes nothing), so this is :func:`audit.apart` without its gap: a concurrent guess
    waiting for the lock sees this failure counted. Fails closed (503) like ``apart``."""
    try:
        account = audit.Target.of(user)
        audit.record(
            db,
            action="auth.mfa.failed",
            actor=Actor.anonymous(),
            outcome="failure",
            target=account,
            facts=facts,
            details={"method": method, "reason": reason},
        )
        lockout.register_failure(db, account, settings=settings, facts=facts)
        db.commit()
    except SQLAlchemyError as exc:
        db.rollback()
        raise ServiceUnavailable("The audit trail is unavailable. Try again shortly.") from exc


# -- enrolment and management --


def enable(
    db: Session,
    user: User,
    *,
    secret: str,
    code: str,
    hasher: RecoveryCodeHasher,
    facts: RequestFacts,
    now: dt.datetime | None = None,
) -> list[str]:
    """Turn on TOTP for ``user`` once ``code`` proves their app holds ``secret``: store the
    secret (its step as the last one used), create the recovery codes and record
    ``mfa.enabled`` (in ``db``; the caller commits and rotates the session id). Returns
    the recovery codes, to show once. A wrong code is recorded apart as
    ``mfa.enable_failed`` and raises :class:`InvalidInput` on ``code``."""
    now = now or utcnow()
    if user.mfa_enabled:
        raise Conflict("Two-factor authentication is already on.")
    if not is_secret(secret):
        raise InvalidInput({"code": "The setup expired. Scan the new code and try again."})
    step = matching_step(secret, code, now)
    if step is None:
        audit.record_apart(
            db,
            action="mfa.enable_failed",
            actor=Actor.of(user),
            outcome="failure",
            target=user,
            facts=facts,
            details={"reason": "wrong_code"},
        )
        raise InvalidInput({"code": "That code is not right. Check your app's clock and retry."})
    # Conditional, so that two confirmations racing (two tabs) cannot both store a secret.
    result = db.execute(
        update(User)
        .where(User.id == user.id, User.mfa_enabled_at.is_(None))
        .values(totp_secret=secret, totp_last_step=step, mfa_enabled_at=now)
    )
    if _rowcount(result) != 1:
        raise Conflict("Two-factor authentication is already on.")
    codes = _replace_recovery_codes(db, user, hasher, now)
    audit.record(
        db,
        action="mfa.enabled",
        actor=Actor.of(user),
        target=user,
        facts=facts,
        details={"method": TOTP},
    )
    return codes


def _confirm_password(
    db: Session,
    user: User,
    *,
    settings: Settings,
    passwords: PasswordService,
    password: str,
    action: str,
    facts: RequestFacts,
) -> None:
    """A sensitive change needs the current password (see :func:`accounts.confirm_password`)."""
    accounts.confirm_password(
        db,
        user,
        settings=settings,
        passwords=passwords,
        password=password,
        action=action,
        facts=facts,
    )


def regenerate_recovery_codes(
    db: Session,
    user: User,
    *,
    settings: Settings,
    passwords: PasswordService,
    password: str,
    hasher: RecoveryCodeHasher,
    facts: RequestFacts,
    now: dt.datetime | None = None,
) -> list[str]:
    """Replace ``user``'s recovery codes (the old ones stop working) after checking the
    current password; record ``mfa.recovery_codes.regenerated``. Returns the new codes."""
    if not user.mfa_enabled:
        raise Conflict("Two-factor authentication is off.")
    _confirm_password(
        db,
        user,
        settings=settings,
        passwords=passwords,
        password=password,
        action="mfa.recovery_codes.regenerate_failed",
        facts=facts,
    )
    _lock(db, user)  # one set of codes, even if two regenerations race
    codes = _replace_recovery_codes(db, user, hasher, now or utcnow())
    audit.record(
        db,
        action="mfa.recovery_codes.regenerated",
        actor=Actor.of(user),
        target=user,
        facts=facts,
        details={"count": len(codes)},
    )
    return codes


def disable(
    db: Session,
    user: User,
    *,
    settings: Settings,
    passwords: PasswordService,
    password: str,
    facts: RequestFacts,
) -> None:
    """Turn TOTP off after checking the current password: clear the secret, the last step
    and every recovery code; record ``mfa.disabled`` (in ``db``; the caller commits).

    A password shorter than ``AAA_PASSWORD_MIN_LENGTH`` (allowed only because a second
    factor guarded the account) must be changed first: the password would be left as the
    only factor."""
    if not user.mfa_enabled:
        raise Conflict("Two-factor authentication is off.")
    _confirm_password(
        db,
        user,
        settings=settings,
        passwords=passwords,
        password=password,
        action="mfa.disable_failed",
        facts=facts,
    )
    if len(normalize_password(password)) < settings.password_min_length:
        audit.record_apart(
            db,
            action="mfa.disable_failed",
            actor=Actor.of(user),
            outcome="failure",
            target=user,
            facts=facts,
            details={"reason": "short_password"},
        )
        raise InvalidInput(
            {
                "password": (
                    f"Your password would be the only factor: change it to one of at least "
                    f"{settings.password_min_length} characters first."
                )
            }
        )
    user.totp_secret = None
    user.totp_last_step = None
    user.mfa_enabled_at = None
    db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    audit.record(
        db,
        action="mfa.disabled",
        actor=Actor.of(user),
        target=user,
        facts=facts,
    )


def reset_by_admin(
    db: Session, *, actor: Actor, user: User, facts: RequestFacts | None = None
) -> bool:
    """An administrator turns a user's TOTP off (lost phone and recovery codes). Needs
    ``aaa:users:write`` and every permission the user holds (no delegation beyond one's own
    rights); ends all of the user's sessions, who then signs in with the password and, if a
    role requires it, enrols again. False if 2FA was off."""
    rbac.check(db, actor, [rbac.MANAGE_USERS], facts=facts, target=user)
    rbac.require_holds_all(
        db, actor, rbac.load_grants(db, user.id).permissions, facts, "reset 2FA of", user
    )
    if not user.mfa_enabled:
        return False
    user.totp_secret = None
    user.totp_last_step = None
    user.mfa_enabled_at = None
    db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    ended = sessions.revoke_all(db, user, reason="mfa_reset")
    audit.record(
        db,
        action="mfa.reset",
        actor=actor,
        target=user,
        facts=facts,
        details={"sessions_ended": ended},
    )
    return True


def _lock(db: Session, user: User) -> None:
    """Lock ``user``'s row until the transaction ends (a no-op on SQLite, whose write
    transactions are serialized anyway)."""
    db.execute(select(User.id).where(User.id == user.id).with_for_update())


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
