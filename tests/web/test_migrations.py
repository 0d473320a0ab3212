"""The shipped Alembic migrations build exactly the schema of the models, on both databases."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from flask_aaa import migrations
from flask_aaa.models import GENESIS_HASH, Base
from tests.conftest import DATABASE_URL, empty_database


def _ours(name: str | None) -> bool:
    return (name or "").startswith("aaa_") and name != migrations.VERSION_TABLE


@pytest.fixture
def empty_engine(tmp_path):
    url = DATABASE_URL or f"sqlite:///{tmp_path / 'migrate.db'}"
    empty_database(url)
    engine = create_engine(url)
    yield engine
    engine.dispose()


def test_upgrade_matches_the_models(empty_engine):
    migrations.upgrade(empty_engine)
    assert migrations.current(empty_engine) == migrations.head(empty_engine)
    with empty_engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                # Only Flask-AAA's tables: the app's (or the demo's) share the metadata.
                "include_name": lambda name, type_, _parent: type_ != "table" or _ours(name),
                "include_object": lambda _obj, name, type_, _reflected, _other: (
                    type_ != "table" or _ours(name)
                ),
            },
        )
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_upgrade_seeds_the_single_row_tables(empty_engine):
    migrations.upgrade(empty_engine)
    with empty_engine.connect() as connection:
        assert connection.execute(text("SELECT version FROM aaa_authz_state")).all() == [(1,)]
        head = connection.execute(text("SELECT seq, hash FROM aaa_audit_head")).all()
    assert head == [(0, GENESIS_HASH)]


def test_upgrade_is_idempotent_and_downgrade_removes_everything(empty_engine):
    migrations.upgrade(empty_engine)
    migrations.upgrade(empty_engine)
    migrations.downgrade(empty_engine, "base")
    names = [n for n in inspect(empty_engine).get_table_names() if n.startswith("aaa_")]
    assert names == ["aaa_alembic_version"]


def test_cli_db_upgrade_on_a_new_database(tmp_path):
    from tests.conftest import SECRET, build_app

    url = DATABASE_URL or f"sqlite:///{tmp_path / 'cli.db'}"
    empty_database(url)
    app = build_app(
        {
            "TESTING": True,
            "SECRET_KEY": SECRET,
            "SQLALCHEMY_DATABASE_URI": url,
            "AAA_PASSWORD_HASH_PRESET": "fast",
        }
    )
    runner = app.test_cli_runner()
    result = runner.invoke(args=["aaa", "db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"revision {migrations.head(create_engine(url))}" in result.output
    assert (
        f"current: {migrations.head(create_engine(url))}"
        in runner.invoke(args=["aaa", "db", "current"]).output
    )
