"""Providers for attacking the client: an OpenID provider that signs (or forges) whatever a
test asks for, and a GitHub look-alike. Both run in a threaded server on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import socketserver
import threading
import time
from typing import Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from flask import Flask, Response, jsonify, redirect, request
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from werkzeug.serving import make_server

from flask_aaa.services.oidc import s256


class Served:
    """A WSGI app on 127.0.0.1 on an ephemeral port, in a background thread."""

    def __init__(self) -> None:
        self._server = make_server("127.0.0.1", 0, self._app_placeholder, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread: threading.Thread | None = None

    @staticmethod
    def _app_placeholder(environ: Any, start_response: Any) -> list[bytes]:
        start_response("503 Service Unavailable", [])
        return []

    def serve(self, app: Flask) -> None:
        self._server.app = app
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS put together by hand (for alg none and friends)."""
    parts = [json.dumps(header).encode(), json.dumps(claims).encode()]
    return ".".join([*(b64(p) for p in parts), b64(signature)])


def sign_raw(header: dict[str, Any], claims: dict[str, Any], key: Any, alg: str) -> str:
    """A compact JWS signed by hand, for headers and keys a JOSE library would not sign."""
    signing_input = ".".join(b64(json.dumps(p).encode()) for p in (header, claims)).encode()
    if alg == "HS256":
        signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    else:
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return signing_input.decode() + "." + b64(signature)


class RawServer:
    """Answers every request with the same prebuilt bytes, written straight from a buffer:
    it allocates next to nothing, so a test can measure the client's memory alone."""

    def __init__(self, answer: bytes) -> None:
        answer_view = memoryview(answer)

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                length = 0
                while (line := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.rfile.read(length)
                with contextlib.suppress(OSError):
                    self.wfile.write(answer_view)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def http_answer(body: bytes, *, chunked: bool) -> bytes:
    """A whole HTTP/1.1 200 answer carrying ``body`` (chunked: without a length)."""
    if not chunked:
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        )
        return head.encode() + b"Connection: close\r\n\r\n" + body
    pieces = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    return head + b"Connection: close\r\n\r\n" + chunks


class FakeOP(Served):
    """An OpenID provider under the test's control.

    ``/authorize`` approves at once (user ``sub``); ``/token`` checks the code and the PKCE
    verifier, then answers with :meth:`id_token` (overridable through ``forge``). ``down``
    names endpoints that answer 500."""

    def __init__(self, client_id: str, client_secret: str) -> None:
        super().__init__()
        self.issuer = self.url
        self.client_id = client_id
        self.client_secret = client_secret
        self.key = RSAKey.generate_key(2048, parameters={"use": "sig"}, auto_kid=True)
        self.sub = "user-1"
        self.email: str | None = "someone@idp.example"
        self.email_verified: Any = True
        self.claims_patch: dict[str, Any] = {}
        self.forge: Any = None  # callable(claims) -> id_token, or None
        self.down: set[str] = set()
        self.discovery_issuer: str | None = None
        self.token_endpoint: str | None = None  # another server's, to answer the code
        self.codes: dict[str, dict[str, Any]] = {}
        self.issued: list[str] = []  # every code, access token and id token handed out
        self.token_requests: list[dict[str, str]] = []
        self.serve(self._app())

    def claims(self, nonce: str | None) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "sub": self.sub,
            "iat": now,
            "exp": now + 300,
            "name": "Some One",
            "preferred_username": "someone",
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if self.email is not None:
            claims["email"] = self.email
            claims["email_verified"] = self.email_verified
        claims.update(self.claims_patch)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
        return jwt.encode(header or {"alg": "RS256", "kid": self.key.kid}, claims, self.key)

    def public_pem(self) -> bytes:
        return self.key.as_pem(private=False)

    def raw_private_key(self) -> Any:
        return self.key.private_key

    def _app(self) -> Flask:
        op = self
        app = Flask("fake-op")

        def maybe_down(name: str) -> Response | None:
            if name in op.down:
                return Response("down", status=500)
            return None

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Any:
            return maybe_down("discovery") or jsonify(
                issuer=op.discovery_issuer or op.issuer,
                authorization_endpoint=f"{op.issuer}/authorize",
                token_endpoint=op.token_endpoint or f"{op.issuer}/token",
                jwks_uri=f"{op.issuer}/jwks",
                response_types_supported=["code"],
            )

        @app.get("/jwks")
        def jwks() -> Any:
            return maybe_down("jwks") or jsonify(KeySet([op.key]).as_dict(private=False))

        @app.get("/authorize")
        def authorize() -> Any:
            code = secrets.token_urlsafe(24)
            op.codes[code] = {
                "nonce": request.args.get("nonce"),
                "challenge": request.args.get("code_challenge"),
                "redirect_uri": request.args["redirect_uri"],
            }
            op.issued.append(code)
            query = urlencode({"code": code, "state": request.args.get("state", "")})
            return redirect(f"{request.args['redirect_uri']}?{query}", 302)

        @app.post("/token")
        def token() -> Any:
            down = maybe_down("token")
            if down:
                return down
            op.token_requests.append(dict(request.form))
            auth = request.authorization
            if auth is None or (auth.username, auth.password) != (op.client_id, op.client_secret):
                return jsonify(error="invalid_client"), 401
            grant = op.codes.pop(request.form.get("code", ""), None)
            verifier = request.form.get("code_verifier")
            if grant is None or not verifier or s256(verifier) != grant["challenge"]:
                return jsonify(error="invalid_grant"), 400
            claims = op.claims(grant["nonce"])
            id_token = op.forge(claims) if op.forge else op.sign(claims)
            access = secrets.token_urlsafe(24)
            op.issued += [access, id_token]
            return jsonify(access_token=access, token_type="Bearer", id_token=id_token)

        return app


class FakeGitHub(Served):
    """GitHub's OAuth 2.0 endpoints and /user, /user/emails, as far as the client uses them."""

    def __init__(self, client_id: str, client_secret: str) -> None:
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret
        self.user: dict[str, Any] = {"id": 4242, "login": "octocat", "name": "Mona"}
        self.emails: list[dict[str, Any]] = [
            {"email": "octo@github.example", "primary": True, "verified": True}
        ]
        self.codes: dict[str, str] = {}
        self.tokens: set[str] = set()
        self.user_status = 200
        self.serve(self._app())

    def _app(self) -> Flask:
        gh = self
        app = Flask("fake-github")

        @app.get("/login/oauth/authorize")
        def authorize() -> Any:
            code = secrets.token_urlsafe(16)
            gh.codes[code] = request.args.get("code_challenge", "")
            query = urlencode({"code": code, "state": request.args.get("state", "")})
            return redirect(f"{request.args['redirect_uri']}?{query}", 302)

        @app.post("/login/oauth/access_token")
        def token() -> Any:
            form = request.form
            if (form.get("client_id"), form.get("client_secret")) != (
                gh.client_id,
                gh.client_secret,
            ):
                return jsonify(error="incorrect_client_credentials")
            challenge = gh.codes.pop(form.get("code", ""), None)
            if challenge is None or s256(form.get("code_verifier", "")) != challenge:
                # GitHub answers errors with 200 and an "error" member.
                return jsonify(error="bad_verification_code")
            token = secrets.token_urlsafe(20)
            gh.tokens.add(token)
            return jsonify(access_token=token, token_type="bearer", scope="read:user,user:email")

        def authorized() -> bool:
            header = request.headers.get("Authorization", "")
            return header.startswith("Bearer ") and header[7:] in gh.tokens

        @app.get("/user")
        def user() -> Any:
            if not authorized():
                return jsonify(message="Bad credentials"), 401
            return jsonify(gh.user), gh.user_status

        @app.get("/user/emails")
        def emails() -> Any:
            if not authorized():
                return jsonify(message="Bad credentials"), 401
            return jsonify(gh.emails)

        return app
