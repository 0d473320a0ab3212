"""A tiny OpenID Connect provider FOR DEVELOPMENT ONLY, built with Authlib's server classes.

It lets a person try "Sign in with ..." offline, and the test suite run the whole flow
against a real provider. It is not a provider to deploy: its users are a fixed list anyone
may pick without a password, its keys and codes live in memory, and its pages have no CSRF
protection. So it refuses to start unless asked explicitly (``allow=True`` or
``FLASK_AAA_DEVIDP=1``), listens on 127.0.0.1 only, and says what it is on every page.

What it does: discovery, its public keys (a fresh RS256 key per start), the authorization
endpoint (pick a test user, approved at once), the token endpoint (authorization code with
PKCE S256 required, client secret by Basic or POST), and userinfo. ID tokens carry the
nonce, the user's email, ``email_verified`` and ``preferred_username``.

    server = DevIdP(clients=[DevClient("demo", "secret", ("http://127.0.0.1:5000/cb",))],
                    allow=True).start()
    server.issuer   # http://127.0.0.1:<port>
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import threading
import time
from collections.abc import Iterable
from typing import Any

from authlib.integrations.flask_oauth2 import (  # type: ignore[import-untyped]
    AuthorizationServer,
    ResourceProtector,
)
from authlib.oauth2.rfc6749 import grants  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.errors import OAuth2Error  # type: ignore[import-untyped]
from authlib.oauth2.rfc6750 import BearerTokenValidator  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636 import CodeChallenge  # type: ignore[import-untyped]
from authlib.oidc.core import UserInfo, UserInfoEndpoint  # type: ignore[import-untyped]
from authlib.oidc.core.grants import OpenIDCode  # type: ignore[import-untyped]
from flask import Flask, jsonify, render_template_string, request
from joserfc.jwk import KeySet, RSAKey
from werkzeug.serving import BaseWSGIServer, make_server

#: Environment variable that allows the development provider to start.
ALLOW_ENV = "FLASK_AAA_DEVIDP"
#: Seconds an authorization code stays valid.
CODE_SECONDS = 60
#: Seconds an access token (and the ID token) stays valid.
TOKEN_SECONDS = 600
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclasses.dataclass(frozen=True, slots=True)
class DevUser:
    """A test user of the development provider."""

    sub: str
    username: str
    email: str
    email_verified: bool = True
    name: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class DevClient:
    """A relying party registered with the development provider."""

    client_id: str
    client_secret: str = dataclasses.field(repr=False)
    redirect_uris: tuple[str, ...]

    # -- Authlib's ClientMixin protocol --

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        allowed = {"openid", "email", "profile"}
        return " ".join(s for s in (scope or "").split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(self.client_secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


#: Who can sign in at the development provider. ``mallory`` claims an address she has not
#: verified (it is alice's at the demo), to show that such an address links nothing.
DEFAULT_USERS = (
    DevUser("1001", "ada", "ada@devidp.example.org", True, "Ada Lovelace"),
    DevUser("1002", "grace", "grace@devidp.example.org", True, "Grace Hopper"),
    DevUser("1003", "mallory", "alice@example.org", False, "Mallory (unverified address)"),
)


@dataclasses.dataclass(slots=True)
class _Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: DevUser
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int
    expires_at: float

    # -- Authlib's AuthorizationCodeMixin protocol --

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


@dataclasses.dataclass(slots=True)
class _Token:
    client: DevClient
    user: DevUser
    scope: str
    expires_at: float

    # -- Authlib's TokenMixin protocol --

    def check_client(self, client: DevClient) -> bool:
        return client.client_id == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return TOKEN_SECONDS

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at

    def is_revoked(self) -> bool:
        return False

    def get_user(self) -> DevUser:
        return self.user

    def get_client(self) -> DevClient:
        return self.client


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Dev IdP (development only)</title>
<style>body{font-family:sans-serif;max-width:40rem;margin:2rem auto}
.banner{background:#b00020;color:#fff;padding:.75rem;font-weight:bold}</style></head>
<body><p class="banner">DEVELOPMENT ONLY: a test identity provider. Never use it for real
accounts: anyone can sign in as anyone here.</p>
{% if error %}<h1>Request refused</h1><p>{{ error }}</p>{% else %}
<h1>Sign in to {{ client_id }} as</h1>
<form method="post">
{% for user in users %}<p><label><input type="radio" name="user" value="{{ user.sub }}"
{% if loop.first %}checked{% endif %}> {{ user.username }} &lt;{{ user.email }}&gt;
{% if not user.email_verified %}(address not verified){% endif %}</label></p>{% endfor %}
<button type="submit">Continue</button></form>{% endif %}</body></html>"""


def _user_info(user: DevUser, scope: str) -> Any:
    return UserInfo(
        sub=user.sub,
        name=user.name or user.username,
        preferred_username=user.username,
        email=user.email,
        email_verified=user.email_verified,
    ).filter(scope)


class DevIdP:
    """The development provider: its clients, users, key and in-memory codes and tokens."""

    def __init__(
        self,
        *,
        clients: Iterable[DevClient],
        users: Iterable[DevUser] = DEFAULT_USERS,
        allow: bool = False,
    ) -> None:
        if not (allow or os.environ.get(ALLOW_ENV) == "1"):
            raise RuntimeError(
                f"the development identity provider is for development only; pass allow=True "
                f"or set {ALLOW_ENV}=1 to start it"
            )
        self.clients = {c.client_id: c for c in clients}
        self.users = {u.sub: u for u in users}
        self.key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"})
        self.key.ensure_kid()
        self.issuer = ""
        self._codes: dict[str, _Code] = {}
        self._tokens: dict[str, _Token] = {}
        self._nonces: set[str] = set()
        self._lock = threading.Lock()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- serving --

    def start(self, host: str = "127.0.0.1", port: int = 0) -> DevIdP:
        """Listen on ``host`` (loopback only) in a background thread; ``port=0`` picks one."""
        if host not in _LOOPBACK:
            raise RuntimeError("the development identity provider listens on loopback only")
        server = make_server(host, port, _not_ready, threaded=True)
        self.issuer = f"http://{host}:{server.server_port}"
        server.app = self.create_app()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="devidp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- Authlib's storage callbacks --

    def save_code(self, code: str, req: Any) -> None:
        payload = req.payload.data
        with self._lock:
            self._codes[code] = _Code(
                code=code,
                client_id=req.client.client_id,
                redirect_uri=req.payload.redirect_uri,
                scope=req.scope,
                user=req.user,
                nonce=payload.get("nonce"),
                code_challenge=payload.get("code_challenge"),
                code_challenge_method=payload.get("code_challenge_method"),
                auth_time=int(time.time()),
                expires_at=time.time() + CODE_SECONDS,
            )
            if payload.get("nonce"):
                self._nonces.add(payload["nonce"])

    def find_code(self, code: str, client: DevClient) -> _Code | None:
        with self._lock:
            found = self._codes.get(code)
        if found is None or found.client_id != client.client_id or time.time() > found.expires_at:
            return None
        return found

    def delete_code(self, code: _Code) -> None:
        with self._lock:
            self._codes.pop(code.code, None)

    def save_token(self, token: dict[str, Any], req: Any) -> None:
        with self._lock:
            self._tokens[token["access_token"]] = _Token(
                client=req.client,
                user=req.user,
                scope=token.get("scope", ""),
                expires_at=time.time() + TOKEN_SECONDS,
            )

    def find_token(self, value: str) -> _Token | None:
        with self._lock:
            return self._tokens.get(value)

    def nonce_used(self, nonce: str) -> bool:
        with self._lock:
            return nonce in self._nonces

    # -- the app --

    def create_app(self) -> Flask:
        idp = self
        app = Flask("flask_aaa.devidp")
        app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"authorization_code": TOKEN_SECONDS}
        server = AuthorizationServer(app, query_client=self.clients.get, save_token=self.save_token)

        class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post")

            def save_authorization_code(self, code: str, req: Any) -> None:
                idp.save_code(code, req)

            def query_authorization_code(self, code: str, client: DevClient) -> _Code | None:
                return idp.find_code(code, client)

            def delete_authorization_code(self, code: _Code) -> None:
                idp.delete_code(code)

            def authenticate_user(self, code: _Code) -> DevUser:
                return code.user

        class IdToken(OpenIDCode):  # type: ignore[misc]
            def exists_nonce(self, nonce: str, req: Any) -> bool:
                return idp.nonce_used(nonce)

            def resolve_client_private_key(self, client: DevClient) -> RSAKey:
                return idp.key

            def get_client_algorithm(self, client: DevClient) -> str:
                return "RS256"

            def get_encode_header(self, client: DevClient) -> dict[str, str]:
                return {"alg": "RS256", "kid": str(idp.key.kid)}

            def get_client_claims(self, client: DevClient) -> dict[str, Any]:
                return {
                    "iss": idp.issuer,
                    "aud": [client.client_id],
                    "exp": int(time.time()) + TOKEN_SECONDS,
                }

            def generate_user_info(self, user: DevUser, scope: str) -> Any:
                return _user_info(user, scope)

        class Bearer(BearerTokenValidator):  # type: ignore[misc]
            def authenticate_token(self, token_string: str) -> _Token | None:
                return idp.find_token(token_string)

        class UserInfoAnswer(UserInfoEndpoint):  # type: ignore[misc]
            def generate_user_info(self, user: DevUser, scope: str) -> Any:
                return _user_info(user, scope)

            def get_issuer(self) -> str:
                return idp.issuer

        protector = ResourceProtector()
        protector.register_token_validator(Bearer())
        server.register_grant(
            CodeGrant, [IdToken(require_nonce=True), CodeChallenge(required=True)]
        )
        server.register_endpoint(UserInfoAnswer(resource_protector=protector))

        @app.after_request
        def _headers(response: Any) -> Any:
            response.headers["X-Development-Only"] = "this identity provider is for development"
            response.headers["Cache-Control"] = "no-store"
            response.headers["Content-Security-Policy"] = (
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http:"
            )
            return response

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Any:
            return jsonify(
                issuer=idp.issuer,
                authorization_endpoint=f"{idp.issuer}/authorize",
                token_endpoint=f"{idp.issuer}/token",
                userinfo_endpoint=f"{idp.issuer}/userinfo",
                jwks_uri=f"{idp.issuer}/jwks",
                response_types_supported=["code"],
                subject_types_supported=["public"],
                id_token_signing_alg_values_supported=["RS256"],
                code_challenge_methods_supported=["S256"],
                scopes_supported=["openid", "email", "profile"],
                token_endpoint_auth_methods_supported=["client_secret_basic", "client_secret_post"],
                grant_types_supported=["authorization_code"],
            )

        @app.get("/jwks")
        def jwks() -> Any:
            return jsonify(KeySet([idp.key]).as_dict(private=False))

        @app.route("/authorize", methods=["GET", "POST"])
        def authorize() -> Any:
            if request.args.get("code_challenge_method") != "S256":
                return render_template_string(_PAGE, error="PKCE with S256 is required."), 400
            user = idp.users.get(request.form.get("user", "")) if request.method == "POST" else None
            try:
                grant = server.get_consent_grant(end_user=user)
            except OAuth2Error as error:
                return render_template_string(_PAGE, error=error.description or error.error), 400
            if user is None:
                client_id = request.args.get("client_id", "")
                return render_template_string(
                    _PAGE, error=None, users=list(idp.users.values()), client_id=client_id
                )
            return server.create_authorization_response(grant_user=user, grant=grant)

        @app.post("/token")
        def token() -> Any:
            return server.create_token_response()

        @app.route("/userinfo", methods=["GET", "POST"])
        def userinfo() -> Any:
            return server.create_endpoint_response("userinfo")

        return app


def _not_ready(environ: Any, start_response: Any) -> list[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting"]
