"""Impersonation: an administrator acts as another user, for a while, for a stated reason.

The administrator (``aaa:users:impersonate``, a fresh login) gets a **new** server session
for the target user, marked with who opened it (``impersonator_id``) and why
(``impersonation_reason``), which ends after ``AAA_IMPERSONATION_MINUTES`` at the latest and
never outlives the administrator's own session. The administrator's own session is kept:
returning to it (:func:`resume`) gives it a new id. Nobody may act as a user who holds a
right they lack (no escalation), as themselves, as a disabled user or a service account.

What the impersonation session may do, and how its events name both identities, is the web
layer's part (``web/impersonation.py`` and :class:`~flask_aaa.services.actors.RequestFacts`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy.orm import Session

from ..config import Settings
from ..db import utcnow
from ..errors import ImpersonationForbidden, InvalidInput, ReauthenticationRequired
from ..models import SERVICE, LoginSession, User
from . import audit, rbac, sessions
from .actors import Actor, RequestFacts
from .rbac import Grants

#: Length bounds of the stated reason, in characters.
REASON_MIN = 10
REASON_MAX = 255

#: ``revoked_reason`` of an impersonation session once its end is recorded.
_ENDED_PREFIX = "impersonation_"

#: Why an impersonation ended (``details["reason"]`` of ``impersonation.ended``).
STOPPED = "stopped"  # the administrator went back to their account
EXPIRED = "expired"  # its time limit or the idle timeout
REVOKED = "revoked"  # its session was ended (by the user, an administrator, a disabled account)
LOGOUT = "logout"  # the browser signed out: both sessions end
ADMIN_SESSION_ENDED = "admin_session_ended"  # the administrator's own session ended meanwhile
RIGHTS_CHANGED = "rights_changed"  # the administrator no longer may act as this user


def check_reason(reason: object) -> str:
    """The reason, trimmed: 10 to 255 printable characters (it is shown and audited)."""
    text = reason.strip() if isinstance(reason, str) else ""
    if not REASON_MIN <= len(text) <= REASON_MAX or not text.isprintable():
        raise InvalidInput(
            {"reason": f"Say why, in {REASON_MIN} to {REASON_MAX} characters (one line)."}
        )
    return text


def rights_lacking(admin: Grants, target: Grants) -> list[str]:
    """What ``target`` holds that ``admin`` does not: each permission (wildcards honoured:
    ``notes:*`` needs ``notes:*`` or ``*``), and each role, since apps may guard views by role.
    Holding ``*`` covers every role too: full administrators can give themselves any role."""
    lacking = [p for p in sorted(target.permissions) if not admin.allows(p)]
    if not rbac.is_superuser(admin):
        lacking += [f"role {r}" for r in sorted(target.roles - admin.roles)]
    return lacking


def may_continue(admin: Grants, target: Grants) -> bool:
    """Checked on every request of an impersonation: the administrator still holds the
    permission and everything the user holds (a grant to either side takes effect at once)."""
    return admin.allows(rbac.IMPERSONATE) and not rights_lacking(admin, target)


def start(
    db: Session,
    *,
    admin: User,
    target: User,
    reason: str,
    settings: Settings,
    facts: RequestFacts,
    admin_session: LoginSession,
) -> tuple[str, LoginSession]:
    """Open an impersonation session of ``target`` for ``admin``; return its raw token and
    record. Denials are audited (``authz.denied``) and raise
    :class:`~flask_aaa.errors.PermissionDenied`; the caller commits."""
    actor = Actor.of(admin)
    rbac.check(db, actor, [rbac.IMPERSONATE], facts=facts, target=target)
    if admin_session.impersonator_id is not None or admin_session.user_id != admin.id:
        rbac.deny(
            db,
            actor,
            "not while impersonating",
            facts=facts,
            target=target,
            message=ImpersonationForbidden("acting as a third user").message,
        )
    text = check_reason(reason)
    refusal = _refusal(admin, target)
    if refusal is not None:
        rbac.deny(db, actor, refusal[0], facts=facts, target=target, message=refusal[1])
    lacking = rights_lacking(admin.grants, rbac.load_grants(db, target.id))
    if lacking:
        rbac.deny(
            db,
            actor,
            " and ".join(lacking),
            facts=facts,
            target=target,
            message=f"You cannot act as a user who holds what you do not: {', '.join(lacking)}.",
        )
    if not sessions.is_fresh(admin_session, settings=settings):
        raise ReauthenticationRequired()
    minutes = settings.impersonation_minutes
    token, record = sessions.create(db, target, settings=settings, facts=facts)
    record.expires_at = min(
        record.created_at + dt.timedelta(minutes=minutes), admin_session.expires_at
    )
    record.impersonator_id = admin.id
    record.impersonation_reason = text
    # ``reauthenticated_at`` stays empty: an impersonation session is never "fresh".
    db.flush()
    audit.record(
        db,
        action="impersonation.started",
        actor=actor,
        target=target,
        facts=facts,
        details={
            "reason": text,
            "minutes": minutes,
            "until": record.expires_at.isoformat(),
            "session": record.id,
        },
    )
    return token, record


def _refusal(admin: User, target: User) -> tuple[str, str] | None:
    if target.id == admin.id:
        return "impersonate: another user", "You cannot act as yourself."
    if not target.active:
        return "impersonate: an active account", "This account is disabled."
    if target.kind == SERVICE:
        return (
            "impersonate: a person",
            "Service accounts act through their API tokens, not through a browser.",
        )
    return None


def stop(db: Session, *, record: LoginSession, reason: str, facts: RequestFacts) -> bool:
    """End an impersonation session and record ``impersonation.ended`` (actor: the
    administrator, target: the user), whatever ended it: exactly once per impersonation
    (False if it was recorded already). The caller commits."""
    if record.impersonator_id is None:
        raise ValueError("not an impersonation session")
    if (record.revoked_reason or "").startswith(_ENDED_PREFIX):
        return False
    started = record.created_at
    # A session ended some other way (its user signed it out, their account was disabled)
    # keeps when that happened; the reason now says that the impersonation is over too.
    cause = record.revoked_reason if record.revoked_at is not None else None
    sessions.revoke(db, record, reason=reason)
    record.revoked_reason = f"{_ENDED_PREFIX}{reason}"[:64]
    admin = record.impersonator
    actor = Actor.of(admin) if admin is not None else Actor.system(f"user-{record.impersonator_id}")
    ended = min(utcnow(), record.expires_at)
    audit.record(
        db,
        action="impersonation.ended",
        actor=actor,
        target=record.user,
        # The administrator is the actor here: their name need not be repeated.
        facts=dataclasses.replace(facts, impersonator_id=None, impersonator_name=None),
        details={
            "reason": reason,
            "session": record.id,
            "seconds": max(0, int((ended - started).total_seconds())),
            **({"cause": cause} if cause else {}),
        },
    )
    return True


def ending(record: LoginSession | None) -> str:
    """Why an impersonation session that no longer resolves has ended."""
    if record is None or record.revoked_at is not None or not record.user.active:
        return REVOKED
    return EXPIRED


def resume(
    db: Session, *, token: str, admin_id: int, settings: Settings, facts: RequestFacts
) -> tuple[str, LoginSession] | None:
    """The way back: the administrator's own session, if it is still live, under a new id
    (the old token sat in the browser while it acted as someone else). It keeps its end and
    its last password confirmation. None if it ended meanwhile (then: sign in again)."""
    resolved = admin_session(db, token, admin_id=admin_id, settings=settings)
    if resolved is None:
        return None
    old = resolved.session
    new_token, record = sessions.rotate(
        db, old, settings=settings, facts=facts, reason="returned_from_impersonation"
    )
    record.expires_at = min(record.expires_at, old.expires_at)
    record.reauthenticated_at = old.reauthenticated_at
    return new_token, record


def admin_session(
    db: Session, token: str, *, admin_id: int, settings: Settings
) -> sessions.Resolved | None:
    """The administrator's own, still live session behind an impersonation, or None."""
    resolved = sessions.resolve(db, token, settings=settings)
    if resolved is None or resolved.user.id != admin_id or resolved.session.impersonator_id:
        return None
    return resolved
