"""The peers' models, defined once per process (their table classes cannot be redefined)."""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any


@functools.cache
def fs_models() -> SimpleNamespace:
    """Flask-Security-Too's SQLAlchemy models (fsqla_v3) on a Flask-SQLAlchemy object of
    their own: ``db``, ``User``, ``Role``."""
    from flask_security.models import fsqla_v3 as fsqla
    from flask_sqlalchemy import SQLAlchemy

    db: Any = SQLAlchemy()
    fsqla.FsModels.set_db_info(db)

    class Role(db.Model, fsqla.FsRoleMixin):  # type: ignore[name-defined,misc]
        __tablename__ = "role"

    class User(db.Model, fsqla.FsUserMixin):  # type: ignore[name-defined,misc]
        __tablename__ = "user"

    return SimpleNamespace(db=db, User=User, Role=Role)


def available(*modules: str) -> str | None:
    """None when every module imports, else the reason a case must be skipped."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(missing)}" if missing else None
