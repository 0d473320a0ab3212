"""A loopback TCP proxy that can cut the link to a service on demand.

Put it between the app and PostgreSQL (or Redis) to simulate an outage without touching
the service itself::

    python scripts/faultproxy.py --target 127.0.0.1:5432 --listen 6432

then type ``cut``, ``blackhole``, ``restore`` or ``quit`` (one per line) on its standard
input. ``cut`` resets every open connection and every new one at once (the service is gone:
clients see "connection reset"); ``blackhole`` keeps connections open but forwards nothing
(a network partition: clients wait until their own timeouts); ``restore`` forwards again.

The load driver (``scripts/load.py``) and ``tests/integration/test_faults.py`` use the
:class:`FaultProxy` class directly, in their own process. It only ever listens on, and
connects to, 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import socket
import struct
import sys
import threading
import time

LOOPBACK = "127.0.0.1"

#: States of the link.
OPEN = "open"
CUT = "cut"
BLACKHOLE = "blackhole"

#: How often (seconds) idle loops look at the state: the reaction time to cut/restore.
_TICK = 0.05
_CHUNK = 65536


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0): the peer sees "connection reset", not a clean end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to ``target`` until told to cut or blackhole the link."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        if target[0] not in (LOOPBACK, "localhost"):
            raise ValueError("the fault proxy only forwards to the loopback interface")
        self.target = (LOOPBACK, target[1])
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, port))
        self._listener.listen(128)
        self._listener.settimeout(_TICK)
        self.port: int = self._listener.getsockname()[1]
        self.state = OPEN
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._held: list[socket.socket] = []
        #: Connections forwarded, refused (reset while cut) and held (blackholed).
        self.forwarded = 0
        self.refused = 0
        self.held = 0
        #: (monotonic time, new state) for each change, for the report.
        self.changes: list[tuple[float, str]] = []

    # -- control --

    def start(self) -> FaultProxy:
        thread = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def cut(self) -> None:
        """Reset every open connection and refuse (reset) new ones."""
        self._set(CUT)

    def blackhole(self) -> None:
        """Keep connections open but forward nothing (new ones are accepted and held)."""
        self._set(BLACKHOLE)

    def restore(self) -> None:
        """Forward again; connections held by a blackhole resume."""
        self._set(OPEN)
        with self._lock:
            held, self._held = self._held, []
        for sock in held:  # accepted during a blackhole, never connected upstream
            _reset(sock)

    def close(self, timeout: float = 5.0) -> None:
        self._closing.set()
        self._set(CUT)
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(OSError):
            self._listener.close()
        self.restore()

    def _set(self, state: str) -> None:
        with self._lock:
            self.state = state
            self.changes.append((time.monotonic(), state))

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the work --

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            state = self.state
            if state == CUT:
                self.refused += 1
                _reset(client)
                continue
            if state == BLACKHOLE:
                self.held += 1
                with self._lock:
                    self._held.append(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                self.refused += 1
                _reset(client)
                continue
            self.forwarded += 1
            thread = threading.Thread(
                target=self._pump, args=(client, upstream), name="faultproxy-pump", daemon=True
            )
            thread.start()
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side ends or the link is cut."""
        peers = {client: upstream, upstream: client}
        for sock in peers:
            sock.setblocking(True)
            sock.settimeout(5)
        try:
            while not self._closing.is_set():
                state = self.state
                if state == CUT:
                    return
                if state == BLACKHOLE:
                    time.sleep(_TICK)  # read nothing: the bytes wait in the kernel buffers
                    continue
                readable, _, _ = select.select(list(peers), [], [], _TICK)
                for sock in readable:
                    data = sock.recv(_CHUNK)
                    if not data:
                        return
                    if self.state != OPEN:
                        return  # cut while reading: drop what was in flight
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            _reset(client)
            _reset(upstream)


def _parse_target(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return (host or LOOPBACK, int(port))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="host:port of the service (loopback)")
    parser.add_argument("--listen", type=int, default=0, help="port to listen on (0: any)")
    parser.add_argument(
        "--max-seconds", type=float, default=3600.0, help="stop after this long (default 1 h)"
    )
    args = parser.parse_args(argv)
    proxy = FaultProxy(_parse_target(args.target), args.listen).start()
    print(f"listening on {LOOPBACK}:{proxy.port}, forwarding to {args.target}", flush=True)
    deadline = time.monotonic() + args.max_seconds
    commands = {"cut": proxy.cut, "blackhole": proxy.blackhole, "restore": proxy.restore}
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([sys.stdin], [], [], 0.5)
            if not ready:
                continue
            line = sys.stdin.readline()
            word = line.strip().lower()
            if not line or word == "quit":
                break
            if word in commands:
                commands[word]()
                print(f"{word}: {proxy.state}", flush=True)
            elif word:
                print("commands: cut, blackhole, restore, quit", flush=True)
    finally:
        proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
