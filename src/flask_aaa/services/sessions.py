"""The server-side registry of login sessions.

A session token is 256 bits from :mod:`secrets`; the client holds it, the database holds
only its SHA-256. A session ends when it is revoked (logout, password change, disabled
account, an administrator), after an idle period, or at its absolute lifetime, whichever
comes first; every worker checks the record on every request, so an ended session fails on
its very next request.

The same records answer the usage questions (:func:`usage`, :func:`active_counts`): when
and from where a user last signed in, how often, how many sessions are active, and how long
their sign-ins last.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import secrets
import statistics
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, select, update
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


def revoke_all(
    db: Session, user: User | None, *, reason: str, keep: LoginSession | None = None
) -> int:
    """End every live session of ``user`` (of every user when None) but ``keep``, and every
    remember-me series; return how many sessions were ended."""
    series = update(RememberToken).where(RememberToken.revoked_at.is_(None))
    stmt = update(LoginSession).where(LoginSession.revoked_at.is_(None))
    if user is not None:
        series = series.where(RememberToken.user_id == user.id)
        stmt = stmt.where(LoginSession.user_id == user.id)
    db.execute(series.values(revoked_at=utcnow()).execution_options(synchronize_session=False))
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


def revoke_everyone(db: Session, *, actor: Actor, facts: RequestFacts | None = None) -> int:
    """An administrator (``aaa:users:write``) signs every user out everywhere: sessions and
    remember-me series (after a suspected breach, or a change of ``SECRET_KEY``). The
    actor's own sessions end too. One event, ``session.revoked_everyone``."""
    from . import rbac

    rbac.check(db, actor, [rbac.MANAGE_USERS], facts=facts)
    ended = revoke_all(db, None, reason="revoked_by_admin")
    audit.record(
        db,
        action="session.revoked_everyone",
        actor=actor,
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
    stmt = select(func.count()).select_from(LoginSession).where(*_active(settings, now or utcnow()))
    return int(db.scalar(stmt) or 0)


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


def active_counts(
    db: Session, user_ids: Iterable[int], *, settings: Settings, now: dt.datetime | None = None
) -> dict[int, int]:
    """For each of ``user_ids``, how many of its sessions are active (as in :func:`usage`):
    one grouped query, for a page of users. Users without one are left out."""
    ids = sorted(set(user_ids))
    if not ids:
        return {}
    stmt = (
        select(LoginSession.user_id, func.count())
        .where(LoginSession.user_id.in_(ids), *_active(settings, now or utcnow()))
        .group_by(LoginSession.user_id)
    )
    return {int(user_id): int(count) for user_id, count in db.execute(stmt)}


# -- usage accounting --

#: The duration figures of :func:`usage` cover at most this many of the user's latest
#: sign-ins...
USAGE_SESSIONS = 50
#: ...opened within this many days.
USAGE_DAYS = 90
#: Why a session ends when the browser gets a new session id: the visit goes on in the
#: session opened at that moment, so the figures count the two as one sign-in.
ROTATION_REASONS = frozenset({"rotated", "reauthenticated", "mfa_enabled", "privileges_changed"})
#: Longest gap between a rotated session's end and its successor's start (both are written
#: in one transaction, microseconds apart).
_ROTATION_GAP = dt.timedelta(seconds=5)


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """How a user uses their account (see :func:`usage`). Times are UTC."""

    last_login_at: dt.datetime | None
    last_login_ip: str | None
    login_count: int
    #: Sessions that would be accepted now: not revoked, before their absolute end, used
    #: within the idle timeout. Impersonation sessions on the account count here.
    active_sessions: int
    #: Sign-ins the duration figures cover: the user's own (impersonation left out), at
    #: most :data:`USAGE_SESSIONS`, opened in the last :data:`USAGE_DAYS` days.
    recent_sessions: int
    #: Median and longest duration of those sign-ins; None when there is none.
    median_duration: dt.timedelta | None
    longest_duration: dt.timedelta | None


def _active(settings: Settings, now: dt.datetime) -> tuple[ColumnElement[bool], ...]:
    idle = now - dt.timedelta(seconds=settings.session_idle_timeout)
    return (
        LoginSession.revoked_at.is_(None),
        LoginSession.expires_at > now,
        LoginSession.last_seen_at >= idle,
    )


def usage(db: Session, user_id: int, now: dt.datetime, *, settings: Settings) -> Usage:
    """Sign-in figures of one user, in two queries: the user's counters with the number of
    active sessions, then their latest own sessions for the durations.

    A session lasts from its start to its revocation (sign-out, or an administrator) if it
    was revoked while still alive; otherwise, when it lapsed (idle or past its absolute end)
    or is still active, to when it was last used. A session ended only to give the browser
    a new id (:data:`ROTATION_REASONS`) and the one that took over from it count as one.
    Sessions in which an administrator acted as the user are not the user's own use: they
    are left out of the durations. Raises :class:`NotFound` for an unknown user."""
    active = (
        select(func.count())
        .select_from(LoginSession)
        .where(LoginSession.user_id == user_id, *_active(settings, now))
        .scalar_subquery()
    )
    row = db.execute(
        select(User.last_login_at, User.last_login_ip, User.login_count, active).where(
            User.id == user_id
        )
    ).first()
    if row is None:
        raise NotFound("No such user.")
    recent = db.execute(
        select(
            LoginSession.created_at,
            LoginSession.last_seen_at,
            LoginSession.expires_at,
            LoginSession.revoked_at,
            LoginSession.revoked_reason,
            LoginSession.user_agent,
        )
        .where(
            LoginSession.user_id == user_id,
            LoginSession.impersonator_id.is_(None),
            LoginSession.created_at >= now - dt.timedelta(days=USAGE_DAYS),
            LoginSession.created_at <= now,
        )
        .order_by(LoginSession.created_at.desc(), LoginSession.id.desc())
        .limit(USAGE_SESSIONS)
    ).all()
    durations = _sign_in_durations(
        reversed(recent), dt.timedelta(seconds=settings.session_idle_timeout)
    )
    seconds = [d.total_seconds() for d in durations]
    return Usage(
        last_login_at=row[0],
        last_login_ip=row[1],
        login_count=int(row[2] or 0),
        active_sessions=int(row[3] or 0),
        recent_sessions=len(durations),
        median_duration=dt.timedelta(seconds=statistics.median(seconds)) if seconds else None,
        longest_duration=max(durations) if durations else None,
    )


@dataclasses.dataclass(slots=True)
class _Span:
    start: dt.datetime
    end: dt.datetime
    #: The last session of the span was ended for a new id: when, and from which browser.
    rotated_at: dt.datetime | None
    user_agent: str | None


def _sign_in_durations(rows: Iterable[Any], idle: dt.timedelta) -> list[dt.timedelta]:
    """The duration of each sign-in in ``rows`` (sessions, oldest first), rotated
    sessions joined to the session that continued them."""
    spans: list[_Span] = []
    for created, seen, expires, revoked, reason, agent in rows:
        alive_until = min(expires, seen + idle)
        end = revoked if revoked is not None and revoked <= alive_until else seen
        rotated_at = revoked if revoked is not None and reason in ROTATION_REASONS else None
        before = next(
            (
                span
                for span in reversed(spans)
                if span.rotated_at is not None
                and span.user_agent == agent
                and abs(created - span.rotated_at) <= _ROTATION_GAP
            ),
            None,
        )
        if before is None:
            spans.append(_Span(created, max(end, created), rotated_at, agent))
        else:
            before.end = max(before.end, end)
            before.rotated_at = rotated_at
    return [span.end - span.start for span in spans]


def _device(record: LoginSession) -> str:
    return (record.user_agent or "unknown device")[:120]
