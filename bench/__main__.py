"""``python -m bench [--short] [--only NAMES]``: run the cases and write bench/RESULTS.md.

Run it through ``python3 run.py bench``, which builds ``bench/.venv`` (the project and its
peers from PyPI) first. ``--short`` is a quick look at smaller sizes and fewer rounds; it
prints the tables and writes a file only with ``--output``. The sections of the cases run
replace theirs in the file; the others (cases not run, notes written by hand) are kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import subprocess
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


def commit() -> str:
    """The commit measured, and whether the library's source had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {head}" + (" with uncommitted changes to src/" if changed else "")


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
    if args.rounds:
        command += f" --rounds {args.rounds}"
    if args.no_postgres:
        command += " --no-postgres"

    header = [
        "# Benchmark results",
        "",
        "Each section says when, with which command, at which commit and on which machine "
        "it was measured.",
        "",
        "Every case runs its contenders side by side in interleaved rounds (the order rotates "
        "each round) and reports medians; each ratio is the median of the ratios taken within "
        "a round. The floor is the least work that answers the same question.",
        "",
    ]
    environment = [
        *machine(),
        versions(),
        f"- PostgreSQL: {postgres.describe() if postgres else 'not measured'}.",
    ]
    sections: dict[str, list[str]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flask-aaa-bench-") as tmp:
        options = Options(
            short=args.short, workdir=Path(tmp), postgres=postgres, rounds=args.rounds
        )
        runner.configure(sample_seconds=options.sample_seconds)
        for name in names:
            began, when, measured = time.monotonic(), dt.datetime.now(dt.UTC), commit()
            module = importlib.import_module(f".cases.{name}", __package__)
            print(f"\n== {CASE_MODULES[name]}", flush=True)
            parts: list[str] = []
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
                parts += part
            sections[CASE_MODULES[name]] = [
                f"## {CASE_MODULES[name]}",
                "",
                f"Measured {when:%Y-%m-%d %H:%M} UTC with `{command}` at {measured} "
                f"({time.monotonic() - began:.0f} s).",
                "",
                *environment,
                "",
                *(module.__doc__ or "").splitlines(),
                "",
                *parts,
            ]
    print(f"\nTotal time: {time.monotonic() - started:.0f} s.")
    if output is not None:
        previous = output.read_text(encoding="utf-8") if output.exists() else ""
        output.write_text(merge(previous, header, sections), encoding="utf-8")
        print(f"Wrote {output}")
    return 0


def merge(previous: str, header: list[str], sections: dict[str, list[str]]) -> str:
    """The new header, then the sections of ``previous`` (cases and hand-written notes alike)
    with those just measured put in place of theirs, new ones in the suite's order.

    A case section of an older file, which said when it was measured only in its header,
    gets that line under its heading, so that it keeps saying which run it comes from."""
    blocks: list[list[str]] = [[]]
    for line in previous.splitlines():
        if line.startswith("## "):
            blocks.append([])
        blocks[-1].append(line)
    old_header, old = blocks[0], blocks[1:]
    provenance = [x for x in old_header if x.startswith("Measured ")][:1]
    if provenance:  # an older file: one run for every section, its machine in the header
        provenance += ["", *(x for x in old_header if x.startswith("- "))]
    titles = list(CASE_MODULES.values())

    def title(block: list[str]) -> str:
        return block[0][3:].strip()

    kept: list[list[str]] = []
    for block in old:
        if title(block) in sections:
            kept.append(sections[title(block)])
            continue
        lines = [x for x in block if not x.startswith("Total time: ")]
        dated = any(x.startswith("Measured ") for x in lines[1:4])
        if title(lines) in titles and provenance and not dated:
            lines = [lines[0], "", *provenance, *lines[1:]]
        kept.append(lines)
    present = {title(block) for block in kept}
    for name, lines in sections.items():
        if name in present:
            continue
        rank = titles.index(name)
        at = next(
            (
                i
                for i, block in enumerate(kept)
                if title(block) not in titles or titles.index(title(block)) > rank
            ),
            len(kept),
        )
        kept.insert(at, lines)
    body = [line for block in kept for line in _trimmed(block)]
    return "\n".join([*header, *body]).rstrip("\n") + "\n"


def _trimmed(block: list[str]) -> list[str]:
    """A block with exactly one blank line after it."""
    while block and not block[-1].strip():
        block = block[:-1]
    return [*block, ""]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
