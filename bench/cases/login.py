"""Case 5: login, that is the password check, and the memory of many logins at once.

- raw argon2-cffi (the floor): ``PasswordHasher(...).verify(hash, password)`` with the
  parameters of the ``owasp`` preset (m=19 MiB, t=2, p=1) on the same hash.
- Flask-AAA: ``PasswordService.verify`` (NFKC normalization, the length rule, a hashing slot
  from the bounded semaphore, the hash run on the process's fixed pool of hashing threads,
  pwdlib's verify-and-update with the rehash check).
- Peak memory of 50 concurrent logins: 50 threads verifying at once, in a fresh process;
  the figure is the process's peak resident memory above what it held before the logins.
  Flask-AAA lets ``AAA_PASSWORD_HASH_CONCURRENCY`` (4) hash at a time, on that many pool
  threads, the others wait for a slot (up to ``AAA_PASSWORD_HASH_WAIT``, then 503); raw
  argon2-cffi runs all 50, each on its own thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ..runner import Case, CaseResult, Contender, Target, at_most, repeated

PASSWORD = "plum-harbor-violin-42"
CONCURRENT = 50
RAW = "raw argon2-cffi verify (floor)"
OURS = "Flask-AAA PasswordService.verify"
RAW_MEMORY = f"raw argon2-cffi, {CONCURRENT} threads at once"
OURS_MEMORY = f"Flask-AAA, {CONCURRENT} threads at once"
#: glibc raises its mmap threshold after the first large free, so each thread's 19 MiB
#: argon2 block then comes from (and stays in) one of up to 8 x CPUs malloc arenas. A
#: fixed threshold keeps every block mmapped, returned to the system when freed.
FIXED_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}
OURS_FIXED = f"Flask-AAA, {CONCURRENT} threads at once, MALLOC_MMAP_THRESHOLD_=131072"
ROOT = Path(__file__).resolve().parents[2]


def _services(preset: str) -> tuple[Any, Any, str]:
    """Our password service, argon2-cffi's hasher with the same parameters, and a hash."""
    from argon2 import PasswordHasher

    from flask_aaa.config import HASH_PRESETS, Settings
    from flask_aaa.services.passwords import PasswordService

    settings = Settings.from_config(
        {"AAA_PASSWORD_HASH_PRESET": preset, "AAA_PASSWORD_HASH_WAIT": 30.0},
        debug=False,
        testing=True,
    )
    ours = PasswordService(settings)
    params = HASH_PRESETS[preset]
    raw = PasswordHasher(
        time_cost=params["time_cost"],
        memory_cost=params["memory_cost"],
        parallelism=params["parallelism"],
    )
    return ours, raw, ours.hash(PASSWORD)


def _peak_memory(kind: str, preset: str) -> dict[str, float]:
    """In this process: 50 threads verify at once; the peak RSS above the start, in MiB."""
    ours, raw, stored = _services(preset)
    if kind == "ours":
        ok, _ = ours.verify(PASSWORD, stored)
    else:
        ok = raw.verify(stored, PASSWORD)
    assert ok
    before = _status("VmRSS")
    barrier = threading.Barrier(CONCURRENT)
    failures: list[str] = []

    def login() -> None:
        barrier.wait()
        try:
            if kind == "ours":
                ours.verify(PASSWORD, stored)
            else:
                raw.verify(stored, PASSWORD)
        except Exception as exc:
            failures.append(type(exc).__name__)

    threads = [threading.Thread(target=login) for _ in range(CONCURRENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return {"peak_mib": (_status("VmHWM") - before) / 1024, "failures": len(failures)}


def _status(field: str) -> int:
    """A field of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_sampler(kind: str, preset: str, env: dict[str, str] | None = None) -> Any:
    def sample() -> float:
        out = subprocess.run(
            [sys.executable, "-m", "bench.cases.login", kind, preset],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        found = json.loads(out.stdout.strip().splitlines()[-1])
        if found["failures"]:
            raise RuntimeError(f"{found['failures']} of the concurrent logins failed ({kind})")
        return float(found["peak_mib"])

    return sample


def build(options: Any) -> list[Case]:
    from flask_aaa.config import HASH_PRESETS

    from ..peers import available

    missing = available("argon2")
    if missing or not Path("/proc/self/status").exists():
        return []
    preset = "fast" if options.tiny else "owasp"
    ours, raw, stored = _services(preset)
    check = Case(
        title=f"Password check, argon2id preset `{preset}` (per check)",
        contenders=[
            Contender(RAW, repeated(lambda: raw.verify(stored, PASSWORD))),
            Contender(OURS, repeated(lambda: ours.verify(PASSWORD, stored))),
        ],
        ours=OURS,
        floor=RAW,
        targets=[at_most(OURS, RAW, 1.05, "within 5% of the raw argon2 call")],
        rounds=41,
    )
    params = HASH_PRESETS[preset]
    slots = ours.settings.password_hash_concurrency
    bound = slots * params["memory_cost"] / 1024 + 32

    def bounded(name: str) -> Any:
        def measure(result: CaseResult) -> tuple[str, bool]:
            peak = result.median(name)
            return f"{peak:.0f} MiB (bound {bound:.0f} MiB)", peak <= bound

        return measure

    text = f"at most {slots} hashing slots x {params['memory_cost'] / 1024:.0f} MiB + 32 MiB"

    memory = Case(
        title=f"Peak memory of {CONCURRENT} concurrent logins (above the idle process)",
        contenders=[
            Contender(RAW_MEMORY, memory_sampler("raw", preset)),
            Contender(OURS_MEMORY, memory_sampler("ours", preset)),
            Contender(OURS_FIXED, memory_sampler("ours", preset, FIXED_THRESHOLD)),
        ],
        ours=OURS_MEMORY,
        unit="mib",
        targets=[
            Target(f"bounded: {text}", bounded(OURS_MEMORY)),
            Target(f"bounded with a fixed mmap threshold: {text}", bounded(OURS_FIXED)),
        ],
        rounds=1 if options.tiny else 5,
        notes=[
            "The bound is the slots' argon2 blocks plus 32 MiB of slack. glibc's dynamic "
            "mmap threshold rises after the first argon2 block is freed, so later blocks can "
            "be carved from malloc arenas that keep the memory after the hash; hashing only "
            "on the pool's threads limits that to their arenas, and a fixed threshold "
            "(`MALLOC_MMAP_THRESHOLD_`, third row) returns every block when it is freed.",
        ],
    )
    return [check, memory]


if __name__ == "__main__":
    print(json.dumps(_peak_memory(sys.argv[1], sys.argv[2])))
