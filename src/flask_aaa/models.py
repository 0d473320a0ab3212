"""SQLAlchemy 2 models of Flask-AAA, on their own :class:`Base`.

Share the metadata with your app so that your models can point at users with foreign keys::

    db = SQLAlchemy(model_class=flask_aaa.Base)

    class Note(db.Model):
        owner_id: Mapped[int] = mapped_column(ForeignKey("aaa_users.id"))

Every table is prefixed ``aaa_`` so that it never collides with the app's own.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, registry, relationship

from .db import UTCDateTime, utcnow

if TYPE_CHECKING:
    from .services.rbac import Grants

#: The ``hash`` of the (absent) event before the first one.
GENESIS_HASH = "0" * 64


class Base(DeclarativeBase):
    """Declarative base of every Flask-AAA model; pass it to ``SQLAlchemy(model_class=...)``."""

    registry = registry(type_annotation_map={dt.datetime: UTCDateTime()})


user_roles = Table(
    "aaa_user_roles",
    Base.metadata,
    Column("user_id", ForeignKey("aaa_users.id", ondelete="CASCADE"), primary_key=True),
    Column("role_id", ForeignKey("aaa_roles.id", ondelete="CASCADE"), primary_key=True, index=True),
)

role_permissions = Table(
    "aaa_role_permissions",
    Base.metadata,
    Column("role_id", ForeignKey("aaa_roles.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "permission_id",
        ForeignKey("aaa_permissions.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
)


#: ``User.kind`` of people, who sign in with a password, a passkey or a provider.
PERSON = "person"
#: ``User.kind`` of service accounts: non-human users that authenticate with API tokens only.
SERVICE = "service"


#: A role inherits every permission of its parents (and, transitively, of theirs).
role_parents = Table(
    "aaa_role_parents",
    Base.metadata,
    Column("role_id", ForeignKey("aaa_roles.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "parent_id", ForeignKey("aaa_roles.id", ondelete="CASCADE"), primary_key=True, index=True
    ),
)

#: Permissions granted to a user directly, beside those of their roles.
user_permissions = Table(
    "aaa_user_permissions",
    Base.metadata,
    Column("user_id", ForeignKey("aaa_users.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "permission_id",
        ForeignKey("aaa_permissions.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
)


class User(Base):
    """A person, or a service account, that can authenticate.

    ``username`` and ``email`` keep what the user typed (NFKC-normalized and trimmed);
    ``username_key`` and ``email_key`` hold the casefolded form used for lookups and
    uniqueness, so ``Alice`` and ``ALICE`` are one account.
    """

    __tablename__ = "aaa_users"
    # Lets the two per-request attributes below carry plain (unmapped) annotations.
    __allow_unmapped__ = True

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str | None] = mapped_column(String(64))
    username_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    email_key: Mapped[str | None] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    password_changed_at: Mapped[dt.datetime | None]
    last_login_at: Mapped[dt.datetime | None]
    last_login_ip: Mapped[str | None] = mapped_column(String(45))
    login_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    email_confirmed_at: Mapped[dt.datetime | None]
    #: Consecutive failed passwords since the last success or lockout.
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: How many lockouts in a row (each doubles the next one); reset by a successful login.
    lockouts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    locked_until: Mapped[dt.datetime | None]
    #: Base32 TOTP secret, set once enrolment is confirmed. Never logged or audited.
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    #: The last TOTP time step accepted: a code is good once (replay protection).
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    mfa_enabled_at: Mapped[dt.datetime | None]
    #: ``person`` or ``service``. Service accounts have no password and never sign in
    #: interactively; they act through API tokens minted for them by an administrator.
    kind: Mapped[str] = mapped_column(String(16), default=PERSON, server_default=PERSON)
    #: Random WebAuthn user handle (not the primary key, which would leak account order).
    passkey_handle: Mapped[str | None] = mapped_column(String(88), unique=True, index=True)

    roles: Mapped[list[Role]] = relationship(
        secondary=user_roles, back_populates="users", order_by="Role.name"
    )
    #: Permissions held directly (not through a role).
    permissions: Mapped[list[Permission]] = relationship(
        secondary=user_permissions, order_by="Permission.name"
    )

    # Set by the web layer for the signed-in user: the raw session id (Flask-Login stores
    # ``get_id()`` in the cookie) and the resolved grants. Never persisted.
    _aaa_session_token: str | None = None
    _aaa_grants: Grants | None = None

    def __repr__(self) -> str:
        return f"<User {self.id} {self.label!r}>"

    @property
    def mfa_enabled(self) -> bool:
        return self.mfa_enabled_at is not None and self.totp_secret is not None

    @property
    def label(self) -> str:
        """How the user is named in pages and in the audit trail."""
        return self.username or self.email or f"user-{self.id}"

    # -- Flask-Login's user protocol (implemented here so the model needs no Flask import) --

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_active(self) -> bool:
        return bool(self.active)

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        """The id Flask-Login keeps in the cookie: the server-side session's token, never the
        user's primary key, so that revoking the session record ends the login."""
        if self._aaa_session_token is None:
            raise RuntimeError("this user has no login session in this request")
        return self._aaa_session_token

    # -- Authorization --

    @property
    def grants(self) -> Grants:
        """The user's effective roles and permissions (resolved once, then cached)."""
        if self._aaa_grants is None:
            from .services.rbac import Grants

            self._aaa_grants = Grants.of_user(self)
        return self._aaa_grants

    def has_role(self, *names: str) -> bool:
        """True if the user has every one of ``names``."""
        return all(name in self.grants.roles for name in names)

    def has_permission(self, *permissions: str) -> bool:
        """True if the user holds every one of ``permissions`` (wildcards honoured)."""
        return all(self.grants.allows(p) for p in permissions)


class Role(Base):
    """A named set of permissions given to users."""

    __tablename__ = "aaa_roles"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(255), default="", server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    users: Mapped[list[User]] = relationship(secondary=user_roles, back_populates="roles")
    permissions: Mapped[list[Permission]] = relationship(
        secondary=role_permissions, back_populates="roles", order_by="Permission.name"
    )
    #: The roles this one inherits from (their permissions are this role's too).
    parents: Mapped[list[Role]] = relationship(
        secondary=role_parents,
        primaryjoin=lambda: Role.id == role_parents.c.role_id,
        secondaryjoin=lambda: Role.id == role_parents.c.parent_id,
        back_populates="children",
        order_by="Role.name",
    )
    children: Mapped[list[Role]] = relationship(
        secondary=role_parents,
        primaryjoin=lambda: Role.id == role_parents.c.parent_id,
        secondaryjoin=lambda: Role.id == role_parents.c.role_id,
        back_populates="parents",
        order_by="Role.name",
    )

    def __repr__(self) -> str:
        return f"<Role {self.name!r}>"


class Permission(Base):
    """A ``resource:action`` string; ``resource:*`` and ``*`` are wildcards."""

    __tablename__ = "aaa_permissions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(String(255), default="", server_default="")

    roles: Mapped[list[Role]] = relationship(
        secondary=role_permissions, back_populates="permissions"
    )

    def __repr__(self) -> str:
        return f"<Permission {self.name!r}>"


class LoginSession(Base):
    """A server-side login session. Only the SHA-256 of its token is stored."""

    __tablename__ = "aaa_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("aaa_users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    revoked_at: Mapped[dt.datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(64))
    #: When the user last confirmed their password in this session (re-authentication).
    reauthenticated_at: Mapped[dt.datetime | None]
    #: The user's privileges changed: the next request gets a new session id.
    rotate_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Set when an administrator acts as this session's user (impersonation): who, and why.
    impersonator_id: Mapped[int | None] = mapped_column(
        ForeignKey("aaa_users.id", ondelete="CASCADE"), index=True
    )
    impersonation_reason: Mapped[str | None] = mapped_column(String(255))

    user: Mapped[User] = relationship(foreign_keys=[user_id])
    impersonator: Mapped[User | None] = relationship(foreign_keys=[impersonator_id])

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class OneTimeToken(Base):
    """A single-use, expiring secret sent by mail (confirmation, reset, invitation, email
    change). Only its SHA-256 is stored; ``purpose`` keeps one kind from serving another."""

    __tablename__ = "aaa_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("aaa_users.id", ondelete="CASCADE"), index=True
    )
    #: The address the token was sent to (an invitation's, or the new one of an email change).
    email: Mapped[str | None] = mapped_column(String(320))
    #: The user's password state when issued: a reset token dies with any password change.
    binding: Mapped[str | None] = mapped_column(String(64))
    created_by: Mapped[int | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]


class RememberToken(Base):
    """A remember-me series: the cookie holds ``series:token``; the token rotates at every
    use, so a stolen cookie used after its owner (or the owner after the thief) is caught."""

    __tablename__ = "aaa_remember"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("aaa_users.id", ondelete="CASCADE"), index=True)
    series: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None]
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]


class RecoveryCode(Base):
    """A two-factor recovery code: single use, stored as a keyed hash."""

    __tablename__ = "aaa_recovery_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("aaa_users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    used_at: Mapped[dt.datetime | None]


class ApiToken(Base):
    """A personal access token. The secret is shown once at minting; only its SHA-256 is
    stored. ``scopes`` (space-separated permission strings) narrow what the token may do to
    a subset of what its owner holds at each request."""

    __tablename__ = "aaa_api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("aaa_users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: The first characters of the token (prefix and 4 more), to recognise it in listings.
    hint: Mapped[str] = mapped_column(String(32))
    scopes: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[int | None]
    expires_at: Mapped[dt.datetime]
    last_used_at: Mapped[dt.datetime | None]
    last_used_ip: Mapped[str | None] = mapped_column(String(45))
    revoked_at: Mapped[dt.datetime | None]
    revoked_by: Mapped[int | None]

    user: Mapped[User] = relationship()

    @property
    def scope_list(self) -> list[str]:
        return self.scopes.split()


class ExternalIdentity(Base):
    """A link between a local account and an account at a third-party provider, keyed by the
    provider's ``(issuer, subject)``, never by email."""

    __tablename__ = "aaa_identities"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("aaa_users.id", ondelete="CASCADE"), index=True)
    #: The configured provider's name (``AAA_OIDC_PROVIDERS`` key).
    provider: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(255))
    #: What the provider said last (shown to the user; never used to find the account).
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[dt.datetime | None]

    user: Mapped[User] = relationship()

    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_aaa_identities_iss_sub"),)


class Passkey(Base):
    """A WebAuthn credential (passkey) registered by a user."""

    __tablename__ = "aaa_passkeys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("aaa_users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    #: The credential id, base64url without padding.
    credential_id: Mapped[str] = mapped_column(String(1400), unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    transports: Mapped[str] = mapped_column(String(255), default="")
    aaguid: Mapped[str | None] = mapped_column(String(36))
    #: The authenticator said the credential is backed up (synced passkey).
    backed_up: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None]

    user: Mapped[User] = relationship()


class Challenge(Base):
    """A single-use, short-lived value of a ceremony begun in one browser: an OAuth ``state``
    (with its nonce and PKCE verifier in ``data``) or a WebAuthn challenge. Only the SHA-256
    of the value is stored; ``browser_hash`` binds it to the browser that began it, and
    ``data`` is emptied when it is used."""

    __tablename__ = "aaa_challenges"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    purpose: Mapped[str] = mapped_column(String(16))
    value_hash: Mapped[str] = mapped_column(String(64), unique=True)
    browser_hash: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("aaa_users.id", ondelete="CASCADE"), index=True
    )
    data: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    used_at: Mapped[dt.datetime | None]


class AuthzState(Base):
    """One row: a version bumped by every grant or revoke, so every worker's cache of
    effective permissions notices the change on its next request."""

    __tablename__ = "aaa_authz_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=1)


class AuditEvent(Base):
    """One entry of the append-only, hash-chained audit trail.

    ``seq`` numbers events without gaps; ``hash`` is the SHA-256 of the event's canonical
    encoding, which includes ``prev_hash``, the hash of the event before it.
    ``actor_id`` is deliberately not a foreign key: events outlive the users they name.
    """

    __tablename__ = "aaa_audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[dt.datetime]
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[int | None]
    actor_name: Mapped[str | None] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    target_label: Mapped[str | None] = mapped_column(String(320))
    ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    request_id: Mapped[str | None] = mapped_column(String(64))
    session_hash: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_aaa_audit_actor_seq", "actor_id", "seq"),
        Index("ix_aaa_audit_action_seq", "action", "seq"),
        Index("ix_aaa_audit_outcome_seq", "outcome", "seq"),
        Index("ix_aaa_audit_ts", "ts"),
        Index("ix_aaa_audit_target_seq", "target_type", "target_id", "seq"),
        Index("ix_aaa_audit_ip_seq", "ip", "seq"),
    )


class AuditHead(Base):
    """One row: the last sealed ``seq`` and its ``hash``. Appends lock it, which serializes
    them; verification compares it with the last event, which catches a cut-off tail."""

    __tablename__ = "aaa_audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    hash: Mapped[str] = mapped_column(String(64), default=GENESIS_HASH)
    #: HMAC of (``seq``, ``hash``) by the key with id ``key_id`` (see services/signing.py),
    #: renewed on every append: setting the head back needs the key.
    mac: Mapped[str | None] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(16))


class AuditCheckpoint(Base):
    """A signed statement "event ``seq`` of the trail has hash ``hash``".

    ``checkpoint``: written every ``AAA_AUDIT_CHECKPOINT_EVERY`` events and on request; a
    rewritten chain no longer matches it, and one that names an event past the end shows the
    tail was cut off. ``anchor``: written by a purge; the trail now starts after it, and
    verification starts from its hash. Each is also mirrored to the ``flask_aaa.audit`` log,
    outside the database.
    """

    __tablename__ = "aaa_audit_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str] = mapped_column(String(16))
    mac: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_aaa_audit_checkpoints_seq", "seq"),)


def _seed_singletons(target: Table, connection: Any, **_: Any) -> None:
    """``create_all`` seeds the single-row tables just as the migration does."""
    if target.name == "aaa_authz_state":
        connection.execute(target.insert().values(id=1, version=1))
    elif target.name == "aaa_audit_head":
        connection.execute(target.insert().values(id=1, seq=0, hash=GENESIS_HASH))


event.listen(AuthzState.__table__, "after_create", _seed_singletons)
event.listen(AuditHead.__table__, "after_create", _seed_singletons)
