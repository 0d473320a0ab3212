"""Passkeys (WebAuthn) over HTTP, with a software authenticator written here: an EC P-256
key, attestation format ``none``, and clientDataJSON, authenticatorData and signatures built
by hand, so every ceremony runs without a browser (tests/e2e runs them in Chromium).

Flows: add a passkey, sign in with it as the only step and as the second step after a
password, list, rename and remove. Attacks: a replayed challenge, a challenge from another
browser, a wrong origin or relying-party id, a signature by another key, another account's
user handle, a counter that goes back (a cloned authenticator), an unknown credential,
disabled and locked accounts, removing without a recent sign-in, no CSRF header (Z05), and
garbled or oversized bodies (I01). Cases from SECURITY-CASES.md are named where they fit.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import cbor2
import pyotp
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flask_aaa.config import Settings
from flask_aaa.db import utcnow, writing
from flask_aaa.errors import ConfigurationError
from flask_aaa.extension import unguarded_endpoints
from flask_aaa.models import AuditEvent, Challenge, LoginSession, Passkey, User
from flask_aaa.services import passkeys as passkey_service
from tests.conftest import (
    PASSWORD,
    app_engine,
    build_app,
    csrf_token,
    form_token,
    fresh,
    login,
    post,
    post_json,
)

RP_ID = "localhost"
ORIGIN = "http://localhost"
JSON = {"Accept": "application/json"}

# authenticatorData flags
UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40


@pytest.fixture
def config(config: dict[str, Any]) -> dict[str, Any]:
    config.update(AAA_PASSKEYS=True, AAA_PASSKEY_RP_ID=RP_ID, AAA_PASSKEY_ORIGIN=ORIGIN)
    return config


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Authenticator:
    """A software authenticator holding one credential. ``counting`` off keeps the signature
    counter at 0, as many passkey providers do."""

    def __init__(self, *, counting: bool = True) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(32)
        self.sign_count = 0
        self.counting = counting
        self.user_handle: str | None = None

    @property
    def id(self) -> str:
        return b64(self.credential_id)

    def cose_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,
                3: -7,
                -1: 1,
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )

    def auth_data(self, *, rp_id: str, flags: int, attested: bool = False) -> bytes:
        if self.counting and not attested:
            self.sign_count += 1
        data = hashlib.sha256(rp_id.encode()).digest() + bytes([flags])
        data += self.sign_count.to_bytes(4, "big")
        if attested:
            data += bytes(16)  # AAGUID: none
            data += len(self.credential_id).to_bytes(2, "big") + self.credential_id
            data += self.cose_key()
        return data

    @staticmethod
    def client_data(kind: str, challenge: str, origin: str) -> bytes:
        return json.dumps(
            {"type": kind, "challenge": challenge, "origin": origin, "crossOrigin": False}
        ).encode()

    def create(
        self,
        options: dict[str, Any],
        *,
        origin: str = ORIGIN,
        rp_id: str = RP_ID,
        flags: int = UP | UV,
    ) -> dict[str, Any]:
        """Answer ``navigator.credentials.create()`` options."""
        self.user_handle = options["user"]["id"]
        client_data = self.client_data("webauthn.create", options["challenge"], origin)
        auth_data = self.auth_data(rp_id=rp_id, flags=flags | AT, attested=True)
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return {
            "id": self.id,
            "rawId": self.id,
            "type": "public-key",
            "response": {
                "clientDataJSON": b64(client_data),
                "attestationObject": b64(attestation),
                "transports": ["internal", "bogus"],
            },
        }

    def get(
        self,
        options: dict[str, Any],
        *,
        origin: str = ORIGIN,
        rp_id: str = RP_ID,
        flags: int = UP | UV,
        signer: ec.EllipticCurvePrivateKey | None = None,
        user_handle: str | bool | None = True,
        challenge: str | None = None,
    ) -> dict[str, Any]:
        """Answer ``navigator.credentials.get()`` options. ``user_handle=True`` sends the
        handle given at registration, a string sends that, None sends none."""
        client_data = self.client_data("webauthn.get", challenge or options["challenge"], origin)
        auth_data = self.auth_data(rp_id=rp_id, flags=flags)
        signature = (signer or self.key).sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        handle = self.user_handle if user_handle is True else user_handle
        return {
            "id": self.id,
            "rawId": self.id,
            "type": "public-key",
            "response": {
                "clientDataJSON": b64(client_data),
                "authenticatorData": b64(auth_data),
                "signature": b64(signature),
                "userHandle": handle,
            },
        }


# -- helpers --


def registration_options(client: FlaskClient) -> dict[str, Any]:
    response = post_json(client, "/account/passkeys/options")
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json()["publicKey"])


def add_passkey(client: FlaskClient, key: Authenticator, name: str = "Laptop", **kw: Any) -> Any:
    credential = key.create(registration_options(client), **kw)
    return post_json(client, "/account/passkeys", {"credential": credential, "name": name})


def login_options(client: FlaskClient) -> dict[str, Any]:
    response = post_json(client, "/auth/passkey/options")
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json()["publicKey"])


def passkey_login(client: FlaskClient, key: Authenticator, **kw: Any) -> Any:
    credential = key.get(login_options(client), **kw)
    return post_json(client, "/auth/passkey", {"credential": credential})


def logout(client: FlaskClient) -> None:
    assert post(client, "/auth/logout").status_code == 303


def signed_in_as(client: FlaskClient) -> str | None:
    response = client.get("/private", headers=JSON)
    return response.get_json()["user"] if response.status_code == 200 else None


def events(db: Session, action: str) -> list[AuditEvent]:
    return list(
        fresh(db).scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        )
    )


def details(event: AuditEvent) -> dict[str, Any]:
    return dict(json.loads(event.details))


def passkey_rows(db: Session, user_id: int | None = None) -> list[Passkey]:
    stmt = select(Passkey).order_by(Passkey.id)
    if user_id is not None:
        stmt = stmt.where(Passkey.user_id == user_id)
    return list(fresh(db).scalars(stmt))


def update_user(app: Flask, user_id: int, **values: Any) -> None:
    with writing(), Session(app_engine(app)) as session:
        user = session.get(User, user_id)
        assert user is not None
        for name, value in values.items():
            setattr(user, name, value)
        session.commit()


def make_stale(app: Flask, db: Session) -> None:
    """Every session's last password check is an hour old: not fresh any more."""
    with writing(), Session(app_engine(app)) as session:
        for record in session.scalars(select(LoginSession)):
            record.reauthenticated_at = utcnow() - dt.timedelta(hours=1)
        session.commit()


@pytest.fixture
def alice(make_user: Callable[..., User]) -> User:
    return make_user("alice")


@pytest.fixture
def bob(make_user: Callable[..., User]) -> User:
    return make_user("bob")


@pytest.fixture
def key() -> Authenticator:
    return Authenticator()


@pytest.fixture
def enrolled(app: Flask, client: FlaskClient, alice: User, key: Authenticator) -> Authenticator:
    """Alice has added ``key`` and signed out again."""
    assert login(client, "alice").status_code == 303
    assert add_passkey(client, key).status_code == 201
    logout(client)
    return key


def failure_reasons(db: Session) -> list[str]:
    return [details(e)["reason"] for e in events(db, "auth.passkey.failed")]


# -- the flows --


def test_add_a_passkey_then_sign_in_with_it_alone(
    client: FlaskClient, db: Session, alice: User, key: Authenticator
) -> None:
    assert login(client, "alice").status_code == 303
    response = add_passkey(client, key, name="Work laptop")
    assert response.status_code == 201
    assert response.get_json()["passkey"]["name"] == "Work laptop"
    [row] = passkey_rows(db, alice.id)
    assert row.credential_id == key.id
    assert row.transports == "internal"  # unknown transports are dropped
    added = events(db, "account.passkey.added")
    assert len(added) == 1
    assert details(added[0])["passkey"] == row.id
    logout(client)
    assert signed_in_as(client) is None

    response = passkey_login(client, key)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["user"]["username"] == "alice"
    assert response.get_json()["redirect"] == "/"
    assert signed_in_as(client) == "alice"
    [row] = passkey_rows(db, alice.id)
    assert row.sign_count == key.sign_count == 1
    assert row.last_used_at is not None
    succeeded = events(db, "auth.login.succeeded")[-1]
    assert details(succeeded)["method"] == "passkey"
    assert succeeded.target_id == str(alice.id)


def test_passkey_sign_in_keeps_a_safe_next_only(
    client: FlaskClient, enrolled: Authenticator
) -> None:
    credential = enrolled.get(login_options(client))
    response = post_json(
        client, "/auth/passkey", {"credential": credential, "next": "https://evil.example/"}
    )
    assert response.status_code == 200
    assert response.get_json()["redirect"] == "/"
    logout(client)
    credential = enrolled.get(login_options(client))
    response = post_json(client, "/auth/passkey", {"credential": credential, "next": "/notes"})
    assert response.get_json()["redirect"] == "/notes"


def test_user_handle_is_random_not_the_primary_key(
    client: FlaskClient, db: Session, alice: User
) -> None:
    login(client, "alice")
    options = registration_options(client)
    handle = fresh(db).get(User, alice.id).passkey_handle  # type: ignore[union-attr]
    assert handle is not None
    assert options["user"]["id"] == handle
    assert len(base64.urlsafe_b64decode(handle + "=" * (-len(handle) % 4))) == 32
    assert options["authenticatorSelection"]["residentKey"] == "preferred"
    assert options["attestation"] == "none"
    assert options["rp"] == {"id": RP_ID, "name": "Flask-AAA"}


def test_registration_excludes_existing_passkeys_and_refuses_a_duplicate(
    client: FlaskClient, db: Session, alice: User, key: Authenticator
) -> None:
    login(client, "alice")
    assert add_passkey(client, key).status_code == 201
    options = registration_options(client)
    assert [c["id"] for c in options["excludeCredentials"]] == [key.id]
    credential = key.create(options)
    response = post_json(client, "/account/passkeys", {"credential": credential})
    assert response.status_code == 400
    assert response.get_json()["error"] == "passkey_rejected"
    assert len(passkey_rows(db)) == 1
    assert failure_reasons(db) == ["already_registered"]


def test_another_users_credential_cannot_be_registered_again(
    app: Flask, db: Session, alice: User, bob: User, key: Authenticator
) -> None:
    first, second = app.test_client(), app.test_client()
    login(first, "alice")
    assert add_passkey(first, key).status_code == 201
    login(second, "bob")
    assert add_passkey(second, key).status_code == 400
    assert [p.user_id for p in passkey_rows(db)] == [alice.id]


def test_default_names_and_a_limit_per_user(
    client: FlaskClient, db: Session, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(passkey_service, "MAX_PER_USER", 2)
    login(client, "alice")
    assert add_passkey(client, Authenticator(), name="").status_code == 201
    assert add_passkey(client, Authenticator(), name="  ").status_code == 201
    assert [p.name for p in passkey_rows(db)] == ["Passkey 1", "Passkey 2"]
    response = post_json(client, "/account/passkeys/options")
    assert response.status_code == 409
    assert len(passkey_rows(db)) == 2


@pytest.mark.parametrize(
    ("name", "field_error"),
    [
        ("x" * 65, "Use at most 64 characters."),
        ("bad\nname", "Control characters are not allowed."),
    ],
)
def test_a_bad_name_is_refused_before_the_challenge_is_spent(
    client: FlaskClient, db: Session, alice: User, key: Authenticator, name: str, field_error: str
) -> None:
    login(client, "alice")
    credential = key.create(registration_options(client))
    response = post_json(client, "/account/passkeys", {"credential": credential, "name": name})
    assert response.status_code == 400
    assert response.get_json()["fields"] == {"name": field_error}
    assert passkey_rows(db) == []
    # The challenge is still good: the same answer with a good name goes through.
    response = post_json(client, "/account/passkeys", {"credential": credential, "name": "ok"})
    assert response.status_code == 201


def test_adding_a_passkey_needs_a_signed_in_user(client: FlaskClient) -> None:
    assert post_json(client, "/account/passkeys/options").status_code == 401
    assert post_json(client, "/account/passkeys", {"credential": {}}).status_code == 401
    response = client.get("/account/passkeys")
    assert response.status_code == 303
    assert "/auth/login" in response.headers["Location"]


def test_adding_a_passkey_needs_a_recent_sign_in(
    app: Flask, client: FlaskClient, db: Session, alice: User, key: Authenticator
) -> None:
    login(client, "alice")
    options = registration_options(client)
    make_stale(app, db)
    response = post_json(client, "/account/passkeys/options")
    assert response.status_code == 401
    assert response.get_json()["error"] == "reauthentication_required"
    response = post_json(client, "/account/passkeys", {"credential": key.create(options)})
    assert response.status_code == 401
    assert passkey_rows(db) == []
    page = client.get("/account/passkeys").get_data(as_text=True)
    assert "Confirm your password" in page


def test_list_and_rename(client: FlaskClient, db: Session, alice: User, key: Authenticator) -> None:
    login(client, "alice")
    add_passkey(client, key, name="Phone")
    listing = client.get("/account/passkeys", headers=JSON).get_json()
    assert [p["name"] for p in listing["passkeys"]] == ["Phone"]
    assert listing["fresh"] is True
    passkey_id = listing["passkeys"][0]["id"]
    page = client.get("/account/passkeys").get_data(as_text=True)
    assert 'value="Phone"' in page
    assert "aaa/passkeys.js" in page
    assert " on" + "click" not in page  # no inline handlers: the CSP forbids them
    response = post(client, f"/account/passkeys/{passkey_id}/rename", {"name": "Old phone"})
    assert response.status_code == 303
    assert [p.name for p in passkey_rows(db)] == ["Old phone"]
    renamed = events(db, "account.passkey.renamed")
    assert details(renamed[0]) == {"passkey": passkey_id, "old_name": "Phone", "name": "Old phone"}
    response = post(client, f"/account/passkeys/{passkey_id}/rename", {"name": ""})
    assert response.status_code == 400
    assert [p.name for p in passkey_rows(db)] == ["Old phone"]


def test_remove_a_passkey_after_a_recent_sign_in(
    app: Flask, client: FlaskClient, db: Session, alice: User, key: Authenticator
) -> None:
    login(client, "alice")
    add_passkey(client, key)
    [row] = passkey_rows(db)
    passkey_id = row.id
    make_stale(app, db)
    response = post(client, f"/account/passkeys/{passkey_id}/remove", headers=JSON)
    assert response.status_code == 401
    assert response.get_json()["error"] == "reauthentication_required"
    response = post(client, f"/account/passkeys/{passkey_id}/remove")
    assert response.status_code == 303
    assert "/account/reauth" in response.headers["Location"]
    assert len(passkey_rows(db)) == 1
    assert post(client, "/account/reauth", {"password": PASSWORD}).status_code == 303
    response = post(client, f"/account/passkeys/{passkey_id}/remove")
    assert response.status_code == 303
    assert passkey_rows(db) == []
    removed = events(db, "account.passkey.removed")
    assert [(e.outcome, details(e)["passkey"]) for e in removed] == [("success", passkey_id)]
    # The removed passkey signs nobody in any more.
    logout(client)
    response = passkey_login(client, key)
    assert response.status_code == 401


def test_another_users_passkey_cannot_be_renamed_or_removed(
    app: Flask, db: Session, alice: User, bob: User, key: Authenticator
) -> None:
    """Z01: one user's ids are not another's to act on; the answer is 404, as for none."""
    first, second = app.test_client(), app.test_client()
    login(first, "alice")
    add_passkey(first, key)
    [row] = passkey_rows(db)
    login(second, "bob")
    assert post(second, f"/account/passkeys/{row.id}/remove", headers=JSON).status_code == 404
    response = post(second, f"/account/passkeys/{row.id}/rename", {"name": "mine"}, headers=JSON)
    assert response.status_code == 404
    assert post(second, "/account/passkeys/999999/remove", headers=JSON).status_code == 404
    assert [(p.user_id, p.name) for p in passkey_rows(db)] == [(alice.id, "Laptop")]


def test_the_only_way_in_cannot_be_removed(
    app: Flask, client: FlaskClient, db: Session, alice: User, key: Authenticator
) -> None:
    login(client, "alice")
    add_passkey(client, key)
    second = Authenticator()
    add_passkey(client, second, name="Key 2")
    update_user(app, alice.id, password_hash=None)  # a password-less account
    first_row, second_row = passkey_rows(db)
    assert post(client, f"/account/passkeys/{first_row.id}/remove").status_code == 303
    response = post(client, f"/account/passkeys/{second_row.id}/remove", headers=JSON)
    assert response.status_code == 409
    response = post(client, f"/account/passkeys/{second_row.id}/remove")
    assert response.status_code == 409
    assert "only way into your account" in response.get_data(as_text=True)
    assert [p.id for p in passkey_rows(db)] == [second_row.id]
    outcomes = [
        (e.outcome, details(e).get("reason")) for e in events(db, "account.passkey.removed")
    ]
    assert outcomes == [("success", None), ("denied", "only_way_in"), ("denied", "only_way_in")]


# -- the second step of a password sign-in --


def enable_totp(app: Flask, user: User) -> str:
    secret = pyotp.random_base32()
    update_user(app, user.id, totp_secret=secret, mfa_enabled_at=utcnow())
    return secret


def test_a_passkey_as_the_second_step_after_a_password(
    app: Flask, client: FlaskClient, db: Session, alice: User, enrolled: Authenticator
) -> None:
    """M04 too: between the steps nothing protected is reachable."""
    enable_totp(app, alice)
    response = login(client, "alice")
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/auth/2fa")
    assert signed_in_as(client) is None
    assert post_json(client, "/account/passkeys/options").status_code == 401
    page = client.get("/auth/2fa").get_data(as_text=True)
    assert "Use a passkey" in page
    assert "passkey" in client.get("/auth/2fa", headers=JSON).get_json()["methods"]

    options = post_json(client, "/auth/2fa/passkey/options").get_json()["publicKey"]
    assert [c["id"] for c in options["allowCredentials"]] == [enrolled.id]
    assert options["userVerification"] == "preferred"
    credential = enrolled.get(options, flags=UP, user_handle=None)  # presence is enough here
    response = post_json(client, "/auth/2fa/passkey", {"credential": credential})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["redirect"] == "/"
    assert signed_in_as(client) == "alice"
    succeeded = events(db, "auth.login.succeeded")[-1]
    assert details(succeeded)["mfa"] == "passkey"


def test_the_totp_page_offers_no_passkey_to_users_without_one(
    app: Flask, client: FlaskClient, alice: User
) -> None:
    enable_totp(app, alice)
    login(client, "alice")
    assert "Use a passkey" not in client.get("/auth/2fa").get_data(as_text=True)
    assert post_json(client, "/auth/2fa/passkey/options").status_code == 404


def test_second_step_endpoints_need_a_pending_sign_in(
    client: FlaskClient, enrolled: Authenticator
) -> None:
    assert post_json(client, "/auth/2fa/passkey/options").status_code == 401
    assert post_json(client, "/auth/2fa/passkey", {"credential": {}}).status_code == 401


def test_another_accounts_passkey_cannot_pass_the_second_step(
    app: Flask, client: FlaskClient, db: Session, alice: User, bob: User
) -> None:
    bobs = Authenticator()
    other = app.test_client()
    login(other, "bob")
    add_passkey(other, bobs)
    login(client, "alice")
    add_passkey(client, Authenticator())
    logout(client)
    enable_totp(app, alice)
    login(client, "alice")
    options = post_json(client, "/auth/2fa/passkey/options").get_json()["publicKey"]
    response = post_json(client, "/auth/2fa/passkey", {"credential": bobs.get(options)})
    assert response.status_code == 401
    assert signed_in_as(client) is None
    assert failure_reasons(db) == ["other_user"]


def test_failed_passkeys_use_up_the_pending_sign_in(
    app: Flask, client: FlaskClient, db: Session, alice: User, enrolled: Authenticator
) -> None:
    enable_totp(app, alice)
    login(client, "alice")
    impostor = ec.generate_private_key(ec.SECP256R1())
    statuses = []
    for _ in range(app.extensions["aaa"].settings.mfa_max_attempts):
        options = post_json(client, "/auth/2fa/passkey/options").get_json()["publicKey"]
        credential = enrolled.get(options, signer=impostor)
        response = post_json(client, "/auth/2fa/passkey", {"credential": credential})
        statuses.append((response.status_code, response.get_json()["error"]))
    assert statuses[-1] == (401, "login_required")
    assert all(s == (401, "passkey_rejected") for s in statuses[:-1])
    assert post_json(client, "/auth/2fa/passkey/options").status_code == 401  # start over


# -- attacks on the first-factor sign-in --


def test_a_replayed_challenge_is_refused(
    client: FlaskClient, db: Session, enrolled: Authenticator
) -> None:
    credential = enrolled.get(login_options(client))
    assert post_json(client, "/auth/passkey", {"credential": credential}).status_code == 200
    logout(client)
    response = post_json(client, "/auth/passkey", {"credential": credential})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_token"
    assert signed_in_as(client) is None
    assert failure_reasons(db)[-1] == "replayed"


def test_a_challenge_from_another_browser_is_refused(
    app: Flask, db: Session, enrolled: Authenticator
) -> None:
    victim, attacker = app.test_client(), app.test_client()
    credential = enrolled.get(login_options(attacker))
    response = post_json(victim, "/auth/passkey", {"credential": credential})
    assert response.status_code == 400
    assert signed_in_as(victim) is None
    assert failure_reasons(db) == ["other_browser"]


def test_a_challenge_made_up_by_the_client_is_refused(
    client: FlaskClient, db: Session, enrolled: Authenticator
) -> None:
    login_options(client)
    credential = enrolled.get({}, challenge=b64(os.urandom(32)))
    response = post_json(client, "/auth/passkey", {"credential": credential})
    assert response.status_code == 400
    assert failure_reasons(db) == ["unknown"]


def test_a_registration_challenge_does_not_sign_in(
    client: FlaskClient, db: Session, alice: User, enrolled: Authenticator
) -> None:
    login(client, "alice")
    options = registration_options(client)
    logout(client)
    login(client, "alice")  # a new cookie session: the old challenge is bound to the old one
    options = registration_options(client)
    credential = enrolled.get({}, challenge=options["challenge"])
    response = post_json(client, "/auth/passkey", {"credential": credential})
    assert response.status_code == 400
    assert failure_reasons(db) == ["wrong_purpose"]


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ({"origin": "http://evil.localhost"}, "wrong_origin"),
        ({"origin": "https://localhost"}, "wrong_origin"),
        ({"rp_id": "evil.example"}, "wrong_rp_id"),
        ({"signer": "other"}, "bad_signature"),
        ({"flags": UP}, "user_not_verified"),
        ({"flags": UV}, "user_not_present"),
    ],
    ids=["other-origin", "other-scheme", "other-rp-id", "other-key", "no-uv", "no-up"],
)
def test_a_bad_assertion_is_refused_and_spends_its_challenge(
    client: FlaskClient,
    db: Session,
    enrolled: Authenticator,
    tamper: dict[str, Any],
    reason: str,
) -> None:
    if tamper.get("signer") == "other":
        tamper = {"signer": ec.generate_private_key(ec.SECP256R1())}
    options = login_options(client)
    response = post_json(client, "/auth/passkey", {"credential": enrolled.get(options, **tamper)})
    assert response.status_code == 401
    assert response.get_json()["error"] == "passkey_rejected"
    assert signed_in_as(client) is None
    assert failure_reasons(db) == [reason]
    [row] = passkey_rows(db)
    assert row.sign_count == 0
    assert row.last_used_at is None
    # The failed answer used the challenge up: a good answer to it now is a replay.
    response = post_json(client, "/auth/passkey", {"credential": enrolled.get(options)})
    assert response.status_code == 400
    assert signed_in_as(client) is None


def test_another_accounts_user_handle_is_refused(
    app: Flask, client: FlaskClient, db: Session, alice: User, bob: User
) -> None:
    alices, bobs = Authenticator(), Authenticator()
    login(client, "alice")
    add_passkey(client, alices)
    logout(client)
    login(client, "bob")
    add_passkey(client, bobs)
    logout(client)
    # Bob's credential, signed by Bob's key, but claiming Alice's user handle.
    response = passkey_login(client, bobs, user_handle=alices.user_handle)
    assert response.status_code == 401
    assert signed_in_as(client) is None
    # A first-factor answer must carry a user handle at all.
    assert passkey_login(client, bobs, user_handle=None).status_code == 401
    assert failure_reasons(db) == ["user_handle_mismatch", "user_handle_mismatch"]
    assert passkey_login(client, bobs).status_code == 200
    assert signed_in_as(client) == "bob"


def test_a_signature_counter_that_goes_back_means_a_clone(
    client: FlaskClient, db: Session, alice: User, enrolled: Authenticator
) -> None:
    assert passkey_login(client, enrolled).status_code == 200
    assert passkey_login(client, enrolled).status_code == 200
    logout(client)
    assert passkey_rows(db)[0].sign_count == 2
    enrolled.sign_count = 0  # the clone: the same key, an older counter (it will send 1)
    response = passkey_login(client, enrolled)
    assert response.status_code == 401
    assert signed_in_as(client) is None
    [suspected] = events(db, "auth.passkey.clone_suspected")
    assert suspected.outcome == "denied"
    assert suspected.target_id == str(alice.id)
    assert details(suspected)["stored_count"] == 2
    assert details(suspected)["received_count"] == 1
    assert passkey_rows(db)[0].sign_count == 2
    enrolled.sign_count = 1  # it will send 2: equal is not greater either
    assert passkey_login(client, enrolled).status_code == 401


def test_a_counter_that_is_always_zero_is_fine(
    client: FlaskClient, db: Session, alice: User
) -> None:
    key = Authenticator(counting=False)
    login(client, "alice")
    add_passkey(client, key)
    logout(client)
    for _ in range(2):
        assert passkey_login(client, key).status_code == 200
        logout(client)
    assert events(db, "auth.passkey.clone_suspected") == []


def test_an_unknown_credential_is_refused(
    client: FlaskClient, db: Session, enrolled: Authenticator
) -> None:
    stranger = Authenticator()
    stranger.user_handle = enrolled.user_handle
    response = passkey_login(client, stranger)
    assert response.status_code == 401
    assert failure_reasons(db) == ["unknown_credential"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"active": False}, "disabled"),
        ({"locked_until": "soon"}, "locked"),
    ],
    ids=["disabled", "locked"],
)
def test_disabled_and_locked_accounts_cannot_sign_in_with_a_passkey(
    app: Flask,
    client: FlaskClient,
    db: Session,
    alice: User,
    enrolled: Authenticator,
    change: dict[str, Any],
    reason: str,
) -> None:
    """A06: a lockout holds on every path."""
    if change.get("locked_until") == "soon":
        change = {"locked_until": utcnow() + dt.timedelta(hours=1)}
    update_user(app, alice.id, **change)
    response = passkey_login(client, enrolled)
    assert response.status_code == 401
    assert response.get_json()["error"] == "passkey_rejected"
    assert signed_in_as(client) is None
    [failed] = events(db, "auth.login.failed")
    assert details(failed) == {"reason": reason, "method": "passkey"}
    assert passkey_rows(db)[0].sign_count == 0


# -- CSRF and hostile input --


CEREMONY_POSTS = [
    "/auth/passkey/options",
    "/auth/passkey",
    "/auth/2fa/passkey/options",
    "/auth/2fa/passkey",
    "/account/passkeys/options",
    "/account/passkeys",
]


@pytest.mark.parametrize("url", CEREMONY_POSTS)
def test_ceremony_posts_need_the_csrf_header(
    client: FlaskClient, db: Session, alice: User, url: str
) -> None:
    """Z05: a JSON POST without X-CSRFToken (or with a wrong one) changes nothing."""
    login(client, "alice")
    before = fresh(db).scalar(select(func.count(Challenge.id)))
    for headers in ({}, {"X-CSRFToken": "forged"}):
        response = client.post(url, json={}, headers=headers)
        assert response.status_code == 400
        assert response.get_json()["error"] == "csrf_failed"
    assert fresh(db).scalar(select(func.count(Challenge.id))) == before


@pytest.mark.parametrize("url", ["/auth/passkey", "/account/passkeys"])
@pytest.mark.parametrize(
    "body",
    [
        "{",
        "[]",
        "null",
        '"credential"',
        json.dumps({"credential": "abc"}),
        json.dumps({"credential": {"id": 5}}),
        json.dumps({"credential": {"id": "AA", "rawId": "AB", "type": "public-key"}}),
        json.dumps({"credential": {"id": "AA", "rawId": "AA", "type": "x", "response": {}}}),
        json.dumps(
            {"credential": {"id": "AA", "rawId": "AA", "type": "public-key", "response": []}}
        ),
        json.dumps(
            {
                "credential": {
                    "id": "AA",
                    "rawId": "AA",
                    "type": "public-key",
                    "response": {"clientDataJSON": "not base64!"},
                }
            }
        ),
        json.dumps(
            {
                "credential": {
                    "id": "AA",
                    "rawId": "AA",
                    "type": "public-key",
                    "response": {"clientDataJSON": {"nested": True}},
                }
            }
        ),
        json.dumps(
            {
                "credential": {
                    "id": "A" * 5000,
                    "rawId": "A" * 5000,
                    "type": "public-key",
                    "response": {"clientDataJSON": "AA"},
                }
            }
        ),
        "[" * 10_000 + "]" * 10_000,
    ],
)
def test_garbled_bodies_are_a_400(
    client: FlaskClient, db: Session, alice: User, url: str, body: str
) -> None:
    """I01: malformed JSON, wrong shapes and types: a clear 400, never a 500."""
    login(client, "alice")
    response = client.post(
        url,
        data=body,
        content_type="application/json",
        headers={"X-CSRFToken": csrf_token(client), **JSON},
    )
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert passkey_rows(db) == []


@pytest.mark.parametrize(
    "garble",
    [
        {"clientDataJSON": b64(b"not json")},
        {"clientDataJSON": b64(b'{"challenge": 5}')},
        {"authenticatorData": b64(b"short")},
        {"signature": b64(b"\x30\x02\x00\x00")},
        {"userHandle": 7},
    ],
    ids=["client-data", "challenge-type", "auth-data", "signature", "user-handle"],
)
def test_garbled_assertion_fields_are_refused_cleanly(
    client: FlaskClient, db: Session, enrolled: Authenticator, garble: dict[str, Any]
) -> None:
    credential = enrolled.get(login_options(client))
    credential["response"].update(garble)
    response = post_json(client, "/auth/passkey", {"credential": credential})
    assert response.status_code in (400, 401)
    assert response.get_json()["error"] in ("invalid_input", "invalid_token", "passkey_rejected")
    assert signed_in_as(client) is None


@pytest.mark.parametrize(
    "garble",
    [
        {"attestationObject": b64(b"\xa1\x01")},
        {"attestationObject": b64(cbor2.dumps({"fmt": "packed", "attStmt": {}, "authData": b""}))},
        {"attestationObject": "AA"},
    ],
    ids=["cbor-map", "packed-empty", "tiny"],
)
def test_garbled_attestations_are_refused_cleanly(
    client: FlaskClient, db: Session, alice: User, key: Authenticator, garble: dict[str, Any]
) -> None:
    login(client, "alice")
    credential = key.create(registration_options(client))
    credential["response"].update(garble)
    response = post_json(client, "/account/passkeys", {"credential": credential})
    assert response.status_code == 400
    assert response.get_json()["error"] == "passkey_rejected"
    assert passkey_rows(db) == []


def test_a_registration_for_another_origin_or_rp_is_refused(
    client: FlaskClient, db: Session, alice: User
) -> None:
    login(client, "alice")
    assert add_passkey(client, Authenticator(), origin="https://evil.example").status_code == 400
    assert add_passkey(client, Authenticator(), rp_id="evil.example").status_code == 400
    assert passkey_rows(db) == []
    assert failure_reasons(db) == ["wrong_origin", "wrong_rp_id"]


def test_an_oversized_body_is_refused(client: FlaskClient, alice: User) -> None:
    login(client, "alice")
    body = json.dumps({"credential": {"id": "A" * 100_000}})
    response = client.post(
        "/auth/passkey",
        data=body,
        content_type="application/json",
        headers={"X-CSRFToken": csrf_token(client), **JSON},
    )
    assert response.status_code == 413


def test_a_form_post_is_refused(client: FlaskClient, enrolled: Authenticator) -> None:
    token = csrf_token(client)
    response = client.post("/auth/passkey", data={"credential": "x", "csrf_token": token})
    assert response.status_code == 400


# -- switched on and off, and the guards --


def test_login_page_offers_a_passkey_only_when_on(
    client: FlaskClient, config: dict[str, Any]
) -> None:
    page = client.get("/auth/login").get_data(as_text=True)
    assert "Sign in with a passkey" in page
    assert 'data-verify="/auth/passkey"' in page
    form_token(page)
    config["AAA_PASSKEYS"] = False
    other = build_app(config)
    off = other.test_client()
    assert "passkey" not in off.get("/auth/login").get_data(as_text=True).lower()
    assert post_json(off, "/auth/passkey/options").status_code == 404
    assert not [e for e in other.view_functions if e.startswith("aaa_passkeys.")]


def test_every_passkey_endpoint_is_guarded(config: dict[str, Any]) -> None:
    """Z06: with deny-by-default on, no passkey endpoint is left without a guard."""
    config["AAA_DENY_BY_DEFAULT"] = True
    app = build_app(config)
    endpoints = [e for e in app.view_functions if e.startswith("aaa_passkeys.")]
    assert len(endpoints) == 9
    assert not [e for e in unguarded_endpoints(app) if e.startswith("aaa_passkeys.")]


def settings_for(**values: Any) -> Settings:
    config = {f"AAA_{k.upper()}": v for k, v in values.items()}
    return Settings.from_config(
        {"AAA_PASSWORD_HASH_PRESET": "fast", **config}, debug=False, testing=True
    )


def test_relying_party_defaults_come_from_the_base_url() -> None:
    settings = settings_for(passkeys=True, base_url="https://app.example.org/sub/")
    assert settings.passkey_rp_id == "app.example.org"
    assert settings.passkey_origin == "https://app.example.org"
    settings = settings_for(
        passkeys=True, passkey_rp_id="example.org", passkey_origin="https://app.example.org:8443/"
    )
    assert settings.passkey_origin == "https://app.example.org:8443"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "AAA_BASE_URL, or AAA_PASSKEY_RP_ID"),
        ({"base_url": "http://127.0.0.1:5000"}, "not an IP address"),
        ({"passkey_rp_id": "example.org", "passkey_origin": "http://example.org"}, "https://"),
        ({"passkey_rp_id": "example.org", "passkey_origin": "https://evil.org"}, "parent domain"),
        (
            {"passkey_rp_id": "https://example.org", "passkey_origin": "https://example.org"},
            "domain",
        ),
        ({"passkey_rp_id": "example.org", "passkey_origin": "https://example.org/app"}, "https://"),
    ],
    ids=["nothing", "ip-address", "plain-http", "other-domain", "rp-id-url", "origin-path"],
)
def test_passkeys_refuse_to_start_without_a_sound_relying_party(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        settings_for(passkeys=True, **values)


def test_passkeys_refuse_to_start_without_the_webauthn_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "webauthn" else real(name, *a)
    )
    with pytest.raises(ConfigurationError, match=r"pip install flask-aaa\[passkeys\]"):
        settings_for(passkeys=True, base_url="https://example.org")
    # Off, the package is not needed.
    assert settings_for(base_url="https://example.org").passkeys is False
