"""Third-party sign-in pages: start and finish a sign-in with a provider, and the user's
linked accounts (list, link after a fresh sign-in, unlink).

Registered only when ``AAA_OIDC_PROVIDERS`` names a provider (it needs the ``oidc`` extra).
The protocol is in :mod:`..services.oidc`, the accounts in :mod:`..services.identities`;
this module parses, calls them, commits and answers. No database transaction is held while
a provider is asked something: SQLite's write lock must not wait on the network.
"""

from __future__ import annotations

from typing import Any, cast

from flask import (
    Blueprint,
    Flask,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_limiter.util import get_remote_address

from ..config import Settings
from ..db import writing
from ..errors import (
    AuthenticationFailed,
    ConfigurationError,
    InvalidToken,
    NotFound,
    PermissionDenied,
    ProviderError,
    ProviderUnavailable,
)
from ..models import ExternalIdentity
from ..services import challenges, identities, oidc
from ..services.oidc import LINK, LOGIN, ExternalAccount, Provider
from . import mail
from .context import current_actor, current_user, db_session, request_facts, signed_in_user, state
from .decorators import fresh_login_required, login_required, public
from .security import safe_next, wants_json
from .signin import BROWSER_KEY, begin_pending, browser_id, finish_login

#: ``app.extensions`` key of the checked providers, by name.
EXTENSION_KEY = "aaa_oidc"


def init_app(app: Flask, settings: Settings) -> None:
    """Check the providers (at start-up, without network) and register the pages."""
    providers = oidc.parse_providers(settings)
    if settings.oidc_registration and (not settings.enable_registration or settings.invite_only):
        raise ConfigurationError(
            "AAA_OIDC_REGISTRATION creates accounts: it needs AAA_ENABLE_REGISTRATION on and "
            "AAA_INVITE_ONLY off"
        )
    if mail.flows().base_url is None:
        raise ConfigurationError(
            "AAA_OIDC_PROVIDERS: set AAA_BASE_URL; the address providers send users back to "
            "is never built from the request's Host header"
        )
    app.extensions[EXTENSION_KEY] = providers
    app.register_blueprint(create_blueprint())

    @app.context_processor
    def _oidc_globals() -> dict[str, Any]:
        return {"aaa_oidc_providers": list(providers.values())}


def providers() -> dict[str, Provider]:
    return cast("dict[str, Provider]", current_app.extensions[EXTENSION_KEY])


def provider_named(name: str) -> Provider:
    found = providers().get(name)
    if found is None:
        raise NotFound("No such sign-in provider.")
    return found


def redirect_uri(provider: Provider) -> str:
    """``AAA_BASE_URL`` + the callback's path: what the provider was registered with."""
    return mail.link("aaa_oidc.callback", provider=provider.name)


def identity_json(identity: ExternalIdentity) -> dict[str, Any]:
    known = providers().get(identity.provider)
    return {
        "id": identity.id,
        "provider": identity.provider,
        "label": known.label if known else identity.provider,
        "email": identity.email,
        "created_at": identity.created_at.isoformat(),
        "last_login_at": identity.last_login_at.isoformat() if identity.last_login_at else None,
    }


def create_blueprint() -> Blueprint:
    st = state()
    settings = st.settings
    limiter = st.limiter
    auth_prefix = settings.auth_url_prefix.rstrip("/")
    account_prefix = settings.account_url_prefix.rstrip("/")
    bp = Blueprint("aaa_oidc", __name__)

    def fail(
        provider: Provider,
        exc: InvalidToken | ProviderError | ProviderUnavailable,
        purpose: str | None,
    ) -> None:
        oidc.record_failure(
            db_session(),
            provider,
            reason=exc.reason,
            purpose=purpose,
            facts=request_facts(),
            actor=current_actor(),
        )

    def start(provider: Provider, *, purpose: str, user_id: int | None, nxt: str | None) -> Any:
        db = db_session()
        browser = browser_id()
        db.rollback()  # no transaction (nor lock) while the provider is asked
        try:
            oidc.metadata(provider, timeout=settings.oidc_timeout)
        except (ProviderError, ProviderUnavailable) as exc:
            fail(provider, exc, purpose)
            raise
        with writing():
            url = oidc.begin(
                db,
                provider,
                settings=settings,
                browser=browser,
                redirect_uri=redirect_uri(provider),
                purpose=purpose,
                user_id=user_id,
                nxt=nxt,
            )
            db.commit()
        if wants_json():
            return jsonify({"authorize_url": url})
        return redirect(url, 303)

    @bp.post(f"{auth_prefix}/oidc/<provider>", endpoint="login")
    @public
    @limiter.limit(lambda: settings.login_limit_per_ip, key_func=get_remote_address)
    def login(provider: str) -> Any:
        """Sign in with ``provider``: off to its authorization page. A POST with the CSRF
        token, so that no other site can start a sign-in in this browser (a provider that
        answers at once would then sign it in without a click here)."""
        found = provider_named(provider)
        nxt = request.form.get("next") or request.args.get("next")
        return start(found, purpose=LOGIN, user_id=None, nxt=safe_next(nxt))

    @bp.get(f"{auth_prefix}/oidc/<provider>/callback", endpoint="callback")
    @public
    @limiter.limit(lambda: settings.login_limit_per_ip, key_func=get_remote_address)
    def callback(provider: str) -> Any:
        """The provider sends the browser back here with ``code`` and ``state``."""
        found = provider_named(provider)
        db = db_session()
        browser = session.get(BROWSER_KEY)
        purpose = None
        try:
            db.rollback()
            with writing():
                # Spent now, whatever happens next: a state is good for one try.
                taken = oidc.take(
                    db,
                    state=request.args.get("state"),
                    browser=browser if isinstance(browser, str) else None,
                )
                db.commit()
            purpose = taken.purpose
            if "error" in request.args:
                raise ProviderError(
                    "refused_at_provider", "The sign-in was cancelled or refused at the provider."
                )
            account = oidc.fetch_account(
                found,
                taken.data,
                code=request.args.get("code"),
                redirect_uri=redirect_uri(found),
                settings=settings,
            )
        except (InvalidToken, ProviderError, ProviderUnavailable) as exc:
            fail(found, exc, purpose)
            raise
        if taken.purpose == LINK:
            return finish_link(found, taken, account)
        return finish_sign_in(found, account, safe_next(taken.data.get("next")))

    def finish_sign_in(provider: Provider, account: ExternalAccount, nxt: str | None) -> Any:
        db = db_session()
        facts = request_facts()
        db.rollback()
        with writing():
            try:
                user, _created = identities.sign_in(
                    db, account, settings=settings, facts=facts, label=provider.label
                )
            except AuthenticationFailed:
                # Disabled, locked, unconfirmed or a service account: recorded as
                # ``auth.login.failed`` (method oidc) by the service.
                raise PermissionDenied(
                    "sign-in", "This account cannot sign in at the moment."
                ) from None
            # The same decision as the password login: a second factor completes it.
            if user.mfa_enabled:
                db.commit()
                begin_pending(user, remember=False, nxt=nxt)
                verify_url = url_for("aaa_mfa.verify")
                if wants_json():
                    return jsonify({"mfa_required": True, "verify_url": verify_url})
                return redirect(verify_url, 303)
            return finish_login(
                user,
                remember=False,
                nxt=nxt,
                details={"method": "oidc", "provider": provider.name},
            )

    def finish_link(provider: Provider, taken: challenges.Taken, account: ExternalAccount) -> Any:
        # The flow was begun by a signed-in user after a fresh sign-in; it may end only in
        # that same user's session.
        if not current_user.is_authenticated or current_user.id != taken.user_id:
            exc = InvalidToken("link_user_changed", message=challenges.MESSAGE)
            fail(provider, exc, LINK)
            raise exc
        user = signed_in_user()
        db = db_session()
        db.rollback()
        with writing():
            _identity, new = identities.link(
                db, user=user, account=account, facts=request_facts(), label=provider.label
            )
            db.commit()
        if wants_json():
            return jsonify({"ok": True, "linked": provider.name, "new": new})
        flash(
            f"Your {provider.label} account is linked: you can sign in with it."
            if new
            else f"This {provider.label} account was already linked.",
            "success",
        )
        return redirect(url_for("aaa_oidc.identities"), 303)

    @bp.get(f"{account_prefix}/identities", endpoint="identities")
    @login_required
    def identities_page() -> Any:
        """The accounts at other providers linked to the signed-in user's account."""
        user = signed_in_user()
        linked = identities.for_user(db_session(), user)
        if wants_json():
            return jsonify(
                {
                    "identities": [identity_json(i) for i in linked],
                    "providers": [{"name": p.name, "label": p.label} for p in providers().values()],
                }
            )
        labels = {p.name: p.label for p in providers().values()}
        return render_template(
            "aaa/identities.html",
            linked=linked,
            labels=labels,
            providers=list(providers().values()),
            has_password=user.password_hash is not None,
        )

    @bp.post(f"{account_prefix}/identities/<provider>/link", endpoint="link")
    @fresh_login_required
    def link(provider: str) -> Any:
        """Link an account at ``provider``: off to its authorization page, then back."""
        found = provider_named(provider)
        user_id = signed_in_user().id
        return start(found, purpose=LINK, user_id=user_id, nxt=None)

    @bp.post(
        f"{account_prefix}/identities/<int(max=2147483647):identity_id>/unlink", endpoint="unlink"
    )
    @fresh_login_required
    def unlink(identity_id: int) -> Any:
        user = signed_in_user()
        db = db_session()
        removed = identities.unlink(db, user=user, identity_id=identity_id, facts=request_facts())
        db.commit()
        label = providers().get(removed.provider)
        if wants_json():
            return jsonify({"ok": True})
        flash(f"The {label.label if label else removed.provider} account is unlinked.", "success")
        return redirect(url_for("aaa_oidc.identities"), 303)

    return bp
