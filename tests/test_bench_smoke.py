"""A quick run of every benchmark case at a tiny size, so that the bench code cannot rot.

The figures are not checked (benchmarks are not pass/fail); each case must build, run its
contenders (peers that are not installed here are left out by the case itself), and report.
PostgreSQL is used only with ``AAA_TEST_DATABASE_URL``, and then in a database of its own.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
from bench import runner
from bench.options import CASE_MODULES, Options, postgres_database
from sqlalchemy import make_url


@pytest.fixture
def options(tmp_path: Path) -> Options:
    url = os.environ.get("AAA_TEST_DATABASE_URL", "")
    postgres = None
    if url.startswith("postgresql"):
        own = make_url(url).set(database="flask_aaa_bench_smoke")
        postgres = postgres_database(own.render_as_string(hide_password=False))
    opts = Options(short=True, workdir=tmp_path, postgres=postgres, tiny=True)
    runner.configure(sample_seconds=opts.sample_seconds)
    return opts


@pytest.mark.parametrize("name", list(CASE_MODULES))
def test_case_runs(name: str, options: Options) -> None:
    module = importlib.import_module(f"bench.cases.{name}")
    reason = getattr(module, "missing", lambda: None)()
    if reason:
        pytest.skip(reason)
    cases = module.build(options)
    for case in cases:
        try:
            result = runner.run_case(case, rounds=options.rounds_for(case), max_seconds=5)
        finally:
            if case.close is not None:
                case.close()
        lines = runner.report(result)
        assert lines[0] == f"### {case.title}"
        assert all(len(s) >= 1 for s in result.samples.values())
        for target in case.targets:
            measured, _met = target.measure(result)
            assert measured


def test_runner_interleaves_and_takes_median_ratios() -> None:
    calls: list[str] = []

    def sampler(name: str, value: float) -> runner.Contender:
        def sample() -> float:
            calls.append(name)
            return value

        return runner.Contender(name, sample)

    case = runner.Case("t", [sampler("a", 1.0), sampler("b", 2.0)], ours="a", floor="b")
    result = runner.run_case(case, rounds=4, max_seconds=60)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert result.ratio("b", "a") == 2.0
    assert runner.faster_by("a", "b", 2, "x").measure(result) == ("2x", True)


def test_audit_trail_is_reused_and_cut_back(tmp_path: Path) -> None:
    """Case 4 builds its trail once: a second run reuses it, without what the first run
    appended, and the trail it builds is one the library verifies."""
    from bench import trail
    from bench.cases.audit import check_appended
    from sqlalchemy import delete
    from sqlalchemy.orm import Session

    from flask_aaa.db import writing
    from flask_aaa.models import AuditEvent
    from flask_aaa.services import audit

    def append(db_trail: trail.Trail) -> None:
        with writing(), Session(db_trail.engine) as db:
            for number in range(3):
                trail.record(db, number)
            db.commit()

    url = trail.sqlite_url(tmp_path, 300)
    first = trail.prepare("SQLite", url, 300)
    try:
        assert first.origin.startswith("built")
        append(first)
        check_appended(first.engine, 300, 3)
    finally:
        first.close()
    again = trail.prepare("SQLite", url, 300)
    try:
        assert again.origin.startswith("reused")
        assert again.head()[0] == again.count() == 300
        with Session(again.engine) as db:
            report = audit.verify_chain(db)
        assert report.ok
        assert report.checked == 300
        append(again)
        with writing(), Session(again.engine) as db:
            db.execute(delete(AuditEvent).where(AuditEvent.seq == 302))
            db.commit()
        with pytest.raises(AssertionError, match="numbered"):
            check_appended(again.engine, 300, 3)
    finally:
        again.close()
    rebuilt = trail.prepare("SQLite", url, 300)  # a trail with a gap is not reused
    try:
        assert rebuilt.origin.startswith("built")
    finally:
        rebuilt.close()


def test_results_keep_the_sections_not_run() -> None:
    from bench.__main__ import merge

    previous = "\n".join(
        [
            "# Benchmark results",
            "",
            "Measured 2026-01-01 00:00 UTC with `python3 run.py bench`.",
            "",
            f"## {CASE_MODULES['writes']}",
            "",
            "old figures",
            "",
            f"## {CASE_MODULES['login']}",
            "",
            "login figures",
            "",
            "## Written by hand",
            "",
            "a note",
        ]
    )
    audit_title = CASE_MODULES["audit"]
    merged = merge(
        previous, ["# Benchmark results", ""], {audit_title: [f"## {audit_title}", "", "new"]}
    )
    lines = merged.splitlines()
    headings = [line for line in lines if line.startswith("## ")]
    assert headings == [
        f"## {CASE_MODULES['writes']}",
        f"## {audit_title}",
        f"## {CASE_MODULES['login']}",
        "## Written by hand",
    ]
    # The kept case sections say which run they come from; the hand-written one is as it was.
    assert lines.count("Measured 2026-01-01 00:00 UTC with `python3 run.py bench`.") == 2
    assert "a note" in lines
