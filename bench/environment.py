"""The benchmark's own environment, ``bench/.venv``: the project and its peers from PyPI.

Standard library only: ``run.py bench`` imports this with the system Python before the
environment exists. The project's own ``.venv`` is never touched.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".bench-installed"

#: The peers, as their PyPI names. Unpinned: RESULTS.md records the versions measured.
PEERS = (
    "Flask-Security-Too",
    "Flask-Login",
    "casbin",
    "argon2-cffi",
    "gunicorn",
    "psycopg[binary]",
)


def ensure_wrk() -> None:
    """wrk drives the HTTP case; on Debian as root it is installed here, else that case
    says it was skipped and why."""
    if shutil.which("wrk") or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    print("Installing wrk (Debian package) for the HTTP case ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    if subprocess.run(install, check=False, **quiet).returncode != 0:  # type: ignore[call-overload]
        subprocess.run(["apt-get", "update", "-q"], check=False, **quiet)  # type: ignore[call-overload]
        subprocess.run(install, check=False, **quiet)  # type: ignore[call-overload]


def ensure() -> Path:
    """Create ``bench/.venv`` (first run, or when pyproject.toml or the peers changed) and
    return its Python."""
    ensure_wrk()
    wanted = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + " ".join(PEERS).encode()
    ).hexdigest()
    if not PYTHON.exists():
        print("Creating bench/.venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if STAMP.exists() and STAMP.read_text() == wanted:
        return PYTHON
    print("Installing Flask-AAA and the peers into bench/.venv (first run only) ...", flush=True)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[postgres,redis,server]", *PEERS], check=True)
    STAMP.write_text(wanted)
    return PYTHON
