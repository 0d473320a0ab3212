"""One exception tree for everything Flask-AAA raises.

Each error carries a stable machine-readable ``code`` and the HTTP ``status`` it maps to;
``web/security.py`` turns them into an HTML page or a JSON body in one place.
"""

from __future__ import annotations

from collections.abc import Mapping


class AAAError(Exception):
    """Base of every error Flask-AAA raises."""

    code = "error"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(AAAError):
    """The app's ``AAA_*`` settings are wrong. Raised at start-up, never per request."""

    code = "configuration_error"
    status = 500


class InvalidInput(AAAError):
    """A request's fields are missing, of the wrong type or fail validation."""

    code = "invalid_input"
    status = 400

    def __init__(self, errors: Mapping[str, str], message: str = "The input is not valid.") -> None:
        super().__init__(message)
        self.errors = dict(errors)


class AuthenticationFailed(AAAError):
    """Credentials were wrong, or the account may not sign in. One message for every cause."""

    code = "authentication_failed"
    status = 401

    def __init__(self, reason: str = "bad_credentials") -> None:
        # ``reason`` is for the audit trail only; users always see the same message.
        super().__init__("Invalid login or password.")
        self.reason = reason


class LoginRequired(AAAError):
    """The resource needs a signed-in user."""

    code = "login_required"
    status = 401

    def __init__(self) -> None:
        super().__init__("Please sign in to continue.")


class PermissionDenied(AAAError):
    """The signed-in principal lacks a role or permission."""

    code = "permission_denied"
    status = 403

    def __init__(self, requirement: str, message: str | None = None) -> None:
        super().__init__(message or f"You do not have {requirement!r}.")
        self.requirement = requirement


class ImpersonationForbidden(PermissionDenied):
    """The action is refused while an administrator acts as another user: credentials,
    sessions, tokens and administration are never changed through someone else's login."""

    code = "impersonation_forbidden"
    status = 403

    def __init__(self, what: str = "this action") -> None:
        super().__init__(
            "not while impersonating",
            f"You are acting as another user: {what} is not allowed. Return to your own "
            "account first.",
        )


class RegistrationClosed(AAAError):
    """Self-service registration is switched off (``AAA_ENABLE_REGISTRATION = False``)."""

    code = "registration_closed"
    status = 403

    def __init__(self) -> None:
        super().__init__("Registration is closed.")


class Conflict(AAAError):
    """The change would break an invariant (a name in use, the last administrator, ...)."""

    code = "conflict"
    status = 409


class NotFound(AAAError):
    """The named user, role or permission does not exist (or is not visible to the caller)."""

    code = "not_found"
    status = 404


class Throttled(AAAError):
    """Too many attempts; retry after ``retry_after`` seconds."""

    code = "throttled"
    status = 429

    def __init__(
        self, retry_after: int, message: str = "Too many attempts. Try again later."
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(AAAError):
    """A dependency (database, hashing capacity, audit trail) cannot serve the request now."""

    code = "service_unavailable"
    status = 503

    def __init__(
        self, message: str = "The service is busy. Try again shortly.", retry_after: int = 5
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuditIntegrityError(AAAError):
    """The audit chain does not verify; ``seq`` is the first event that is wrong."""

    code = "audit_integrity"
    status = 500

    def __init__(self, seq: int | None, problem: str) -> None:
        super().__init__(f"audit chain broken at seq {seq}: {problem}")
        self.seq = seq
        self.problem = problem


class ReauthenticationRequired(AAAError):
    """A sensitive action needs a recent password confirmation (``AAA_REAUTH_WINDOW``)."""

    code = "reauthentication_required"
    status = 401

    def __init__(self) -> None:
        super().__init__("Please confirm your password to continue.")


class InvalidToken(AAAError):
    """A link from a mail (confirmation, reset, invitation, email change) that is unknown,
    already used, replaced by a newer one, meant for another purpose, or no longer bound to
    the account's state. One message for every cause; ``reason`` is for the audit trail."""

    code = "invalid_token"
    status = 400

    def __init__(
        self,
        reason: str = "unknown",
        *,
        user_id: int | None = None,
        message: str = "This link is not valid.",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.user_id = user_id


class ExpiredToken(InvalidToken):
    """A link from a mail that was valid but is past its lifetime."""

    code = "expired_token"

    def __init__(self, *, user_id: int | None = None) -> None:
        super().__init__("expired", user_id=user_id, message="This link has expired.")


class TokenRejected(AAAError):
    """A bearer token that is malformed, unknown, revoked or expired, or whose owner is
    disabled. One answer for every cause (401); ``reason`` is for the audit trail."""

    code = "invalid_token"
    status = 401

    def __init__(self, reason: str = "unknown") -> None:
        super().__init__("The API token is not valid.")
        self.reason = reason


class TokenNotAccepted(AAAError):
    """A bearer token was sent to an endpoint that accepts only browser sessions."""

    code = "token_not_accepted"
    status = 401

    def __init__(self) -> None:
        super().__init__("This endpoint does not accept API tokens.")


class ProviderError(AAAError):
    """A third-party sign-in failed at or because of the provider: its answer was refused
    (bad ID token, wrong issuer or audience, replayed nonce, oversized response, ...), or the
    user cancelled there. One message for every cause; ``reason`` is for the audit trail."""

    code = "provider_error"
    status = 400

    def __init__(
        self,
        reason: str,
        message: str = "The sign-in with the provider did not succeed. Please try again.",
    ) -> None:
        super().__init__(message)
        self.reason = reason


class ProviderUnavailable(ServiceUnavailable):
    """A third-party provider did not answer in time, or answered with nonsense (down,
    timeout, TLS failure, bad JSON). The sign-in fails closed; ``reason`` is for the trail."""

    code = "provider_unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__(
            "The sign-in provider is not reachable right now. Try again later.", retry_after=30
        )
        self.reason = reason


class IdentityNotLinked(AAAError):
    """A third-party sign-in by an identity that no local account is linked to, while
    ``AAA_OIDC_REGISTRATION`` does not allow creating one."""

    code = "identity_not_linked"
    status = 403

    def __init__(self, label: str) -> None:
        super().__init__(
            f"No account here is linked to this {label} account. Sign in another way and "
            f"link {label} from your account page."
        )


class PasskeyRejected(AAAError):
    """A passkey (WebAuthn) answer did not verify: unknown credential, wrong origin or
    relying party, bad signature, another account's user handle, a counter that went back
    (a possibly cloned authenticator), or a refused account. One message for every cause;
    ``reason`` is for the audit trail. 401 for sign-ins, 400 for registrations."""

    code = "passkey_rejected"

    def __init__(
        self,
        reason: str,
        *,
        status: int = 401,
        message: str = "This passkey could not be used. Please try again.",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


class InvitationRequired(AAAError):
    """Registration is by invitation only (``AAA_INVITE_ONLY``) and none was given."""

    code = "invitation_required"
    status = 403

    def __init__(self) -> None:
        super().__init__("Registration is by invitation only.")
