"""Load and fault driver: the demo notes app under gunicorn on PostgreSQL and Redis.

    .venv/bin/python scripts/load.py                 # 60 s of mixed load, then the checks
    .venv/bin/python scripts/load.py --seconds 8     # the short run CI makes
    .venv/bin/python scripts/load.py --seconds 20 --pg-cut 5:10      # PostgreSQL outage
    .venv/bin/python scripts/load.py --seconds 20 --redis-cut 5:12   # Redis outage
    .venv/bin/python scripts/load.py --seconds 15 --kill-worker 4,7,10

It creates its own database on the PostgreSQL server (``--database-name``, emptied first)
and uses its own Redis database number (``--redis-db``, flushed first); it sends traffic to
127.0.0.1 only, from a few loopback source addresses (127.0.0.2 and up) so that each
simulated client has its own IP without trusting ``X-Forwarded-For`` (the demo does not).

The workload, by thread: editors and authors signing in, viewing pages, creating and
editing notes (an author also tries a note that is not his: 403); a reader with two
"devices" revoking one from the other; a script using personal access tokens on
``/api/notes`` (also a read-only token writing, a revoked token, a garbage token); an
administrator granting and revoking a role through the JSON API; two clients stuffing wrong
passwords into one account and one spraying unknown logins (throttling).

Every request carries its own ``X-Request-ID``; afterwards the audit trail is read back and
each request must have exactly the events its answer implies (one per successful audited
change, the denial or failure events the failed ones imply, nothing for a request that did
not succeed, and no event of a request nobody sent), the changed rows must match their
events, ``flask aaa audit verify`` must pass, and the login limits must have held. Exit
status 1 if any check fails. See docs/operations.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import functools
import html
import http.client
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make ``scripts.faultproxy`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.faultproxy import FaultProxy

LOOPBACK = "127.0.0.1"
REQUEST_TIMEOUT = 15.0
#: Answers that leave the outcome of a request open (its transaction may or may not have
#: committed): no answer at all (0) and every 5xx (a 5xx is a failure of its own check).
AMBIGUOUS = frozenset({0, *range(500, 600)})

# -- what each kind of request must leave in the audit trail ------------------------------

Event = tuple[str, str]  # (action, outcome)

#: Events a successful request of each kind writes (exactly these, once each).
SUCCESS_EVENTS: dict[str, tuple[Event, ...]] = {
    "login": (("auth.login.succeeded", "success"),),
    "logout": (("auth.logout", "success"),),
    "note.create": (("notes.created", "success"),),
    "note.edit": (("notes.updated", "success"),),
    "api.create": (("notes.created", "success"),),
    "role.grant": (("role.granted", "success"),),
    "role.revoke": (("role.revoked", "success"),),
    "session.revoke": (("session.revoked", "success"),),
}
#: The event an ``@audited`` view records apart when it fails after the action began.
VIEW_FAILURE: dict[str, Event] = {
    "note.create": ("notes.created", "failure"),
    "note.edit": ("notes.updated", "failure"),
    "api.create": ("notes.created", "failure"),
}
DENIED: Event = ("authz.denied", "denied")
LOGIN_FAILED: Event = ("auth.login.failed", "failure")
LOCKOUT: Event = ("auth.lockout", "denied")
THROTTLED: Event = ("auth.login.throttled", "denied")
TOKEN_REJECTED: Event = ("token.rejected", "denied")

Expectation = tuple[tuple[Event, ...], frozenset[Event]]  # (required, optional)


@dataclasses.dataclass(slots=True)
class Record:
    """One request as the client saw it."""

    kind: str
    persona: str
    ip: str
    method: str
    path: str
    rid: str
    t0: float
    t1: float = 0.0
    status: int = 0  # 0: no answer (connection refused, reset or timed out)
    echoed: bool = False
    retry_after: str | None = None
    location: str = ""
    error: str = ""
    login: str = ""


def succeeded(record: Record) -> bool:
    """Did the request do what it asked? (A 303 to the sign-in page did not.)"""
    if record.status in (200, 201, 204):
        return True
    if record.status == 303:
        return "/auth/login" not in record.location and "/account/reauth" not in record.location
    return False


def expectations(record: Record) -> list[Expectation]:
    """The sets of events the request may have left: one for a definite answer, several
    (the request either committed or not) for an ambiguous one."""
    kind, status = record.kind, record.status
    success: Expectation = (SUCCESS_EVENTS.get(kind, ()), frozenset())
    nothing: Expectation = ((), frozenset())
    denied: Expectation = ((DENIED,), frozenset())
    login_failed: Expectation = ((LOGIN_FAILED,), frozenset({LOCKOUT}))
    if status in AMBIGUOUS:
        options = [nothing, success, denied]
        if kind == "login":
            options += [login_failed, ((), frozenset({THROTTLED}))]
        if kind in VIEW_FAILURE:
            options.append(((VIEW_FAILURE[kind],), frozenset()))
        if kind == "api.revoked":
            options.append(((TOKEN_REJECTED,), frozenset()))
        return options
    if succeeded(record):
        return [success]
    if status == 403:
        return [denied]
    if kind == "login" and status == 401:
        return [login_failed]
    if kind == "login" and status == 429:
        return [((), frozenset({THROTTLED}))]
    if kind == "api.revoked" and status == 401:
        return [((TOKEN_REJECTED,), frozenset())]
    return [nothing]


def matches(found: Sequence[Event], expectation: Expectation) -> bool:
    required, optional = expectation
    left = collections.Counter(found)
    for event in required:
        if left[event] < 1:
            return False
        left[event] -= 1
    return all(count == 0 or (event in optional and count == 1) for event, count in left.items())


# -- options ---------------------------------------------------------------------------


@dataclasses.dataclass
class Options:
    seconds: float = 60.0
    workers: int = 4
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    database_name: str = "aaa_load"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_db: int = 11
    max_requests: int = 200_000
    workdir: Path | None = None
    keep: bool = False
    json_path: Path | None = None
    pg_cut: tuple[float, float] | None = None
    redis_cut: tuple[float, float] | None = None
    cut_mode: str = "reset"
    kill_worker: tuple[float, ...] = ()
    audit_fail: tuple[float, float] | None = None
    audit_fail_code: str = "disk_full"
    seed: int | None = None
    quiet: bool = False


def _window(value: str) -> tuple[float, float]:
    start, _, end = value.partition(":")
    begin, finish = float(start), float(end)
    if not 0 <= begin < finish:
        raise argparse.ArgumentTypeError("use START:END seconds into the run, START < END")
    return begin, finish


def parse_options(argv: Sequence[str] | None = None) -> Options:
    env = os.environ
    parser = argparse.ArgumentParser(
        description="Drive the demo app under gunicorn (PostgreSQL, Redis) and check it.",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument(
        "--database-url",
        default=env.get("AAA_TEST_DATABASE_URL") or Options.database_url,
        help="a PostgreSQL URL of the server to use (default: $AAA_TEST_DATABASE_URL); "
        "only its server is used: the run creates --database-name there",
    )
    parser.add_argument("--database-name", default="aaa_load", help="database the run owns")
    parser.add_argument(
        "--redis-url",
        default=env.get("AAA_TEST_REDIS_URL") or Options.redis_url,
        help="a Redis URL of the server to use (default: $AAA_TEST_REDIS_URL)",
    )
    parser.add_argument("--redis-db", type=int, default=11, help="Redis database the run owns")
    parser.add_argument(
        "--max-requests", type=int, default=200_000, help="stop after this many requests"
    )
    parser.add_argument("--workdir", type=Path, help="demo folder and logs (default: temporary)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", dest="json_path", type=Path, help="also write the report here")
    parser.add_argument("--pg-cut", type=_window, help="cut PostgreSQL from START to END s")
    parser.add_argument("--redis-cut", type=_window, help="cut Redis from START to END s")
    parser.add_argument(
        "--cut-mode",
        choices=("reset", "blackhole"),
        default="reset",
        help="reset: connections are reset; blackhole: they hang (default: reset)",
    )
    parser.add_argument(
        "--audit-fail", type=_window, help="make every audit insert fail from START to END s"
    )
    parser.add_argument(
        "--audit-fail-code",
        choices=AUDIT_FAILURES,
        default="disk_full",
        help="the PostgreSQL error of --audit-fail (default: disk_full)",
    )
    parser.add_argument(
        "--kill-worker",
        default="",
        help="SIGKILL one gunicorn worker at these times (seconds, comma-separated)",
    )
    parser.add_argument("--seed", type=int, help="random seed of the workload")
    parser.add_argument("--quiet", action="store_true", help="print the report only")
    args = parser.parse_args(argv)
    if not args.database_url.startswith("postgresql"):
        parser.error("--database-url must be a PostgreSQL URL (postgresql+psycopg://...)")
    if args.seconds <= 0 or args.seconds > 3600:
        parser.error("--seconds must be between 0 and 3600")
    if not 1 <= args.workers <= 16:
        parser.error("--workers must be between 1 and 16")
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", args.database_name):
        parser.error("--database-name: lower-case letters, digits and _ only")
    kills = tuple(float(t) for t in args.kill_worker.split(",") if t.strip())
    return Options(
        seconds=args.seconds,
        workers=args.workers,
        database_url=args.database_url,
        database_name=args.database_name,
        redis_url=args.redis_url,
        redis_db=args.redis_db,
        max_requests=args.max_requests,
        workdir=args.workdir,
        keep=args.keep,
        json_path=args.json_path,
        pg_cut=args.pg_cut,
        redis_cut=args.redis_cut,
        cut_mode=args.cut_mode,
        kill_worker=kills,
        audit_fail=args.audit_fail,
        audit_fail_code=args.audit_fail_code,
        seed=args.seed,
        quiet=args.quiet,
    )


# -- services: own database, own Redis number, loopback only ---------------------------


def _loopback_only(host: str | None, what: str) -> None:
    if host not in (LOOPBACK, "localhost"):
        raise SystemExit(
            f"{what} must be on 127.0.0.1 (this driver sends traffic to loopback only)"
        )


def own_database_url(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the server of ``server_url``, created if missing and
    emptied (its ``public`` schema dropped and recreated)."""
    from sqlalchemy import create_engine, make_url, text

    url = make_url(server_url)
    _loopback_only(url.host, "PostgreSQL")
    if url.database == name:
        raise SystemExit("--database-name must differ from the database in --database-url")
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            exists = connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            )
            if not exists:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    own = url.set(database=name).render_as_string(hide_password=False)
    engine = create_engine(own, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()
    return own


def own_redis_url(server_url: str, db: int) -> str:
    """The URL of Redis database ``db`` on the server of ``server_url``, flushed."""
    import redis

    parts = urllib.parse.urlsplit(server_url)
    _loopback_only(parts.hostname, "Redis")
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


def _with_port(url: str, port: int) -> str:
    """``url`` pointed at 127.0.0.1:``port`` (the fault proxy) instead of its own server."""
    parts = urllib.parse.urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{LOOPBACK}:{port}" if auth else f"{LOOPBACK}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _port_of(url: str, default: int) -> int:
    return urllib.parse.urlsplit(url).port or default


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# -- the demo under gunicorn -----------------------------------------------------------


@dataclasses.dataclass
class Fixtures:
    """What the workload needs from the seeded demo."""

    passwords: dict[str, str]
    tokens: dict[str, str]  # name -> secret
    bob_id: int
    limits: dict[str, tuple[int, int]]  # setting -> (amount, window seconds)


class Demo:
    """The demo app: seeded in this process, served by gunicorn in another."""

    def __init__(
        self,
        folder: Path,
        database_url: str,
        redis_url: str,
        workers: int,
        *,
        app_database_url: str | None = None,
        app_redis_url: str | None = None,
    ) -> None:
        self.folder = folder
        #: Seeding, the CLI and the checks use these; the served app uses the ``app_*`` ones
        #: (the fault proxies, when there are any).
        self.database_url = database_url
        self.redis_url = redis_url
        self.workers = workers
        self.port = free_port()
        self.access_log = folder / "access.log"
        self.server_log = folder / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.env = {
            **os.environ,
            "FLASK_AAA_DEMO_DIR": str(folder / "demo"),
            "FLASK_AAA_DEMO_DATABASE_URL": app_database_url or database_url,
            "AAA_RATELIMIT_STORAGE_URI": app_redis_url or redis_url,
            "FLASK_AAA_DEMO_BASE_URL": f"http://{LOOPBACK}:{self.port}",
        }

    def seed(self) -> Fixtures:
        """Seed the database (the demo's own seeding) and mint the API tokens with the CLI
        commands, in this process."""
        os.environ["FLASK_AAA_DEMO_DIR"] = self.env["FLASK_AAA_DEMO_DIR"]
        os.environ["FLASK_AAA_DEMO_BASE_URL"] = self.env["FLASK_AAA_DEMO_BASE_URL"]
        os.environ["FLASK_AAA_DEMO_DATABASE_URL"] = self.database_url
        os.environ["AAA_RATELIMIT_STORAGE_URI"] = self.redis_url
        from limits import parse
        from sqlalchemy import select

        from flask_aaa.demo import create_app
        from flask_aaa.demo.__main__ import seed
        from flask_aaa.models import User

        app = create_app()
        with app.app_context():
            credentials = seed()
            settings = app.extensions["aaa"].settings
            db = app.extensions["aaa"].db
            bob_id = db.session.scalar(select(User.id).where(User.username_key == "bob"))
            db.session.remove()
        runner = app.test_cli_runner()

        def cli(*args: str) -> str:
            result = runner.invoke(args=["aaa", *args])
            if result.exit_code != 0:
                raise RuntimeError(f"flask aaa {args[0]} failed: {result.output}")
            return str(result.stdout)

        def mint(user: str, name: str, *scopes: str) -> tuple[str, int]:
            args = ["create-token", user, "--name", name, "--days", "1"]
            for scope in scopes:
                args += ["--scope", scope]
            result = runner.invoke(args=["aaa", *args])
            if result.exit_code != 0:
                raise RuntimeError(f"flask aaa create-token failed: {result.output}")
            found = re.search(r"\(id (\d+),", result.stderr)
            return result.stdout.strip().splitlines()[-1], int(found.group(1)) if found else 0

        # Granting a role needs its permissions too (nobody hands out what they do not hold).
        admin, _ = mint("admin", "load: roles", "aaa:roles:assign", "aaa:users:read", "notes:*")
        tokens = {
            "alice-rw": mint("alice", "load: notes", "notes:read", "notes:write")[0],
            "dave-ro": mint("dave", "load: read only", "notes:read")[0],
            "admin": admin,
        }
        revoked, revoked_id = mint("bob", "load: revoked", "notes:read")
        cli("revoke-token", str(revoked_id))
        tokens["bob-revoked"] = revoked
        with app.app_context():
            for engine in db.engines.values():
                engine.dispose()

        def limit(value: str) -> tuple[int, int]:
            item = parse(value)
            return int(item.amount), int(item.get_expiry())

        return Fixtures(
            passwords={name: rest.split("\t")[0] for name, rest in credentials.items()},
            tokens=tokens,
            bob_id=int(bob_id or 0),
            limits={
                "login_per_ip": limit(settings.login_limit_per_ip),
                "login_per_account": limit(settings.login_limit_per_account),
                "token_per_ip": limit(settings.token_limit_per_ip),
            },
        )

    def start(self, timeout: float = 40.0) -> None:
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            str(self.workers),
            "--bind",
            f"{LOOPBACK}:{self.port}",
            "--access-logformat",
            "%(p)s %(s)s %(m)s %(U)s %({x-request-id}i)s %(M)s",
            "--timeout",
            "30",
            "--log-config-json",
            str(self._log_config()),
            "flask_aaa.demo:create_app()",
        ]
        with self.server_log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (our own interpreter, fixed arguments)
                command, env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("gunicorn exited:\n" + self.server_log.read_text()[-3000:])
            if len(self.worker_pids()) >= self.workers and self._answers():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            "gunicorn did not start in time:\n" + self.server_log.read_text()[-3000:]
        )

    def _log_config(self) -> Path:
        """Logging as a deployment sets it up: warnings of every library (Flask-Limiter's
        fallback to memory among them; it logs nothing without a handler) go to stderr."""
        handler = {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stderr",
        }
        config = {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "plain": {
                    "format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
                },
                "message": {"format": "%(message)s"},
            },
            "handlers": {
                "stderr": handler,
                "access": {
                    "class": "logging.FileHandler",
                    "formatter": "message",
                    "filename": str(self.access_log),
                },
            },
            "root": {"level": "WARNING", "handlers": ["stderr"]},
            "loggers": {
                "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
                "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
                "flask-limiter": {"level": "INFO"},
            },
        }
        path = self.folder / "logging.json"
        path.write_text(json.dumps(config))
        return path

    def _answers(self) -> bool:
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=5)
        try:
            connection.request("GET", "/", headers={"X-Request-ID": "load-startup"})
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the children of the master this driver started."""
        if self.process is None:
            return []
        master = self.process.pid
        children = Path(f"/proc/{master}/task/{master}/children")
        with contextlib.suppress(OSError):
            return sorted(int(pid) for pid in children.read_text().split())
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == master:
                    found.append(int(stat.parent.name))
        return sorted(found)

    def kill_worker(self, rng: random.Random) -> int | None:
        pids = self.worker_pids()
        if not pids:
            return None
        pid = rng.choice(pids)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        """Stop gunicorn (the master we started; it stops its workers)."""
        if self.process is None or self.process.poll() is not None:
            return
        workers = self.worker_pids()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            for pid in [*workers, self.process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait(10)

    def flask(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        """Run ``flask --app flask_aaa.demo ...`` against the same database."""
        env = {
            **self.env,
            "FLASK_AAA_DEMO_DATABASE_URL": self.database_url,
            "AAA_RATELIMIT_STORAGE_URI": self.redis_url,
        }
        return subprocess.run(  # noqa: S603 (our own interpreter, fixed arguments)
            [sys.executable, "-m", "flask", "--app", "flask_aaa.demo", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


# -- the clients -----------------------------------------------------------------------


class Run:
    """The shared state of one load run: the clock, the stop flag and the records."""

    def __init__(self, port: int, seconds: float, max_requests: int, seed: int) -> None:
        self.port = port
        self.seconds = seconds
        self.max_requests = max_requests
        self.stop = threading.Event()
        self.records: list[Record] = []
        self.lock = threading.Lock()
        self.tag = secrets.token_hex(3)
        self.counter = 0
        self.seed = seed
        self.started = time.monotonic()
        self.started_utc = dt.datetime.now(dt.UTC)

    def begin(self) -> None:
        self.started = time.monotonic()
        self.started_utc = dt.datetime.now(dt.UTC)

    def now(self) -> float:
        return time.monotonic() - self.started

    def active(self) -> bool:
        return (
            not self.stop.is_set()
            and self.now() < self.seconds
            and len(self.records) < self.max_requests
        )

    def pause(self, seconds: float) -> None:
        self.stop.wait(max(0.0, min(seconds, self.seconds - self.now())))

    def next_rid(self) -> str:
        with self.lock:
            self.counter += 1
            return f"ld{self.tag}-{self.counter:07d}"

    def add(self, record: Record) -> None:
        with self.lock:
            self.records.append(record)


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str
    record: Record

    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except ValueError:
            return None


#: Kinds of requests made with a bearer token (no cookie session to lose).
TOKEN_KINDS = ("api.read", "api.create", "api.denied", "api.revoked", "api.garbage")

_CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
_TITLE_RE = re.compile(r'name="title"[^>]*value="([^"]*)"|value="([^"]*)"[^>]*name="title"')
_EDIT_RE = re.compile(r"/notes/(\d+)/edit")


class Client:
    """One simulated client: its own source address, cookie jar and keep-alive connection
    (gunicorn's sync workers close it after each answer; it is reopened as needed)."""

    def __init__(self, run: Run, persona: str, ip: str) -> None:
        self.run = run
        self.persona = persona
        self.ip = ip
        self.cookies: dict[str, str] = {}
        self.csrf: str | None = None
        self.signed_in = False
        self.last_sign_in = -1e9
        self.conn = self._connection()

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(
            LOOPBACK, self.run.port, timeout=REQUEST_TIMEOUT, source_address=(self.ip, 0)
        )

    def request(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        form: dict[str, str] | None = None,
        json_body: object = None,
        bearer: str | None = None,
        csrf_header: bool = False,
        accept_json: bool = False,
        rid: str | None = None,
        label: str | None = None,
        login: str = "",
    ) -> Answer:
        rid = rid or self.run.next_rid()
        headers, body = self._headers(rid, form, json_body, bearer, csrf_header, accept_json)
        record = Record(
            kind=kind,
            persona=self.persona,
            ip=self.ip,
            method=method,
            path=label or path,
            rid=rid,
            t0=self.run.now(),
            login=login,
        )
        text = ""
        found: dict[str, str] = {}
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            text = response.read().decode("utf-8", "replace")
            record.status = response.status
            for name, value in response.getheaders():
                lower = name.lower()
                if lower == "set-cookie":
                    self._store_cookie(value)
                else:
                    found[lower] = value
            if response.will_close:
                self.conn.close()
        except (OSError, http.client.HTTPException) as exc:
            record.error = type(exc).__name__
            self.conn.close()
            self.conn = self._connection()
        record.t1 = self.run.now()
        record.echoed = found.get("x-request-id") == rid
        record.retry_after = found.get("retry-after")
        record.location = found.get("location", "")
        self.run.add(record)
        signed_out = record.status == 401 or (
            record.status == 303 and "/auth/login" in record.location
        )
        if signed_out and kind not in ("login", *TOKEN_KINDS):
            self.signed_in = False
        return Answer(record.status, found, text, record)

    def _headers(
        self,
        rid: str,
        form: dict[str, str] | None,
        json_body: object,
        bearer: str | None,
        csrf_header: bool,
        accept_json: bool,
    ) -> tuple[dict[str, str], str | None]:
        headers = {"X-Request-ID": rid, "User-Agent": f"flask-aaa-load ({self.persona})"}
        body: str | None = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif json_body is not None:
            body = json.dumps(json_body)
            headers["Content-Type"] = "application/json"
        if accept_json or json_body is not None or bearer:
            headers["Accept"] = "application/json"
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        elif self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if csrf_header and self.csrf:
            headers["X-CSRFToken"] = self.csrf
        return headers, body

    def _store_cookie(self, header: str) -> None:
        first, *attributes = header.split(";")
        name, _, value = first.strip().partition("=")
        expired = any(
            a.strip().lower().startswith(("max-age=0", "expires=thu, 01 jan 1970"))
            for a in attributes
        )
        if value and not expired:
            self.cookies[name] = value
        else:
            self.cookies.pop(name, None)

    def backoff(self, answer: Answer, default: float = 0.0) -> None:
        """Wait as a polite client would after a refusal (at most half a second)."""
        if answer.status in (429, 503) or answer.status == 0:
            self.run.pause(0.5)
        elif default:
            self.run.pause(default)

    # -- browser flows --

    def fetch_csrf(self) -> None:
        answer = self.request("page", "GET", "/auth/csrf", accept_json=True)
        data = answer.json()
        if isinstance(data, dict) and isinstance(data.get("csrf_token"), str):
            self.csrf = data["csrf_token"]

    def sign_in(self, username: str, password: str, *, min_interval: float = 2.0) -> bool:
        """Sign in through the form, at most once per ``min_interval`` seconds."""
        wait = self.last_sign_in + min_interval - self.run.now()
        if wait > 0:
            self.run.pause(wait)
        if not self.run.active():
            return False
        self.last_sign_in = self.run.now()
        page = self.request("page", "GET", "/auth/login")
        token = _CSRF_RE.search(page.text)
        if token is None:
            self.backoff(page)
            return False
        form = {"login": username, "password": password, "csrf_token": html.unescape(token[1])}
        answer = self.request("login", "POST", "/auth/login", form=form, login=username)
        if not succeeded(answer.record):
            self.backoff(answer)
            return False
        self.signed_in = True
        self.fetch_csrf()
        return True


# -- the personas ----------------------------------------------------------------------


def writer(
    run: Run, fx: Fixtures, username: str, ip: str, rng: random.Random, *, author: bool
) -> None:
    """An editor (any note) or an author (own notes; now and then tries someone else's)."""
    client = Client(run, username, ip)
    password = fx.passwords[username]
    editable: list[int] = []
    next_relogin = run.now() + rng.uniform(8, 15)
    while run.active():
        if not client.signed_in:
            client.sign_in(username, password)
            continue
        roll = rng.random()
        if roll < 0.30:
            answer = client.request("page", "GET", "/notes")
            if answer.status == 200:
                editable = [int(n) for n in _EDIT_RE.findall(answer.text)]
            client.backoff(answer)
        elif roll < 0.38:
            client.backoff(client.request("page", "GET", "/"))
        elif roll < 0.42:
            client.backoff(client.request("page", "GET", "/account/activity"))
        elif roll < 0.67:
            rid = run.next_rid()
            form = {"title": f"note {rid}", "body": "load", "csrf_token": client.csrf or ""}
            client.backoff(client.request("note.create", "POST", "/notes", form=form, rid=rid))
        elif roll < 0.93 and editable:
            note = rng.choice(editable)
            page = client.request("page", "GET", f"/notes/{note}/edit", label="/notes/<id>/edit")
            found = _TITLE_RE.search(page.text)
            if page.status != 200 or found is None:
                client.backoff(page)
                continue
            rid = run.next_rid()
            form = {
                "title": html.unescape(found[1] or found[2] or ""),
                "body": f"edited {rid}",
                "csrf_token": client.csrf or "",
            }
            client.backoff(
                client.request(
                    "note.edit",
                    "POST",
                    f"/notes/{note}/edit",
                    form=form,
                    rid=rid,
                    label="/notes/<id>/edit",
                )
            )
        elif author and roll < 0.97:
            # The first note is the editor's: the "owner" rule refuses an author (403).
            form = {"title": "not mine", "body": "x", "csrf_token": client.csrf or ""}
            client.backoff(
                client.request(
                    "note.edit", "POST", "/notes/1/edit", form=form, label="/notes/<id>/edit"
                )
            )
        elif run.now() >= next_relogin:
            next_relogin = run.now() + rng.uniform(8, 15)
            answer = client.request(
                "logout", "POST", "/auth/logout", csrf_header=True, accept_json=True
            )
            client.signed_in = False
            client.backoff(answer)


def reader_with_two_devices(run: Run, fx: Fixtures, ip: str, rng: random.Random) -> None:
    """Bob on a laptop and a phone: reads, tries to write (403 unless the administrator
    has just made him an author), and every few seconds the laptop signs the phone out."""
    laptop, phone = Client(run, "bob-laptop", ip), Client(run, "bob-phone", ip)
    password = fx.passwords["bob"]
    next_revoke = run.now() + 1.5
    while run.active():
        for device in (laptop, phone):
            if not device.signed_in:
                device.sign_in("bob", password, min_interval=1.0)
        if not laptop.signed_in:
            continue
        laptop.backoff(laptop.request("page", "GET", "/notes"))
        if phone.signed_in:
            phone.backoff(phone.request("page", "GET", "/notes"))
        if rng.random() < 0.4:
            rid = run.next_rid()
            form = {"title": f"note {rid}", "body": "bob", "csrf_token": laptop.csrf or ""}
            laptop.backoff(laptop.request("note.create", "POST", "/notes", form=form, rid=rid))
        if run.now() >= next_revoke and laptop.signed_in:
            next_revoke = run.now() + rng.uniform(2.5, 3.5)
            listing = laptop.request(
                "page", "GET", "/aaa/api/v1/me/sessions", accept_json=True
            ).json()
            items = listing.get("items", []) if isinstance(listing, dict) else []
            for item in items:
                if isinstance(item, dict) and not item.get("current") and "id" in item:
                    laptop.backoff(
                        laptop.request(
                            "session.revoke",
                            "DELETE",
                            f"/aaa/api/v1/me/sessions/{int(item['id'])}",
                            csrf_header=True,
                            label="/aaa/api/v1/me/sessions/<id>",
                        )
                    )


def token_script(run: Run, fx: Fixtures, ip: str, rng: random.Random) -> None:
    """A script on the JSON notes API with personal access tokens, kept below the per-IP
    bearer limit (it would otherwise measure the limit, not the API)."""
    client = Client(run, "token-script", ip)
    amount, window = fx.limits["token_per_ip"]
    interval = max(0.02, 1.25 * window / amount)
    while run.active():
        roll = rng.random()
        if roll < 0.50:
            answer = client.request("api.read", "GET", "/api/notes", bearer=fx.tokens["alice-rw"])
        elif roll < 0.85:
            rid = run.next_rid()
            answer = client.request(
                "api.create",
                "POST",
                "/api/notes",
                json_body={"title": f"note {rid}", "body": "api"},
                bearer=fx.tokens["alice-rw"],
                rid=rid,
            )
        elif roll < 0.92:
            answer = client.request(
                "api.denied",
                "POST",
                "/api/notes",
                json_body={"title": "read-only token", "body": ""},
                bearer=fx.tokens["dave-ro"],
            )
        elif roll < 0.96:
            answer = client.request(
                "api.revoked", "GET", "/api/notes", bearer=fx.tokens["bob-revoked"]
            )
        else:
            garbage = "aaa_pat_" + secrets.token_urlsafe(30)
            answer = client.request("api.garbage", "GET", "/api/notes", bearer=garbage)
        client.backoff(answer, interval)


def administrator(run: Run, fx: Fixtures, ip: str, rng: random.Random) -> None:
    """Grants bob the author role, then takes it back, about once a second (JSON API)."""
    client = Client(run, "admin-api", ip)
    token = fx.tokens["admin"]
    user_path = f"/aaa/api/v1/users/{fx.bob_id}"
    while run.active():
        answer = client.request("api.read", "GET", user_path, bearer=token, label="/users/<id>")
        data = answer.json()
        if answer.status != 200 or not isinstance(data, dict):
            client.backoff(answer)
            continue
        roles = {r if isinstance(r, str) else r.get("name") for r in data.get("roles", [])}
        kind, method = ("role.revoke", "DELETE") if "author" in roles else ("role.grant", "PUT")
        client.backoff(
            client.request(
                kind,
                method,
                f"{user_path}/roles/author",
                bearer=token,
                label="/users/<id>/roles/<role>",
            )
        )
        run.pause(rng.uniform(0.6, 1.2))


def stuffer(run: Run, ip: str, rng: random.Random, victim: str) -> None:
    """Wrong passwords for one account (carol), as fast as the limits let it."""
    client = Client(run, f"stuffer@{ip}", ip)
    token: str | None = None
    while run.active():
        if token is None:
            page = client.request("page", "GET", "/auth/login")
            found = _CSRF_RE.search(page.text)
            token = html.unescape(found[1]) if found else None
            client.backoff(page)
            continue
        form = {"login": victim, "password": secrets.token_hex(10), "csrf_token": token}
        answer = client.request("login", "POST", "/auth/login", form=form, login=victim)
        if answer.status == 400:
            token = None
        run.pause(0.3 if answer.status == 429 else rng.uniform(0.05, 0.15))


def sprayer(run: Run, ip: str, rng: random.Random) -> None:
    """One wrong password for each of many unknown logins, from one address."""
    client = Client(run, f"sprayer@{ip}", ip)
    token: str | None = None
    n = 0
    while run.active():
        if token is None:
            page = client.request("page", "GET", "/auth/login")
            found = _CSRF_RE.search(page.text)
            token = html.unescape(found[1]) if found else None
            client.backoff(page)
            continue
        n += 1
        login = f"nobody-{run.tag}-{n}"
        form = {"login": login, "password": "wrong-password-123", "csrf_token": token}
        answer = client.request("login", "POST", "/auth/login", form=form, login=login)
        if answer.status == 400:
            token = None
        run.pause(0.3 if answer.status == 429 else rng.uniform(0.02, 0.08))


def personas(run: Run, fx: Fixtures, rng: random.Random) -> list[tuple[str, Callable[[], None]]]:
    """The client threads: (name, body). Each gets a random generator of its own."""

    def seeded() -> random.Random:
        return random.Random(rng.random())  # noqa: S311 (a workload, not a secret)

    part = functools.partial
    return [
        ("alice@.2", part(writer, run, fx, "alice", "127.0.0.2", seeded(), author=False)),
        ("alice@.10", part(writer, run, fx, "alice", "127.0.0.10", seeded(), author=False)),
        ("dave@.3", part(writer, run, fx, "dave", "127.0.0.3", seeded(), author=True)),
        ("dave@.11", part(writer, run, fx, "dave", "127.0.0.11", seeded(), author=True)),
        ("bob@.4", part(reader_with_two_devices, run, fx, "127.0.0.4", seeded())),
        ("tokens@.5", part(token_script, run, fx, "127.0.0.5", seeded())),
        ("admin@.6", part(administrator, run, fx, "127.0.0.6", seeded())),
        ("stuffer@.7", part(stuffer, run, "127.0.0.7", seeded(), "carol")),
        ("stuffer@.8", part(stuffer, run, "127.0.0.8", seeded(), "carol")),
        ("sprayer@.9", part(sprayer, run, "127.0.0.9", seeded())),
    ]


# -- faults ----------------------------------------------------------------------------


@dataclasses.dataclass
class Incident:
    at: float
    what: str
    detail: str = ""


#: Simulated failures of the audit write (``--audit-fail``), by PostgreSQL error code:
#: ``disk_full`` (an OperationalError, like a full disk or tablespace) and
#: ``insufficient_privilege`` (a ProgrammingError, like a grant taken away by mistake).
AUDIT_FAILURES = ("disk_full", "insufficient_privilege")


def break_audit_writes(database_url: str, code: str) -> None:
    """From now on every insert into the audit trail fails with PostgreSQL error ``code``."""
    if code not in AUDIT_FAILURES:
        raise ValueError(code)
    _execute_sql(
        database_url,
        "CREATE OR REPLACE FUNCTION load_audit_fail() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$BEGIN RAISE EXCEPTION 'audit write refused (load.py)' USING ERRCODE = '{code}'; "
        "END$$",
        "DROP TRIGGER IF EXISTS load_audit_fail ON aaa_audit_events",
        "CREATE TRIGGER load_audit_fail BEFORE INSERT ON aaa_audit_events "
        "FOR EACH ROW EXECUTE FUNCTION load_audit_fail()",
    )


def repair_audit_writes(database_url: str) -> None:
    _execute_sql(database_url, "DROP TRIGGER IF EXISTS load_audit_fail ON aaa_audit_events")


def _execute_sql(database_url: str, *statements: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("SET lock_timeout = '5s'"))
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    found.add(target[8:-1])
    return found


def _inode_of_local_port(port: int) -> str | None:
    """The socket inode of the TCP connection whose local end is 127.0.0.1:``port``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                return fields[9]
    return None


def kill_worker_mid_write(
    database_url: str, workers_now: Callable[[], list[int]], timeout: float
) -> str | None:
    """SIGKILL a gunicorn worker whose database transaction has written and not committed.

    Polls ``pg_stat_activity`` for at most ``timeout`` seconds for a backend of one of
    the workers holding a transaction id (it changed something), freezes that worker
    (SIGSTOP) and checks that the transaction is still open: then it kills the worker
    (SIGKILL), so the kill lands between the change and its commit; else it lets the worker
    go on (SIGCONT) and looks again. Returns what was killed, or None."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    writers = text(
        "SELECT client_port, left(query, 60) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND backend_xid IS NOT NULL AND client_port IS NOT NULL"
    )
    still_open = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND client_port = :port AND backend_xid IS NOT NULL"
    )
    deadline = time.monotonic() + timeout
    inodes = {pid: _socket_inodes(pid) for pid in workers_now()}
    try:
        with engine.connect() as connection:
            while time.monotonic() < deadline:
                for port, statement in connection.execute(writers).all():
                    inode = _inode_of_local_port(int(port))
                    pid = next((p for p, owned in inodes.items() if inode in owned), None)
                    if inode is None or pid is None:
                        continue
                    if pid not in workers_now():
                        continue  # replaced meanwhile: never signal anything else
                    os.kill(pid, signal.SIGSTOP)
                    connection.rollback()
                    if connection.scalar(still_open, {"port": int(port)}):
                        os.kill(pid, signal.SIGKILL)
                        what = " ".join(str(statement).split())
                        return f"pid {pid} mid-write (last statement: {what})"
                    os.kill(pid, signal.SIGCONT)  # it committed meanwhile: look again
                connection.rollback()
                inodes = {pid: _socket_inodes(pid) for pid in workers_now()}
                time.sleep(0.002)
    finally:
        engine.dispose()
    return None


def chaos(
    run: Run,
    demo: Demo,
    opts: Options,
    proxies: dict[str, FaultProxy],
    incidents: list[Incident],
    rng: random.Random,
) -> None:
    """Apply the scheduled faults at their times."""
    plan: list[tuple[float, str]] = []
    for name, window in (
        ("postgresql", opts.pg_cut),
        ("redis", opts.redis_cut),
        ("audit", opts.audit_fail),
    ):
        if window is not None:
            plan += [(window[0], f"cut {name}"), (window[1], f"restore {name}")]
    plan += [(t, "kill worker") for t in opts.kill_worker]
    for at, what in sorted(plan):
        run.pause(at - run.now())
        if run.stop.is_set() or run.now() >= run.seconds:
            return
        verb, _, name = what.partition(" ")
        detail = ""
        if name == "audit":
            if verb == "cut":
                break_audit_writes(demo.database_url, opts.audit_fail_code)
                detail = opts.audit_fail_code
            else:
                repair_audit_writes(demo.database_url)
        elif verb == "cut":
            proxy = proxies[name]
            proxy.blackhole() if opts.cut_mode == "blackhole" else proxy.cut()
            detail = opts.cut_mode
        elif verb == "restore":
            proxies[name].restore()
        else:
            detail = kill_a_worker(demo, rng)
        incidents.append(Incident(round(run.now(), 3), what, detail))


def kill_a_worker(demo: Demo, rng: random.Random) -> str:
    """SIGKILL a worker in the middle of a write if one is caught within two seconds
    (between its first change and its commit, which writes the audit events), else any."""
    found = kill_worker_mid_write(demo.database_url, demo.worker_pids, timeout=2.0)
    if found is not None:
        return found
    return f"pid {demo.kill_worker(rng)} (no write in flight found)"


# -- the checks ------------------------------------------------------------------------


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def read_trail(database_url: str, after_seq: int) -> list[dict[str, Any]]:
    from sqlalchemy import create_engine, select

    from flask_aaa.models import AuditEvent

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(
                    AuditEvent.seq,
                    AuditEvent.action,
                    AuditEvent.outcome,
                    AuditEvent.request_id,
                    AuditEvent.target_type,
                    AuditEvent.target_id,
                    AuditEvent.target_label,
                    AuditEvent.details,
                    AuditEvent.session_hash,
                )
                .where(AuditEvent.seq > after_seq)
                .order_by(AuditEvent.seq)
            ).all()
    finally:
        engine.dispose()
    return [dict(row._mapping) for row in rows]


@dataclasses.dataclass
class Baseline:
    seq: int
    login_counts: dict[int, int]


def read_baseline(database_url: str) -> Baseline:
    from sqlalchemy import create_engine, func, select

    from flask_aaa.models import AuditEvent, User

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            seq = connection.scalar(select(func.coalesce(func.max(AuditEvent.seq), 0)))
            counts = {
                int(uid): int(count or 0)
                for uid, count in connection.execute(select(User.id, User.login_count))
            }
    finally:
        engine.dispose()
    return Baseline(int(seq or 0), counts)


def check_audit(
    records: list[Record], events: list[dict[str, Any]]
) -> tuple[Check, dict[str, Any]]:
    """Each request has exactly the events its answer implies; no event is unexplained."""
    by_rid: dict[str, list[Event]] = collections.defaultdict(list)
    for event in events:
        by_rid[str(event["request_id"])].append((event["action"], event["outcome"]))
    mismatches: list[str] = []
    ambiguous_committed = 0
    ambiguous_undone = 0
    audited = 0
    for record in records:
        found = by_rid.pop(record.rid, [])
        options = expectations(record)
        if not any(matches(found, option) for option in options):
            mismatches.append(
                f"{record.rid} {record.kind} {record.method} {record.path} -> {record.status}: "
                f"events {sorted(found)}"
            )
        if found:
            audited += 1
            if record.status in AMBIGUOUS and any(e[1] == "success" for e in found):
                ambiguous_committed += 1
        elif record.status in AMBIGUOUS and record.kind in SUCCESS_EVENTS:
            ambiguous_undone += 1
    unexplained = [f"{rid}: {sorted(evs)}" for rid, evs in by_rid.items()]
    ok = not mismatches and not unexplained
    detail = (
        f"{len(events)} events for {audited} requests; {len(mismatches)} requests with wrong "
        f"events, {len(unexplained)} request ids nobody sent"
    )
    if ambiguous_committed or ambiguous_undone:
        detail += (
            f"; of the changes without a clear answer (none or 5xx), {ambiguous_committed} "
            f"committed whole and {ambiguous_undone} left nothing"
        )
    facts = {
        "events": len(events),
        "audited_requests": audited,
        "mismatches": mismatches[:20],
        "unexplained": unexplained[:20],
        "ambiguous_committed": ambiguous_committed,
        "ambiguous_undone": ambiguous_undone,
        "by_action": dict(
            collections.Counter(f"{e['action']}/{e['outcome']}" for e in events).most_common()
        ),
    }
    return Check("audit events match requests", ok, detail), facts


@dataclasses.dataclass
class State:
    """The rows of the database the run changed."""

    notes: list[tuple[int, str, str]]
    login_counts: dict[int, int]
    sessions: list[tuple[int, str, str | None]]  # (id, token hash, revoked reason)
    bob_roles: set[str]


def read_state(database_url: str, bob_id: int, started_utc: dt.datetime) -> State:
    from sqlalchemy import create_engine, select, text

    from flask_aaa.models import LoginSession, User

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            notes = [
                (int(nid), str(title), str(body))
                for nid, title, body in connection.execute(
                    text("SELECT id, title, body FROM demo_notes")
                )
            ]
            counts = {
                int(uid): int(count or 0)
                for uid, count in connection.execute(select(User.id, User.login_count))
            }
            sessions = [
                (int(sid), str(token_hash), reason)
                for sid, token_hash, reason in connection.execute(
                    select(
                        LoginSession.id, LoginSession.token_hash, LoginSession.revoked_reason
                    ).where(LoginSession.created_at >= started_utc)
                )
            ]
            roles = set(
                connection.scalars(
                    text(
                        "SELECT r.name FROM aaa_roles r JOIN aaa_user_roles ur "
                        "ON ur.role_id = r.id WHERE ur.user_id = :u"
                    ),
                    {"u": bob_id},
                )
            )
    finally:
        engine.dispose()
    return State(notes, counts, sessions, {str(r) for r in roles})


def _ok_events(events: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [e for e in events if e["action"] == action and e["outcome"] == "success"]


def pair_notes(events: list[dict[str, Any]], state: State) -> tuple[list[str], str]:
    """Each "note <rid>" row has the notes.created event of that request, and back; the
    last edit of each note (its body names the request) has its notes.updated event."""
    problems = []
    created = collections.Counter(str(e["request_id"]) for e in _ok_events(events, "notes.created"))
    rows = {title[5:]: nid for nid, title, _ in state.notes if title.startswith("note ")}
    problems += [f"note of {rid} has {created[rid]} events" for rid in rows if created[rid] != 1]
    problems += [f"notes.created of {rid} has no note" for rid in created if rid not in rows]
    updated = {
        str(e["request_id"]): str(e["target_id"]) for e in _ok_events(events, "notes.updated")
    }
    note_ids = {str(nid) for nid, _, _ in state.notes}
    edits = [(nid, body[7:]) for nid, _, body in state.notes if body.startswith("edited ")]
    problems += [
        f"note {nid} edited by {rid} without its notes.updated event"
        for nid, rid in edits
        if updated.get(rid) != str(nid)
    ]
    problems += [
        f"notes.updated of {rid} names missing note {target}"
        for rid, target in updated.items()
        if target not in note_ids
    ]
    return problems, (
        f"{len(rows)} notes = {sum(created.values())} notes.created; "
        f"{len(edits)} last edits = their notes.updated"
    )


def pair_sessions(events: list[dict[str, Any]], state: State) -> tuple[list[str], str]:
    """Each sign-in event names a session opened in the run, and each session opened in the
    run is a sign-in or the rotation of one (a privilege change); each revoked session has
    its session.revoked event, and back."""
    problems = []
    opened = {token_hash for _, token_hash, _ in state.sessions}
    logins = _ok_events(events, "auth.login.succeeded")
    problems += [
        f"{e['request_id']}: auth.login.succeeded without its session"
        for e in logins
        if e["session_hash"] not in opened
    ]
    rotated = sum(1 for _, _, reason in state.sessions if reason == "privileges_changed")
    if len(state.sessions) != len(logins) + rotated:
        problems.append(
            f"{len(state.sessions)} sessions opened, {len(logins)} sign-ins + {rotated} rotations"
        )
    revoked = {str(sid) for sid, _, reason in state.sessions if reason == "revoked_by_user"}
    events_ = collections.Counter(
        str(e["target_id"]) for e in _ok_events(events, "session.revoked")
    )
    problems += [
        f"session {sid} revoked with {events_[sid]} events" for sid in revoked if events_[sid] != 1
    ]
    problems += [f"session.revoked of live session {sid}" for sid in events_ if sid not in revoked]
    return problems, (
        f"{len(state.sessions)} sessions = {len(logins)} auth.login.succeeded + {rotated} "
        f"rotations; {len(revoked)} revoked = {sum(events_.values())} session.revoked"
    )


def pair_roles(events: list[dict[str, Any]], state: State, bob_id: int) -> tuple[list[str], str]:
    """Bob holds "author" exactly when the last grant or revoke event says so."""
    changes = [
        e
        for e in events
        if e["action"] in ("role.granted", "role.revoked")
        and e["outcome"] == "success"
        and str(e["target_id"]) == str(bob_id)
        and '"author"' in str(e["details"])
    ]
    if changes and (changes[-1]["action"] == "role.granted") != ("author" in state.bob_roles):
        last = changes[-1]["action"]
        return [f"bob's roles {sorted(state.bob_roles)} contradict the last {last}"], ""
    return [], f"{len(changes)} role changes, bob's roles agree with the last one"


def check_state(
    database_url: str,
    events: list[dict[str, Any]],
    baseline: Baseline,
    bob_id: int,
    started_utc: dt.datetime,
) -> tuple[Check, list[Check], dict[str, Any]]:
    """The rows the run changed match their events, one to one. Also returns warnings:
    bookkeeping that is not part of the audit guarantee (login counters)."""
    state = read_state(database_url, bob_id, started_utc)
    problems: list[str] = []
    details: list[str] = []
    for found, detail in (
        pair_notes(events, state),
        pair_sessions(events, state),
        pair_roles(events, state, bob_id),
    ):
        problems += found
        details.append(detail)
    moved = sum(c - baseline.login_counts.get(u, 0) for u, c in state.login_counts.items())
    logins = len(_ok_events(events, "auth.login.succeeded"))
    warnings = [
        Check(
            "login counters (usage figures)",
            moved == logins,
            f"aaa_users.login_count moved {moved} for {logins} sign-ins"
            + ("" if moved == logins else ": lost updates (concurrent sign-ins of one user)"),
        )
    ]
    facts = {
        "notes": len(state.notes),
        "sessions_opened": len(state.sessions),
        "logins": logins,
        "login_count_moved": moved,
        "problems": problems[:20],
    }
    detail = "; ".join(d for d in details if d)
    if problems:
        detail = f"{len(problems)} problems, first: {problems[0]}"
    return Check("changed rows match their events", not problems, detail), warnings, facts


def _window_excess(times: list[tuple[float, float]], window: float) -> int:
    """The largest number of attempts the server surely accepted within one ``window``:
    attempt ``j`` lies in the window of ``i`` if it was answered before ``i`` was sent plus
    the window (so client-side timing can only undercount)."""
    best = 0
    j = 0
    for i, (start, _) in enumerate(times):
        j = max(j, i)
        while j + 1 < len(times) and times[j + 1][1] < start + window:
            j += 1
        best = max(best, j - i + 1)
    return best


def check_throttling(
    records: list[Record], limits: dict[str, tuple[int, int]], factor: int, stuffers: int
) -> tuple[Check, dict[str, Any]]:
    """Failed logins beyond the limits got 429 (with Retry-After)."""
    # Attempts the limiter decided on (a 503 or no answer may have failed before it), and
    # those it let through to the password check.
    logins = [r for r in records if r.kind == "login" and r.status in (303, 401, 429)]
    per_ip_amount, per_ip_window = limits["login_per_ip"]
    acct_amount, acct_window = limits["login_per_account"]
    problems: list[str] = []
    facts: dict[str, Any] = {"per_ip": {}, "per_account": {}}
    for ip in sorted({r.ip for r in logins}):
        mine = sorted((r.t0, r.t1) for r in logins if r.ip == ip and r.status in (303, 401))
        refused = sum(1 for r in logins if r.ip == ip and r.status == 429)
        worst = _window_excess(mine, per_ip_window)
        facts["per_ip"][ip] = {"accepted_max_in_window": worst, "refused_429": refused}
        if worst > per_ip_amount * factor:
            problems.append(f"{ip}: {worst} login attempts accepted within {per_ip_window} s")
    carol = sorted((r.t0, r.t1) for r in logins if r.login == "carol" and r.status == 401)
    carol_refused = sum(1 for r in logins if r.login == "carol" and r.status == 429)
    worst = _window_excess(carol, acct_window)
    # The per-account limit is checked before the password and counted after it: attempts
    # already in flight when the budget runs out still finish (at most one per stuffer).
    allowed = acct_amount * factor + (stuffers - 1)
    facts["per_account"] = {
        "carol_failures_max_in_window": worst,
        "allowed": allowed,
        "refused_429": carol_refused,
    }
    if worst > allowed:
        problems.append(f"carol: {worst} failed logins within {acct_window} s (limit {allowed})")
    attempted = len([r for r in logins if r.login == "carol"])
    if attempted > acct_amount * factor + stuffers and carol_refused == 0:
        problems.append("carol: no 429 although the attempts exceeded the per-account limit")
    sprayed = sorted((r.t0, r.t1) for r in logins if r.persona.startswith("sprayer"))
    sprayer_refused = sum(1 for r in logins if r.persona.startswith("sprayer") and r.status == 429)
    if _window_excess(sprayed, per_ip_window) > per_ip_amount * factor and not sprayer_refused:
        problems.append("sprayer: no 429 although it exceeded the per-IP limit")
    no_retry = sum(
        1 for r in records if r.status == 429 and not (r.retry_after or "").strip().isdigit()
    )
    if no_retry:
        problems.append(f"{no_retry} answers 429 without a Retry-After")
    refused_total = sum(1 for r in logins if r.status == 429)
    detail = (
        f"per IP {per_ip_amount}/{per_ip_window}s, per account {acct_amount}/{acct_window}s"
        + (f" (x{factor}: per-process fallback counters)" if factor > 1 else "")
        + f"; {refused_total} logins refused with 429; most accepted in a window: "
        + ", ".join(
            f"{ip} {v['accepted_max_in_window']}" for ip, v in sorted(facts["per_ip"].items())
        )
        + f"; carol's failures in a window: {worst} (<= {allowed})"
    )
    if problems:
        detail = "; ".join(problems)
    return Check("throttling held", not problems, detail), facts


# -- the report ------------------------------------------------------------------------


def summarize(records: list[Record], seconds: float) -> dict[str, Any]:
    by_kind: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    latency: dict[str, list[float]] = collections.defaultdict(list)
    for record in records:
        by_kind[record.kind][record.status] += 1
        if record.status:
            latency[record.kind].append(record.t1 - record.t0)
    statuses = collections.Counter(r.status for r in records)
    return {
        "requests": len(records),
        "per_second": round(len(records) / seconds, 1) if seconds else 0.0,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "kinds": {
            kind: {
                "count": sum(counter.values()),
                "statuses": {str(k): v for k, v in sorted(counter.items())},
                "p50_ms": round(1000 * _percentile(latency[kind], 0.50), 1),
                "p95_ms": round(1000 * _percentile(latency[kind], 0.95), 1),
                "p99_ms": round(1000 * _percentile(latency[kind], 0.99), 1),
            }
            for kind, counter in sorted(by_kind.items())
        },
        "errors": dict(collections.Counter(r.error for r in records if r.error)),
    }


def phases(records: list[Record], start: float, end: float, grace: float) -> dict[str, Any]:
    """Statuses before, during and after a fault window (``grace`` seconds after it ends
    are a phase of their own: recovery)."""
    spans = {
        "before": (0.0, start),
        "during": (start, end),
        "recovering": (end, end + grace),
        "after": (end + grace, 1e9),
    }
    out: dict[str, Any] = {}
    for name, (lo, hi) in spans.items():
        mine = [r for r in records if lo <= r.t0 < hi]
        out[name] = {
            "requests": len(mine),
            "statuses": {
                str(k): v for k, v in sorted(collections.Counter(r.status for r in mine).items())
            },
            "writes_ok": sum(1 for r in mine if r.kind in SUCCESS_EVENTS and succeeded(r)),
        }
    return out


def access_summary(path: Path) -> dict[str, Any]:
    """What gunicorn's access log says: requests per worker and server-side time."""
    per_worker: collections.Counter[str] = collections.Counter()
    millis: list[float] = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            fields = line.split()
            if len(fields) == 6 and fields[4].startswith("ld"):
                per_worker[fields[0].strip("<>")] += 1
                with contextlib.suppress(ValueError):
                    millis.append(float(fields[5]))
    return {
        "requests": sum(per_worker.values()),
        "per_worker": dict(sorted(per_worker.items())),
        "server_p50_ms": round(_percentile(millis, 0.50), 1),
        "server_p95_ms": round(_percentile(millis, 0.95), 1),
    }


def log_lines(path: Path, needle: str) -> int:
    try:
        return path.read_text(errors="replace").count(needle)
    except OSError:
        return 0


@dataclasses.dataclass
class Outcome:
    """What a run left behind, for the checks."""

    opts: Options
    fixtures: Fixtures
    records: list[Record]
    events: list[dict[str, Any]]
    verify: subprocess.CompletedProcess[str]
    incidents: list[Incident]
    pids_before: list[int]
    pids_after: list[int]
    baseline: Baseline
    started_utc: dt.datetime
    database_url: str
    server_log: Path


def execute(opts: Options) -> dict[str, Any]:
    """Set up, run the load (and the faults), check, and return the report."""
    seed = opts.seed if opts.seed is not None else secrets.randbelow(1_000_000)
    rng = random.Random(seed)  # noqa: S311 (a workload, not a secret)
    folder = opts.workdir or Path(tempfile.mkdtemp(prefix="aaa-load-"))
    folder.mkdir(parents=True, exist_ok=True)

    def say(message: str) -> None:
        if not opts.quiet:
            print(message, file=sys.stderr, flush=True)

    database_url = own_database_url(opts.database_url, opts.database_name)
    redis_url = own_redis_url(opts.redis_url, opts.redis_db)
    proxies: dict[str, FaultProxy] = {}
    app_database_url, app_redis_url = database_url, redis_url
    if opts.pg_cut:
        proxies["postgresql"] = FaultProxy((LOOPBACK, _port_of(database_url, 5432))).start()
        app_database_url = _with_port(database_url, proxies["postgresql"].port)
    if opts.redis_cut:
        proxies["redis"] = FaultProxy((LOOPBACK, _port_of(redis_url, 6379))).start()
        app_redis_url = _with_port(redis_url, proxies["redis"].port)
    demo = Demo(
        folder,
        database_url,
        redis_url,
        opts.workers,
        app_database_url=app_database_url,
        app_redis_url=app_redis_url,
    )
    try:
        say(f"seeding {opts.database_name} ...")
        fixtures = demo.seed()
        baseline = read_baseline(database_url)
        say(f"starting gunicorn ({opts.workers} workers) on {LOOPBACK}:{demo.port} ...")
        demo.start()
        pids_before = demo.worker_pids()
        run = Run(demo.port, opts.seconds, opts.max_requests, seed)
        incidents: list[Incident] = []
        threads = [
            threading.Thread(target=target, name=name, daemon=True)
            for name, target in personas(run, fixtures, rng)
        ]
        if opts.pg_cut or opts.redis_cut or opts.audit_fail or opts.kill_worker:
            chaos_args = (run, demo, opts, proxies, incidents, rng)
            threads.append(threading.Thread(target=chaos, args=chaos_args, daemon=True))
        say(f"load for {opts.seconds:g} s ({len(threads)} threads, seed {seed}) ...")
        run.begin()
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + opts.seconds + REQUEST_TIMEOUT + 10
        for thread in threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        run.stop.set()
        elapsed = run.now()
        for proxy in proxies.values():
            proxy.restore()
        if opts.audit_fail:
            repair_audit_writes(database_url)
        time.sleep(0.5)  # let gunicorn write its logs
        outcome = Outcome(
            opts=opts,
            fixtures=fixtures,
            records=sorted(run.records, key=lambda r: r.t0),
            events=read_trail(database_url, baseline.seq),
            verify=demo.flask("aaa", "audit", "verify"),
            incidents=incidents,
            pids_before=pids_before,
            pids_after=demo.worker_pids(),
            baseline=baseline,
            started_utc=run.started_utc,
            database_url=database_url,
            server_log=demo.server_log,
        )
        say(f"{len(outcome.records)} requests; checking ...")
        checks, warnings, facts = make_checks(outcome)
        return {
            "command": "scripts/load.py " + " ".join(sys.argv[1:]),
            "seconds": round(elapsed, 1),
            "seed": seed,
            "workers": opts.workers,
            "database": opts.database_name,
            "redis_db": opts.redis_db,
            "summary": summarize(outcome.records, elapsed),
            "server_errors": {
                str(k): v
                for k, v in sorted(
                    collections.Counter(
                        r.status for r in outcome.records if r.status >= 500
                    ).items()
                )
            },
            "unavailable_without_retry_after": sum(
                1
                for r in outcome.records
                if r.status == 503 and not (r.retry_after or "").isdigit()
            ),
            **facts,
            "verify": outcome.verify.stdout.strip(),
            "incidents": [dataclasses.asdict(i) for i in incidents],
            "proxies": {
                name: {"forwarded": p.forwarded, "refused": p.refused, "held": p.held}
                for name, p in proxies.items()
            },
            "server_log": {
                "tracebacks": log_lines(demo.server_log, "Traceback"),
                "storage_fallback_warnings": log_lines(
                    demo.server_log, "falling back to in-memory storage"
                ),
                "storage_recovered": log_lines(demo.server_log, "Rate limit storage recovered"),
                "database_failures": log_lines(demo.server_log, "database failure"),
                "audit_unavailable": log_lines(demo.server_log, "audit trail unavailable"),
                "worker_timeouts": log_lines(demo.server_log, "WORKER TIMEOUT"),
            },
            "access_log": access_summary(demo.access_log),
            "workers_before": pids_before,
            "workers_after": outcome.pids_after,
            "checks": [dataclasses.asdict(c) for c in checks],
            "warnings": [dataclasses.asdict(c) for c in warnings],
            "ok": all(c.ok for c in checks),
            "workdir": str(folder),
        }
    finally:
        demo.stop()
        for proxy in proxies.values():
            proxy.close()
        if not opts.keep and opts.workdir is None:
            shutil.rmtree(folder, ignore_errors=True)


def make_checks(o: Outcome) -> tuple[list[Check], list[Check], dict[str, Any]]:
    """The checks of every run, then those of its faults."""
    opts, records = o.opts, o.records
    checks = [*_answer_checks(o)]
    audit_check, audit_facts = check_audit(records, o.events)
    state_check, warnings, state_facts = check_state(
        o.database_url, o.events, o.baseline, o.fixtures.bob_id, o.started_utc
    )
    verified = o.verify.stdout.strip() or o.verify.stderr.strip()[-500:]
    checks += [
        audit_check,
        state_check,
        Check("flask aaa audit verify", o.verify.returncode == 0, verified),
    ]
    factor = opts.workers + 1 if opts.redis_cut else 1
    throttle_check, throttle_facts = check_throttling(records, o.fixtures.limits, factor, 2)
    checks.append(throttle_check)
    wanted = ["login", "note.create", "note.edit", "api.create", "role.grant", "session.revoke"]
    wanted += ["role.revoke"] if opts.seconds >= 8 else []
    wanted += ["logout"] if opts.seconds >= 20 else []
    missing = [k for k in wanted if not any(r.kind == k and succeeded(r) for r in records)]
    checks.append(
        Check(
            "every kind of change happened",
            not missing,
            "missing: " + ", ".join(missing) if missing else "all of " + ", ".join(wanted),
        )
    )
    fault_facts: dict[str, Any] = {}
    for name, window in (
        ("postgresql", opts.pg_cut),
        ("redis", opts.redis_cut),
        ("audit", opts.audit_fail),
    ):
        if window is not None:
            during = [r for r in records if window[0] <= r.t0 < window[1]]
            fault_facts[name] = {
                "window": list(window),
                "phases": phases(records, window[0], window[1], 3.0),
                "logins_refused": sum(1 for r in during if r.kind == "login" and r.status == 429),
            }
    if opts.pg_cut:
        checks += _pg_checks(o, *opts.pg_cut)
    if opts.redis_cut:
        checks += _redis_checks(o, *opts.redis_cut)
    if opts.audit_fail:
        checks += _audit_fail_checks(o, *opts.audit_fail)
    if opts.kill_worker:
        checks += _kill_checks(o)
    facts = {
        "audit": audit_facts,
        "state": state_facts,
        "throttling": throttle_facts,
        "faults": fault_facts,
    }
    return checks, warnings, facts


def _answer_checks(o: Outcome) -> list[Check]:
    opts, records = o.opts, o.records
    answered = [r for r in records if r.status]
    unanswered = collections.Counter(r.kind for r in records if not r.status)
    errors = collections.Counter(r.error for r in records if not r.status)
    missing = sum(unanswered.values())
    detail = f"{missing} without an answer" + (
        f" (kinds {dict(unanswered)}, errors {dict(errors)})" if missing else ""
    )
    if opts.kill_worker:
        allowed = 10 * len(opts.kill_worker)
        answers = Check(
            "every request answered (but on killed workers)", missing <= allowed, detail
        )
    elif opts.cut_mode == "blackhole" and (opts.pg_cut or opts.redis_cut):
        answers = Check("requests answered", True, detail)
    else:
        answers = Check("every request answered", not missing, detail)
    five = collections.Counter(r.status for r in records if r.status >= 500)
    if opts.pg_cut or opts.audit_fail:
        other = {k: v for k, v in five.items() if k != 503}
        no_retry = sum(
            1 for r in records if r.status == 503 and not (r.retry_after or "").isdigit()
        )
        server = Check(
            "no 5xx but 503 with Retry-After",
            not other and not no_retry,
            f"5xx: {dict(five) or 0}; 503 without Retry-After: {no_retry}",
        )
    else:
        server = Check("no 5xx", not five, f"5xx: {dict(five) or 0}")
    not_echoed = sum(1 for r in answered if not r.echoed)
    echoed = Check(
        "request ids echoed",
        not not_echoed,
        f"{len(answered) - not_echoed} of {len(answered)} answers echo X-Request-ID",
    )
    return [answers, server, echoed]


def _writes_ok(records: list[Record]) -> list[Record]:
    return [r for r in records if r.kind in SUCCESS_EVENTS and succeeded(r)]


def _outage_checks(
    o: Outcome, start: float, end: float, what: str, *, settle: float = 0.5
) -> list[Check]:
    """While ``what`` is down no write succeeds and answers are 503; afterwards writes
    succeed again, with the same workers (no restart)."""
    during = [r for r in o.records if start + settle <= r.t0 and r.t1 < end]
    unavailable = sum(1 for r in during if r.status == 503)
    reads = sum(1 for r in during if r.kind == "page" and r.status == 200)
    after = [r for r in o.records if r.t0 >= end]
    first = next((r.t1 - end for r in _writes_ok(after)), None)
    late = [r for r in after if r.t0 >= end + 3.0 and r.status == 503]
    same = o.pids_before == o.pids_after
    # A blackhole answers nothing until it ends: only "no write got through" is expected.
    hangs = o.opts.cut_mode == "blackhole" and what == "PostgreSQL"
    down = Check(
        f"{what} down: writes refused" + ("" if hangs else " with 503"),
        (hangs or unavailable > 0) and not _writes_ok(during),
        f"{unavailable} answers 503 during the fault, {len(_writes_ok(during))} writes "
        f"succeeded, {reads} pages served",
    )
    back = Check(
        f"{what} back: recovered without a restart",
        first is not None and not late and same and end < o.opts.seconds,
        (
            f"first successful write {first:.2f} s after the end of the fault"
            if first is not None
            else "no successful write after the fault"
        )
        + f"; {len(late)} answers 503 later than 3 s after it; workers "
        + ("unchanged" if same else f"{o.pids_before} -> {o.pids_after}"),
    )
    return [down, back]


def _pg_checks(o: Outcome, start: float, end: float) -> list[Check]:
    return _outage_checks(o, start, end, "PostgreSQL")


def _audit_fail_checks(o: Outcome, start: float, end: float) -> list[Check]:
    checks = _outage_checks(o, start, end, "audit write")
    during = [r for r in o.records if start + 0.5 <= r.t0 and r.t1 < end]
    reads = sum(1 for r in during if r.kind == "page" and r.status == 200)
    checks.append(Check("audit write down: pages still served", reads > 0, f"{reads} pages"))
    return checks


def _redis_checks(o: Outcome, start: float, end: float) -> list[Check]:
    """Redis down: each worker counts in its own memory (Flask-Limiter's fallback), so
    the limits hold per process: never unlimited, at most ``workers`` times as loose."""
    fallbacks = log_lines(o.server_log, "falling back to in-memory storage")
    during = [r for r in o.records if start <= r.t0 < end and r.kind == "login"]
    refused = sum(1 for r in during if r.status == 429)
    amount = o.fixtures.limits["login_per_account"][0]
    carol = sum(1 for r in during if r.login == "carol" and r.status in (401, 429))
    reached = carol > amount * o.opts.workers + 2
    detail = (
        f"{fallbacks} 'falling back to in-memory storage' warnings; {refused} of "
        f"{len(during)} logins during the cut refused with 429 ({carol} attempts on carol, "
        f"{amount} per worker allowed)"
    )
    if not reached:
        detail += "; the per-process limit was not reached during the cut"
    return [
        Check(
            "Redis down: in-memory limits, warning logged",
            fallbacks > 0 and (refused > 0 or not reached),
            detail,
        )
    ]


def _kill_checks(o: Outcome) -> list[Check]:
    kills = [i for i in o.incidents if i.what == "kill worker"]
    mid_write = [i for i in kills if "mid-write" in i.detail]
    return [
        Check(
            "killed workers replaced",
            len(o.pids_after) == o.opts.workers and len(kills) == len(o.opts.kill_worker),
            f"{len(kills)} workers killed, {len(o.pids_after)} workers at the end",
        ),
        Check(
            "a kill hit a write in flight",
            bool(mid_write),
            f"{len(mid_write)} of {len(kills)} kills between a change and its commit",
        ),
    ]


def render(report: dict[str, Any]) -> str:
    summary = report["summary"]
    lines = [
        f"Flask-AAA load: {report['seconds']} s, gunicorn {report['workers']} workers, "
        f"PostgreSQL database {report['database']}, Redis db {report['redis_db']} "
        f"(seed {report['seed']})",
        f"requests: {summary['requests']} ({summary['per_second']}/s); statuses: "
        + ", ".join(f"{k}: {v}" for k, v in summary["statuses"].items()),
        "",
        f"{'kind':<16}{'count':>7}  {'p50 ms':>7}{'p95 ms':>8}{'p99 ms':>8}  statuses",
    ]
    for kind, facts in summary["kinds"].items():
        statuses = ", ".join(f"{k}: {v}" for k, v in facts["statuses"].items())
        lines.append(
            f"{kind:<16}{facts['count']:>7}  {facts['p50_ms']:>7}{facts['p95_ms']:>8}"
            f"{facts['p99_ms']:>8}  {statuses}"
        )
    if summary["errors"]:
        lines.append(f"client errors: {summary['errors']}")
    lines.append("")
    lines.append(
        "audit events by action/outcome: "
        + ", ".join(f"{k} {v}" for k, v in report["audit"]["by_action"].items())
    )
    for incident in report["incidents"]:
        lines.append(f"fault at {incident['at']:>6.2f} s: {incident['what']} {incident['detail']}")
    for name, fault in report["faults"].items():
        for span, facts in fault["phases"].items():
            lines.append(
                f"  {name} {span:<10} {facts['requests']:>6} requests, "
                f"{facts['writes_ok']:>5} writes ok, statuses {facts['statuses']}"
            )
    access = report["access_log"]
    lines.append(
        f"gunicorn: {access['requests']} requests logged, per worker {access['per_worker']}, "
        f"server time p50 {access['server_p50_ms']} ms, p95 {access['server_p95_ms']} ms"
    )
    log = report["server_log"]
    lines.append("server log: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in log.items()))
    lines.append("")
    for check in report["checks"]:
        lines.append(f"[{'ok' if check['ok'] else 'FAIL'}] {check['name']}: {check['detail']}")
    for check in report["warnings"]:
        lines.append(f"[{'ok' if check['ok'] else 'warn'}] {check['name']}: {check['detail']}")
    for name in ("mismatches", "unexplained"):
        for line in report["audit"][name][:10]:
            lines.append(f"   {name}: {line}")
    for line in report["state"]["problems"][:10]:
        lines.append(f"   state: {line}")
    lines.append("")
    lines.append("RESULT: " + ("OK" if report["ok"] else "FAILED"))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    report = execute(opts)
    print(render(report), flush=True)
    if opts.json_path is not None:
        opts.json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
