"""Who acts, and the facts of the request they act through."""

from __future__ import annotations

import dataclasses
import hashlib

from ..models import User


@dataclasses.dataclass(frozen=True, slots=True)
class RequestFacts:
    """Where an action came from. The web layer fills it from the request; the CLI from the
    shell. ``session_hash`` is the SHA-256 of the login session token, never the token."""

    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    session_hash: str | None = None
    #: The administrator acting as the request's user (impersonation): their id and label.
    #: Every event recorded with these facts names them in ``details["impersonator"]``.
    impersonator_id: int | None = None
    impersonator_name: str | None = None

    @classmethod
    def for_cli(cls, request_id: str | None = None) -> RequestFacts:
        return cls(ip=None, user_agent="flask aaa (cli)", request_id=request_id)


@dataclasses.dataclass(frozen=True, slots=True)
class Actor:
    """The principal an action is attributed to: a user, the CLI operator, or nobody."""

    kind: str  # "user", "system" or "anonymous"
    name: str | None
    user: User | None = None

    @property
    def user_id(self) -> int | None:
        return self.user.id if self.user is not None else None

    @property
    def is_system(self) -> bool:
        """The CLI and app code acting on their own: they hold every right (they already have
        the database), but their actions are still audited under this name."""
        return self.kind == "system"

    @classmethod
    def of(cls, user: User) -> Actor:
        return cls("user", user.label, user)

    @classmethod
    def system(cls, name: str) -> Actor:
        return cls("system", name)

    @classmethod
    def anonymous(cls) -> Actor:
        return cls("anonymous", None)

    def allows(self, permission: str) -> bool:
        """System actors hold everything; a user what their grants say; anonymous nothing."""
        if self.is_system:
            return True
        return self.user is not None and self.user.has_permission(permission)


def token_digest(token: str) -> str:
    """SHA-256 hex of a high-entropy secret token (sessions, later API and reset tokens).

    A fast hash is right here: the token is 256 random bits, not a guessable password."""
    return hashlib.sha256(token.encode()).hexdigest()
