"""The server-side registry of login sessions.

A session token is 256 bits from :mod:`secrets`; the client holds it, the database holds
only its SHA-256. A session ends when it is revoked (logout, password change, disabled
account, an administrator), after an idle period, or at its absolute lifetime, whichever
comes first; every worker checks the record on every request, so an ended session fails on
its very next request.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import secrets

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from ..config import Settings
from ..db import note_activity, utcnow
from ..errors import NotFound
from ..models import AuthzState, LoginSession, RememberToken, User
from . import audit
from .actors import Actor, RequestFacts, token_digest

#: Bytes of randomness in a session token (256 bits; ASVS asks for at least 128).
TOKEN_BYTES = 32


@dataclasses.dataclass(frozen=True, slots=True)
class Resolved:
    """A live session with its user and the authorization version read in the same query."""

    session: LoginSession
    user: User
    authz_version: int


def create(
    db: Session, user: User, *, settings: Settings, facts: RequestFacts
) -> tuple[str, LoginSession]:
    """Open a session for ``user``; return the raw token (give it to the client, once)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = utcnow()
    record = LoginSession(
        token_hash=token_digest(token),
        user_id=user.id,
        created_at=now,
        last_seen_at=now,
        expires_at=now + dt.timedelta(seconds=settings.session_absolute_timeout),
        ip=facts.ip,
        user_agent=(facts.user_agent or "")[:512] or None,
    )
    db.add(record)
    db.flush()
    return token, record


#: The one query of every signed-in request: the session, its user and the authz version.
#: Built once (with a bound parameter) rather than per request.
_RESOLVE = (
    select(
        LoginSession,
        User,
        select(AuthzState.version).where(AuthzState.id == 1).scalar_subquery(),
    )
    .join(User, User.id == LoginSession.user_id)
    .where(LoginSession.token_hash == bindparam("token_hash"))
)


def resolve(
    db: Session, token: str, *, settings: Settings, now: dt.datetime | None = None
) -> Resolved | None:
    """Find the live session for ``token`` with one query, or None if it is unknown,
    revoked, idle too long, past its lifetime, or its user is disabled."""
    if not token or len(token) > 128:
        return None
    row = db.execute(_RESOLVE, {"token_hash": token_digest(token)}).first()
    if row is None:
        return None
    record, user, authz_version = row
    now = now or utcnow()
    if (
        record.revoked_at is not None
        or not user.active
        or now >= record.expires_at
        or now - record.last_seen_at > dt.timedelta(seconds=settings.session_idle_timeout)
    ):
        return None
    return Resolved(record, user, authz_version or 0)


def touch(
    db: Session, record: LoginSession, *, settings: Settings, now: dt.datetime | None = None
) -> None:
    """Move ``last_seen_at`` forward, at most once per touch interval (best effort; see
    :func:`~flask_aaa.db.note_activity`). A revoked session is never revived."""
    now = now or utcnow()
    if (now - record.last_seen_at).total_seconds() < settings.session_touch_interval:
        return
    note_activity(
        db,
        update(LoginSession)
        .where(LoginSession.id == record.id, LoginSession.revoked_at.is_(None))
        .values(last_seen_at=now)
        .execution_options(synchronize_session=False),
        "session activity",
    )


def revoke(db: Session, record: LoginSession, *, reason: str) -> None:
    """End one session (no audit here: the calling flow records what it did)."""
    if record.revoked_at is None:
        record.revoked_at = utcnow()
        record.revoked_reason = reason


def revoke_all(db: Session, user: User, *, reason: str, keep: LoginSession | None = None) -> int:
    """End every live session of ``user`` but ``keep``, and every remember-me series;
    return how many sessions were ended."""
    db.execute(
        update(RememberToken)
        .where(RememberToken.user_id == user.id, RememberToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    stmt = update(LoginSession).where(
        LoginSession.user_id == user.id, LoginSession.revoked_at.is_(None)
    )
    if keep is not None:
        stmt = stmt.where(LoginSession.id != keep.id)
    result = db.execute(
        stmt.values(revoked_at=utcnow(), revoked_reason=reason).execution_options(
            synchronize_session=False
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def rotate(
    db: Session, record: LoginSession, *, settings: Settings, facts: RequestFacts, reason: str
) -> tuple[str, LoginSession]:
    """Replace a session by a new one with a new token (after a privilege change).

    An impersonation session stays one: the new session keeps its administrator, reason
    and end, so that a new id never lifts the limits of acting as someone else."""
    revoke(db, record, reason=reason)
    token, new = create(db, record.user, settings=settings, facts=facts)
    if record.impersonator_id is not None:
        new.impersonator_id = record.impersonator_id
        new.impersonation_reason = record.impersonation_reason
        new.expires_at = min(new.expires_at, record.expires_at)
    return token, new


def live_sessions(db: Session, user: User) -> list[LoginSession]:
    now = utcnow()
    return list(
        db.scalars(
            select(LoginSession)
            .where(
                LoginSession.user_id == user.id,
                LoginSession.revoked_at.is_(None),
                LoginSession.expires_at > now,
            )
            .order_by(LoginSession.last_seen_at.desc())
        )
    )


# -- remember me --

#: ``series:token`` in the cookie; the series names the row, the token proves possession.
_REMEMBER_SEP = ":"


@dataclasses.dataclass(frozen=True, slots=True)
class Remembered:
    """The outcome of presenting a remember-me cookie."""

    user: User | None
    cookie: str | None  # the rotated cookie value to set; None means delete the cookie
    theft: bool = False


def issue_remember(db: Session, user: User, *, settings: Settings) -> str:
    """Start a remember-me series for ``user``; return the cookie value (shown once)."""
    series, token = secrets.token_urlsafe(18), secrets.token_urlsafe(TOKEN_BYTES)
    db.add(
        RememberToken(
            user_id=user.id,
            series=series,
            token_hash=token_digest(token),
            expires_at=utcnow() + dt.timedelta(days=settings.remember_days),
        )
    )
    return f"{series}{_REMEMBER_SEP}{token}"


def redeem_remember(db: Session, cookie: str, *, now: dt.datetime | None = None) -> Remembered:
    """Check a remember-me cookie and rotate its token (in ``db``, uncommitted).

    A known series presented with a wrong token means that someone used the cookie before
    its owner did (or after, with a stale copy): the result has ``theft`` set and the
    caller must end everything the user has (:func:`revoke_all`) and audit it."""
    series, sep, token = cookie.partition(_REMEMBER_SEP)
    if not sep or not series or not token or len(cookie) > 256:
        return Remembered(None, None)
    row = db.scalar(select(RememberToken).where(RememberToken.series == series))
    now = now or utcnow()
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        return Remembered(None, None)
    user = db.get(User, row.user_id)
    if user is None:
        return Remembered(None, None)
    if not hmac.compare_digest(row.token_hash, token_digest(token)):
        row.revoked_at = now
        return Remembered(user, None, theft=True)
    fresh = secrets.token_urlsafe(TOKEN_BYTES)
    row.token_hash = token_digest(fresh)
    row.last_used_at = now
    return Remembered(user, f"{series}{_REMEMBER_SEP}{fresh}")


def forget_remember(db: Session, cookie: str) -> None:
    """End the series a cookie names (at logout)."""
    series = cookie.partition(_REMEMBER_SEP)[0]
    if series:
        db.execute(
            update(RememberToken)
            .where(RememberToken.series == series, RememberToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )


# -- privilege changes and re-authentication --


def mark_for_rotation(db: Session, user: User) -> None:
    """The user's privileges changed: each live session gets a new id on its next request."""
    db.execute(
        update(LoginSession)
        .where(LoginSession.user_id == user.id, LoginSession.revoked_at.is_(None))
        .values(rotate_pending=True)
        .execution_options(synchronize_session=False)
    )


def is_fresh(record: LoginSession, *, settings: Settings, now: dt.datetime | None = None) -> bool:
    """Did the user type their password (at sign-in or to confirm it) within
    ``AAA_REAUTH_WINDOW``? A session restored by remember-me never was."""
    last = record.reauthenticated_at
    if last is None:
        return False
    return (now or utcnow()) - last <= dt.timedelta(seconds=settings.reauth_window)


# -- the user's own view of their sessions --


def revoke_own(
    db: Session,
    *,
    user: User,
    session_id: int,
    current: LoginSession | None,
    facts: RequestFacts,
) -> LoginSession:
    """End one of ``user``'s own live sessions (another device, or this one). Someone
    else's session id is "not found", never "forbidden", so ids reveal nothing."""
    record = db.get(LoginSession, session_id)
    if record is None or record.user_id != user.id or record.revoked_at is not None:
        raise NotFound("No such session.")
    revoke(db, record, reason="revoked_by_user")
    audit.record(
        db,
        action="session.revoked",
        actor=Actor.of(user),
        target=audit.Target("session", str(record.id), _device(record)),
        facts=facts,
        details={"current": current is not None and current.id == record.id},
    )
    return record


def revoke_others(
    db: Session, *, user: User, current: LoginSession | None, facts: RequestFacts
) -> int:
    """ "Sign out everywhere else": end every session of ``user`` but ``current``."""
    ended = revoke_all(db, user, reason="revoked_by_user", keep=current)
    audit.record(
        db,
        action="session.revoked_others",
        actor=Actor.of(user),
        target=user,
        facts=facts,
        details={"sessions_ended": ended},
    )
    return ended


def revoke_all_by_admin(
    db: Session, *, actor: Actor, user: User, facts: RequestFacts | None = None
) -> int:
    """An administrator (``aaa:users:write``) signs a user out everywhere."""
    from . import rbac

    rbac.check(db, actor, [rbac.MANAGE_USERS], facts=facts, target=user)
    ended = revoke_all(db, user, reason="revoked_by_admin")
    audit.record(
        db,
        action="session.revoked_all",
        actor=actor,
        target=user,
        facts=facts,
        details={"sessions_ended": ended},
    )
    return ended


def revoke_by_admin(
    db: Session,
    *,
    actor: Actor,
    user: User,
    session_id: int,
    facts: RequestFacts | None = None,
) -> LoginSession:
    """An administrator (``aaa:users:write``) ends one live session of ``user``. A session
    of someone else, or one already ended, is "not found"."""
    from . import rbac

    rbac.check(db, actor, [rbac.MANAGE_USERS], facts=facts, target=user)
    record = db.get(LoginSession, session_id)
    if record is None or record.user_id != user.id or record.revoked_at is not None:
        raise NotFound("No such session.")
    revoke(db, record, reason="revoked_by_admin")
    audit.record(
        db,
        action="session.revoked",
        actor=actor,
        target=audit.Target("session", str(record.id), _device(record)),
        facts=facts,
        details={"user": {"id": user.id, "name": user.label}, "by": "administrator"},
    )
    return record


# -- counts for the administrators' dashboard --


def active_count(db: Session, *, settings: Settings, now: dt.datetime | None = None) -> int:
    """Sessions that would be accepted now: not revoked, not past their lifetime, used
    within the idle timeout."""
    now = now or utcnow()
    idle = now - dt.timedelta(seconds=settings.session_idle_timeout)
    return int(
        db.scalar(
            select(func.count())
            .select_from(LoginSession)
            .where(
                LoginSession.revoked_at.is_(None),
                LoginSession.expires_at > now,
                LoginSession.last_seen_at >= idle,
            )
        )
        or 0
    )


def active_per_day(db: Session, days: list[dt.date]) -> dict[dt.date, int]:
    """For each UTC day in ``days``, how many sessions were in use on it: opened on or
    before it and last seen on or after it (and not ended before it began). Reads only the
    sessions seen since the first day."""
    if not days:
        return {}
    first = dt.datetime.combine(min(days), dt.time(), tzinfo=dt.UTC)
    rows = db.execute(
        select(LoginSession.created_at, LoginSession.last_seen_at, LoginSession.revoked_at).where(
            LoginSession.last_seen_at >= first
        )
    ).all()
    counts = dict.fromkeys(days, 0)
    for created, seen, revoked in rows:
        end = min(seen, revoked) if revoked is not None else seen
        for day in days:
            if created.date() <= day <= end.date():
                counts[day] += 1
    return counts


def _device(record: LoginSession) -> str:
    return (record.user_agent or "unknown device")[:120]
