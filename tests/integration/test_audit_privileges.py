"""L10: the database role the application runs as can append to the trail, never rewrite it.

The SQL is the recipe of docs/audit-database-role.md, read from its ```sql blocks and run
as written (with this test's own role names and passwords), so the page and the test cannot
drift apart. Each block says whom it runs as in its first line ("-- As a superuser" or
"-- As aaa_owner"). Roles are cluster-wide: each test makes its own, with unique names, and
drops them afterwards. Everything but the check of the page itself needs PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from flask_aaa.db import configure_engine, utcnow, writing
from flask_aaa.models import AuditCheckpoint, AuditEvent, AuditHead
from flask_aaa.services import audit, rbac, signing
from flask_aaa.services.actors import Actor
from tests.conftest import requires_postgres

RECIPE = Path(__file__).resolve().parents[2] / "docs" / "audit-database-role.md"
KEY = b"audit-privileges-test-key-0123456789"
SYSTEM = Actor.system("tests")
INSUFFICIENT_PRIVILEGE = "42501"

#: The page's example names and passwords, replaced by each test's own.
OWNER, APP = "aaa_owner", "aaa_app"
OWNER_PASSWORD, APP_PASSWORD = "'owner-password'", "'app-password'"


@dataclasses.dataclass(frozen=True)
class Block:
    sql: str
    as_owner: bool


def recipe_blocks() -> list[Block]:
    """The page's SQL blocks, in order, each with the role it is run as."""
    blocks = []
    for sql in re.findall(r"^```sql\n(.*?)^```", RECIPE.read_text(encoding="utf-8"), re.M | re.S):
        first = sql.splitlines()[0]
        assert first.startswith(("-- As a superuser", f"-- As {OWNER},")), (
            f"each SQL block starts by saying whom it runs as: {first!r}"
        )
        blocks.append(Block(sql, as_owner=first.startswith(f"-- As {OWNER}")))
    return blocks


@dataclasses.dataclass
class Roles:
    owner: str
    app: str
    superuser: Engine
    owner_engine: Engine
    app_engine: Engine
    _substitutions: dict[str, str]

    def sql(self, block: Block) -> str:
        out = block.sql
        for pattern, value in self._substitutions.items():
            out = re.sub(pattern, value, out)
        return out

    def run(self, block: Block) -> None:
        """Run one block of the page as the role it names, and commit."""
        raw = self.superuser.raw_connection()
        try:
            cursor = raw.cursor()
            if block.as_owner:
                cursor.execute(f'SET ROLE "{self.owner}"')
            cursor.execute(self.sql(block))  # no parameters: several statements, % kept
            cursor.execute("RESET ROLE")
            raw.commit()
        finally:
            raw.close()


def _engine_as(url: Any, user: str, password: str) -> Engine:
    engine = create_engine(url.set(username=user, password=password))
    configure_engine(engine)
    signing.use(engine, signing.Signer([KEY], checkpoint_every=3))
    return engine


@pytest.fixture
def roles(engine: Engine, database_url: str) -> Iterator[Roles]:
    """The recipe applied to the test's fresh schema (created by the superuser)."""
    suffix = secrets.token_hex(4)
    owner, app = f"aaa_owner_{suffix}", f"aaa_app_{suffix}"
    owner_password, app_password = secrets.token_hex(16), secrets.token_hex(16)
    text_ = RECIPE.read_text(encoding="utf-8")
    for placeholder in (OWNER, APP, OWNER_PASSWORD, APP_PASSWORD):
        assert placeholder in text_, f"the recipe no longer uses {placeholder}"
    url = make_url(database_url)
    found = Roles(
        owner,
        app,
        engine,
        _engine_as(url, owner, owner_password),
        _engine_as(url, app, app_password),
        {
            rf"\b{OWNER}\b": owner,
            rf"\b{APP}\b": app,
            re.escape(OWNER_PASSWORD): f"'{owner_password}'",
            re.escape(APP_PASSWORD): f"'{app_password}'",
        },
    )
    try:
        for block in recipe_blocks():
            found.run(block)
        yield found
    finally:
        found.app_engine.dispose()
        found.owner_engine.dispose()
        with engine.begin() as connection:
            for role in (owner, app):
                exists = connection.scalar(
                    text("SELECT 1 FROM pg_roles WHERE rolname = :name"), {"name": role}
                )
                if exists:
                    connection.execute(text(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER'))
                    connection.execute(text(f'DROP OWNED BY "{role}"'))
                    connection.execute(text(f'DROP ROLE "{role}"'))


def append_as(engine: Engine, name: str) -> None:
    """An audited action through the library's services: a role with a permission."""
    with writing(), Session(engine) as db:
        role = rbac.create_role(db, actor=SYSTEM, name=name)
        rbac.add_permission(db, actor=SYSTEM, role=role, permission="notes:read")
        db.commit()


def verify_as(engine: Engine) -> audit.VerifyReport:
    with Session(engine) as db:
        return audit.verify_chain(db)


def refused(engine: Engine, statement: str) -> str:
    """Run ``statement``; it must fail for lack of privilege. Returns the error text."""
    with pytest.raises(DBAPIError) as caught, engine.begin() as connection:
        connection.execute(text(statement))
    orig = caught.value.orig
    assert getattr(orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE, str(orig)
    return str(orig)


CHANGES = (
    "UPDATE aaa_audit_events SET details = '{}'",
    "DELETE FROM aaa_audit_events",
    "TRUNCATE aaa_audit_events",
    "UPDATE aaa_audit_checkpoints SET mac = hash",
    "DELETE FROM aaa_audit_checkpoints",
    "TRUNCATE aaa_audit_checkpoints",
    "DELETE FROM aaa_audit_head",
)


def test_the_recipe_has_blocks_for_both_roles() -> None:
    blocks = recipe_blocks()
    assert any(b.as_owner for b in blocks) and any(not b.as_owner for b in blocks)
    sql = "\n".join(b.sql for b in blocks)
    for table in ("aaa_audit_events", "aaa_audit_head", "aaa_audit_checkpoints"):
        assert table in sql


@requires_postgres
@pytest.mark.postgres
def test_L10_the_app_role_appends_through_the_services(roles: Roles) -> None:
    append_as(roles.app_engine, "auditors")
    append_as(roles.app_engine, "readers")
    with Session(roles.app_engine) as db:
        assert db.scalar(select(func.current_user())) == roles.app
        events = db.scalar(select(func.count()).select_from(AuditEvent))
        head = db.execute(select(AuditHead.seq, AuditHead.mac)).one()
        checkpoints = db.scalar(select(func.count()).select_from(AuditCheckpoint))
    assert events == 4  # role.created and role.permission_added, twice
    assert head.seq == events and head.mac  # the head moved on, signed
    assert checkpoints >= 1  # written by the app role every 3 events
    assert verify_as(roles.app_engine).ok


@requires_postgres
@pytest.mark.postgres
@pytest.mark.parametrize("statement", CHANGES)
def test_L10_the_app_role_cannot_change_the_trail(roles: Roles, statement: str) -> None:
    append_as(roles.app_engine, "auditors")
    append_as(roles.app_engine, "readers")  # a checkpoint exists now too
    refused(roles.app_engine, statement)
    report = verify_as(roles.app_engine)
    assert report.ok and report.last_seq == 4


@requires_postgres
@pytest.mark.postgres
@pytest.mark.parametrize("statement", [s for s in CHANGES if "aaa_audit_head" not in s])
def test_L10_the_trigger_refuses_even_after_a_mistaken_grant(roles: Roles, statement: str) -> None:
    append_as(roles.app_engine, "auditors")
    append_as(roles.app_engine, "readers")
    with roles.superuser.begin() as connection:
        connection.execute(
            text(f'GRANT ALL ON aaa_audit_events, aaa_audit_checkpoints TO "{roles.app}"')
        )
    assert "append-only" in refused(roles.app_engine, statement)
    assert verify_as(roles.app_engine).ok

    # Running the grants again takes the mistaken grant back.
    (grants,) = [b for b in recipe_blocks() if "REVOKE ALL ON aaa_audit_events" in b.sql]
    roles.run(grants)
    with roles.superuser.connect() as connection:
        held = connection.scalar(
            text("SELECT has_table_privilege(:role, 'aaa_audit_events', 'UPDATE, DELETE')"),
            {"role": roles.app},
        )
    assert held is False


@requires_postgres
@pytest.mark.postgres
def test_L10_the_owner_purges_and_the_app_appends_on(roles: Roles) -> None:
    append_as(roles.app_engine, "auditors")
    append_as(roles.app_engine, "readers")
    with writing(), Session(roles.owner_engine) as db:
        result = audit.purge(
            db,
            older_than=dt.timedelta(days=1),
            actor=Actor.system("retention"),
            now=utcnow() + dt.timedelta(days=2),
        )
        db.commit()
    assert (result.through, result.deleted) == (4, 4)
    append_as(roles.app_engine, "writers")
    report = verify_as(roles.app_engine)
    assert report.ok and report.last_seq == 7  # audit.purged, then two more
