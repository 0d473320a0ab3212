"""Typed, frozen settings read once from ``app.config``.

Every setting is an ``AAA_*`` key. Defaults live in :data:`DEFAULTS`, each documented next to
its value. A key that starts with ``AAA_`` but is not known is an error at start-up, so that a
misspelt setting can never fall back silently to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import ipaddress
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError

#: Named argon2id cost presets. ``owasp`` is the OWASP Password Storage Cheat Sheet minimum
#: (m=19 MiB, t=2, p=1); ``strong`` costs about three times as much; ``fast`` exists for test
#: suites only and is refused outside ``TESTING``.
HASH_PRESETS: dict[str, dict[str, int]] = {
    "owasp": {"memory_cost": 19_456, "time_cost": 2, "parallelism": 1},
    "strong": {"memory_cost": 65_536, "time_cost": 3, "parallelism": 1},
    "fast": {"memory_cost": 64, "time_cost": 1, "parallelism": 1},
}

DEFAULTS: dict[str, Any] = {
    #: Name shown in page titles and refused as part of a password.
    "APP_NAME": "Flask-AAA",
    #: Users may sign in (and must register) with a username.
    "ENABLE_USERNAME": True,
    #: Users may sign in (and must register) with an email address.
    "ENABLE_EMAIL": True,
    #: Anyone may create an account at /register. Switch off for invitation-only apps.
    "ENABLE_REGISTRATION": True,
    #: Role given to every newly registered user (``None`` for none). Created on first use.
    "DEFAULT_ROLE": None,
    #: argon2id cost preset: ``owasp``, ``strong`` or (tests only) ``fast``.
    "PASSWORD_HASH_PRESET": "owasp",
    #: At most this many password hashes are computed at once per process; more wait briefly,
    #: then get a 503. Bounds memory under a login flood (each hash holds ``memory_cost`` KiB).
    "PASSWORD_HASH_CONCURRENCY": 4,
    #: Seconds a login waits for a free hashing slot before it is refused with a 503.
    "PASSWORD_HASH_WAIT": 2.0,
    #: Minimum password length in code points (NIST: 15 when the password is the only factor).
    "PASSWORD_MIN_LENGTH": 15,
    #: Maximum password length in code points. Longer input is refused before hashing.
    "PASSWORD_MAX_LENGTH": 256,
    #: Refuse passwords found on the shipped list of 30,000 common passwords.
    "PASSWORD_CHECK_COMMON": True,
    #: Also refuse new passwords found in known data breaches, asking a k-anonymity range
    #: service (Have I Been Pwned's Pwned Passwords): only the first 5 hex characters of the
    #: password's SHA-1 leave the server.
    "PASSWORD_BREACH_CHECK": False,
    #: The range service's URL; the 5-character prefix is appended.
    "PASSWORD_BREACH_URL": "https://api.pwnedpasswords.com/range/",
    #: Seconds to wait for the range service.
    "PASSWORD_BREACH_TIMEOUT": 3.0,
    #: When the range service cannot be reached: accept the password (and log a warning), or
    #: refuse the change with a 503 until it is back.
    "PASSWORD_BREACH_FAIL_OPEN": True,
    #: Idle timeout of a login session, in seconds.
    "SESSION_IDLE_TIMEOUT": 30 * 60,
    #: Absolute lifetime of a login session, in seconds, however active it is.
    "SESSION_ABSOLUTE_TIMEOUT": 12 * 60 * 60,
    #: How often (seconds) a session's ``last_seen`` is written. Lower is more precise for idle
    #: timeouts and costs one write per interval per active session.
    "SESSION_TOUCH_INTERVAL": 60,
    #: Session cookie ``Secure`` flag and ``__Host-`` name prefix. ``None`` means on, except
    #: when the app runs with ``DEBUG`` or ``TESTING`` (typically plain HTTP on a laptop).
    "SECURE_COOKIES": None,
    #: Storage for rate-limit counters (Flask-Limiter URI): ``memory://`` or ``redis://host:port``.
    "RATELIMIT_STORAGE_URI": "memory://",
    #: Login attempts allowed per client IP (all outcomes count).
    "LOGIN_LIMIT_PER_IP": "60 per minute",
    #: Failed logins allowed per account, whatever the IP (only failures count). Longer
    #: attacks meet the account lockout below, which backs off instead of locking for good.
    "LOGIN_LIMIT_PER_ACCOUNT": "10 per minute",
    #: Consecutive failed passwords that lock an account (at most 100, per NIST/ASVS).
    "LOCKOUT_THRESHOLD": 10,
    #: First lockout, in seconds; each further lockout doubles it, up to the maximum.
    "LOCKOUT_BASE_SECONDS": 60,
    #: Longest lockout, in seconds: an attacker can delay a victim, never lock them out.
    "LOCKOUT_MAX_SECONDS": 3600,
    #: Registrations allowed per client IP.
    "REGISTER_LIMIT_PER_IP": "10 per hour",
    #: Password-change attempts allowed per user.
    "CHANGE_PASSWORD_LIMIT": "10 per hour",
    #: Canonical external URL of the app (``https://example.org``). Links in mail are built
    #: from it, never from the request's Host header. Required for mail outside debug/testing.
    "BASE_URL": None,
    #: Sender address of the library's mail.
    "MAIL_SENDER": "no-reply@localhost",
    #: New accounts must confirm their email address before they can sign in.
    "CONFIRM_EMAIL": False,
    #: Lifetime of an email-confirmation link, in seconds.
    "CONFIRM_TTL": 24 * 60 * 60,
    #: Lifetime of a password-reset link, in seconds.
    "RESET_TTL": 60 * 60,
    #: Lifetime of an invitation link, in seconds.
    "INVITE_TTL": 7 * 24 * 60 * 60,
    #: Registration only through an invitation (``AAA_ENABLE_REGISTRATION`` must be on).
    "INVITE_ONLY": False,
    #: Mail-sending requests (reset, resend confirmation, invite) allowed per IP and per address.
    "MAIL_LIMIT": "5 per hour",
    #: Offer "remember me" at login: a rotating, revocable long-lived sign-in cookie.
    "REMEMBER_ME": True,
    #: Lifetime of a remember-me token, in days.
    "REMEMBER_DAYS": 30,
    #: Users holding any of these roles must use two-factor authentication.
    "MFA_REQUIRED_ROLES": (),
    #: Issuer shown in authenticator apps (default: ``AAA_APP_NAME``).
    "MFA_ISSUER": None,
    #: Wrong codes allowed in one sign-in before it starts over with the password.
    "MFA_MAX_ATTEMPTS": 5,
    #: Minimum password length for users with two-factor authentication (NIST: 8).
    "PASSWORD_MIN_LENGTH_MFA": 8,
    #: Seconds a password confirmation ("re-authentication") stays fresh for sensitive actions.
    "REAUTH_WINDOW": 5 * 60,
    #: Longest time, in minutes, an administrator may act as another user in one go
    #: (impersonation). The impersonation session ends then, however active it is.
    "IMPERSONATION_MINUTES": 30,
    #: Keys (text, at least 32 bytes each) that sign the audit trail's head record,
    #: checkpoints and retention anchors (HMAC-SHA256). The first signs; all verify, so rotate
    #: by putting a new key first and keeping the old ones while their checkpoints are kept.
    #: Empty: one key derived from ``SECRET_KEY`` (and ``SECRET_KEY_FALLBACKS``) is used.
    "AUDIT_SIGNING_KEYS": (),
    #: A signed checkpoint is written each time the trail passes a multiple of this many
    #: events (0: only by ``flask aaa audit checkpoint``).
    "AUDIT_CHECKPOINT_EVERY": 1_000,
    #: Days of events ``flask aaa audit purge`` keeps when no ``--older-than`` is given
    #: (0: no default; the trail is kept until purged explicitly).
    "AUDIT_RETENTION_DAYS": 0,
    #: Largest request body (bytes) the library's own endpoints accept.
    "MAX_BODY_SIZE": 64 * 1024,
    #: Mount point of the authentication pages (login, logout, register, password).
    "AUTH_URL_PREFIX": "/auth",
    #: Mount point of the signed-in user's pages (activity).
    "ACCOUNT_URL_PREFIX": "/account",
    #: Mount point of the administration pages.
    "ADMIN_URL_PREFIX": "/admin",
    #: Endpoint to land on after login when no safe ``next`` is given.
    "HOME_ENDPOINT": None,
    #: Every endpoint needs ``@public`` or a requirement; others answer 401/403.
    "DENY_BY_DEFAULT": False,
    #: Events per page in activity and audit listings.
    "PAGE_SIZE": 50,
    #: Send security headers (CSP, HSTS on HTTPS, nosniff, frame denial, referrer policy).
    "SECURITY_HEADERS": True,
    #: Personal access tokens and ``Authorization: Bearer`` authentication on the views that
    #: accept tokens (``@auth_required("token")``).
    "API_TOKENS": True,
    #: Start of every personal access token, so that secret scanners can find leaked ones.
    #: Letters, digits and underscores; end it with ``_``.
    "TOKEN_PREFIX": "aaa_pat_",
    #: Lifetime of a new token when its creator names none, in days.
    "TOKEN_DEFAULT_DAYS": 30,
    #: Longest lifetime a token may be given, in days.
    "TOKEN_MAX_DAYS": 365,
    #: Live (neither expired nor revoked) tokens one user may hold.
    "TOKEN_LIMIT_PER_USER": 50,
    #: How often (seconds) a token's ``last used`` time and address are written.
    "TOKEN_TOUCH_INTERVAL": 60,
    #: Requests with a bearer token allowed per client IP (bad tokens included).
    "TOKEN_LIMIT_PER_IP": "600 per minute",
    #: Mount point of the JSON API (its version is part of the path).
    "API_URL_PREFIX": "/aaa/api/v1",
    #: Third-party sign-in providers, by name: ``{"google": {"issuer": ..., "client_id": ...,
    #: "client_secret": ..., "scopes": [...], "label": ...}}``; ``{"preset": "github", ...}``
    #: for GitHub's plain OAuth 2.0. See docs/oidc.md.
    "OIDC_PROVIDERS": {},
    #: A third-party sign-in by an unknown identity may create a new local account.
    "OIDC_REGISTRATION": False,
    #: ID token signature algorithms accepted (a provider entry may narrow it). Never ``none``
    #: and never HMAC: the client secret is not a signing key we accept.
    "OIDC_ALGORITHMS": ("RS256", "PS256", "ES256", "EdDSA"),
    #: Seconds to wait for a provider (discovery, token and key requests) before failing.
    "OIDC_TIMEOUT": 5.0,
    #: Seconds a started third-party sign-in (its state, nonce and PKCE verifier) stays valid.
    "OIDC_STATE_TTL": 10 * 60,
    #: Passkeys (WebAuthn): sign in with one, or use one as the second factor. Needs the
    #: ``passkeys`` extra (``pip install flask-aaa[passkeys]``).
    "PASSKEYS": False,
    #: WebAuthn relying-party id: the site's registrable domain. Default: ``AAA_BASE_URL``'s host.
    "PASSKEY_RP_ID": None,
    #: The origin browsers report for passkey ceremonies. Default: ``AAA_BASE_URL``.
    "PASSKEY_ORIGIN": None,
    #: Seconds a passkey ceremony's challenge stays valid.
    "PASSKEY_TIMEOUT": 5 * 60,
    #: Content-Security-Policy sent with every response when security headers are on.
    "CONTENT_SECURITY_POLICY": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
}

#: Settings that must be at least 1.
_POSITIVE = (
    "password_hash_concurrency",
    "session_idle_timeout",
    "session_touch_interval",
    "page_size",
    "max_body_size",
    "lockout_base_seconds",
    "lockout_max_seconds",
    "confirm_ttl",
    "reset_ttl",
    "invite_ttl",
    "remember_days",
    "mfa_max_attempts",
    "reauth_window",
    "impersonation_minutes",
    "token_default_days",
    "token_max_days",
    "token_limit_per_user",
    "token_touch_interval",
    "oidc_state_ttl",
    "passkey_timeout",
)

#: Shortest accepted audit signing key, in bytes (256 bits, the HMAC-SHA256 key size).
MIN_AUDIT_KEY_BYTES = 32

#: SECRET_KEY values that are refused outside debug and testing.
_KNOWN_WEAK_KEYS = frozenset(
    {"dev", "secret", "changeme", "change-me", "your_secret_key", "secret-key", "development"}
)
_MIN_SECRET_BYTES = 32

_TOKEN_PREFIX_RE = re.compile(r"^[A-Za-z0-9_]{2,15}_$")
_PROVIDER_NAME_RE = re.compile(r"^[a-z0-9_-]{1,32}$")


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The library's settings for one app, read once by :meth:`from_config`."""

    app_name: str
    enable_username: bool
    enable_email: bool
    enable_registration: bool
    default_role: str | None
    password_hash_preset: str
    password_hash_concurrency: int
    password_hash_wait: float
    password_min_length: int
    password_max_length: int
    password_check_common: bool
    password_breach_check: bool
    password_breach_url: str
    password_breach_timeout: float
    password_breach_fail_open: bool
    session_idle_timeout: int
    session_absolute_timeout: int
    session_touch_interval: int
    secure_cookies: bool
    ratelimit_storage_uri: str
    login_limit_per_ip: str
    login_limit_per_account: str
    lockout_threshold: int
    lockout_base_seconds: int
    lockout_max_seconds: int
    register_limit_per_ip: str
    change_password_limit: str
    base_url: str | None
    mail_sender: str
    confirm_email: bool
    confirm_ttl: int
    reset_ttl: int
    invite_ttl: int
    invite_only: bool
    mail_limit: str
    remember_me: bool
    remember_days: int
    mfa_required_roles: tuple[str, ...]
    mfa_issuer: str | None
    mfa_max_attempts: int
    password_min_length_mfa: int
    reauth_window: int
    impersonation_minutes: int
    audit_signing_keys: tuple[str, ...] = dataclasses.field(repr=False)
    audit_checkpoint_every: int
    audit_retention_days: int
    max_body_size: int
    auth_url_prefix: str
    account_url_prefix: str
    admin_url_prefix: str
    home_endpoint: str | None
    deny_by_default: bool
    page_size: int
    security_headers: bool
    api_tokens: bool
    token_prefix: str
    token_default_days: int
    token_max_days: int
    token_limit_per_user: int
    token_touch_interval: int
    token_limit_per_ip: str
    api_url_prefix: str
    oidc_providers: Mapping[str, Mapping[str, Any]]
    oidc_registration: bool
    oidc_algorithms: tuple[str, ...]
    oidc_timeout: float
    oidc_state_ttl: int
    passkeys: bool
    passkey_rp_id: str | None
    passkey_origin: str | None
    passkey_timeout: int
    content_security_policy: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, debug: bool, testing: bool) -> Settings:
        """Validate the ``AAA_*`` keys of ``config`` and build the settings.

        Raises :class:`ConfigurationError` for an unknown key, a value of the wrong type, or a
        combination that cannot work; and :class:`RuntimeError` for a missing or weak
        ``SECRET_KEY`` outside debug and testing.
        """
        _reject_unknown_keys(config)
        values = {
            key.lower(): config.get(f"AAA_{key}", default) for key, default in DEFAULTS.items()
        }
        for key, default in DEFAULTS.items():
            _check_type(key, values[key.lower()], default)
        values["mfa_required_roles"] = tuple(values["mfa_required_roles"])
        values["audit_signing_keys"] = tuple(values["audit_signing_keys"])
        values["oidc_algorithms"] = tuple(values["oidc_algorithms"])
        values["oidc_providers"] = MappingProxyType(
            {
                name: MappingProxyType(dict(entry))
                for name, entry in values["oidc_providers"].items()
            }
        )
        if values["base_url"] is not None:
            values["base_url"] = values["base_url"].rstrip("/")
        _derive_passkey_defaults(values)
        if values["secure_cookies"] is None:
            values["secure_cookies"] = not (debug or testing)
        settings = cls(**values)
        settings._validate(testing=testing)
        if not (debug or testing):
            check_secret_key(config.get("SECRET_KEY"))
        return settings

    def _validate(self, *, testing: bool) -> None:
        if not (self.enable_username or self.enable_email):
            raise ConfigurationError("enable at least one of AAA_ENABLE_USERNAME, AAA_ENABLE_EMAIL")
        if (self.confirm_email or self.invite_only) and not self.enable_email:
            raise ConfigurationError("AAA_CONFIRM_EMAIL and AAA_INVITE_ONLY need AAA_ENABLE_EMAIL")
        if self.base_url is not None and not self.base_url.startswith(("https://", "http://")):
            raise ConfigurationError("AAA_BASE_URL must be an absolute http(s) URL")
        self._validate_passwords(testing=testing)
        self._validate_durations()
        self._validate_audit()
        self._validate_tokens()
        self._validate_passkeys()

    def _validate_audit(self) -> None:
        if any(len(key.encode("utf-8")) < MIN_AUDIT_KEY_BYTES for key in self.audit_signing_keys):
            # The message never shows a key, not even a part of one.
            raise ConfigurationError(
                f"every AAA_AUDIT_SIGNING_KEYS entry must be at least {MIN_AUDIT_KEY_BYTES} "
                "bytes long"
            )
        if len(set(self.audit_signing_keys)) != len(self.audit_signing_keys):
            raise ConfigurationError("AAA_AUDIT_SIGNING_KEYS lists a key twice")
        for name in ("audit_checkpoint_every", "audit_retention_days"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"AAA_{name.upper()} must be 0 or more")

    def _validate_tokens(self) -> None:
        if not _TOKEN_PREFIX_RE.match(self.token_prefix):
            raise ConfigurationError(
                "AAA_TOKEN_PREFIX must be 3 to 16 letters, digits or underscores, ending in _"
            )
        if self.token_default_days > self.token_max_days:
            raise ConfigurationError("AAA_TOKEN_DEFAULT_DAYS must not exceed AAA_TOKEN_MAX_DAYS")
        if not self.api_url_prefix.startswith("/") or self.api_url_prefix.endswith("/"):
            raise ConfigurationError("AAA_API_URL_PREFIX must start with / and not end with /")
        for name, entry in self.oidc_providers.items():
            if not isinstance(name, str) or not _PROVIDER_NAME_RE.match(name):
                raise ConfigurationError(
                    "AAA_OIDC_PROVIDERS names must be 1 to 32 lower-case letters, digits, - or _"
                )
            if not isinstance(entry, Mapping):
                raise ConfigurationError(f"AAA_OIDC_PROVIDERS[{name!r}] must be a dict")
        unsafe = {a for a in self.oidc_algorithms if a.lower() == "none" or a.startswith("HS")}
        if unsafe or not self.oidc_algorithms:
            raise ConfigurationError(
                "AAA_OIDC_ALGORITHMS must list asymmetric algorithms only (never none or HS*)"
            )
        if self.oidc_timeout <= 0:
            raise ConfigurationError("AAA_OIDC_TIMEOUT must be positive")

    def _validate_passkeys(self) -> None:
        if not self.passkeys:
            return
        if importlib.util.find_spec("webauthn") is None:
            raise ConfigurationError(
                "AAA_PASSKEYS needs the webauthn package: pip install flask-aaa[passkeys]"
            )
        rp_id, origin = self.passkey_rp_id, self.passkey_origin
        if not rp_id or not origin:
            raise ConfigurationError(
                "AAA_PASSKEYS needs a relying-party id and origin: set AAA_BASE_URL, or "
                "AAA_PASSKEY_RP_ID and AAA_PASSKEY_ORIGIN"
            )
        if not _PASSKEY_RP_ID_RE.match(rp_id) or _is_ip_address(rp_id):
            raise ConfigurationError(
                f"AAA_PASSKEY_RP_ID must be a domain name such as example.org (not an IP "
                f"address, no scheme, port or path), not {rp_id!r}"
            )
        parts = urlsplit(origin)
        host = (parts.hostname or "").lower()
        local = host == "localhost" or host.endswith(".localhost")
        if (
            parts.scheme not in ("https", "http")
            or (parts.scheme == "http" and not local)
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            raise ConfigurationError(
                "AAA_PASSKEY_ORIGIN must be https://host[:port] (http:// only for localhost), "
                f"not {origin!r}"
            )
        if host != rp_id and not host.endswith("." + rp_id):
            raise ConfigurationError(
                f"AAA_PASSKEY_RP_ID {rp_id!r} must be the host of AAA_PASSKEY_ORIGIN or a "
                "parent domain of it"
            )

    def _validate_passwords(self, *, testing: bool) -> None:
        if self.password_hash_preset not in HASH_PRESETS:
            raise ConfigurationError(
                f"AAA_PASSWORD_HASH_PRESET must be one of {sorted(HASH_PRESETS)}"
            )
        if self.password_hash_preset == "fast" and not testing:  # noqa: S105 (a preset name)
            raise ConfigurationError("AAA_PASSWORD_HASH_PRESET='fast' is only allowed in TESTING")
        if not 8 <= self.password_min_length <= 64:
            raise ConfigurationError("AAA_PASSWORD_MIN_LENGTH must be between 8 and 64")
        if not 8 <= self.password_min_length_mfa <= self.password_min_length:
            raise ConfigurationError(
                "AAA_PASSWORD_MIN_LENGTH_MFA must be between 8 and AAA_PASSWORD_MIN_LENGTH"
            )
        if self.password_max_length < max(64, self.password_min_length):
            raise ConfigurationError("AAA_PASSWORD_MAX_LENGTH must allow at least 64 characters")
        if not self.password_breach_url.startswith(("https://", "http://")):
            raise ConfigurationError("AAA_PASSWORD_BREACH_URL must be an http(s) URL")
        if self.password_breach_timeout <= 0:
            raise ConfigurationError("AAA_PASSWORD_BREACH_TIMEOUT must be positive")
        if self.password_hash_wait < 0:
            raise ConfigurationError("AAA_PASSWORD_HASH_WAIT must not be negative")
        if not 1 <= self.lockout_threshold <= 100:
            raise ConfigurationError("AAA_LOCKOUT_THRESHOLD must be between 1 and 100")

    def _validate_durations(self) -> None:
        for name in _POSITIVE:
            if getattr(self, name) < 1:
                raise ConfigurationError(f"AAA_{name.upper()} must be positive")
        if self.lockout_max_seconds < self.lockout_base_seconds:
            raise ConfigurationError("AAA_LOCKOUT_MAX_SECONDS must not be below the base")
        if self.session_touch_interval >= self.session_idle_timeout:
            raise ConfigurationError(
                "AAA_SESSION_TOUCH_INTERVAL must be shorter than AAA_SESSION_IDLE_TIMEOUT, "
                "or active users would be signed out"
            )
        if self.session_absolute_timeout < self.session_idle_timeout:
            raise ConfigurationError(
                "AAA_SESSION_ABSOLUTE_TIMEOUT must not be shorter than AAA_SESSION_IDLE_TIMEOUT"
            )

    @property
    def hash_parameters(self) -> dict[str, int]:
        """The argon2id parameters of the chosen preset."""
        return dict(HASH_PRESETS[self.password_hash_preset])

    @property
    def session_cookie_name(self) -> str:
        """``__Host-`` cookies are bound to this exact origin and must be Secure with Path=/."""
        return "__Host-aaa_session" if self.secure_cookies else "aaa_session"


def check_secret_key(key: object) -> None:
    """Refuse a missing, known-weak or short ``SECRET_KEY``. The key itself is never echoed."""
    if key is None or key == "":
        raise RuntimeError("SECRET_KEY is not set; Flask-AAA refuses to start without one")
    raw = key.encode() if isinstance(key, str) else key
    if not isinstance(raw, bytes):
        raise RuntimeError("SECRET_KEY must be str or bytes")
    if (isinstance(key, str) and key.strip().lower() in _KNOWN_WEAK_KEYS) or len(
        raw
    ) < _MIN_SECRET_BYTES:
        raise RuntimeError(
            f"SECRET_KEY is too weak: use at least {_MIN_SECRET_BYTES} random bytes, "
            'e.g. python -c "import secrets; print(secrets.token_hex(32))"'
        )
    if len(set(raw)) < 8:
        raise RuntimeError("SECRET_KEY is too weak: it repeats too few distinct characters")


_PASSKEY_RP_ID_RE = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


def _is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _derive_passkey_defaults(values: dict[str, Any]) -> None:
    """Fill in the passkey relying-party id and origin from ``AAA_BASE_URL`` when unset
    (the origin is the base URL without its path; the id is its host)."""
    base = values["base_url"]
    if isinstance(base, str):
        parts = urlsplit(base)
        if values["passkey_origin"] is None and parts.scheme and parts.netloc:
            values["passkey_origin"] = f"{parts.scheme}://{parts.netloc}"
        if values["passkey_rp_id"] is None and parts.hostname:
            values["passkey_rp_id"] = parts.hostname
    if isinstance(values["passkey_origin"], str):
        # Browsers report the origin without a trailing slash; it is compared exactly.
        values["passkey_origin"] = values["passkey_origin"].rstrip("/")


def _reject_unknown_keys(config: Mapping[str, Any]) -> None:
    known = {f"AAA_{key}" for key in DEFAULTS}
    for key in config:
        if isinstance(key, str) and key.startswith("AAA_") and key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigurationError(f"unknown setting {key}{hint}")


def _check_type(key: str, value: Any, default: Any) -> None:
    if isinstance(default, dict):
        if not isinstance(value, Mapping):
            raise ConfigurationError(f"AAA_{key} must be a dict")
        return
    if isinstance(default, tuple):
        if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
            raise ConfigurationError(f"AAA_{key} must be a list of strings")
        if not all(isinstance(item, str) for item in value):
            raise ConfigurationError(f"AAA_{key} must be a list of strings")
        return
    if default is None:
        if key == "SECURE_COOKIES":
            if value is not None and not isinstance(value, bool):
                raise ConfigurationError(f"AAA_{key} must be True, False or None")
        elif value is not None and not isinstance(value, str):
            raise ConfigurationError(f"AAA_{key} must be a string or None")
        return
    expected: tuple[type, ...] = (float, int) if isinstance(default, float) else (type(default),)
    if isinstance(value, bool) and bool not in expected:
        raise ConfigurationError(f"AAA_{key} must be {type(default).__name__}, not bool")
    if not isinstance(value, expected):
        raise ConfigurationError(
            f"AAA_{key} must be {type(default).__name__}, not {type(value).__name__}"
        )
