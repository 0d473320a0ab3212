"""Third-party sign-in as an OpenID Connect client (and GitHub's plain OAuth 2.0).

The authorization code flow, with every value that could be replayed or swapped bound to
the browser that began it: :func:`begin` stores a single-use ``state`` (a
:mod:`.challenges` row bound to the browser's random id) holding the ``nonce`` and the PKCE
verifier, and returns the provider's authorization URL (``code_challenge_method=S256``).
:func:`take` uses that state once; :func:`fetch_account` exchanges the code (with the verifier
and the client's credentials) and checks the ID token here, not in a library default:
the signature with a pinned list of asymmetric algorithms and the provider's published keys,
then ``iss``, ``aud``/``azp``, ``exp``/``iat``/``nbf`` and the ``nonce``. Every answer from a
provider is read with a size limit and a deadline; a provider that is down, slow or talks
nonsense makes the sign-in fail closed (:class:`ProviderUnavailable`), one that answers with
something wrong makes it fail (:class:`ProviderError`). Nothing here commits, and no code,
verifier, token or client secret is ever recorded.

The discovery document and the key set are cached per process (an hour); an ID token signed
with a key id not in the cached set makes the set be fetched once more (key rotation).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import requests
from joserfc import jws
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from sqlalchemy.orm import Session

from ..config import Settings
from ..errors import ConfigurationError, ProviderError, ProviderUnavailable
from . import audit, challenges
from .actors import Actor, RequestFacts

_log = logging.getLogger("flask_aaa")

#: ``Challenge.kind`` of a third-party sign-in's state.
KIND = "oidc"
#: Purposes of a started flow: sign in, or link the identity to the signed-in user.
LOGIN, LINK = "login", "link"

GITHUB = "github"
GITHUB_ISSUER = "https://github.com"
GITHUB_ENDPOINTS = {
    "authorize_url": "https://github.com/login/oauth/authorize",
    "token_url": "https://github.com/login/oauth/access_token",
    "userinfo_url": "https://api.github.com/user",
}

#: Largest answer read from a provider (discovery, keys, token, user): a bigger one is
#: refused before it is parsed, so a hostile provider cannot make us hold megabytes.
MAX_RESPONSE_BYTES = 64 * 1024
#: Longest ID token looked at.
MAX_ID_TOKEN_CHARS = 64 * 1024
#: Clock skew allowed on ``exp``, ``iat`` and ``nbf``, in seconds.
LEEWAY = 60
#: Seconds a discovery document and a key set are reused.
CACHE_SECONDS = 3600
#: Longest authorization code accepted from the browser.
MAX_CODE_CHARS = 2048

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_TOKEN_AUTH = ("client_secret_basic", "client_secret_post")
_ASYMMETRIC_KTY = frozenset({"RSA", "EC", "OKP"})
_ENTRY_KEYS = frozenset(
    {
        "issuer",
        "client_id",
        "client_secret",
        "scopes",
        "label",
        "algorithms",
        "preset",
        "trusted_email",
        "token_auth",
        "authorize_url",
        "token_url",
        "userinfo_url",
    }
)


@dataclasses.dataclass(frozen=True, slots=True)
class Provider:
    """One configured provider (an ``AAA_OIDC_PROVIDERS`` entry, checked)."""

    name: str
    label: str
    issuer: str
    client_id: str
    client_secret: str = dataclasses.field(repr=False)
    scopes: tuple[str, ...]
    algorithms: tuple[str, ...]
    #: ``None`` for OpenID Connect (endpoints by discovery), ``"github"`` for GitHub.
    preset: str | None
    #: Believe the provider's ``email_verified``. Off: its addresses count as unverified.
    trusted_email: bool
    token_auth: str
    #: GitHub's endpoints (``None`` for OpenID Connect providers).
    authorize_url: str | None
    token_url: str | None
    userinfo_url: str | None

    @property
    def is_oidc(self) -> bool:
        return self.preset is None


@dataclasses.dataclass(frozen=True, slots=True)
class ExternalAccount:
    """Who the provider says signed in. ``(issuer, subject)`` is the identity; the rest is
    what it told about them, used for a new account's name and shown to the user."""

    provider: str
    issuer: str
    subject: str
    email: str | None
    email_verified: bool
    username: str | None
    name: str | None


# -- configuration --


def parse_providers(settings: Settings) -> dict[str, Provider]:
    """Check every ``AAA_OIDC_PROVIDERS`` entry (no network): :class:`ConfigurationError`
    names the provider and the problem."""
    return {name: _parse(name, entry, settings) for name, entry in settings.oidc_providers.items()}


def _parse(name: str, entry: Mapping[str, Any], settings: Settings) -> Provider:
    where = f"AAA_OIDC_PROVIDERS[{name!r}]"
    unknown = sorted(str(key) for key in entry if key not in _ENTRY_KEYS)
    if unknown:
        raise ConfigurationError(f"{where}: unknown key(s) {unknown}; known: {sorted(_ENTRY_KEYS)}")
    preset = entry.get("preset")
    if preset not in (None, GITHUB):
        raise ConfigurationError(f"{where}: preset must be 'github' or absent")
    if preset is None:
        for key in GITHUB_ENDPOINTS:
            if key in entry:
                raise ConfigurationError(
                    f"{where}: {key} is for the github preset; an OpenID Connect provider's "
                    "endpoints come from its discovery document"
                )
    issuer = _text(where, "issuer", entry.get("issuer", GITHUB_ISSUER if preset else None))
    _check_url(where, "issuer", issuer)
    if urlsplit(issuer).query:
        raise ConfigurationError(f"{where}: issuer must not have a query")
    default_scopes = ("read:user", "user:email") if preset else ("openid", "email", "profile")
    scopes = _strings(where, "scopes", entry.get("scopes", default_scopes))
    if preset is None and "openid" not in scopes:
        raise ConfigurationError(f"{where}: scopes must include 'openid'")
    algorithms = _strings(where, "algorithms", entry.get("algorithms", settings.oidc_algorithms))
    if not set(algorithms) <= set(settings.oidc_algorithms):
        raise ConfigurationError(
            f"{where}: algorithms may only narrow AAA_OIDC_ALGORITHMS "
            f"{list(settings.oidc_algorithms)}"
        )
    token_auth = entry.get("token_auth", "client_secret_post" if preset else _TOKEN_AUTH[0])
    if token_auth not in _TOKEN_AUTH:
        raise ConfigurationError(f"{where}: token_auth must be one of {list(_TOKEN_AUTH)}")
    trusted_email = entry.get("trusted_email", True)
    label = _text(where, "label", entry.get("label", "GitHub" if preset else name.title()))
    if len(label) > 64:
        raise ConfigurationError(f"{where}: label must be at most 64 characters")
    endpoints = _endpoints(where, entry, preset)
    if not isinstance(trusted_email, bool):
        raise ConfigurationError(f"{where}: trusted_email must be True or False")
    return Provider(
        name=name,
        label=label,
        issuer=issuer,
        client_id=_text(where, "client_id", entry.get("client_id")),
        client_secret=_text(where, "client_secret", entry.get("client_secret")),
        scopes=scopes,
        algorithms=algorithms,
        preset=preset,
        trusted_email=trusted_email,
        token_auth=token_auth,
        authorize_url=endpoints["authorize_url"],
        token_url=endpoints["token_url"],
        userinfo_url=endpoints["userinfo_url"],
    )


def _endpoints(where: str, entry: Mapping[str, Any], preset: str | None) -> dict[str, str | None]:
    """GitHub's endpoints (each may be overridden, e.g. by a test's fake), else none."""
    endpoints: dict[str, str | None] = dict.fromkeys(GITHUB_ENDPOINTS)
    if preset:
        for key, default in GITHUB_ENDPOINTS.items():
            endpoints[key] = _text(where, key, entry.get(key, default))
            _check_url(where, key, endpoints[key])
    return endpoints


def _text(where: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{where}: {key} is required (a non-empty string)")
    return value


def _strings(where: str, key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigurationError(f"{where}: {key} must be a list of strings")
    if not value or not all(isinstance(v, str) and v and " " not in v for v in value):
        raise ConfigurationError(f"{where}: {key} must be a non-empty list of words")
    return tuple(value)


def _url_ok(url: object) -> bool:
    """HTTPS, or plain HTTP to this machine only (a development provider)."""
    if not isinstance(url, str) or len(url) > 2048:
        return False
    parts = urlsplit(url)
    if not parts.hostname or parts.fragment or parts.username or parts.password:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)


def _check_url(where: str, key: str, url: object) -> None:
    if not _url_ok(url):
        raise ConfigurationError(
            f"{where}: {key} must be an https:// URL (http:// only for 127.0.0.1 or localhost)"
        )


# -- talking to providers --


def _request(method: str, url: str, *, timeout: float, **kwargs: Any) -> tuple[int, bytes]:
    """One request with a deadline and a size limit; no redirects followed."""
    deadline = time.monotonic() + timeout
    try:
        with requests.request(
            method, url, timeout=timeout, stream=True, allow_redirects=False, **kwargs
        ) as response:
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > MAX_RESPONSE_BYTES:
                raise ProviderError("response_too_large")
            body = bytearray()
            for chunk in response.iter_content(16 * 1024):
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise ProviderError("response_too_large")
                if time.monotonic() > deadline:
                    raise ProviderUnavailable("timeout")
            return response.status_code, bytes(body)
    except requests.Timeout:
        raise ProviderUnavailable("timeout") from None
    except requests.RequestException as exc:
        raise ProviderUnavailable(f"unreachable:{type(exc).__name__}") from None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _get_document(url: str, *, timeout: float, what: str) -> dict[str, Any]:
    status, body = _request("GET", url, timeout=timeout, headers={"Accept": "application/json"})
    if status != 200:
        raise ProviderUnavailable(f"{what}_http_{status}")
    doc = _json(body)
    if not isinstance(doc, dict):
        raise ProviderUnavailable(f"{what}_not_json")
    return doc


_cache_lock = threading.Lock()
_metadata_cache: dict[str, tuple[float, dict[str, Any]]] = {}
_keys_cache: dict[str, tuple[float, KeySet]] = {}


def clear_caches() -> None:
    """Forget every cached discovery document and key set (tests; a changed provider)."""
    with _cache_lock:
        _metadata_cache.clear()
        _keys_cache.clear()


def _cached(cache: dict[str, tuple[float, Any]], key: str) -> Any:
    with _cache_lock:
        entry = cache.get(key)
    if entry is not None and time.monotonic() - entry[0] < CACHE_SECONDS:
        return entry[1]
    return None


def _store(cache: dict[str, tuple[float, Any]], key: str, value: Any) -> None:
    with _cache_lock:
        cache[key] = (time.monotonic(), value)


def metadata(provider: Provider, *, timeout: float) -> dict[str, Any]:
    """The provider's endpoints: from discovery (cached), or GitHub's configured ones."""
    if not provider.is_oidc:
        return {
            "authorization_endpoint": provider.authorize_url,
            "token_endpoint": provider.token_url,
            "userinfo_endpoint": provider.userinfo_url,
        }
    cached = _cached(_metadata_cache, provider.issuer)
    if cached is not None:
        return dict(cached)
    url = provider.issuer.rstrip("/") + "/.well-known/openid-configuration"
    doc = _get_document(url, timeout=timeout, what="discovery")
    # OpenID Connect Discovery 4.3: the document must name exactly the issuer asked for, or
    # a provider could speak for another (mix-up).
    if doc.get("issuer") != provider.issuer:
        _log.error("provider %s: discovery names another issuer", provider.name)
        raise ProviderUnavailable("discovery_issuer_mismatch")
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not _url_ok(doc.get(key)):
            raise ProviderUnavailable(f"discovery_bad_{key}")
    _store(_metadata_cache, provider.issuer, doc)
    return dict(doc)


def _key_set(url: str, *, timeout: float, refresh: bool = False) -> KeySet:
    if not refresh:
        cached = _cached(_keys_cache, url)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
    doc = _get_document(url, timeout=timeout, what="jwks")
    keys = doc.get("keys")
    if not isinstance(keys, list):
        raise ProviderUnavailable("jwks_no_keys")
    # Symmetric ("oct") keys are dropped: an ID token is never checked with a shared secret,
    # so a token "signed" with HS256 and the provider's public key finds no key at all.
    usable = [
        k
        for k in keys
        if isinstance(k, dict) and k.get("kty") in _ASYMMETRIC_KTY and k.get("use", "sig") == "sig"
    ]
    try:
        key_set = KeySet.import_key_set({"keys": usable})
    except (JoseError, ValueError, TypeError, KeyError):
        raise ProviderUnavailable("jwks_unusable") from None
    _store(_keys_cache, url, key_set)
    return key_set


# -- the flow --


def s256(verifier: str) -> str:
    """The PKCE ``code_challenge`` of ``verifier`` (RFC 7636, S256)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def begin(
    db: Session,
    provider: Provider,
    *,
    settings: Settings,
    browser: str,
    redirect_uri: str,
    purpose: str,
    user_id: int | None = None,
    nxt: str | None = None,
) -> str:
    """Start a flow and return the provider's authorization URL. The state (with the nonce
    and the PKCE verifier) is added to ``db``; the caller commits."""
    meta = metadata(provider, timeout=settings.oidc_timeout)
    verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(32)
    state = challenges.begin(
        db,
        kind=KIND,
        purpose=purpose,
        browser=browser,
        ttl=settings.oidc_state_ttl,
        user_id=user_id,
        data={"provider": provider.name, "nonce": nonce, "verifier": verifier, "next": nxt},
    )
    params = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(provider.scopes),
        "state": state,
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
    }
    if provider.is_oidc:
        params["nonce"] = nonce
    endpoint = str(meta["authorization_endpoint"])
    return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)


def take(db: Session, *, state: str | None, browser: str | None) -> challenges.Taken:
    """Use the state of a callback once (:func:`.challenges.consume`). The caller commits at
    once, so that the state is spent whatever happens next. Raises :class:`InvalidToken`."""
    return challenges.consume(db, kind=KIND, value=state, browser=browser)


def fetch_account(
    provider: Provider,
    data: Mapping[str, Any],
    *,
    code: str | None,
    redirect_uri: str,
    settings: Settings,
) -> ExternalAccount:
    """Exchange the code (with the state's PKCE verifier) and find out who signed in.
    ``data`` is what :func:`take` returned; a state begun for another provider is refused."""
    if data.get("provider") != provider.name:
        raise ProviderError("provider_mismatch")
    if not code or len(code) > MAX_CODE_CHARS:
        raise ProviderError("missing_code")
    meta = metadata(provider, timeout=settings.oidc_timeout)
    token = _exchange(
        provider,
        str(meta["token_endpoint"]),
        code=code,
        verifier=str(data.get("verifier", "")),
        redirect_uri=redirect_uri,
        timeout=settings.oidc_timeout,
    )
    if not provider.is_oidc:
        return _github_account(provider, str(token["access_token"]), timeout=settings.oidc_timeout)
    claims = verify_id_token(
        provider,
        token.get("id_token"),
        nonce=str(data.get("nonce", "")),
        jwks_uri=str(meta["jwks_uri"]),
        timeout=settings.oidc_timeout,
    )
    return _oidc_account(provider, claims)


def _exchange(
    provider: Provider, url: str, *, code: str, verifier: str, redirect_uri: str, timeout: float
) -> dict[str, Any]:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    auth: tuple[str, str] | None = None
    if provider.token_auth == _TOKEN_AUTH[0]:  # client_secret_basic
        # RFC 6749 2.3.1: both are form-encoded before they go into the Basic header.
        auth = (quote(provider.client_id, safe=""), quote(provider.client_secret, safe=""))
    else:
        form.update(client_id=provider.client_id, client_secret=provider.client_secret)
    status, body = _request(
        "POST", url, timeout=timeout, data=form, auth=auth, headers={"Accept": "application/json"}
    )
    if status >= 500:
        raise ProviderUnavailable(f"token_http_{status}")
    doc = _json(body)
    if status != 200 or not isinstance(doc, dict) or "error" in doc:
        # invalid_grant (a used code, a wrong verifier), invalid_client, ...
        raise ProviderError("token_refused")
    if not isinstance(doc.get("access_token"), str):
        raise ProviderError("token_without_access_token")
    token_type = doc.get("token_type", "bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise ProviderError("token_type_not_bearer")
    return doc


def _b64json(segment: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return None


def verify_id_token(
    provider: Provider,
    token: object,
    *,
    nonce: str,
    jwks_uri: str,
    timeout: float,
    now: float | None = None,
) -> dict[str, Any]:
    """Check an ID token and return its claims, or raise :class:`ProviderError`.

    The header is read first: an algorithm outside the provider's pinned list (so ``none``
    and every HMAC) or any ``crit`` extension ends it before a key is looked at."""
    if not isinstance(token, str) or not token:
        raise ProviderError("missing_id_token")
    if len(token) > MAX_ID_TOKEN_CHARS:
        raise ProviderError("id_token_too_large")
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise ProviderError("id_token_malformed")
    header = _b64json(parts[0])
    if not isinstance(header, dict):
        raise ProviderError("id_token_malformed")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in provider.algorithms:
        raise ProviderError("id_token_alg_refused")
    if "crit" in header:
        raise ProviderError("id_token_crit_refused")
    if not parts[2]:
        raise ProviderError("id_token_unsigned")
    try:
        signed = _verified(token, alg, jwks_uri, timeout=timeout)
    except InvalidKeyIdError:
        # Perhaps the provider rotated its keys since they were cached: fetch them once more.
        try:
            signed = _verified(token, alg, jwks_uri, timeout=timeout, refresh=True)
        except InvalidKeyIdError:
            raise ProviderError("id_token_unknown_key") from None
    claims = _json(signed)
    if not isinstance(claims, dict):
        raise ProviderError("id_token_malformed")
    check_claims(provider, claims, nonce=nonce, now=time.time() if now is None else now)
    return claims


def _verified(
    token: str, alg: str, jwks_uri: str, *, timeout: float, refresh: bool = False
) -> bytes:
    key_set = _key_set(jwks_uri, timeout=timeout, refresh=refresh)
    try:
        obj = jws.deserialize_compact(token, key_set, algorithms=[alg])
    except InvalidKeyIdError:
        raise
    except (JoseError, ValueError, TypeError, KeyError):
        raise ProviderError("id_token_bad_signature") from None
    return obj.payload


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def check_claims(provider: Provider, claims: Mapping[str, Any], *, nonce: str, now: float) -> None:
    """OpenID Connect Core 3.1.3.7, with exact comparisons and a small clock leeway."""
    if claims.get("iss") != provider.issuer:
        raise ProviderError("id_token_wrong_issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise ProviderError("id_token_wrong_audience")
    if provider.client_id not in audiences:
        raise ProviderError("id_token_wrong_audience")
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != provider.client_id:
        raise ProviderError("id_token_wrong_azp")
    exp, iat, nbf = _number(claims, "exp"), _number(claims, "iat"), _number(claims, "nbf")
    if exp is None or iat is None or ("nbf" in claims and nbf is None):
        raise ProviderError("id_token_bad_times")
    if now >= exp + LEEWAY:
        raise ProviderError("id_token_expired")
    if iat > now + LEEWAY or (nbf is not None and nbf > now + LEEWAY):
        raise ProviderError("id_token_not_yet_valid")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 1 <= len(sub) <= 255:
        raise ProviderError("id_token_bad_subject")
    got = claims.get("nonce")
    if not nonce or not isinstance(got, str) or not secrets.compare_digest(got, nonce):
        raise ProviderError("id_token_wrong_nonce")


def _short(value: object, limit: int) -> str | None:
    return value.strip() if isinstance(value, str) and 0 < len(value.strip()) <= limit else None


def _oidc_account(provider: Provider, claims: Mapping[str, Any]) -> ExternalAccount:
    email = _short(claims.get("email"), 254)
    # Only a real JSON true counts, and only from a provider trusted to check addresses.
    verified = provider.trusted_email and email is not None and claims.get("email_verified") is True
    return ExternalAccount(
        provider=provider.name,
        issuer=provider.issuer,
        subject=str(claims["sub"]),
        email=email,
        email_verified=verified,
        username=_short(claims.get("preferred_username"), 64),
        name=_short(claims.get("name"), 128),
    )


def _github_account(provider: Provider, access_token: str, *, timeout: float) -> ExternalAccount:
    url = str(provider.userinfo_url)
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/vnd.github+json"}
    status, body = _request("GET", url, timeout=timeout, headers=headers)
    if status >= 500:
        raise ProviderUnavailable(f"user_http_{status}")
    doc = _json(body)
    if status != 200 or not isinstance(doc, dict):
        raise ProviderError("user_refused")
    user_id = doc.get("id")
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
        raise ProviderError("user_without_id")
    email, verified = None, False
    if "user:email" in provider.scopes:
        # /user shows the public address, if any, without saying whether it was checked;
        # /user/emails says which address is primary and verified.
        status, body = _request(
            "GET", url.rstrip("/") + "/emails", timeout=timeout, headers=headers
        )
        entries = _json(body) if status == 200 else None
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("primary") is True:
                email = _short(entry.get("email"), 254)
                verified = (
                    provider.trusted_email and email is not None and entry.get("verified") is True
                )
    return ExternalAccount(
        provider=provider.name,
        issuer=provider.issuer,
        subject=str(user_id),
        email=email,
        email_verified=verified,
        username=_short(doc.get("login"), 64),
        name=_short(doc.get("name"), 128),
    )


def record_failure(
    db: Session,
    provider: Provider,
    *,
    reason: str,
    purpose: str | None,
    facts: RequestFacts,
    actor: Actor | None = None,
) -> None:
    """Record a failed third-party sign-in or link (``auth.oidc.failed``) apart."""
    audit.record_apart(
        db,
        action="auth.oidc.failed",
        actor=actor or Actor.anonymous(),
        outcome="failure",
        facts=facts,
        details={"provider": provider.name, "reason": reason, "purpose": purpose},
    )
