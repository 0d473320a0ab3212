"""The Flask extension: ``AAA(app, db)`` or ``aaa.init_app(app)``.

``init_app`` reads the settings, prepares the database engines, and wires Flask-Login (with
server-side sessions behind it), CSRF protection, rate limits, security headers, error pages,
the blueprints and the ``flask aaa`` commands. Its state lives in ``app.extensions["aaa"]``;
one ``AAA`` object can serve several apps.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, g
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.exc import SQLAlchemyError

from . import db as dbutil
from .config import Settings
from .errors import ConfigurationError, LoginRequired
from .models import Base, User
from .services import rbac, sessions, signing
from .services.passwords import PasswordService
from .services.rules import Check, Rule, Rules, Where
from .web import (
    account,
    admin,
    api,
    auth,
    bearer,
    checks,
    impersonation,
    mail,
    mfa,
    recovery,
    security,
    signin,
)
from .web.context import AnonymousUser, current_user, state
from .web.decorators import GUARD_ATTR

_log = logging.getLogger("flask_aaa")


@dataclasses.dataclass(slots=True)
class AAAState:
    """Everything Flask-AAA keeps per app (``app.extensions["aaa"]``)."""

    settings: Settings
    db: SQLAlchemy
    passwords: PasswordService
    limiter: Limiter
    csrf: CSRFProtect
    login_manager: LoginManager
    grants: rbac.GrantsCache
    #: The object-level rules views and queries name (shared by the apps of one ``AAA``).
    rules: Rules
    #: The start-up check (``web/checks.py``) has passed for this app.
    checked: bool = False


class AAA:
    """Authentication, authorization and accounting for a Flask app.

    ``db`` is the app's Flask-SQLAlchemy object; create it with
    ``SQLAlchemy(model_class=flask_aaa.Base)`` so the app's models can reference users. Without
    one, Flask-AAA creates its own (``aaa.db``)."""

    def __init__(self, app: Flask | None = None, db: SQLAlchemy | None = None) -> None:
        self.db = db if db is not None else SQLAlchemy(model_class=Base)
        #: The object-level rules, by name; ``owner`` (on ``owner_id``) is there already.
        self.rules = Rules.with_defaults()
        if app is not None:
            self.init_app(app)

    def rule(self, name: str, *, where: Where | None = None) -> Callable[[Check], Rule]:
        """Register the decorated predicate ``(user, obj) -> bool`` as the rule ``name``;
        ``where(user, Model)`` is its SQL form, needed to filter queries with it."""

        def decorator(check: Check) -> Rule:
            return self.rules.register(name, check, where=where)

        return decorator

    def init_app(self, app: Flask) -> None:
        settings = Settings.from_config(app.config, debug=app.debug, testing=app.testing)
        if "sqlalchemy" not in app.extensions:
            self.db.init_app(app)
        signer = _audit_signer(app, settings)
        with app.app_context():
            for engine in self.db.engines.values():
                dbutil.configure_engine(engine)
                signing.use(engine, signer)

        _guard_session_teardown(app, self.db)
        _configure_cookies(app, settings)
        login_manager = _login_manager(app)
        csrf = app.extensions.get("csrf") or CSRFProtect(app)
        limiter = Limiter(
            get_remote_address,
            app=app,
            storage_uri=settings.ratelimit_storage_uri,
            storage_options=_storage_options(settings.ratelimit_storage_uri),
            in_memory_fallback_enabled=True,
            headers_enabled=False,  # see web/security.py: only 429s say when to retry
            # A failed sign-in is counted after the answer (deduct_when), outside the storage
            # fallback: if Redis fails in that instant the count is logged as lost, not the
            # answer turned into a 500. Checks still fall back to memory, never to no limit.
            swallow_errors=True,
            key_prefix="aaa",
            strategy="moving-window",
        )
        _check_global_limits_only_when_set(app, limiter)
        app.extensions["aaa"] = AAAState(
            settings=settings,
            db=self.db,
            passwords=PasswordService(settings),
            limiter=limiter,
            csrf=csrf,
            login_manager=login_manager,
            grants=rbac.GrantsCache(),
            rules=self.rules,
        )
        security.install(app, settings)
        # Right after the first hook (write intent, request id): a bearer token replaces the
        # cookie as the credential, and only cookie requests need a CSRF token.
        app.before_request_funcs[None].insert(1, bearer.authenticate_request)
        if app.config.get("WTF_CSRF_CHECK_DEFAULT", True):
            app.config["WTF_CSRF_CHECK_DEFAULT"] = False  # Flask-WTF's own hook stands down
            app.before_request_funcs[None].insert(2, bearer.csrf_protect)
        # Before any guard runs: limit a browser acting as another user (and return it to its
        # administrator when that ends), restore a remembered sign-in, rotate a session whose
        # privileges changed.
        app.before_request(impersonation.guard)
        if settings.remember_me:
            app.before_request(signin.restore_from_remember)
            app.after_request(signin.after_request)
        app.before_request(signin.rotate_if_due)
        app.before_request(checks.check_on_first_request)
        if settings.deny_by_default:
            app.before_request(_deny_unguarded)

        assets = Blueprint(
            "aaa_assets",
            __name__,
            template_folder="templates",
            static_folder="static",
            static_url_path="/aaa-static",
        )
        app.register_blueprint(assets)
        with app.app_context():
            mail.init_app(app, settings)
            app.register_blueprint(auth.create_blueprint(), url_prefix=settings.auth_url_prefix)
            app.register_blueprint(recovery.create_blueprint(), url_prefix=settings.auth_url_prefix)
            app.register_blueprint(
                account.create_blueprint(), url_prefix=settings.account_url_prefix
            )
            app.register_blueprint(admin.create_blueprint(), url_prefix=settings.admin_url_prefix)
            app.register_blueprint(api.create_blueprint(), url_prefix=settings.api_url_prefix)
            # Its routes carry the auth and account prefixes themselves.
            app.register_blueprint(mfa.create_blueprint())
            app.register_blueprint(impersonation.create_blueprint())
            if settings.passkeys:
                # Imported only when on: it needs the optional webauthn package. Its routes
                # carry the auth and account prefixes themselves too.
                from .web import passkeys

                app.register_blueprint(passkeys.create_blueprint())
            if settings.oidc_providers:
                # Imported only when a provider is configured: it needs the optional
                # Authlib/joserfc and requests packages (the ``oidc`` extra).
                try:
                    from .web import oidc
                except ImportError as exc:
                    raise ConfigurationError(
                        "AAA_OIDC_PROVIDERS needs the oidc extra: pip install flask-aaa[oidc]"
                    ) from exc
                oidc.init_app(app, settings)

        @app.context_processor
        def _template_globals() -> dict[str, Any]:
            return {
                "aaa_settings": settings,
                # Some pages exist only with their settings (mail flows need AAA_BASE_URL).
                "aaa_has_endpoint": lambda name: name in app.view_functions,
            }

        from .cli import aaa_cli

        app.cli.add_command(aaa_cli)


def _guard_session_teardown(app: Flask, db: SQLAlchemy) -> None:
    """Flask-SQLAlchemy closes the session when the app context ends; if the connection was
    lost during the request, that close (a rollback) raises, and the answer already made
    becomes a 500. Wrap it so the loss is logged instead: the pool discards the connection
    either way."""
    funcs = app.teardown_appcontext_funcs
    for number, func in enumerate(funcs):
        if getattr(func, "__self__", None) is db and not getattr(func, "_aaa_guarded", False):

            def guarded(exc: BaseException | None, _close: Any = func) -> None:
                try:
                    _close(exc)
                except SQLAlchemyError as error:
                    _log.warning("closing the database session failed: %s", type(error).__name__)

            guarded._aaa_guarded = True  # type: ignore[attr-defined]
            funcs[number] = guarded


def _audit_signer(app: Flask, settings: Settings) -> signing.Signer | None:
    """The audit trail's signer: the configured keys, else keys derived from ``SECRET_KEY``
    and its fallbacks (so rotating ``SECRET_KEY`` the Flask way keeps old checkpoints
    verifiable). None without any key (only possible in debug and testing)."""
    if settings.audit_signing_keys:
        keys = [key.encode("utf-8") for key in settings.audit_signing_keys]
    else:
        secrets = [app.config.get("SECRET_KEY"), *(app.config.get("SECRET_KEY_FALLBACKS") or ())]
        keys = [signing.derive_key(secret) for secret in secrets if secret]
    if not keys:
        return None
    return signing.Signer(keys, checkpoint_every=settings.audit_checkpoint_every)


def _configure_cookies(app: Flask, settings: Settings) -> None:
    if app.config.get("SESSION_COOKIE_NAME", "session") == "session":
        app.config["SESSION_COOKIE_NAME"] = settings.session_cookie_name
    app.config["SESSION_COOKIE_SECURE"] = settings.secure_cookies
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    if settings.secure_cookies and app.config["SESSION_COOKIE_NAME"].startswith("__Host-"):
        # The __Host- prefix requires Path=/ and no Domain attribute.
        app.config["SESSION_COOKIE_DOMAIN"] = None
        app.config["SESSION_COOKIE_PATH"] = "/"
    # Flask-Login's own remember-me cookie is not used: sessions live on the server.
    app.config["REMEMBER_COOKIE_SECURE"] = True
    app.config["REMEMBER_COOKIE_HTTPONLY"] = True


def _storage_options(uri: str) -> dict[str, str | int]:
    # A Redis that does not answer must not stall logins: fail fast, then fall back to
    # per-process counters (Flask-Limiter's in-memory fallback) until it is back.
    if uri.startswith(("redis://", "rediss://", "redis+")):
        return {"socket_connect_timeout": 1, "socket_timeout": 1}
    return {}


def _check_global_limits_only_when_set(app: Flask, limiter: Limiter) -> None:
    """Let Flask-Limiter's per-request hook run only when an app-wide limit exists.

    The hook exists for default, application, blueprint and meta limits; Flask-AAA's own
    limits sit on their views and are checked by their decorators, hook or not. With none of
    the app-wide kinds set, the hook resolves to no limit, yet costs about a tenth of a
    protected request (bench case 1), so it is skipped then. The test is made on every
    request (limits an app adds later count) and, should Flask-Limiter keep them under other
    names, errs on the side of checking.
    """
    manager = limiter.limit_manager

    def check_request_limit() -> None:
        if (
            getattr(manager, "_default_limits", True)
            or getattr(manager, "_application_limits", True)
            or getattr(manager, "_blueprint_limits", True)
            or getattr(limiter, "_meta_limits", True)
        ):
            limiter._check_request_limit()

    hooks = app.before_request_funcs.get(None, [])
    for index, hook in enumerate(hooks):
        if hook == limiter._check_request_limit:
            hooks[index] = check_request_limit
            return


def _login_manager(app: Flask) -> LoginManager:
    manager = LoginManager()
    manager.init_app(app)
    manager.session_protection = None  # the server-side session record is the protection
    # Without session protection Flask-Login still hashes the client's address and agent on
    # every request (and stores it at sign-in); nothing reads it, so it is not computed.
    manager._session_identifier_generator = str
    manager.anonymous_user = AnonymousUser

    @manager.user_loader  # type: ignore[untyped-decorator]
    def load(token: str) -> User | None:
        st = state()
        db = st.db.session()
        resolved = sessions.resolve(db, token, settings=st.settings)
        if resolved is None:
            return None
        user = resolved.user
        user._aaa_session_token = token
        user._aaa_grants = st.grants.get(db, user.id, resolved.authz_version)
        g._aaa_login_session = resolved.session
        sessions.touch(db, resolved.session, settings=st.settings)
        return user

    @manager.unauthorized_handler  # type: ignore[untyped-decorator]
    def unauthorized() -> Any:
        raise LoginRequired()

    return manager


def _deny_unguarded() -> None:
    """``AAA_DENY_BY_DEFAULT``: an endpoint without ``@public`` or a requirement is closed."""
    from flask import current_app, request

    endpoint = request.endpoint
    if endpoint is None or endpoint == "static" or endpoint.endswith(".static"):
        return
    view = current_app.view_functions.get(endpoint)
    if view is None or getattr(view, GUARD_ATTR, None) is not None:
        return
    if not current_user.is_authenticated:
        raise LoginRequired()
    from .web.context import current_actor, db_session, request_facts

    rbac.deny(
        db_session(),
        current_actor(),
        f"a rule for endpoint {endpoint}",
        facts=request_facts(),
        message="This page is closed: it declares neither @public nor a requirement.",
    )


def unguarded_endpoints(app: Flask) -> list[str]:
    """Endpoints with neither ``@public`` nor a requirement (deny-by-default closes them)."""
    return sorted(
        endpoint
        for endpoint, view in app.view_functions.items()
        if not (endpoint == "static" or endpoint.endswith(".static"))
        and getattr(view, GUARD_ATTR, None) is None
    )
