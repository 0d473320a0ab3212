"""Ceremony challenges (OAuth state, WebAuthn challenge): single use, bound to one browser,
short-lived, stored as a digest only (O01)."""

from __future__ import annotations

import datetime as dt

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select

from flask_aaa.db import writing
from flask_aaa.errors import InvalidToken
from flask_aaa.models import Challenge
from flask_aaa.services import challenges
from tests.conftest import dump_database

BROWSER = "browser-id-1"


def begin(session, **kwargs):
    options = {"kind": "oidc", "purpose": "login", "browser": BROWSER, "ttl": 600}
    options.update(kwargs)
    with writing():
        value = challenges.begin(session, **options)
        session.commit()
    return value


def consume(session, value, browser=BROWSER, kind="oidc"):
    with writing():
        try:
            return challenges.consume(session, kind=kind, value=value, browser=browser)
        finally:
            session.commit()


def reason(session, value, **kwargs) -> str:
    with pytest.raises(InvalidToken) as caught:
        consume(session, value, **kwargs)
    return caught.value.reason


def test_a_challenge_returns_its_data_once(session):
    value = begin(session, data={"nonce": "n-1", "verifier": "v-1"}, purpose="link")
    taken = consume(session, value)
    assert (taken.purpose, dict(taken.data)) == ("link", {"nonce": "n-1", "verifier": "v-1"})


def test_o01_a_replayed_value_is_refused(session):
    value = begin(session)
    consume(session, value)
    assert reason(session, value) == "replayed"


def test_o01_a_value_from_another_browser_is_refused_and_stays_usable(session):
    value = begin(session)
    assert reason(session, value, browser="someone-else") == "other_browser"
    consume(session, value)  # the owner can still finish


@pytest.mark.parametrize("value", [None, "", "x" * 600, "never-issued"])
def test_o01_missing_or_unknown_values_are_refused(session, value):
    assert reason(session, value) in {"missing", "unknown"}


def test_a_value_of_another_kind_is_refused(session):
    value = begin(session, kind="webauthn")
    assert reason(session, value, kind="oidc") == "unknown"


def test_an_expired_value_is_refused(session):
    with freeze_time(dt.datetime(2030, 1, 1, tzinfo=dt.UTC)) as clock:
        value = begin(session, ttl=60)
        clock.tick(61)
        assert reason(session, value) == "expired"


def test_the_private_data_is_erased_when_used_and_the_value_never_stored(session, engine):
    value = begin(session, data={"verifier": "pkce-verifier-secret"})
    assert "pkce-verifier-secret" in dump_database(engine)
    consume(session, value)
    dump = dump_database(engine)
    assert "pkce-verifier-secret" not in dump
    assert value not in dump
    assert BROWSER not in dump


def test_expired_challenges_are_swept_when_new_ones_begin(session):
    with freeze_time(dt.datetime(2030, 1, 1, tzinfo=dt.UTC)) as clock:
        begin(session, ttl=60)
        clock.tick(120)
        begin(session, ttl=60)
    assert session.scalar(select(func.count()).select_from(Challenge)) == 1


def test_a_challenge_needs_a_browser(session):
    with pytest.raises(ValueError, match="browser"):
        begin(session, browser="")
