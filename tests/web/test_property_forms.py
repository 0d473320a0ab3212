"""Property-based hostile input over every form endpoint of the library's own blueprints
(I01, I03, A14, Z03; issue 9).

Every POST/PUT/PATCH/DELETE rule of an ``aaa_*`` blueprint (the JSON API under
``/aaa/api/v1`` is fuzzed by schemathesis in ``tests/api/test_openapi_fuzz.py`` and is left
out here) gets hypothesis-generated bodies, sent by a signed-in administrator with a valid
CSRF token so the guards pass and the body is what is tested: form bodies (duplicate keys,
control characters, RTL and zero-width characters, raw bytes that are not UTF-8), JSON bodies
(any JSON value for any field, lone surrogates, non-object bodies) and values from a few
characters up to past the body limit.

The rule: never a 5xx; a 4xx for JSON clients is a JSON body with an ``error`` code; and a
4xx changes nothing (the row count of every table is the same before and after), apart from
the audit records some endpoints write for a failed check by design (see AUDITED_FAILURES).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from werkzeug.datastructures import MultiDict

from flask_aaa import Base
from flask_aaa.models import ApiToken, LoginSession
from tests.conftest import PASSWORD, csrf_token, fresh, login, post_json

API_BLUEPRINT = "aaa_api"
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}

#: Limits high enough that nothing here is throttled: a 429 would hide what is tested.
ROOMY_LIMITS = {
    "AAA_LOGIN_LIMIT_PER_IP": "100000 per minute",
    "AAA_LOGIN_LIMIT_PER_ACCOUNT": "100000 per minute",
    "AAA_REGISTER_LIMIT_PER_IP": "100000 per hour",
    "AAA_CHANGE_PASSWORD_LIMIT": "100000 per hour",
    "AAA_MAIL_LIMIT": "100000 per hour",
    "AAA_TOKEN_LIMIT_PER_IP": "100000 per minute",
}


@pytest.fixture
def config(config: dict[str, Any]) -> dict[str, Any]:
    config.update(ROOMY_LIMITS)
    return config


#: The fields each endpoint reads (from its view). An endpoint missing here fails
#: test_every_mutating_endpoint_is_covered, so a new endpoint cannot escape the fuzzing.
FIELDS: dict[str, tuple[str, ...]] = {
    "aaa_auth.login": ("login", "password", "next"),
    "aaa_auth.logout": (),
    "aaa_auth.change_password": ("current_password", "new_password", "confirm"),
    "aaa_auth.register": ("username", "email", "password", "confirm", "invite"),
    "aaa_recovery.forgot": ("email",),
    "aaa_recovery.reset": ("password", "confirm", "token"),
    "aaa_recovery.invite": ("email",),
    "aaa_recovery.change_email": ("email", "password"),
    "aaa_recovery.confirm_email_change": ("token",),
    "aaa_account.reauth": ("password", "next"),
    "aaa_account.revoke_session": (),
    "aaa_account.revoke_other_sessions": (),
    "aaa_account.mint_token": ("name", "expires_in_days", "extra_scopes", "scopes"),
    "aaa_account.revoke_token": (),
    "aaa_mfa.verify": ("code",),
    "aaa_mfa.enable": ("code",),
    "aaa_mfa.disable": ("password",),
    "aaa_mfa.recovery_codes": ("password",),
    "aaa_admin.audit_verify": (),
    "aaa_admin.create_role": ("name", "description", "parent"),
    "aaa_admin.delete_role": ("confirm",),
    "aaa_admin.add_parent": ("parent",),
    "aaa_admin.remove_parent": ("parent",),
    "aaa_admin.add_permission": ("permission",),
    "aaa_admin.remove_permission": ("permission",),
    "aaa_admin.create_service_account": ("name", "role"),
    "aaa_admin.revoke_token": (),
    "aaa_admin.create_user": ("username", "email", "password", "role"),
    "aaa_admin.set_active": ("active",),
    "aaa_admin.reset_mfa": (),
    "aaa_admin.grant_permission": ("permission",),
    "aaa_admin.revoke_permission": ("permission",),
    "aaa_admin.grant_role": ("role",),
    "aaa_admin.revoke_role": ("role",),
    "aaa_admin.revoke_session": (),
    "aaa_admin.revoke_sessions": (),
    "aaa_admin.mint_token": ("name", "scopes", "expires_in_days"),
    "aaa_admin.unlock": (),
    "aaa_impersonation.start": ("reason",),
    "aaa_impersonation.stop": (),
}

#: Endpoints whose 4xx may add audit events (and only audit events), by design: a failed
#: credential or code check is recorded apart from the refused change (A-cases on lockout
#: and brute force need that trail). Everything else must stay as it was.
AUDITED_FAILURES = {
    "aaa_auth.login": "a failed sign-in is audited (lockout, brute-force trail)",
    "aaa_auth.change_password": "a wrong current password is audited",
    "aaa_account.reauth": "a wrong password on re-authentication is audited",
    "aaa_mfa.disable": "a wrong password on disabling 2FA is audited",
    "aaa_mfa.recovery_codes": "a wrong password on new recovery codes is audited",
    "aaa_mfa.enable": "a wrong TOTP code is audited",
    "aaa_mfa.verify": "a wrong second-factor code is audited",
    "aaa_recovery.change_email": "a wrong password on changing the email is audited",
    "aaa_recovery.reset": "a bad reset link is audited (auth.reset.failed)",
    "aaa_recovery.confirm_email_change": "a bad confirm link is audited (user.email_change_failed)",
    "aaa_auth.register": "a refused registration is audited (user.registration_refused)",
}

#: Bugs this fuzzing found, fixed; each keeps a regression test below.
#: A JSON client whose token request failed validation got the HTML page, not a JSON error.
JSON_ERROR_FIXED = {"aaa_account.mint_token", "aaa_admin.mint_token"}
#: A bad form POST to the 2FA "on" page's forms by a user without 2FA answered 500.
FORM_500_FIXED = {"aaa_mfa.disable", "aaa_mfa.recovery_codes"}

#: Endpoints that may end or swap the client's own session even on valid input: each
#: example signs in afresh for them.
DISRUPTIVE = {
    "aaa_auth.logout",
    "aaa_auth.change_password",
    "aaa_impersonation.start",
    "aaa_impersonation.stop",
    "aaa_auth.login",
}


def fuzzed_rules(app: Flask) -> list[Any]:
    return sorted(
        (
            rule
            for rule in app.url_map.iter_rules()
            if rule.endpoint.startswith("aaa_")
            and not rule.endpoint.startswith(API_BLUEPRINT + ".")
            and (rule.methods or set()) & MUTATING
        ),
        key=lambda rule: (rule.endpoint, rule.rule),
    )


def _endpoints() -> list[str]:
    from tests.conftest import SECRET, build_app

    app = build_app(
        {
            "TESTING": True,
            "SECRET_KEY": SECRET,
            "SQLALCHEMY_DATABASE_URI": "sqlite://",
            "AAA_PASSWORD_HASH_PRESET": "fast",
            "AAA_RATELIMIT_STORAGE_URI": "memory://",
        }
    )
    return sorted({rule.endpoint for rule in fuzzed_rules(app)})


ENDPOINTS = _endpoints()


def test_every_mutating_endpoint_is_covered(app):
    found = {rule.endpoint for rule in fuzzed_rules(app)}
    assert found, "no endpoint found: the enumeration is broken"
    assert found <= set(FIELDS), f"give these endpoints their fields: {found - set(FIELDS)}"


# -- the world each example runs in --


class World:
    """The admin's signed-in client and the ids the URL parameters point at."""

    def __init__(self, app: Flask, db: Any, make_user: Any) -> None:
        self.app = app
        self.db = db
        make_user("root", roles=["admin"], perms={"admin": ["*"]})
        bob = make_user("bob", roles=["editor"], perms={"editor": ["notes:read"]})
        self.bob_id = bob.id
        bob_client = app.test_client()
        assert login(bob_client, "bob").status_code == 303
        self.bob_session_id = fresh(db).scalar(
            select(LoginSession.id).where(LoginSession.user_id == bob.id)
        )
        self.client = self.signed_in()
        # A service account with a token, so token ids point at something real.
        post_json(self.client, "/admin/service-accounts", {"name": "robot"})
        minted = post_json(
            self.client,
            f"/admin/users/{self.robot_id()}/tokens",
            {"name": "t", "scopes": "account:read"},
        )
        assert minted.status_code < 400, minted.get_data(as_text=True)[:300]
        self.token_id = fresh(db).scalar(select(func.max(ApiToken.id)))

    def robot_id(self) -> int:
        from flask_aaa import User

        return int(fresh(self.db).scalar(select(User.id).where(User.username == "robot")))

    def signed_in(self) -> FlaskClient:
        client = self.app.test_client()
        assert login(client, "root").status_code == 303
        return client

    def url(self, rule: Any) -> str:
        values = {
            # Tokens are minted for service accounts only; everything else targets bob.
            "user_id": self.robot_id() if rule.endpoint == "aaa_admin.mint_token" else self.bob_id,
            "session_id": self.bob_session_id or 1,
            "token_id": self.token_id or 1,
            "name": "editor",
        }
        return rule.build({k: values.get(k, 1) for k in rule.arguments}, append_unknown=False)[1]

    def counts(self) -> dict[str, int]:
        """The row count of every table the library owns."""
        db = fresh(self.db)
        return {
            table.name: int(db.scalar(select(func.count()).select_from(table)))
            for table in Base.metadata.sorted_tables
        }


@pytest.fixture
def world(app: Flask, db: Any, make_user: Any) -> World:
    return World(app, db, make_user)


# -- strategies --

#: Text with everything a transport can carry: control characters, RTL and zero-width marks,
#: combining characters, NUL; lone surrogates only where JSON can carry them.
TRICKY = [
    "\x00",
    "\r\n",
    "\u202e",  # right-to-left override
    "\u200b",  # zero-width space
    "\u200d",
    "\ufeff",
    "\u2028",
    "\x1b[31m",
    "e\u0301",
    "\U0001f600",
    "../",
    "%00",
    "<script>",
    "' OR 1=1 --",
]
#: Plausible values, so valid paths are reached too (a 2xx is fine when the input is valid).
PLAUSIBLE = [
    "",
    " ",
    "1",
    "0",
    "on",
    "true",
    "editor",
    "bob",
    "bob@example.org",
    "notes:read",
    "/private",
    "//evil.example",
    PASSWORD,
    "30",
    "-1",
    "99999999999999999999",
]


def texts(surrogates: bool) -> st.SearchStrategy[str]:
    chars = st.characters(
        blacklist_categories=() if surrogates else ("Cs",),
    )
    base = st.text(alphabet=chars, max_size=40)
    tricky = st.lists(st.sampled_from(TRICKY) | base, max_size=6).map("".join)
    # Long values: just under and over the per-field limit (4096) and the body limit (64 KiB).
    huge = st.builds(
        lambda c, n: c * n,
        st.sampled_from(["a", "\u00e9", "\U0001f600", "\x00", "\u202e"]),
        st.sampled_from([4095, 4097, 20000, 70000]),
    )
    return st.one_of(st.sampled_from(PLAUSIBLE), base, tricky, huge)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), texts(True)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def bodies(fields: tuple[str, ...]) -> st.SearchStrategy[tuple[str, Any]]:
    no_surrogates = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
    form_names = st.one_of(
        *([st.sampled_from(fields)] * 2 if fields else []),
        no_surrogates,
        st.sampled_from(["id", "roles", "active", "password_hash"]),
    )
    # Form bodies: a list of pairs, so a key may come twice (duplicate keys).
    form = st.lists(st.tuples(form_names, texts(False)), max_size=6).map(
        lambda pairs: ("form", pairs)
    )
    # Raw urlencoded bytes: percent-escapes that are not UTF-8, bare '%', stray '&' and '='.
    raw = st.lists(st.tuples(form_names, st.binary(max_size=30)), max_size=4).map(
        lambda pairs: ("raw", "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs) + "&%zz=%")
    )
    json_names = st.one_of(
        *([st.sampled_from(fields)] * 2 if fields else []),
        st.text(max_size=20),
        st.sampled_from(["id", "roles", "active", "password_hash"]),
    )
    obj = st.dictionaries(json_names, st.one_of(texts(True), json_values), max_size=6).map(
        lambda body: ("json", body)
    )
    not_object = json_values.filter(lambda v: not isinstance(v, dict)).map(
        lambda body: ("json", body)
    )
    return st.one_of(form, form, raw, obj, obj, not_object)


def send(client: FlaskClient, url: str, kind: str, body: Any) -> Any:
    token = csrf_token(client)
    if kind == "form":
        data = MultiDict([*body, ("csrf_token", token)])
        return client.post(url, data=data)
    if kind == "raw":
        return client.post(
            url,
            data=f"csrf_token={quote(token)}&{body}",
            content_type="application/x-www-form-urlencoded",
        )
    return client.post(
        url,
        data=json.dumps(body),  # ensure_ascii: lone surrogates travel as \udXXX escapes
        content_type="application/json",
        headers={"X-CSRFToken": token, "Accept": "application/json"},
    )


def check(
    endpoint: str, kind: str, response: Any, before: dict[str, int], after: dict[str, int]
) -> None:
    status = response.status_code
    text = response.get_data(as_text=True)[:300]
    assert status < 500, (endpoint, kind, status, text)
    assert status != 429, "raise the limits in ROOMY_LIMITS"
    assert 200 <= status < 500, (endpoint, kind, status)
    if 400 <= status < 500:
        if kind == "json":
            assert response.mimetype == "application/json", (endpoint, status, text)
            error = response.get_json().get("error")
            assert isinstance(error, str) and error, (endpoint, status, text)
        changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        if endpoint in AUDITED_FAILURES:
            changed.pop("aaa_audit_events", None)
            changed.pop("aaa_audit_head", None)
        assert not changed, (endpoint, kind, status, text, changed)


FUZZ = settings(
    max_examples=25,
    deadline=None,
    database=None,  # write no example database into the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_I01_A14_property_hostile_bodies_never_fail_nor_change_state(app, world, endpoint):
    rule = next(rule for rule in fuzzed_rules(app) if rule.endpoint == endpoint)
    url = world.url(rule)
    fields = FIELDS[endpoint]

    @FUZZ
    @given(sent=bodies(fields))
    def run(sent: tuple[str, Any]) -> None:
        kind, body = sent
        client = world.signed_in() if endpoint in DISRUPTIVE else world.client
        before = world.counts()
        response = send(client, url, kind, body)
        check(endpoint, kind, response, before, world.counts())

    run()


# -- the bugs the fuzzing found, fixed: their regression tests --


@pytest.mark.parametrize("endpoint", sorted(JSON_ERROR_FIXED))
def test_I01_token_mint_refusal_is_a_json_error_for_json_clients(app, world, endpoint):
    rule = next(rule for rule in fuzzed_rules(app) if rule.endpoint == endpoint)
    before = world.counts()
    response = send(world.client, world.url(rule), "json", {"name": "x", "expires_in_days": "soon"})
    assert response.status_code == 400
    assert world.counts() == before
    assert response.mimetype == "application/json"
    assert response.get_json()["error"] == "invalid_input"


@pytest.mark.parametrize("endpoint", sorted(FORM_500_FIXED))
def test_I01_A14_mfa_form_without_password_is_a_4xx(app, world, endpoint):
    rule = next(rule for rule in fuzzed_rules(app) if rule.endpoint == endpoint)
    before = world.counts()
    response = send(world.client, world.url(rule), "form", [])
    assert 400 <= response.status_code < 500
    assert world.counts() == before
