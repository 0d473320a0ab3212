"""``python -m bench [--short] [--only NAMES]``: run the cases and write bench/RESULTS.md.

Run it through ``python3 run.py bench``, which builds ``bench/.venv`` (the project and its
peers from PyPI) first. ``--short`` is a quick look at smaller sizes and fewer rounds; it
prints the tables and writes a file only with ``--output``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from . import runner
from .options import CASE_MODULES, Options, postgres_database

HERE = Path(__file__).resolve().parent
PACKAGES = (
    "flask-aaa",
    "Flask",
    "Flask-Login",
    "Flask-Security-Too",
    "casbin",
    "argon2-cffi",
    "pwdlib",
    "SQLAlchemy",
    "psycopg",
    "gunicorn",
)


def machine() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f", {int(line.split()[1]) // 1024:,} MiB memory"
    except OSError:
        pass
    return [
        f"- Machine: {os.cpu_count()} CPUs ({cpu}){memory}, {platform.system()} "
        f"{platform.release()}. Shared and noisy: only the ratios of one run mean anything.",
        f"- Python {platform.python_version()} ({platform.python_implementation()}).",
    ]


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return "- Packages: " + ", ".join(found) + "."


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 run.py bench", description=__doc__)
    parser.add_argument("--short", action="store_true", help="smaller sizes, fewer rounds")
    parser.add_argument(
        "--only", default="", help=f"comma-separated cases: {', '.join(CASE_MODULES)}"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds per case")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/bench"
        ),
        help="a PostgreSQL URL whose database the bench owns (created if missing)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--output", type=Path, help="where to write the results")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CASE_MODULES)
    unknown = sorted(set(names) - set(CASE_MODULES))
    if unknown:
        parser.error(f"unknown cases: {', '.join(unknown)}")
    output = args.output or (None if args.short else HERE / "RESULTS.md")
    postgres = None if args.no_postgres else postgres_database(args.postgres)
    command = "python3 run.py bench" + (" --short" if args.short else "")
    if args.only:
        command += f" --only {args.only}"

    lines = [
        "# Benchmark results",
        "",
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC with `{command}`.",
        "",
        *machine(),
        versions(),
        f"- PostgreSQL: {postgres.describe() if postgres else 'not measured'}.",
        "",
        "Every case runs its contenders side by side in interleaved rounds (the order rotates "
        "each round) and reports medians; each ratio is the median of the ratios taken within "
        "a round. The floor is the least work that answers the same question.",
        "",
        "Not measured by this suite yet: case 1 over HTTP (gunicorn, 2 workers, a bounded "
        "load generator on 127.0.0.1), case 1 with Redis, and case 4 (the audit engine at "
        "1,000,000 events).",
        "",
    ]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flask-aaa-bench-") as tmp:
        options = Options(
            short=args.short, workdir=Path(tmp), postgres=postgres, rounds=args.rounds
        )
        runner.configure(sample_seconds=options.sample_seconds)
        for name in names:
            module = importlib.import_module(f".cases.{name}", __package__)
            lines += [f"## {CASE_MODULES[name]}", "", *(module.__doc__ or "").splitlines(), ""]
            print(f"\n== {CASE_MODULES[name]}", flush=True)
            for case in module.build(options):
                print(f"-- {case.title}", flush=True)
                try:
                    result = runner.run_case(
                        case, rounds=options.rounds_for(case), max_seconds=options.max_seconds
                    )
                finally:
                    if case.close is not None:
                        case.close()
                part = runner.report(result)
                print("\n".join(part), flush=True)
                lines += part
    lines.append(f"Total time: {time.monotonic() - started:.0f} s.")
    if output is not None:
        output.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"\nWrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
