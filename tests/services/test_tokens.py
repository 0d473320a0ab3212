"""Personal access tokens, as a service: format, minting rules (T02), storage (T01), the
checks made at each use (T03)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from flask_aaa.db import writing
from flask_aaa.errors import Conflict, InvalidInput, PermissionDenied, TokenRejected
from flask_aaa.models import ApiToken, AuditEvent
from flask_aaa.services import accounts, rbac, tokens
from flask_aaa.services.actors import Actor, RequestFacts
from tests.conftest import PASSWORD, SYSTEM, dump_database, ensure_role

FACTS = RequestFacts(ip="203.0.113.7", user_agent="pytest")
PREFIX = "aaa_pat_"


@pytest.fixture
def people(session, settings, passwords):
    """alice (reader: notes:read), root (admin: *), a service account 'ci-bot' (reader)."""
    with writing():
        reader = ensure_role(session, "reader", ["notes:read"])
        admin = ensure_role(session, "admin", ["*"])
        made = {}
        for name, role in (("alice", reader), ("root", admin)):
            made[name] = accounts.create_user(
                session,
                actor=SYSTEM,
                settings=settings,
                passwords=passwords,
                username=name,
                email=f"{name}@example.org",
                password=PASSWORD,
                roles=[role],
            )
        made["bot"] = accounts.create_service_account(
            session, actor=SYSTEM, name="ci-bot", roles=[reader]
        )
        session.commit()
    return made


def mint(session, settings, owner, scopes, *, actor=None, days=None, name="laptop"):
    with writing():
        minted = tokens.mint(
            session,
            owner,
            actor=actor or Actor.of(owner),
            name=name,
            scopes=scopes,
            days=days,
            settings=settings,
            facts=FACTS,
        )
        session.commit()
    return minted


def authenticate(session, settings, value):
    session.rollback()
    session.expire_all()
    with writing():
        return tokens.authenticate(session, value, settings=settings, facts=FACTS)


def as_token_actor(session, owner, scopes) -> Actor:
    """The actor of a request made with a token carrying ``scopes``."""
    owner._aaa_grants = tokens.ScopedGrants(rbac.load_grants(session, owner.id), scopes)
    return Actor.of(owner)


# -- the format --


def test_tokens_have_the_prefix_the_length_and_a_valid_checksum():
    value = tokens.generate(PREFIX)
    assert re.fullmatch(tokens.pattern(PREFIX), value)
    assert tokens.well_formed(PREFIX, value)
    assert len({tokens.generate(PREFIX) for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    "mangle",
    [
        lambda v: v[:-1] + ("A" if v[-1] != "A" else "B"),  # checksum off by one character
        lambda v: v[: len(PREFIX)] + ("x" if v[len(PREFIX)] != "x" else "y") + v[9:],  # body
        lambda v: "ghp_" + v[len(PREFIX) :],  # another prefix
        lambda v: v + "0",  # too long
        lambda v: v[:-1],  # too short
        lambda v: v[:-2] + "_!",  # outside the alphabet
    ],
)
def test_t01_a_mangled_token_is_refused_before_any_query(mangle, settings, session):
    value = mangle(tokens.generate(PREFIX))
    assert not tokens.well_formed(PREFIX, value)
    with pytest.raises(TokenRejected) as caught:
        tokens.authenticate(session, value, settings=settings, facts=FACTS)
    assert caught.value.reason == "malformed"


# -- minting --


def test_t01_only_the_digest_is_stored_and_the_secret_is_shown_once(
    session, settings, engine, people
):
    minted = mint(session, settings, people["alice"], ["notes:read"])
    dump = dump_database(engine)
    assert minted.secret not in dump
    assert minted.secret[len(PREFIX) :] not in dump
    assert minted.token.token_hash in dump
    assert minted.token.hint == minted.secret[: len(PREFIX) + 4]
    event = session.scalars(select(AuditEvent).where(AuditEvent.action == "token.created")).one()
    assert minted.secret not in event.details
    assert "notes:read" in event.details


def test_a_token_lives_the_default_or_the_chosen_number_of_days(session, settings, people):
    with freeze_time("2030-01-01"):
        default = mint(session, settings, people["alice"], ["notes:read"])
        chosen = mint(session, settings, people["alice"], ["notes:read"], days=7, name="ci")
    start = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert default.token.expires_at == start + dt.timedelta(days=settings.token_default_days)
    assert chosen.token.expires_at == start + dt.timedelta(days=7)


@pytest.mark.parametrize("days", [0, -1, 10_000, "x", True, 1.5])
def test_a_lifetime_outside_the_bounds_is_refused(session, settings, people, days):
    with pytest.raises(InvalidInput) as caught:
        mint(session, settings, people["alice"], ["notes:read"], days=days)
    assert "expires_in_days" in caught.value.errors


@pytest.mark.parametrize(
    ("scopes", "field"),
    [([], "scopes"), (["Not A Permission"], "scopes"), ([1], "scopes"), (["a:b"] * 0, "scopes")],
)
def test_bad_scopes_are_refused(session, settings, people, scopes, field):
    with pytest.raises(InvalidInput) as caught:
        mint(session, settings, people["alice"], scopes)
    assert field in caught.value.errors


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "bad\x00name", 42])
def test_bad_names_are_refused(session, settings, people, name):
    with pytest.raises(InvalidInput):
        mint(session, settings, people["alice"], ["notes:read"], name=name)


def test_too_many_scopes_are_refused(session, settings, people):
    many = [f"notes:s{i}" for i in range(tokens.MAX_SCOPES + 1)]
    with pytest.raises(InvalidInput):
        mint(session, settings, people["root"], many)


def test_t02_a_user_cannot_mint_a_scope_they_do_not_hold(session, settings, people):
    with pytest.raises(PermissionDenied):
        mint(session, settings, people["alice"], ["notes:read", "notes:write"])
    with pytest.raises(PermissionDenied):
        mint(session, settings, people["alice"], ["notes:*"])  # wider than notes:read
    session.rollback()
    assert session.scalars(select(ApiToken)).all() == []
    denied = session.scalars(select(AuditEvent).where(AuditEvent.outcome == "denied")).all()
    assert [e.action for e in denied] == ["authz.denied", "authz.denied"]


def test_every_user_may_mint_the_self_service_scopes(session, settings, people):
    minted = mint(session, settings, people["alice"], ["account:read", "account:write"])
    assert minted.token.scope_list == ["account:read", "account:write"]


def test_t02_a_token_cannot_mint_a_wider_token(session, settings, people):
    alice = people["alice"]
    actor = as_token_actor(session, alice, ["account:write", "account:read"])
    with pytest.raises(PermissionDenied):
        mint(session, settings, alice, ["notes:read"], actor=actor)
    # Within its own scopes it may.
    child = mint(session, settings, alice, ["account:read"], actor=actor)
    assert child.token.scope_list == ["account:read"]


def test_t02_a_token_without_the_self_scope_cannot_hand_it_on(session, settings, people):
    alice = people["alice"]
    actor = as_token_actor(session, alice, ["notes:read"])
    with pytest.raises(PermissionDenied):
        mint(session, settings, alice, ["account:write"], actor=actor)


def test_an_admin_mints_for_a_service_account_within_its_roles(session, settings, people):
    bot, root = people["bot"], people["root"]
    minted = mint(session, settings, bot, ["notes:read"], actor=Actor.of(root), name="deploy")
    assert minted.token.user_id == bot.id
    assert minted.token.created_by == root.id
    with pytest.raises(InvalidInput) as caught:
        mint(session, settings, bot, ["notes:write"], actor=Actor.of(root))
    assert "does not hold" in caught.value.errors["scopes"]


def test_a_plain_user_cannot_mint_for_someone_else(session, settings, people):
    with pytest.raises(PermissionDenied):
        mint(session, settings, people["bot"], ["notes:read"], actor=Actor.of(people["alice"]))


def test_the_number_of_live_tokens_per_user_is_bounded(session, settings, people):
    import dataclasses

    small = dataclasses.replace(settings, token_limit_per_user=2)
    mint(session, small, people["alice"], ["notes:read"], name="a")
    second = mint(session, small, people["alice"], ["notes:read"], name="b")
    with pytest.raises(Conflict):
        mint(session, small, people["alice"], ["notes:read"], name="c")
    with writing():
        tokens.revoke(session, second.token, actor=Actor.of(people["alice"]), facts=FACTS)
        session.commit()
    mint(session, small, people["alice"], ["notes:read"], name="c")


def test_service_accounts_cannot_sign_in_with_a_password(session, settings, passwords, people):
    from flask_aaa.errors import AuthenticationFailed

    with writing(), pytest.raises(AuthenticationFailed):
        accounts.sign_in(
            session,
            settings=settings,
            passwords=passwords,
            login="ci-bot",
            password=PASSWORD,
            facts=FACTS,
        )
    assert people["bot"].password_hash is None


# -- use --


def test_a_live_token_authenticates_its_owner(session, settings, people):
    minted = mint(session, settings, people["alice"], ["notes:read"])
    found = authenticate(session, settings, minted.secret)
    assert found.user.id == people["alice"].id
    assert found.token.id == minted.token.id


def test_t03_revoked_expired_and_disabled_owner_tokens_are_refused_and_audited(
    session, settings, people
):
    alice = people["alice"]
    revoked = mint(session, settings, alice, ["notes:read"], name="r")
    with writing():
        assert tokens.revoke(session, revoked.token, actor=Actor.of(alice), facts=FACTS)
        session.commit()
    with pytest.raises(TokenRejected) as caught:
        authenticate(session, settings, revoked.secret)
    assert caught.value.reason == "revoked"

    with freeze_time("2030-01-01") as clock:
        short = mint(session, settings, alice, ["notes:read"], days=1, name="s")
        clock.tick(dt.timedelta(days=1, seconds=1))
        with pytest.raises(TokenRejected) as caught:
            authenticate(session, settings, short.secret)
    assert caught.value.reason == "expired"

    bot_token = mint(
        session, settings, people["bot"], ["notes:read"], actor=Actor.of(people["root"])
    )
    with writing():
        people["bot"].active = False
        session.commit()
    with pytest.raises(TokenRejected) as caught:
        authenticate(session, settings, bot_token.secret)
    assert caught.value.reason == "owner_disabled"

    session.rollback()
    rejected = session.scalars(
        select(AuditEvent).where(AuditEvent.action == "token.rejected").order_by(AuditEvent.seq)
    ).all()
    assert [e.outcome for e in rejected] == ["denied"] * 3
    assert all(revoked.secret not in e.details for e in rejected)


def test_an_unknown_well_formed_token_is_refused_without_an_audit_event(session, settings):
    with pytest.raises(TokenRejected) as caught:
        authenticate(session, settings, tokens.generate(PREFIX))
    assert caught.value.reason == "unknown"
    assert (
        session.scalars(select(AuditEvent).where(AuditEvent.action == "token.rejected")).all() == []
    )


def test_t03_the_scoped_grants_follow_the_owner_at_each_request(session, settings, people):
    alice = people["alice"]
    grants = tokens.ScopedGrants(rbac.load_grants(session, alice.id), ["notes:read"])
    assert grants.allows("notes:read")
    assert not grants.allows("notes:write")
    with writing():
        reader = ensure_role(session, "reader")
        rbac.revoke_role(session, actor=SYSTEM, user=alice, role=reader)
        session.commit()
    later = tokens.ScopedGrants(rbac.load_grants(session, alice.id), ["notes:read"])
    assert not later.allows("notes:read")


def test_scoped_grants_carry_no_roles_and_honour_wildcard_scopes(session, people):
    root = people["root"]
    grants = tokens.ScopedGrants(rbac.load_grants(session, root.id), ["notes:*", "account:read"])
    assert grants.roles == frozenset()
    assert grants.allows("notes:delete")
    assert grants.allows("account:read")
    assert not grants.allows("account:write")
    assert not grants.allows("aaa:users:write")


def test_revoking_someone_elses_token_needs_the_admin_permission(session, settings, people):
    minted = mint(session, settings, people["root"], ["notes:read"])
    with writing(), pytest.raises(PermissionDenied):
        tokens.revoke(session, minted.token, actor=Actor.of(people["alice"]), facts=FACTS)
    session.rollback()
    token = session.get(ApiToken, minted.token.id)
    with writing():
        assert tokens.revoke(session, token, actor=Actor.of(people["root"]), facts=FACTS)
        assert not tokens.revoke(session, token, actor=Actor.of(people["root"]), facts=FACTS)
        session.commit()


def test_another_users_token_id_is_not_found(session, settings, people):
    from flask_aaa.errors import NotFound

    minted = mint(session, settings, people["root"], ["notes:read"])
    with pytest.raises(NotFound):
        tokens.get(session, minted.token.id, owner=people["alice"])
    assert tokens.get(session, minted.token.id, owner=people["root"]).id == minted.token.id


def test_describe_lists_everything_but_the_secret(session, settings, people):
    minted = mint(session, settings, people["alice"], ["notes:read"])
    described = tokens.describe(minted.token)
    assert minted.secret not in repr(described)
    assert described["status"] == "active"
    assert described["scopes"] == ["notes:read"]
