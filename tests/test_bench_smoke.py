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
