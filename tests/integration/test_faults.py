"""Faults under load (V01, V02, L07, L08 at HTTP level): the demo under gunicorn with 4
workers on PostgreSQL and Redis, driven by ``scripts/load.py``, while

- PostgreSQL is cut (a TCP proxy in front of it resets every connection) for 5 seconds;
- Redis is cut the same way (for 12 seconds);
- gunicorn workers are killed with SIGKILL between a change and its commit;
- every insert into the audit trail fails (a trigger raises PostgreSQL's ``disk_full``).

Each scenario is one run of the driver (25 to 40 seconds); the tests read its report. The
outcomes observed, and the problems found, are in docs/operations.md. The clock-skew cases
(V03) are unit tests: tests/services/test_audit.py (``test_V03_*``).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_load import REQUIRES_SERVICES, failed_checks, run_driver

pytestmark = [REQUIRES_SERVICES, pytest.mark.slow]

DATABASE = "aaa_faults_ci"
SECONDS = "14"
NO_HALF_WRITES = (
    "audit events match requests",
    "changed rows match their events",
    "flask aaa audit verify",
)


@pytest.fixture(scope="module")
def postgres_cut(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("postgres-cut")
    return run_driver(workdir, DATABASE, "--seconds", SECONDS, "--pg-cut", "4:9")


@pytest.fixture(scope="module")
def redis_cut(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("redis-cut")
    # Long enough for the stuffers to exhaust every worker's own per-account budget.
    return run_driver(workdir, DATABASE, "--seconds", "22", "--redis-cut", "4:16")


@pytest.fixture(scope="module")
def killed_workers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("kill-worker")
    return run_driver(workdir, DATABASE, "--seconds", SECONDS, "--kill-worker", "4,7,10")


@pytest.fixture(scope="module")
def audit_failing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("audit-fail")
    return run_driver(workdir, DATABASE, "--seconds", "12", "--audit-fail", "4:8")


# -- V01: PostgreSQL down --


def held(report: dict[str, Any], *names: str) -> None:
    """Every named check of the report held (the text report is the failure message)."""
    failed = failed_checks(report, *names)
    assert not failed, report["_text"]


def test_V01_postgres_cut_refuses_writes_with_503_and_retry_after(postgres_cut):
    held(postgres_cut, "PostgreSQL down: writes refused with 503")
    assert postgres_cut["unavailable_without_retry_after"] == 0


def test_V01_postgres_back_is_served_again_without_a_restart(postgres_cut):
    held(postgres_cut, "PostgreSQL back: recovered without a restart")


def test_V01_postgres_cut_leaves_no_action_without_its_event(postgres_cut):
    held(postgres_cut, *NO_HALF_WRITES)


def test_V01_postgres_cut_never_answers_500(postgres_cut):
    assert set(postgres_cut["server_errors"]) <= {"503"}, postgres_cut["_text"]


def test_V01_postgres_cut_keeps_the_rate_limits_in_redis(postgres_cut):
    assert postgres_cut["server_log"]["storage_fallback_warnings"] == 0


# -- V02: Redis down --


def test_V02_redis_cut_falls_back_to_memory_limits_and_logs_it(redis_cut):
    held(redis_cut, "Redis down: in-memory limits, warning logged")
    assert redis_cut["faults"]["redis"]["logins_refused"] > 0, redis_cut["_text"]


def test_V02_redis_cut_never_leaves_logins_unlimited(redis_cut):
    held(redis_cut, "throttling held")


def test_V02_redis_back_is_used_again(redis_cut):
    assert redis_cut["server_log"]["storage_recovered"] >= 1, redis_cut["_text"]


def test_V02_redis_cut_leaves_the_trail_intact(redis_cut):
    held(redis_cut, *NO_HALF_WRITES)


def test_V02_redis_cut_never_answers_5xx(redis_cut):
    assert not redis_cut["server_errors"], redis_cut["_text"]


# -- L07: a worker killed in the middle of an audited write --


def test_L07_worker_killed_mid_write_leaves_no_half_write(killed_workers):
    held(killed_workers, "a kill hit a write in flight", *NO_HALF_WRITES)


def test_L07_killed_workers_are_replaced_and_nothing_else_fails(killed_workers):
    held(
        killed_workers,
        "killed workers replaced",
        "every request answered (but on killed workers)",
        "no 5xx",
    )


# -- L08: the audit write failing, at HTTP level --


def test_L08_audit_write_failing_refuses_changes_with_503_and_recovers(audit_failing):
    held(
        audit_failing,
        "audit write down: writes refused with 503",
        "audit write back: recovered without a restart",
        "audit write down: pages still served",
        "no 5xx but 503 with Retry-After",
        *NO_HALF_WRITES,
    )
