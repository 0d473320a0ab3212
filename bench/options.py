"""What a run is asked to do: sizes, rounds, the working directory and the databases."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, make_url, text

from .runner import Case

T = TypeVar("T")

#: Case modules in the order of issue 8, with their section titles.
CASE_MODULES = {
    "requests": "1. Protected GET (session and bearer token)",
    "http": "1b. Protected GET over HTTP (gunicorn and wrk)",
    "writes": "2. Audited write",
    "permissions": "3. Warm permission check",
    "audit": "4. The audit engine at 1,000,000 events",
    "login": "5. Login",
}


@dataclasses.dataclass
class Postgres:
    """A PostgreSQL database that belongs to the bench (never the test suite's)."""

    url: str
    server_version: str

    def describe(self) -> str:
        return f"{self.server_version} at {re.sub(r'//[^@/]*@', '//', self.url)}"

    def reset(self) -> str:
        """Empty the database (its ``public`` schema) and return its URL."""
        engine = create_engine(self.url)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        engine.dispose()
        return self.url


def postgres_database(url: str) -> Postgres | None:
    """Connect to ``url``'s server, create its database if missing; None if unreachable."""
    try:
        import psycopg
    except ImportError:
        return None
    parsed = make_url(url)
    name = parsed.database or "bench"
    if name in {"test", "postgres", "template0", "template1"}:
        raise SystemExit(f"refusing to use database {name!r}: give the bench its own database")
    admin = parsed.set(drivername="postgresql", database="postgres")
    try:
        with psycopg.connect(
            admin.render_as_string(hide_password=False), autocommit=True, connect_timeout=3
        ) as conn:
            version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if exists is None:
                conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    except psycopg.Error as exc:
        print(f"PostgreSQL not used ({type(exc).__name__}: {exc})".strip(), flush=True)
        return None
    return Postgres(url, f"PostgreSQL {version}")


@dataclasses.dataclass
class Options:
    short: bool
    workdir: Path
    postgres: Postgres | None = None
    rounds: int | None = None
    #: Smoke mode (the test suite): the smallest sizes, a few short rounds.
    tiny: bool = False
    _files: Iterator[int] = dataclasses.field(default_factory=itertools.count)

    @property
    def sample_seconds(self) -> float:
        return 0.002 if self.tiny else 0.02 if self.short else 0.05

    @property
    def max_seconds(self) -> float:
        """Per case: rounds stop (after three) once a case has run this long."""
        return 2.0 if self.tiny else 20.0 if self.short else 90.0

    def rounds_for(self, case: Case) -> int:
        if self.rounds:
            return self.rounds
        if self.tiny:
            return min(3, case.rounds or 3)
        wanted = case.rounds or 15
        return max(min(5, wanted), wanted // 2) if self.short else wanted

    def pick(self, full: T, short: T, tiny: T) -> T:
        return tiny if self.tiny else short if self.short else full

    def sizes(self, full: Any, short: Any, tiny: Any = ((10, 100), (20, 400))) -> Any:
        return self.pick(full, short, tiny)

    def databases(self) -> list[tuple[str, Any]]:
        """(name, a function returning a fresh database URL) for SQLite and PostgreSQL."""

        def sqlite() -> str:
            return f"sqlite:///{self.workdir / f'bench-{next(self._files)}.db'}"

        found: list[tuple[str, Any]] = [("SQLite", sqlite)]
        if self.postgres is not None:
            found.append(("PostgreSQL", self.postgres.reset))
        return found
