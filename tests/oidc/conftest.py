"""Fixtures of the third-party sign-in tests: the development provider (real Authlib server
classes) and the test's own hostile provider, each in a thread on 127.0.0.1, and an app
configured for them. The app's test client talks to them over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask.testing import FlaskClient

from flask_aaa.devidp import DevClient, DevIdP
from flask_aaa.services import oidc
from tests.conftest import post

from .fakes import FakeGitHub, FakeOP

CLIENT_ID = "flask-aaa-tests"
CLIENT_SECRET = "client-secret-never-stored-9f3a"
#: Where providers send the browser back (AAA_BASE_URL falls back to http://localhost).
CALLBACK = "http://localhost/auth/oidc/{}/callback"


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    oidc.clear_caches()
    yield
    oidc.clear_caches()


@pytest.fixture
def devidp() -> Iterator[DevIdP]:
    server = DevIdP(
        clients=[DevClient(CLIENT_ID, CLIENT_SECRET, (CALLBACK.format("dev"),))], allow=True
    ).start()
    yield server
    server.stop()


@pytest.fixture
def fake_op() -> Iterator[FakeOP]:
    server = FakeOP(CLIENT_ID, CLIENT_SECRET)
    yield server
    server.stop()


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    server = FakeGitHub(CLIENT_ID, CLIENT_SECRET)
    yield server
    server.stop()


@pytest.fixture
def config(config: dict[str, Any], devidp: DevIdP, fake_op: FakeOP) -> dict[str, Any]:
    """The app knows the development provider (``dev``) and the hostile one (``fake``)."""
    config["AAA_OIDC_PROVIDERS"] = {
        "dev": {
            "issuer": devidp.issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "label": "Dev IdP",
        },
        "fake": {
            "issuer": fake_op.issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "label": "Fake",
            "algorithms": ["RS256"],
        },
    }
    config["AAA_OIDC_REGISTRATION"] = True
    return config


def start(client: FlaskClient, provider: str = "dev", **query: str) -> str:
    """Begin a sign-in; return the provider's authorization URL."""
    response = post(client, f"/auth/oidc/{provider}", query)
    assert response.status_code == 303, response.get_data(as_text=True)
    return str(response.headers["Location"])


def approve(authorize_url: str, user: str = "1001") -> str:
    """At the provider: the fakes approve at once (302); the development provider shows its
    form, and ``user`` is picked. Returns the callback's path and query."""
    answer = requests.get(authorize_url, allow_redirects=False, timeout=5)
    if answer.status_code == 200:
        answer = requests.post(authorize_url, data={"user": user}, allow_redirects=False, timeout=5)
    assert answer.status_code == 302, answer.text
    location = urlsplit(answer.headers["Location"])
    return f"{location.path}?{location.query}"


def sign_in(client: FlaskClient, provider: str = "dev", user: str = "1001", **query: str) -> Any:
    """The whole browser round trip; returns the app's answer to the callback."""
    return client.get(approve(start(client, provider, **query), user))


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
