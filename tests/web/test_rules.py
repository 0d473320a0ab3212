"""Object-level rules through HTTP: ``@permissions_required(..., on=..., rule=...)``, ``require``
in a view and ``filter_allowed`` for lists (Z01: A cannot read or edit B's note by id, filter
or list), token requests, the fail-fast checks, and the deny-by-default start-up check (Z06)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from flask import Flask, g, jsonify, request
from sqlalchemy import ForeignKey, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from flask_aaa import (
    AAA,
    InvalidInput,
    Rule,
    auth_required,
    current_user,
    filter_allowed,
    login_required,
    permissions_required,
    public,
    require,
)
from flask_aaa.db import writing
from flask_aaa.models import AuditEvent, Base
from flask_aaa.services import rules, tokens
from flask_aaa.services.actors import Actor, RequestFacts
from tests.conftest import fresh, login, post_json

JSON = {"Accept": "application/json"}


class RulesNote(Base):
    """The tests' notes: owned by a user, in a tenant (named by an email domain)."""

    __tablename__ = "test_rules_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("aaa_users.id", ondelete="CASCADE"))
    tenant: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(120))
    level: Mapped[int] = mapped_column(Integer, default=0)


def domain(user: Any) -> str | None:
    """The users' tenant is the domain of their email address."""
    return user.email.rpartition("@")[2] if user.email else None


def add_rule_views(app: Flask) -> dict[str, int]:
    """Views guarded by rules, added to the test app; ``calls`` counts the loader's calls."""
    st = app.extensions["aaa"]
    db = st.db
    st.rules.add(rules.same_tenant("tenant", user_attribute=domain))
    st.rules.register(
        "low_level", lambda user, note: note.level < 5, where=lambda user, m: m.level < 5
    )
    calls = {"load": 0}

    def load(note_id: int) -> RulesNote | None:
        calls["load"] += 1
        return db.session.get(RulesNote, note_id)

    def ids(stmt: Any) -> Any:
        return jsonify(ids=list(db.session.scalars(stmt)))

    @app.get("/r/notes/<int:note_id>")
    @auth_required("session", "token")
    @permissions_required("notes:read", on=load, rule="owner")
    def read_note(note_id: int) -> Any:
        return jsonify(id=g.aaa_object.id, title=g.aaa_object.title)

    @app.post("/r/notes/<int:note_id>")
    @auth_required("session", "token")
    @permissions_required("notes:edit", on=load, rule="owner")
    def edit_note(note_id: int) -> Any:
        g.aaa_object.title = request.get_json()["title"]
        db.session.commit()
        return jsonify(ok=True)

    @app.get("/r/notes")
    @auth_required("session", "token")
    @login_required
    def list_notes() -> Any:
        stmt = select(RulesNote.id).order_by(RulesNote.id)
        by = request.args.get("title")
        if by is not None:
            stmt = stmt.where(RulesNote.title == by)
        return ids(filter_allowed(stmt, current_user, "notes:read", rule="owner"))

    @app.get("/r/tenant/<int:note_id>")
    @permissions_required("notes:read", on=load, rule="same_tenant")
    def tenant_note(note_id: int) -> Any:
        return jsonify(id=g.aaa_object.id)

    @app.get("/r/tenant")
    @login_required
    def tenant_notes() -> Any:
        stmt = select(RulesNote.id).order_by(RulesNote.id)
        return ids(filter_allowed(stmt, current_user, "notes:read", rule="same_tenant"))

    @app.get("/r/low/<int:note_id>")
    @permissions_required("notes:read", on=load, rule="low_level")
    def low_note(note_id: int) -> Any:
        return jsonify(id=g.aaa_object.id)

    @app.get("/r/plain/<int:note_id>")
    @permissions_required("notes:read", on=load)
    def plain_note(note_id: int) -> Any:
        return jsonify(id=g.aaa_object.id)

    @app.post("/r/code/<int:note_id>")
    @login_required
    def edit_in_code(note_id: int) -> Any:
        note = db.session.get(RulesNote, note_id)
        if note is None:
            return jsonify(error="not_found"), 404
        decision = require(current_user, "notes:edit", note, rule="owner")
        return jsonify(by=decision.by, reason=decision.reason)

    return calls


@pytest.fixture
def calls(app: Flask) -> dict[str, int]:
    return add_rule_views(app)


ACME, OTHER = "acme.example.org", "other.example.org"


@pytest.fixture
def people(make_user, db):
    """ann and ben (authors: their own notes), eve (editor: notes:*), rex (notes:read:any),
    nick (no notes rights), tom (other tenant); notes 1-2 are ann's, 3 is ben's, 4 is tom's."""
    roles = {
        "author": ["notes:read", "notes:edit"],
        "editor": ["notes:*"],
        "auditor": ["notes:read:any"],
    }
    made = {
        name: make_user(name, email=f"{name}@{tenant}", roles=role, perms=roles)
        for name, tenant, role in [
            ("ann", ACME, ["author"]),
            ("ben", ACME, ["author"]),
            ("eve", ACME, ["editor"]),
            ("rex", ACME, ["auditor"]),
            ("nick", ACME, []),
            ("tom", OTHER, ["author"]),
        ]
    }
    ann, ben, tom = made["ann"].id, made["ben"].id, made["tom"].id
    with writing():
        session = fresh(db)
        session.add_all(
            [
                RulesNote(id=1, owner_id=ann, tenant=ACME, title="ann's", level=1),
                RulesNote(id=2, owner_id=ann, tenant=ACME, title="plan", level=9),
                RulesNote(id=3, owner_id=ben, tenant=ACME, title="plan", level=1),
                RulesNote(id=4, owner_id=tom, tenant=OTHER, title="tom's"),
            ]
        )
        session.commit()
    return made


def as_user(client: Any, name: str) -> Any:
    assert login(client, name).status_code == 303
    return client


def denials(db: Any) -> list[dict[str, Any]]:
    stmt = select(AuditEvent).where(AuditEvent.action == "authz.denied").order_by(AuditEvent.seq)
    return [
        {**json.loads(e.details), "actor_id": e.actor_id, "target": (e.target_type, e.target_id)}
        for e in fresh(db).scalars(stmt)
    ]


# -- the decorator --


def test_the_owner_reads_and_edits_their_note(client, calls, people, db):
    as_user(client, "ann")
    assert client.get("/r/notes/1", headers=JSON).get_json() == {"id": 1, "title": "ann's"}
    assert post_json(client, "/r/notes/1", {"title": "new"}).status_code == 200
    assert fresh(db).get(RulesNote, 1).title == "new"
    assert denials(db) == []


def test_Z01_another_users_note_by_id_is_403_and_audited_with_the_rule(client, calls, people, db):
    as_user(client, "ann")
    response = client.get("/r/notes/3", headers=JSON)
    assert response.status_code == 403
    assert response.get_json()["error"] == "permission_denied"
    assert "ben" not in response.get_data(as_text=True)
    assert post_json(client, "/r/notes/3", {"title": "mine now"}).status_code == 403
    assert fresh(db).get(RulesNote, 3).title == "plan"
    read, edit = denials(db)
    assert read["requirement"] == "notes:read on rules_note 3 (rule owner)"
    assert edit["requirement"] == "notes:edit on rules_note 3 (rule owner)"
    assert "rule owner fails" in edit["reason"]
    assert edit["actor_id"] == people["ann"].id
    assert edit["target"] == ("rules_note", "3")


def test_a_missing_note_is_404_for_whoever_may_look(client, calls, people, db):
    as_user(client, "ann")
    assert client.get("/r/notes/99", headers=JSON).status_code == 404
    assert post_json(client, "/r/notes/99", {"title": "x"}).status_code == 404
    assert denials(db) == []


def test_without_the_permission_it_is_403_before_anything_is_loaded(client, calls, people, db):
    """Users without the right cannot tell existing ids from missing ones."""
    as_user(client, "nick")
    existing = client.get("/r/notes/1", headers=JSON)
    missing = client.get("/r/notes/99", headers=JSON)
    assert existing.status_code == missing.status_code == 403
    assert existing.get_json() == missing.get_json()
    assert calls["load"] == 0
    first, second = denials(db)
    assert first["requirement"] == second["requirement"] == "notes:read"
    assert first["reason"] == "holds neither notes:read nor notes:read:any"
    assert first["target"] == (None, None)


def test_anonymous_callers_are_asked_to_sign_in_before_anything_is_loaded(client, calls, people):
    assert client.get("/r/notes/1", headers=JSON).status_code == 401
    assert client.get("/r/notes/99", headers=JSON).status_code == 401
    assert calls["load"] == 0


@pytest.mark.parametrize("name", ["eve", "rex"])
def test_the_any_override_reads_every_note(client, calls, people, name):
    as_user(client, name)
    for note_id in (1, 3, 4):
        assert client.get(f"/r/notes/{note_id}", headers=JSON).status_code == 200


def test_the_override_of_one_action_does_not_lift_another(client, calls, people, db):
    """rex may read any note (``notes:read:any``) but edit none."""
    as_user(client, "rex")
    assert post_json(client, "/r/notes/1", {"title": "x"}).status_code == 403
    assert denials(db)[-1]["requirement"] == "notes:edit"


def test_an_editor_with_notes_wildcard_edits_anyones_note(client, calls, people, db):
    as_user(client, "eve")
    assert post_json(client, "/r/notes/3", {"title": "edited"}).status_code == 200
    assert fresh(db).get(RulesNote, 3).title == "edited"


def test_the_tenant_rule(client, calls, people, db):
    as_user(client, "ben")
    assert client.get("/r/tenant/1", headers=JSON).status_code == 200
    assert client.get("/r/tenant/4", headers=JSON).status_code == 403
    assert client.get("/r/tenant", headers=JSON).get_json() == {"ids": [1, 2, 3]}
    assert denials(db)[-1]["requirement"] == "notes:read on rules_note 4 (rule same_tenant)"
    other = as_user(client.application.test_client(), "tom")
    assert other.get("/r/tenant", headers=JSON).get_json() == {"ids": [4]}


def test_a_custom_rule(client, calls, people, db):
    as_user(client, "ann")
    assert client.get("/r/low/3", headers=JSON).status_code == 200  # ben's, but level 1
    assert client.get("/r/low/2", headers=JSON).status_code == 403  # ann's, but level 9
    assert denials(db)[-1]["requirement"] == "notes:read on rules_note 2 (rule low_level)"


def test_a_loader_without_a_rule_checks_the_permission_then_loads(client, calls, people, db):
    """Without a rule there is no override: notes:read:any is not notes:read."""
    as_user(client, "ann")
    assert client.get("/r/plain/3", headers=JSON).get_json() == {"id": 3}
    assert client.get("/r/plain/99", headers=JSON).status_code == 404
    loads = calls["load"]
    auditor = as_user(client.application.test_client(), "rex")
    assert auditor.get("/r/plain/3", headers=JSON).status_code == 403
    assert calls["load"] == loads
    assert denials(db)[-1]["requirement"] == "notes:read"


# -- lists --


def test_Z01_lists_show_exactly_the_notes_the_detail_view_allows(client, calls, people):
    expected = {"ann": [1, 2], "ben": [3], "tom": [4], "eve": [1, 2, 3, 4], "rex": [1, 2, 3, 4]}
    expected["nick"] = []
    for name, ids in expected.items():
        user = as_user(client.application.test_client(), name)
        assert user.get("/r/notes", headers=JSON).get_json() == {"ids": ids}, name
        for note_id in (1, 2, 3, 4):
            status = user.get(f"/r/notes/{note_id}", headers=JSON).status_code
            assert status == (200 if note_id in ids else 403), (name, note_id)


def test_Z01_a_filter_on_the_list_finds_no_other_users_rows(client, calls, people):
    as_user(client, "ann")
    assert client.get("/r/notes?title=plan", headers=JSON).get_json() == {"ids": [2]}


# -- require in code --


def test_require_in_a_view(client, calls, people, db):
    as_user(client, "ann")
    allowed = post_json(client, "/r/code/1", {})
    assert allowed.get_json()["by"] == "rule"
    refused = post_json(client, "/r/code/3", {})
    assert refused.status_code == 403
    assert denials(db)[-1]["requirement"] == "notes:edit on rules_note 3 (rule owner)"
    editor = as_user(client.application.test_client(), "eve")
    assert post_json(editor, "/r/code/3", {}).get_json()["by"] == "override"


# -- tokens --


def mint(app: Flask, db: Any, user: Any, scopes: list[str]) -> str:
    owner = fresh(db).get(type(user), user.id)
    with writing():
        minted = tokens.mint(
            db,
            owner,
            actor=Actor.of(owner),
            name="t",
            scopes=scopes,
            settings=app.extensions["aaa"].settings,
            facts=RequestFacts(ip="127.0.0.1"),
        )
        db.commit()
    return minted.secret


def test_a_token_scoped_to_the_permission_is_held_to_the_rule(app, client, calls, people, db):
    """eve holds notes:*, but a token scoped to notes:read carries no notes:read:any."""
    secret = mint(app, db, people["eve"], ["notes:read"])
    auth = {"Authorization": f"Bearer {secret}", **JSON}
    assert client.get("/r/notes", headers=auth).get_json() == {"ids": []}
    assert client.get("/r/notes/1", headers=auth).status_code == 403
    wide = {"Authorization": f"Bearer {mint(app, db, people['eve'], ['notes:*'])}", **JSON}
    assert client.get("/r/notes", headers=wide).get_json() == {"ids": [1, 2, 3, 4]}
    assert client.get("/r/notes/1", headers=wide).status_code == 200


def test_a_token_of_an_owner_reaches_only_their_notes(app, client, calls, people, db):
    secret = mint(app, db, people["ann"], ["notes:read", "notes:edit"])
    auth = {"Authorization": f"Bearer {secret}"}
    assert client.get("/r/notes", headers={**auth, **JSON}).get_json() == {"ids": [1, 2]}
    assert client.post("/r/notes/3", json={"title": "x"}, headers=auth).status_code == 403
    assert client.post("/r/notes/2", json={"title": "x"}, headers=auth).status_code == 200


# -- failing fast --


def test_a_rule_without_a_loader_is_refused_at_decoration():
    with pytest.raises(ValueError, match="needs on="):
        permissions_required("notes:edit", rule="owner")


def test_a_bad_rule_name_or_a_wildcard_permission_is_refused_at_decoration():
    with pytest.raises(ValueError, match="bad rule name"):
        permissions_required("notes:edit", on=lambda **kw: None, rule="Not A Name")
    with pytest.raises(ValueError, match="plain permission"):
        permissions_required("notes:*", on=lambda **kw: None, rule="owner")
    with pytest.raises(InvalidInput):
        permissions_required("Notes:Edit", on=lambda **kw: None, rule="owner")


def test_an_unknown_rule_name_closes_the_app_at_its_first_request(app, caplog):
    @app.get("/r/typo/<int:note_id>")
    @permissions_required("notes:read", on=lambda note_id: None, rule="ownr")
    def typo(note_id: int) -> Any:
        return "never"

    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="flask_aaa"):
        response = client.get("/", headers=JSON)  # even a public page: the app is misbuilt
    assert response.status_code == 500
    assert response.get_json()["error"] == "configuration_error"
    assert "'ownr' (view typo)" in caplog.text
    assert client.get("/r/typo/1", headers=JSON).status_code == 500


def test_a_rule_object_needs_no_registration(app, make_user):
    mine = Rule("mine_only", lambda user, obj: obj == user.id)

    @app.get("/r/self/<int:user_id>")
    @permissions_required("users:peek", on=lambda user_id: user_id, rule=mine)
    def peek(user_id: int) -> Any:
        return jsonify(id=g.aaa_object)

    user = make_user("pat", roles=["peeker"], perms={"peeker": ["users:peek"]})
    client = as_user(app.test_client(), "pat")
    assert client.get(f"/r/self/{user.id}", headers=JSON).status_code == 200
    assert client.get(f"/r/self/{user.id + 1}", headers=JSON).status_code == 403


def test_aaa_rule_registers_a_decorated_predicate():
    aaa = AAA()

    @aaa.rule("drafts", where=lambda user, model: model.level == 0)
    def drafts(user: Any, note: Any) -> bool:
        return note.level == 0

    assert aaa.rules.get("drafts") is drafts
    assert drafts(None, RulesNote(level=0))
    assert not drafts(None, RulesNote(level=1))


# -- Z06: the deny-by-default start-up check --


@pytest.fixture
def deny_app(config: dict[str, Any], request: pytest.FixtureRequest) -> Flask:
    config["AAA_DENY_BY_DEFAULT"] = True
    return request.getfixturevalue("app")


def _add_unguarded(app: Flask) -> None:
    @app.get("/forgotten")
    def forgotten() -> Any:
        return "open?"

    @app.get("/open")
    @public
    def open_page() -> Any:
        return "open"


def test_Z06_the_first_request_logs_the_unguarded_endpoints_once(deny_app, caplog):
    _add_unguarded(deny_app)
    client = deny_app.test_client()
    with caplog.at_level(logging.WARNING, logger="flask_aaa"):
        assert client.get("/open").status_code == 200
        assert client.get("/forgotten", headers=JSON).status_code == 401
    warnings = [r.getMessage() for r in caplog.records if "AAA_DENY_BY_DEFAULT" in r.getMessage()]
    assert len(warnings) == 1
    assert "1 endpoint(s)" in warnings[0]
    assert warnings[0].endswith(": forgotten")


def test_Z06_nothing_is_logged_when_every_endpoint_is_guarded(deny_app, caplog):
    with caplog.at_level(logging.WARNING, logger="flask_aaa"):
        assert deny_app.test_client().get("/").status_code == 200
    assert "AAA_DENY_BY_DEFAULT" not in caplog.text


def test_Z06_flask_aaa_check_passes_when_every_endpoint_is_guarded(deny_app):
    result = deny_app.test_cli_runner().invoke(args=["aaa", "check"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("OK")


def test_Z06_flask_aaa_check_lists_unguarded_endpoints_and_unknown_rules(deny_app):
    _add_unguarded(deny_app)

    @deny_app.get("/r/typo/<int:note_id>")
    @permissions_required("notes:read", on=lambda note_id: None, rule="ownr")
    def typo(note_id: int) -> Any:
        return "never"

    result = deny_app.test_cli_runner().invoke(args=["aaa", "check"])
    assert result.exit_code == 1
    assert "UNKNOWN RULE  'ownr' named by view typo" in result.output
    assert "UNGUARDED     forgotten: closed (deny by default)" in result.output
    assert "open_page" not in result.output
    assert "typo:" not in result.output  # guarded (by a requirement), only its rule is wrong


def test_Z06_check_says_when_unguarded_endpoints_are_open(app):
    _add_unguarded(app)
    result = app.test_cli_runner().invoke(args=["aaa", "check"])
    assert result.exit_code == 1
    assert "UNGUARDED     forgotten: OPEN" in result.output
