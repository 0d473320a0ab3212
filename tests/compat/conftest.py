"""The database of the compatibility tests: a new SQLite file per test, or the PostgreSQL
database named by ``AAA_TEST_DATABASE_URL`` (emptied before each test, as the app's own
``db.create_all()`` creates both the app's tables and Flask-AAA's)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from tests.conftest import DATABASE_URL, empty_database


@pytest.fixture
def database_uri(tmp_path: Any) -> str:
    if DATABASE_URL:
        empty_database(DATABASE_URL)
        return DATABASE_URL
    return f"sqlite:///{tmp_path / 'app.sqlite'}"


@pytest.fixture
def built() -> Iterator[Callable[[Flask], Flask]]:
    """Register an app whose engines are closed after the test (PostgreSQL connections)."""
    apps: list[Flask] = []

    def keep(app: Flask) -> Flask:
        apps.append(app)
        return app

    yield keep
    for app in apps:
        with app.app_context():
            for engine in app.extensions["sqlalchemy"].engines.values():
                engine.dispose()
