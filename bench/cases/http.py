"""Case 1 over HTTP: the protected GET of case 1 served by gunicorn (2 sync workers, the same
apps as in-process) and driven by wrk on 127.0.0.1, with a cookie session and with a bearer
token. Each sample is one wrk run of a few seconds (2 threads, 4 connections); the time per
request is the inverse of its throughput, and its median latency (p50) is kept beside it.

- bare Flask (the floor), bare Flask + one session query (the floor of server-side
  sessions), Flask-Login (the tutorial pattern) and Flask-Security-Too: as in case 1, on
  the same database as Flask-AAA in each table.
- Flask-AAA: server-side sessions (one query per request) and ``@permissions_required``;
  rate limits in memory, and, where Redis answers, a second server of the same app with its
  rate limits in Redis (the bearer requests pass a per-address limit on every request).

Before it is measured, every server must answer the signed-in request with 200 and the same
request without its cookie or token with something else; a sample with any non-2xx answer
or socket timeout fails the run.
"""

from __future__ import annotations

import atexit
import dataclasses
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..apps import (
    FS_SALT,
    SECRET_KEY,
    Built,
    aaa_app,
    bare_app,
    cookie_header,
    fs_app,
    session_floor_app,
    tutorial_app,
)
from ..peers import available
from ..runner import Case, CaseResult, Contender, Target, format_ratio, throughput_at_least

ROOT = Path(__file__).resolve().parents[2]
FLOOR = "bare Flask (floor)"
SESSION_FLOOR = "bare Flask + one session query (server-side floor)"
FLASK_LOGIN = "Flask-Login (tutorial pattern)"
FS_TOO = "Flask-Security-Too"
WRK_THREADS = 2
WRK_CONNECTIONS = 4
WORKERS = 2
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def missing() -> str | None:
    """Why this case cannot run here, or None."""
    if shutil.which("wrk") is None:
        return "wrk is not installed (Debian: apt-get install wrk)"
    return available("gunicorn")


def redis_reachable(url: str) -> bool:
    try:
        import redis
    except ImportError:
        return False
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        return bool(client.ping())
    except redis.RedisError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(port: int, path: str, headers: dict[str, str]) -> int:
    """The status of one GET on 127.0.0.1:``port`` (0 when nothing answers yet)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


@dataclasses.dataclass(eq=False)
class Server:
    """One app under gunicorn, started on first use and stopped by :meth:`stop`."""

    kind: str
    url: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def ensure(self) -> int:
        if self.process is None:
            self.port = free_port()
            env = {
                **os.environ,
                "BENCH_APP": self.kind,
                "BENCH_DATABASE_URL": self.url,
                "BENCH_CONFIG": json.dumps(self.config),
                "BENCH_SECRET_KEY": SECRET_KEY,
                "BENCH_FS_SALT": FS_SALT,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
                ),
            }
            _RUNNING.add(self)
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "gunicorn",
                    "--workers", str(WORKERS),
                    "--worker-class", "sync",
                    "--bind", f"127.0.0.1:{self.port}",
                    "--log-level", "warning",
                    "bench.serve:create()",
                ],
                cwd=ROOT,
                env=env,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while fetch(self.port, "/", {}) == 0:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"gunicorn for {self.kind} did not start")
                time.sleep(0.1)
        return self.port

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        _RUNNING.discard(self)


#: Servers up now: stopped at exit too, should a case fail before its ``close``.
_RUNNING: set[Server] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_wrk(output: str) -> tuple[float, float]:
    """(requests per second, p50 latency in seconds) of one wrk run; fails on any non-2xx
    answer or socket timeout."""
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if bad:
        raise AssertionError(f"wrk saw {bad.group(1)} answers that were not 2xx:\n{output}")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errors and (int(errors.group(1)) or int(errors.group(4))):
        raise AssertionError(f"wrk could not connect or timed out:\n{output}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
    if rate is None or p50 is None:
        raise AssertionError(f"unexpected wrk output:\n{output}")
    return float(rate.group(1)), float(p50.group(1)) * _UNITS[p50.group(2)]


@dataclasses.dataclass
class Load:
    """wrk against one server and path; each sample also records its p50."""

    server: Server
    path: str
    headers: dict[str, str]
    seconds: int
    latencies: list[float] = dataclasses.field(default_factory=list)
    checked: bool = False

    def check(self) -> None:
        """The signed-in request answers 200, the same without credentials does not."""
        port = self.server.ensure()
        got = fetch(port, self.path, self.headers)
        if got != 200:
            raise AssertionError(f"{self.server.kind} {self.path} answered {got}, not 200")
        anonymous = fetch(port, self.path, {})
        if anonymous == 200:
            raise AssertionError(f"{self.server.kind} {self.path} answered 200 without credentials")
        self.checked = True

    def sample(self) -> float:
        if not self.checked:
            self.check()
        command = [
            "wrk", "--threads", str(WRK_THREADS), "--connections", str(WRK_CONNECTIONS),
            "--duration", f"{self.seconds}s", "--timeout", "5s", "--latency",
        ]  # fmt: skip
        for name, value in self.headers.items():
            command += ["--header", f"{name}: {value}"]
        command.append(f"http://127.0.0.1:{self.server.port}{self.path}")
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=self.seconds + 30, check=True
        )
        rate, p50 = parse_wrk(done.stdout)
        self.latencies.append(p50)
        return 1 / rate


def p50_at_most(ours: Load, floor: Load, limit: float, text: str) -> Target:
    def measure(_result: CaseResult) -> tuple[str, bool]:
        pairs = zip(ours.latencies, floor.latencies, strict=False)
        value = statistics.median(a / b for a, b in pairs if b > 0)
        ours_ms = statistics.median(ours.latencies) * 1e3
        floor_ms = statistics.median(floor.latencies) * 1e3
        return f"{format_ratio(value)} ({ours_ms:.2f} ms vs {floor_ms:.2f} ms)", value <= limit

    return Target(text, measure)


def _seeded(built: Built) -> str:
    """The Cookie header of ``built``'s signed-in client; its in-process engines closed."""
    header = cookie_header(built.client)
    built.close()
    return header


def build(options: Any) -> list[Case]:
    reason = missing()
    if reason:
        print(f"case 1 over HTTP skipped: {reason}", flush=True)
        return []
    seconds = options.pick(3, 1, 1)
    fs_missing = available("flask_security")
    with_redis = redis_reachable(REDIS_URL)
    floor_server = Server("bare", "")
    floor_cookie = _seeded(bare_app())
    cases: list[Case] = []
    for db_name, fresh in options.databases():
        url = fresh()
        servers = [floor_server]
        ours_built = aaa_app(url)
        ours_cookie = {"Cookie": cookie_header(ours_built.client)}
        ours_token = dict(ours_built.token_headers or {})
        ours_built.close()
        ours_server = Server("aaa", url, {"AAA_TOKEN_LIMIT_PER_IP": "1000000 per minute"})
        redis_server = (
            Server("aaa", url, {"AAA_RATELIMIT_STORAGE_URI": REDIS_URL}) if with_redis else None
        )
        session_floor_server = Server("session_floor", url)
        session_floor_cookie = {"Cookie": _seeded(session_floor_app(url))}
        tutorial_server = Server("tutorial", url)
        tutorial_cookie = {"Cookie": _seeded(tutorial_app(url))}
        servers += [ours_server, session_floor_server, tutorial_server]
        servers += [redis_server] if redis_server else []
        fs_server = fs_token = fs_cookie = None
        if fs_missing is None:
            fs_built = fs_app(url)
            fs_token = dict(fs_built.token_headers or {})
            fs_cookie = {"Cookie": _seeded(fs_built)}
            fs_server = Server("fs", url)
            servers.append(fs_server)

        ours_name = f"Flask-AAA on {db_name}"
        floor_load = Load(floor_server, "/protected", {"Cookie": floor_cookie}, seconds)
        ours_load = Load(ours_server, "/protected", ours_cookie, seconds)
        contenders = [
            Contender(FLOOR, floor_load.sample),
            Contender(
                SESSION_FLOOR,
                Load(session_floor_server, "/protected", session_floor_cookie, seconds).sample,
            ),
            Contender(
                FLASK_LOGIN, Load(tutorial_server, "/protected", tutorial_cookie, seconds).sample
            ),
            Contender(ours_name, ours_load.sample),
        ]
        targets = [
            throughput_at_least(ours_name, FLOOR, 0.5, "at least 0.5x bare Flask's throughput"),
            p50_at_most(ours_load, floor_load, 2.0, "p50 at most 2x the floor's"),
        ]
        if fs_server is not None and fs_cookie is not None:
            contenders.insert(
                3, Contender(FS_TOO, Load(fs_server, "/protected", fs_cookie, seconds).sample)
            )
            targets.insert(
                0, throughput_at_least(ours_name, FS_TOO, 1.5, "at least 1.5x Flask-Security-Too")
            )
        if redis_server is not None:
            contenders.append(
                Contender(
                    f"{ours_name}, rate limits in Redis",
                    Load(redis_server, "/protected", ours_cookie, seconds).sample,
                )
            )
        notes = [
            f"Every contender's tables are on {db_name}; {WORKERS} gunicorn sync workers each."
        ]
        if fs_missing:
            notes.append(f"Flask-Security-Too skipped ({fs_missing}).")
        if not with_redis:
            notes.append(f"Redis did not answer at {REDIS_URL}: no Redis contender.")
        cases.append(
            Case(
                title=f"Protected GET over HTTP, cookie session, on {db_name} (per request)",
                contenders=contenders,
                ours=ours_name,
                floor=FLOOR,
                targets=targets,
                notes=notes,
                rounds=7,
            )
        )

        token_name = f"Flask-AAA personal access token on {db_name}"
        token_floor = Load(floor_server, "/protected", {"Cookie": floor_cookie}, seconds)
        token_load = Load(ours_server, "/api/protected", ours_token, seconds)
        token_contenders = [
            Contender(FLOOR, token_floor.sample),
            Contender(token_name, token_load.sample),
        ]
        token_targets = [
            throughput_at_least(token_name, FLOOR, 0.5, "at least 0.5x bare Flask's throughput"),
            p50_at_most(token_load, token_floor, 2.0, "p50 at most 2x the floor's"),
        ]
        if fs_server is not None and fs_token is not None:
            token_contenders.insert(
                1,
                Contender(
                    f"{FS_TOO} auth token",
                    Load(fs_server, "/api/protected", fs_token, seconds).sample,
                ),
            )
            token_targets.insert(
                0,
                throughput_at_least(
                    token_name, f"{FS_TOO} auth token", 1.5, "at least 1.5x Flask-Security-Too"
                ),
            )
        if redis_server is not None:
            token_contenders.append(
                Contender(
                    f"{token_name}, rate limits in Redis",
                    Load(redis_server, "/api/protected", ours_token, seconds).sample,
                )
            )

        last = db_name == options.databases()[-1][0]

        def stop(group: list[Server] = servers, last: bool = last) -> None:
            for server in group:
                if server is not floor_server or last:
                    server.stop()

        cases.append(
            Case(
                title=f"Protected GET over HTTP, bearer token, on {db_name} (per request)",
                contenders=token_contenders,
                ours=token_name,
                floor=FLOOR,
                targets=token_targets,
                rounds=7,
                close=stop,
            )
        )
    return cases
