"""The security cases of third-party sign-in (O01-O07), each named by its id."""

from __future__ import annotations

import json
import time

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import select

from flask_aaa.models import AuditEvent, Challenge, ExternalIdentity, User
from flask_aaa.services import oidc
from flask_aaa.services.oidc import s256
from tests.conftest import dump_database, fresh, post, post_json

from .conftest import CLIENT_ID, CLIENT_SECRET, approve, query_of, sign_in, start
from .fakes import RawServer, http_answer, sign_raw, unsigned

JSON = {"Accept": "application/json"}


def failures(db):
    rows = fresh(db).scalars(select(AuditEvent).where(AuditEvent.action == "auth.oidc.failed"))
    return [json.loads(e.details)["reason"] for e in rows]


def nobody_signed_in(client, db):
    assert client.get("/private", headers=JSON).status_code == 401
    assert fresh(db).scalar(select(User.id)) is None
    assert db.scalar(select(ExternalIdentity.id)) is None


# -- O01: state --


def test_O01_missing_state_is_400_and_signs_nobody_in(client, db):
    callback = approve(start(client, "fake"))
    response = client.get(callback.replace("state=", "x="), headers=JSON)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_token"
    nobody_signed_in(client, db)
    assert failures(db) == ["missing"]


def test_O01_state_from_another_browser_is_400(app, db):
    victim, attacker = app.test_client(), app.test_client()
    start(victim, "fake")  # the victim's browser has begun a sign-in of its own
    callback = approve(start(attacker, "fake"))
    assert victim.get(callback, headers=JSON).status_code == 400
    nobody_signed_in(victim, db)
    assert failures(db) == ["other_browser"]


def test_O01_replayed_state_is_400(client, db):
    callback = approve(start(client, "fake"))
    assert client.get(callback).status_code == 303
    post(client, "/auth/logout")
    start(client, "fake")  # a browser id again (a sign-in clears it)
    assert client.get(callback, headers=JSON).status_code == 400
    assert client.get("/private", headers=JSON).status_code == 401
    assert failures(db) == ["replayed"]


def test_O01_link_with_a_state_from_another_session_links_nothing(app, db, make_user, devidp):
    from .test_linking import fresh_login, start_link

    make_user("alice")
    make_user("bob")
    alice, bob = app.test_client(), app.test_client()
    fresh_login(alice, "alice")
    fresh_login(bob, "bob")
    callback = approve(start_link(alice))
    assert bob.get(callback, headers=JSON).status_code == 400
    assert fresh(db).scalar(select(ExternalIdentity.id)) is None


# -- O02: nonce --


@pytest.mark.parametrize(
    ("patch", "reason"),
    [({"nonce": None}, "id_token_wrong_nonce"), ({"nonce": "not-the-one"}, "id_token_wrong_nonce")],
)
def test_O02_missing_or_wrong_nonce_is_rejected(client, db, fake_op, patch, reason):
    fake_op.claims_patch = patch
    response = sign_in(client, "fake")
    assert response.status_code == 400
    nobody_signed_in(client, db)
    assert failures(db) == [reason]


def test_O02_id_token_of_an_earlier_sign_in_is_rejected(client, db, fake_op):
    first_nonce = query_of(start(client, "fake"))["nonce"]
    replayed = fake_op.sign(fake_op.claims(first_nonce))
    fake_op.forge = lambda claims: replayed
    assert sign_in(client, "fake").status_code == 400
    nobody_signed_in(client, db)
    assert failures(db) == ["id_token_wrong_nonce"]


# -- O03: forged or wrong ID tokens, keys unavailable --


def forge_none(op):
    return lambda claims: unsigned({"alg": "none"}, claims)


def forge_hs256_with_public_key(op):
    header = {"alg": "HS256", "kid": op.key.kid}
    return lambda claims: sign_raw(header, claims, op.public_pem(), "HS256")


def forge_crit(op):
    header = {"alg": "RS256", "kid": op.key.kid, "crit": ["urn:example:policy"]}
    return lambda claims: sign_raw(header, claims, op.raw_private_key(), "RS256")


def forge_other_key(op):
    other = RSAKey.generate_key(2048, auto_kid=True)
    return lambda claims: jwt.encode({"alg": "RS256", "kid": op.key.kid}, claims, other)


def forge_ps256(op):
    # A real signature by the provider's key, with an algorithm this provider is not
    # allowed (its list is pinned to RS256).
    header = {"alg": "PS256", "kid": op.key.kid}
    return lambda claims: jwt.encode(header, claims, op.key, algorithms=["PS256"])


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (forge_none, "id_token_alg_refused"),
        (lambda op: lambda claims: unsigned({"alg": "RS256"}, claims), "id_token_unsigned"),
        (forge_hs256_with_public_key, "id_token_alg_refused"),
        (forge_crit, "id_token_crit_refused"),
        (forge_other_key, "id_token_bad_signature"),
        (forge_ps256, "id_token_alg_refused"),
    ],
)
def test_O03_forged_id_token_is_rejected(client, db, fake_op, forge, reason):
    fake_op.forge = forge(fake_op)
    response = sign_in(client, "fake")
    assert response.status_code == 400
    nobody_signed_in(client, db)
    assert failures(db) == [reason]


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"iss": "https://evil.example"}, "id_token_wrong_issuer"),
        ({"aud": "someone-else"}, "id_token_wrong_audience"),
        ({"aud": [CLIENT_ID, "someone-else"]}, "id_token_wrong_azp"),
        ({"azp": "someone-else"}, "id_token_wrong_azp"),
        ({"exp": int(time.time()) - 3600}, "id_token_expired"),
        ({"iat": int(time.time()) + 3600}, "id_token_not_yet_valid"),
        ({"nbf": int(time.time()) + 3600}, "id_token_not_yet_valid"),
        ({"exp": "tomorrow"}, "id_token_bad_times"),
        ({"sub": ""}, "id_token_bad_subject"),
    ],
)
def test_O03_wrong_claims_are_rejected(client, db, fake_op, patch, reason):
    fake_op.claims_patch = patch
    assert sign_in(client, "fake").status_code == 400
    nobody_signed_in(client, db)
    assert failures(db) == [reason]


def test_O03_several_audiences_with_our_azp_are_accepted(client, fake_op):
    fake_op.claims_patch = {"aud": [CLIENT_ID, "other"], "azp": CLIENT_ID}
    assert sign_in(client, "fake").status_code == 303


def test_O03_keys_unavailable_fails_closed_with_503(client, db, fake_op):
    fake_op.down = {"jwks"}
    response = client.get(approve(start(client, "fake")), headers=JSON)
    assert response.status_code == 503
    assert response.get_json()["error"] == "provider_unavailable"
    assert response.headers["Retry-After"]
    nobody_signed_in(client, db)
    assert failures(db) == ["jwks_http_500"]


def test_O03_provider_down_at_start_fails_closed(client, db, fake_op):
    fake_op.stop()
    response = post_json(client, "/auth/oidc/fake", headers=JSON)
    assert response.status_code == 503
    assert fresh(db).scalar(select(Challenge.id)) is None
    assert failures(db) == ["unreachable:ConnectionError"]


def test_O03_token_endpoint_down_fails_closed(client, db, fake_op):
    fake_op.down = {"token"}
    assert client.get(approve(start(client, "fake")), headers=JSON).status_code == 503
    nobody_signed_in(client, db)


def test_O03_discovery_naming_another_issuer_is_refused(client, fake_op):
    fake_op.discovery_issuer = "https://accounts.example"
    assert post_json(client, "/auth/oidc/fake", headers=JSON).status_code == 503


def test_O03_rotated_key_is_fetched_once_more(client, fake_op):
    assert sign_in(client, "fake").status_code == 303
    fake_op.key = RSAKey.generate_key(2048, parameters={"use": "sig"}, auto_kid=True)
    other = fake_op.__class__.__new__(fake_op.__class__)  # noqa: F841 (only the key changes)
    fresh_client = client.application.test_client()
    assert sign_in(fresh_client, "fake").status_code == 303


# -- O04: oversized answers --


@pytest.mark.parametrize("chunked", [False, True])
def test_O04_one_megabyte_id_token_is_refused_fast_with_bounded_memory(
    client, db, fake_op, chunked, monkeypatch
):
    """Memory is bounded by what is read: with a length the answer is refused from its
    header before any of it is read; without one, reading stops past 64 KiB. (Counting the
    bytes read is exact; a process-wide allocation peak would also count other threads.)"""
    read: list[int] = []
    original = requests.models.Response.iter_content

    def counting(self, *args, **kwargs):
        for chunk in original(self, *args, **kwargs):
            read.append(len(chunk))
            yield chunk

    monkeypatch.setattr(requests.models.Response, "iter_content", counting)
    body = json.dumps({"access_token": "a", "token_type": "Bearer", "id_token": "e" * 2**20})
    token_server = RawServer(http_answer(body.encode(), chunked=chunked))
    fake_op.token_endpoint = token_server.url + "/token"
    callback = approve(start(client, "fake"))
    read.clear()
    began = time.monotonic()
    response = client.get(callback, headers=JSON)
    elapsed = time.monotonic() - began
    token_server.stop()
    assert response.status_code == 400
    assert elapsed < 2
    assert sum(read) <= oidc.MAX_RESPONSE_BYTES + 16 * 1024
    if not chunked:
        assert sum(read) == 0
    nobody_signed_in(client, db)
    assert failures(db) == ["response_too_large"]


# -- O05: no linking by email --


def test_O05_unverified_address_of_an_existing_user_links_nothing(client, db, make_user):
    alice = make_user("alice", email="alice@example.org")
    # The development provider's "mallory" claims alice's address, unverified.
    assert sign_in(client, "dev", user="1003").status_code == 303
    assert client.get("/private").get_json() == {"user": "mallory"}
    identity = fresh(db).scalar(select(ExternalIdentity))
    assert identity.user_id != alice.id
    mallory = db.get(User, identity.user_id)
    assert mallory.email is None


def test_O05_verified_address_of_an_existing_user_links_nothing(client, db, make_user, fake_op):
    make_user("alice", email="alice@example.org")
    fake_op.email = "alice@example.org"
    response = sign_in(client, "fake")
    assert response.status_code == 409
    assert "Sign in to that account" in response.get_data(as_text=True)
    assert fresh(db).scalar(select(ExternalIdentity.id)) is None
    assert client.get("/private", headers=JSON).status_code == 401
    assert failures(db) == ["email_in_use"]


def test_O05_untrusted_provider_address_is_not_recorded(config, request, fake_op):
    config["AAA_OIDC_PROVIDERS"]["fake"]["trusted_email"] = False
    app = request.getfixturevalue("app")
    db = request.getfixturevalue("db")
    fake_op.email = "new@example.org"
    assert sign_in(app.test_client(), "fake").status_code == 303
    user = fresh(db).scalar(select(User))
    assert user.email is None and user.username == "someone"


def test_O05_string_true_is_not_a_verified_address(client, db, fake_op):
    fake_op.email, fake_op.email_verified = "new@example.org", "true"
    assert sign_in(client, "fake").status_code == 303
    assert fresh(db).scalar(select(User)).email is None


def test_O05_identity_is_keyed_by_issuer_and_subject(client, db, fake_op):
    sign_in(client, "fake")
    fake_op.email = "changed@example.org"
    other = client.application.test_client()
    assert sign_in(other, "fake").status_code == 303
    assert len(list(fresh(db).scalars(select(User)))) == 1
    fake_op.sub = "user-2"
    fake_op.email = "third@example.org"
    third = client.application.test_client()
    assert sign_in(third, "fake").status_code == 303
    assert len(list(fresh(db).scalars(select(User)))) == 2


# -- O07: PKCE --


def test_O07_authorize_url_uses_s256_and_the_stored_verifier(client, db):
    params = query_of(start(client, "dev"))
    assert params["code_challenge_method"] == "S256"
    assert params["response_type"] == "code" and params["nonce"]
    data = json.loads(fresh(db).scalar(select(Challenge.data)))
    assert params["code_challenge"] == s256(data["verifier"])
    assert len(data["verifier"]) >= 43


def test_O07_code_without_or_with_a_wrong_verifier_fails_at_the_provider(client, devidp):
    callback = approve(start(client, "dev"))
    code = query_of(callback)["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "http://localhost/auth/oidc/dev/callback",
    }
    auth = (CLIENT_ID, CLIENT_SECRET)
    without = requests.post(f"{devidp.issuer}/token", data=form, auth=auth, timeout=5)
    assert without.status_code == 400 and "id_token" not in without.text
    wrong = requests.post(
        f"{devidp.issuer}/token", data={**form, "code_verifier": "x" * 64}, auth=auth, timeout=5
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"


def test_O07_client_sends_the_verifier(client, fake_op):
    assert sign_in(client, "fake").status_code == 303
    (sent,) = fake_op.token_requests
    assert sent["code_verifier"] and "client_secret" not in sent  # secret in Basic auth


# -- no secret left behind --


def test_no_code_verifier_nonce_token_or_client_secret_is_stored(client, db, app, fake_op):
    authorize = start(client, "fake")
    data = json.loads(fresh(db).scalar(select(Challenge.data)))
    assert client.get(approve(authorize)).status_code == 303
    dump = dump_database(db.get_bind())
    secrets_seen = [
        *fake_op.issued,
        data["verifier"],
        data["nonce"],
        query_of(authorize)["state"],
        CLIENT_SECRET,
    ]
    assert len(fake_op.issued) >= 3
    for secret in secrets_seen:
        assert secret not in dump
