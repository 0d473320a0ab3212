"""Writer processes for case 4's concurrent appends: started once, then told what to write.

Each writer has an engine of its own (configured as the library configures it) and waits
for a command: ``chained`` events through ``audit.record`` and a commit, or ``unchained``
rows of the tutorial's table, ``per_txn`` of them per transaction. The writers told to work
all start at one signal, and :meth:`Writers.run` times from that signal until the last one
is done, so process start-up and imports are never measured.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any


class Writers:
    """``processes`` writer processes on ``url`` (spawned on first use)."""

    def __init__(self, url: str, processes: int) -> None:
        self.url = url
        self.processes = processes
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        self._go: Any = None

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no inherited database connections
        self._go = context.Event()
        for number in range(self.processes):
            parent, child = context.Pipe()
            process = context.Process(
                target=_serve, args=(self.url, child, self._go, number), daemon=True
            )
            process.start()
            self._conns.append(parent)
            self._procs.append(process)
        for conn in self._conns:
            _expect(conn, "ready")

    def run(self, kind: str, events: int, per_txn: int, processes: int) -> float:
        """Wall seconds for ``processes`` writers to write ``events`` events each, all
        starting at once."""
        if not self._conns:
            self._start()
        working = self._conns[:processes]
        for conn in working:
            conn.send((kind, events, per_txn))
        for conn in working:
            _expect(conn, "armed")
        started = time.perf_counter()
        self._go.set()
        answers = [conn.recv() for conn in working]
        elapsed = time.perf_counter() - started
        self._go.clear()
        errors = [a for a in answers if a != "done"]
        if errors:
            raise RuntimeError(f"a writer failed: {errors[0]}")
        return elapsed

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):  # a writer that died has closed its end
                conn.send(None)
        for process in self._procs:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        self._conns.clear()
        self._procs.clear()


def _expect(conn: Connection, wanted: str) -> None:
    if not conn.poll(120):
        raise RuntimeError(f"a writer did not answer {wanted!r} in time")
    answer = conn.recv()
    if answer != wanted:
        raise RuntimeError(f"a writer answered {answer!r}, not {wanted!r}")


def _serve(url: str, conn: Connection, go: Any, number: int) -> None:
    """A writer's life: connect, then write what it is told until it is told ``None``."""
    from sqlalchemy.orm import Session

    from flask_aaa.db import writing

    from . import trail

    engine = trail.open_engine(url)
    with engine.connect():
        pass  # the connection is made before anything is timed
    trail.actor(number)
    conn.send("ready")
    written = 0
    while (command := conn.recv()) is not None:
        kind, events, per_txn = command
        conn.send("armed")
        go.wait()
        try:
            for start in range(0, events, per_txn):
                with writing(), Session(engine) as db:
                    for _ in range(min(per_txn, events - start)):
                        written += 1
                        if kind == "chained":
                            trail.record(db, written, number)
                        else:
                            db.add(trail.naive_row(written, number))
                    db.commit()
        except Exception as exc:  # reported to the parent, which fails the case
            conn.send(f"{type(exc).__name__}: {exc}")
        else:
            conn.send("done")
    engine.dispose()
