"""The GitHub preset against a local fake, provider configuration checks at start-up, and
deny-by-default over the new pages."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from flask_aaa.errors import ConfigurationError
from flask_aaa.extension import unguarded_endpoints
from flask_aaa.models import ExternalIdentity, User
from tests.conftest import build_app, fresh, post

from .conftest import CLIENT_ID, CLIENT_SECRET, sign_in

JSON = {"Accept": "application/json"}


@pytest.fixture
def github_app(config, fake_github, request):
    config["AAA_OIDC_PROVIDERS"]["github"] = {
        "preset": "github",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "authorize_url": f"{fake_github.url}/login/oauth/authorize",
        "token_url": f"{fake_github.url}/login/oauth/access_token",
        "userinfo_url": f"{fake_github.url}/user",
    }
    return request.getfixturevalue("app")


def test_github_sign_in_keys_the_account_by_its_numeric_id(github_app, db):
    client = github_app.test_client()
    assert sign_in(client, "github").status_code == 303
    identity = fresh(db).scalar(select(ExternalIdentity))
    assert (identity.issuer, identity.subject) == ("https://github.com", "4242")
    user = db.get(User, identity.user_id)
    assert user.username == "octocat" and user.email == "octo@github.example"


def test_github_unverified_primary_address_is_not_recorded(github_app, db, fake_github):
    fake_github.emails = [{"email": "octo@github.example", "primary": True, "verified": False}]
    assert sign_in(github_app.test_client(), "github").status_code == 303
    assert fresh(db).scalar(select(User)).email is None


def test_github_user_endpoint_down_fails_closed(github_app, db, fake_github):
    fake_github.user_status = 502
    response = github_app.test_client()
    from .conftest import approve, start

    answer = response.get(approve(start(response, "github")), headers=JSON)
    assert answer.status_code == 503
    assert fresh(db).scalar(select(User.id)) is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"client_id": "x", "client_secret": "y"}, "issuer is required"),
        ({"issuer": "https://op.example", "client_secret": "y"}, "client_id is required"),
        (
            {"issuer": "https://op.example", "client_id": "x", "client_secret": "y", "scope": []},
            "unknown key",
        ),
        ({"issuer": "http://op.example", "client_id": "x", "client_secret": "y"}, "https://"),
        (
            {
                "issuer": "https://op.example",
                "client_id": "x",
                "client_secret": "y",
                "algorithms": ["HS256"],
            },
            "only narrow",
        ),
        (
            {
                "issuer": "https://op.example",
                "client_id": "x",
                "client_secret": "y",
                "scopes": ["email"],
            },
            "'openid'",
        ),
        ({"preset": "gitlab", "client_id": "x", "client_secret": "y"}, "preset"),
    ],
)
def test_bad_provider_entry_stops_the_start(config, entry, message):
    config["AAA_OIDC_PROVIDERS"] = {"bad": entry}
    with pytest.raises(ConfigurationError, match=message):
        build_app(config)


def test_registration_through_providers_needs_open_registration(config):
    config["AAA_ENABLE_REGISTRATION"] = False
    with pytest.raises(ConfigurationError, match="AAA_OIDC_REGISTRATION"):
        build_app(config)


def test_no_provider_no_pages(config):
    config.pop("AAA_OIDC_PROVIDERS")
    app = build_app(config)
    assert not any(name.startswith("aaa_oidc.") for name in app.view_functions)


def test_deny_by_default_guards_every_oidc_page(config, request):
    config["AAA_DENY_BY_DEFAULT"] = True
    app = request.getfixturevalue("app")
    assert unguarded_endpoints(app) == []
    client = app.test_client()
    assert post(client, "/auth/oidc/dev").status_code == 303  # public: off to the provider
    assert client.get("/account/identities", headers=JSON).status_code == 401
