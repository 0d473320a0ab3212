"""Alembic environment of Flask-AAA: runs on the engine handed over by ``upgrade()``."""

from __future__ import annotations

from alembic import context

from flask_aaa.migrations import VERSION_TABLE
from flask_aaa.models import Base

engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,
        include_name=lambda name, type_, parent: (
            type_ != "table" or (name or "").startswith("aaa_")
        ),
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
