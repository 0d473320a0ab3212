"""Object-level rules without an app: the registry, single-object decisions (owner, tenant,
custom predicates, the ``:any`` override, token scopes), audited denials that name the rule,
and list filtering that returns exactly the rows the single-object check allows (Z01)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Boolean, Integer, String, delete, or_, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from flask_aaa.db import writing
from flask_aaa.errors import PermissionDenied
from flask_aaa.models import AuditEvent, Base, User
from flask_aaa.services import accounts, rbac, rules
from flask_aaa.services.actors import Actor, RequestFacts
from flask_aaa.services.rules import Rule, Rules, UnknownRule, decide, filter_allowed
from flask_aaa.services.tokens import ScopedGrants
from tests.conftest import PASSWORD, SYSTEM

FACTS = RequestFacts(ip="192.0.2.9", request_id="rules")


class RulesDoc(Base):
    """A document of the tests' own, on Flask-AAA's metadata like an app's model."""

    __tablename__ = "test_rules_docs"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(Integer)
    tenant_id: Mapped[str | None] = mapped_column(String(16))
    published: Mapped[bool] = mapped_column(Boolean, default=False)


def user(uid: int | None, *permissions: str, tenant: str | None = None) -> User:
    """A user (not stored) holding ``permissions``, with a ``tenant_id`` attribute."""
    u = User(id=uid, username=f"user{uid}")
    u._aaa_grants = rbac.Grants(["r"], permissions)
    u.tenant_id = tenant  # type: ignore[attr-defined]
    return u


def doc(did: int, owner_id: int | None, tenant: str | None = None, published: bool = False):
    return RulesDoc(id=did, owner_id=owner_id, tenant_id=tenant, published=published)


OWNER = rules.owner()
TENANT = rules.same_tenant()
PUBLISHED_OR_OWNER = Rule(
    "published_or_owner",
    lambda u, d: d.published or d.owner_id == u.id,
    lambda u, m: or_(m.published.is_(True), m.owner_id == u.id),
)


# -- the registry --


def test_registry_starts_with_owner_and_names_unknown_rules():
    registry = Rules.with_defaults()
    assert "owner" in registry
    assert registry.get("owner")(user(1), doc(1, 1))
    with pytest.raises(UnknownRule, match=r"'nonesuch'.*known: owner"):
        registry.get("nonesuch")


def test_registry_refuses_a_second_rule_of_the_same_name():
    registry = Rules.with_defaults()
    registry.register("mine", lambda u, o: True)
    with pytest.raises(ValueError, match="registered already"):
        registry.register("mine", lambda u, o: False)


def test_the_default_owner_rule_may_be_replaced_once():
    registry = Rules.with_defaults()
    registry.add(rules.owner("author_id"))
    authored = type("Authored", (), {"author_id": 1, "owner_id": 2})()
    assert registry.get("owner")(user(1), authored)
    with pytest.raises(ValueError, match="registered already"):
        registry.add(rules.owner())


@pytest.mark.parametrize("name", ["", "Owner", "1st", "has space", "x" * 65])
def test_bad_rule_names_are_refused(name):
    with pytest.raises(ValueError, match="bad rule name"):
        Rule(name, lambda u, o: True)


@pytest.mark.parametrize("permission", ["notes:*", "*"])
def test_a_rule_needs_a_plain_permission(permission):
    with pytest.raises(ValueError, match="plain permission"):
        rules.check_permission_for_rules(permission)


# -- single objects --


def test_owner_allows_the_owner_and_refuses_anyone_else():
    note = doc(7, owner_id=1)
    allowed = decide(user(1, "docs:edit"), "docs:edit", note, OWNER)
    assert allowed.allowed
    assert (allowed.by, allowed.rule) == ("rule", "owner")
    assert "rule owner passes for rules_doc 7" in allowed.reason
    refused = decide(user(2, "docs:edit"), "docs:edit", note, OWNER)
    assert not refused.allowed
    assert refused.by == "rule"
    assert refused.requirement == "docs:edit on rules_doc 7 (rule owner)"
    assert "rule owner fails" in refused.reason


def test_lacking_the_permission_denies_without_evaluating_the_rule():
    calls: list[object] = []
    spy = Rule("spy", lambda u, o: calls.append(o) or True)
    refused = decide(user(1, "docs:read"), "docs:edit", doc(1, 1), spy)
    assert not refused.allowed
    assert refused.by == "missing"
    assert refused.requirement == "docs:edit on rules_doc 1"
    assert "neither docs:edit nor docs:edit:any" in refused.reason
    assert calls == []


def test_anonymous_is_refused():
    refused = decide(None, "docs:read", doc(1, None), OWNER)
    assert not refused.allowed
    assert refused.by == "missing"


@pytest.mark.parametrize("held", ["docs:edit:any", "docs:edit:*", "docs:*", "*"])
def test_the_any_override_lifts_the_rule(held):
    decision = decide(user(2, held), "docs:edit", doc(1, owner_id=1), OWNER)
    assert decision.allowed
    assert decision.by == "override"
    assert "docs:edit:any" in decision.reason


def test_an_override_of_another_action_does_not_lift_the_rule():
    decision = decide(user(2, "docs:edit", "docs:read:any"), "docs:edit", doc(1, 1), OWNER)
    assert not decision.allowed


def test_without_a_rule_the_permission_alone_decides():
    assert decide(user(2, "docs:edit"), "docs:edit", doc(1, 1)).allowed
    refused = decide(user(2, "docs:read"), "docs:edit", doc(1, 1))
    assert not refused.allowed
    assert refused.rule is None


def test_same_tenant_compares_the_users_tenant():
    note = doc(1, owner_id=9, tenant="acme")
    assert decide(user(1, "docs:read", tenant="acme"), "docs:read", note, TENANT).allowed
    assert not decide(user(1, "docs:read", tenant="other"), "docs:read", note, TENANT).allowed


def test_a_user_without_a_tenant_shares_none_not_even_untenanted_rows():
    orphan = doc(1, owner_id=9, tenant=None)
    assert not decide(user(1, "docs:read", tenant=None), "docs:read", orphan, TENANT).allowed


def test_same_tenant_can_read_the_tenant_from_a_function():
    by_domain = rules.same_tenant(user_attribute=lambda u: u.username[-1])
    assert decide(user(3, "docs:read"), "docs:read", doc(1, 9, tenant="3"), by_domain).allowed
    assert not decide(user(3, "docs:read"), "docs:read", doc(1, 9, tenant="4"), by_domain).allowed


def test_a_custom_predicate():
    draft, public = doc(1, owner_id=5), doc(2, owner_id=5, published=True)
    reader = user(1, "docs:read")
    assert not decide(reader, "docs:read", draft, PUBLISHED_OR_OWNER).allowed
    assert decide(reader, "docs:read", public, PUBLISHED_OR_OWNER).allowed


def test_a_token_scoped_to_the_permission_does_not_carry_the_owners_override():
    owner = user(1)
    owner._aaa_grants = ScopedGrants(rbac.Grants(["editor"], ["docs:*"]), ["docs:edit"])
    assert decide(owner, "docs:edit", doc(1, owner_id=1), OWNER).allowed
    assert not decide(owner, "docs:edit", doc(2, owner_id=2), OWNER).allowed
    owner._aaa_grants = ScopedGrants(rbac.Grants(["editor"], ["docs:*"]), ["docs:edit:any"])
    assert decide(owner, "docs:edit", doc(2, owner_id=2), OWNER).allowed


def test_a_token_scope_is_no_wider_than_its_owners_grants():
    owner = user(1)
    owner._aaa_grants = ScopedGrants(rbac.Grants(["r"], ["docs:edit"]), ["docs:*"])
    assert not decide(owner, "docs:edit", doc(2, owner_id=2), OWNER).allowed


# -- require: the audited denial --


@pytest.fixture
def stored(session, settings, passwords):
    """Two stored users: ``ann`` holds docs:edit, ``ben`` nothing."""
    with writing():
        role = rbac.create_role(session, actor=SYSTEM, name="author")
        rbac.add_permission(session, actor=SYSTEM, role=role, permission="docs:edit")

        def make(name: str, roles: list[Any]) -> User:
            return accounts.create_user(
                session,
                actor=SYSTEM,
                settings=settings,
                passwords=passwords,
                username=name,
                email=f"{name}@example.org",
                password=PASSWORD,
                roles=roles,
            )

        ann, ben = make("ann", [role]), make("ben", [])
        session.add_all([doc(1, owner_id=ann.id), doc(2, owner_id=ben.id)])
        session.commit()
    return ann, ben


def denials(engine: Any) -> list[AuditEvent]:
    with Session(engine) as other:
        stmt = select(AuditEvent).where(AuditEvent.action == "authz.denied")
        return list(other.scalars(stmt.order_by(AuditEvent.seq)))


def test_Z01_require_refuses_anothers_object_and_audits_the_rule(session, engine, stored):
    ann, _ = stored
    theirs = session.get(RulesDoc, 2)
    with pytest.raises(PermissionDenied) as raised:
        rules.require(session, Actor.of(ann), "docs:edit", theirs, OWNER, facts=FACTS)
    assert raised.value.requirement == "docs:edit on rules_doc 2 (rule owner)"
    assert "docs:edit" in raised.value.message and "rules_doc" in raised.value.message
    (event,) = denials(engine)
    details = json.loads(event.details)
    assert details["requirement"] == "docs:edit on rules_doc 2 (rule owner)"
    assert "rule owner fails" in details["reason"]
    assert (event.actor_id, event.target_type, event.target_id) == (ann.id, "rules_doc", "2")
    assert event.ip == "192.0.2.9"


def test_require_allows_the_owner_and_records_nothing(session, engine, stored):
    ann, _ = stored
    mine = session.get(RulesDoc, 1)
    decision = rules.require(session, Actor.of(ann), "docs:edit", mine, OWNER, facts=FACTS)
    assert decision.allowed
    assert denials(engine) == []


def test_require_without_the_permission_names_no_rule(session, engine, stored):
    _, ben = stored
    own = session.get(RulesDoc, 2)
    with pytest.raises(PermissionDenied):
        rules.require(session, Actor.of(ben), "docs:edit", own, OWNER, facts=FACTS)
    (event,) = denials(engine)
    assert json.loads(event.details)["requirement"] == "docs:edit on rules_doc 2"


def test_system_actors_pass_every_rule(session, engine, stored):
    anything = session.get(RulesDoc, 2)
    decision = rules.require(session, SYSTEM, "docs:edit", anything, OWNER)
    assert decision.allowed
    assert decision.by == "system"
    assert denials(engine) == []


# -- filtering lists --


@pytest.fixture
def docs(session):
    """Docs 1-6: owners 1, 1, 2, 3, none, 2; tenants a, b, a, b, a, none; 4 is published."""
    rows = [
        doc(1, 1, "a"),
        doc(2, 1, "b"),
        doc(3, 2, "a"),
        doc(4, 3, "b", published=True),
        doc(5, None, "a"),
        doc(6, 2, None),
    ]
    session.add_all(rows)
    session.flush()
    return rows


def visible(session: Session, who: User | None, rule: Rule | None, permission="docs:read"):
    stmt = filter_allowed(select(RulesDoc.id).order_by(RulesDoc.id), who, permission, rule)
    return list(session.scalars(stmt))


def test_Z01_the_owner_lists_exactly_their_rows(session, docs):
    assert visible(session, user(1, "docs:read"), OWNER) == [1, 2]
    assert visible(session, user(2, "docs:read"), OWNER) == [3, 6]


def test_the_tenant_lists_exactly_its_rows(session, docs):
    assert visible(session, user(9, "docs:read", tenant="a"), TENANT) == [1, 3, 5]
    assert visible(session, user(9, "docs:read", tenant=None), TENANT) == []


def test_the_override_lists_every_row(session, docs):
    assert visible(session, user(9, "docs:read:any"), OWNER) == [1, 2, 3, 4, 5, 6]
    assert visible(session, user(9, "*"), TENANT) == [1, 2, 3, 4, 5, 6]


def test_without_the_permission_no_row_is_listed(session, docs):
    assert visible(session, user(1, "docs:edit"), OWNER) == []
    assert visible(session, None, OWNER) == []
    assert visible(session, user(1, "other:*"), None) == []


def test_without_a_rule_the_permission_lists_every_row(session, docs):
    assert visible(session, user(1, "docs:read"), None) == [1, 2, 3, 4, 5, 6]


def test_a_custom_rule_filters_with_its_sql_form(session, docs):
    assert visible(session, user(1, "docs:read"), PUBLISHED_OR_OWNER) == [1, 2, 4]


def test_a_rule_without_a_sql_form_cannot_filter_for_anyone(session, docs):
    python_only = Rule("python_only", lambda u, o: True)
    for who in (user(1, "docs:read"), user(1), None):
        with pytest.raises(ValueError, match="no SQL form"):
            visible(session, who, python_only)


def test_the_model_can_be_named_when_the_select_starts_elsewhere(session, docs):
    stmt = filter_allowed(
        select(User.id, RulesDoc.id).join(RulesDoc, RulesDoc.owner_id == User.id),
        user(1, "docs:read"),
        "docs:read",
        OWNER,
        model=RulesDoc,
    )
    assert "test_rules_docs.owner_id" in str(stmt)
    assert "aaa_users.owner_id" not in str(stmt)


USER_IDS = st.sampled_from([1, 2, 3])
TENANTS = st.sampled_from([None, "a", "b"])
HELD = st.sets(
    st.sampled_from(["docs:read", "docs:read:any", "docs:*", "*", "docs:edit", "other:read"]),
    max_size=3,
)
DOCS = st.lists(st.tuples(st.sampled_from([None, 1, 2, 3]), TENANTS, st.booleans()), max_size=10)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=DOCS,
    uid=USER_IDS,
    tenant=TENANTS,
    held=HELD,
    rule=st.sampled_from([OWNER, TENANT, PUBLISHED_OR_OWNER, None]),
    anonymous=st.booleans(),
)
def test_Z01_a_filtered_list_is_exactly_what_the_detail_check_allows(
    session, rows, uid, tenant, held, rule, anonymous
):
    """Lists never leak what a detail view would refuse, nor hide what it would show."""
    session.execute(delete(RulesDoc))
    objects = [doc(i + 1, *row) for i, row in enumerate(rows)]
    session.add_all(objects)
    session.flush()
    who = None if anonymous else user(uid, *held, tenant=tenant)
    expected = [o.id for o in objects if decide(who, "docs:read", o, rule).allowed]
    assert visible(session, who, rule) == expected
    session.rollback()
