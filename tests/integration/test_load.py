"""A short run of the load driver (``scripts/load.py --seconds 8``): the demo under gunicorn
with 4 workers on PostgreSQL and Redis, a mixed workload (sign-ins, wrong passwords from
several addresses, pages, note writes, token API calls, role changes, session revocations),
then the driver's checks: no 5xx, request ids echoed, exactly the audit events each answer
implies, changed rows paired with their events, ``flask aaa audit verify``, login limits.

It runs in a database of its own (``aaa_load_ci``, created on the server of
``AAA_TEST_DATABASE_URL``) and Redis database 11 of the server of ``AAA_TEST_REDIS_URL``, so
the per-test schema resets of the rest of the suite never meet it. See docs/operations.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATABASE_URL, REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "scripts" / "load.py"
#: Redis database of the driver's runs (the suite uses the one in AAA_TEST_REDIS_URL).
REDIS_DB = "11"

REQUIRES_SERVICES = pytest.mark.skipif(
    not (DATABASE_URL or "").startswith("postgresql") or not REDIS_URL,
    reason="needs AAA_TEST_DATABASE_URL (PostgreSQL) and AAA_TEST_REDIS_URL: the load "
    "driver runs the demo under gunicorn on both",
)
pytestmark = [REQUIRES_SERVICES, pytest.mark.slow]


def run_driver(workdir: Path, database: str, *args: str, timeout: float = 240) -> dict[str, Any]:
    """Run the load driver with ``args``; return its JSON report (with its text report and
    exit status under ``_text`` and ``_status``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            str(DRIVER),
            "--quiet",
            "--json",
            str(out),
            "--workdir",
            str(workdir / "run"),
            "--database-url",
            str(DATABASE_URL),
            "--database-name",
            database,
            "--redis-url",
            str(REDIS_URL),
            "--redis-db",
            REDIS_DB,
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if not out.exists():
        pytest.fail(f"the load driver wrote no report:\n{result.stdout}\n{result.stderr[-4000:]}")
    report: dict[str, Any] = json.loads(out.read_text())
    report["_text"] = result.stdout
    report["_status"] = result.returncode
    return report


def failed_checks(report: dict[str, Any], *names: str) -> list[dict[str, Any]]:
    """The checks named (all of them without names) that did not hold."""
    chosen = [c for c in report["checks"] if not names or c["name"] in names]
    missing = set(names) - {c["name"] for c in chosen}
    assert not missing, f"the report has no check named {sorted(missing)}"
    return [c for c in chosen if not c["ok"]]


def test_short_load_run_passes_every_check(tmp_path: Path) -> None:
    report = run_driver(tmp_path, "aaa_load_ci", "--seconds", "8")
    assert not failed_checks(report), report["_text"]
    assert report["_status"] == 0, report["_text"]
    summary = report["summary"]
    assert summary["requests"] > 100, report["_text"]
    assert "429" in summary["statuses"], "the login limits were never reached"
    assert report["audit"]["events"] > 50, report["_text"]
