#!/usr/bin/env python3
"""Project runner: needs only Python 3.11+. Creates ``.venv`` and installs what is needed.

python3 run.py demo      start the demo application (SQLite, seeded, on 127.0.0.1:5000)
python3 run.py test      run the whole test suite (extra arguments go to pytest)
python3 run.py lint      ruff (lint and format check) and mypy --strict
python3 run.py bench     benchmarks against the peers (bench/.venv; writes bench/RESULTS.md);
                         --short for a quick look, --help for the options
python3 run.py flask ... the flask command in the environment, e.g.
                         python3 run.py flask --app flask_aaa.demo aaa list-users
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".flask-aaa-installed"


def ensure_environment() -> None:
    """Create the virtual environment and (re)install when pyproject.toml has changed."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not PYTHON.exists():
        print("Creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    print("Installing Flask-AAA and its test tools into .venv (first run only) ...", flush=True)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


def run(*args: str) -> int:
    return subprocess.run(list(args), cwd=ROOT, check=False).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "lint", "flask", "bench"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        from bench.environment import ensure

        return run(str(ensure()), "-m", "bench", *rest)
    ensure_environment()
    if command == "demo":
        return run(str(PYTHON), "-m", "flask_aaa.demo", *rest)
    if command == "test":
        return run(str(PYTHON), "-m", "pytest", *rest)
    if command == "flask":
        return run(str(BIN / "flask"), *rest)
    status = run(str(BIN / "ruff"), "check", ".")
    status |= run(str(BIN / "ruff"), "format", "--check", ".")
    status |= run(str(BIN / "mypy"))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
