"""Alembic migrations of Flask-AAA's tables, shipped with the package.

They keep their own version table (``aaa_alembic_version``), so an app's own Alembic or
Flask-Migrate history is never touched. Run them with ``flask aaa db upgrade`` or
:func:`upgrade`.
"""

from __future__ import annotations

import importlib.resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

VERSION_TABLE = "aaa_alembic_version"


def _config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option(
        "script_location", str(importlib.resources.files("flask_aaa") / "migrations")
    )
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the Flask-AAA tables of ``engine``'s database up to ``revision``."""
    command.upgrade(_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    command.downgrade(_config(engine), revision)


def current(engine: Engine) -> str | None:
    """The revision the database is at, or None before the first upgrade."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(_config(engine)).get_current_head()
