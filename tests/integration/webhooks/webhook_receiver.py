"""A real HTTP receiver for webhook tests and the delivery benchmark.

A threaded ``http.server`` on 127.0.0.1 that records every request's raw body and headers,
answers the ``GET ?challenge=`` handshake, and can be told per path to answer slowly, with an
error status, or to go down (refusing connections and dropping open ones) and come back on the
same port.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Received:
    """One POST as it arrived."""

    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic() on arrival
    status: int  # what we answered

    def json(self) -> dict[str, Any]:
        """The body parsed."""
        value: dict[str, Any] = json.loads(self.body)
        return value


@dataclass
class Route:
    """How one path answers."""

    status: int = 200
    delay_s: float = 0.0
    challenge: str = "echo"  # echo | wrong | 404 | slow
    challenge_delay_s: float = 0.0
    body: bytes = b"ok"
    # Decide the status per notification (after delay); None keeps ``status``.
    decide: Callable[[dict[str, Any]], int | None] | None = None


@dataclass
class _State:
    routes: dict[str, Route] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    challenges: list[str] = field(default_factory=list)
    # re-entrant: a wait_for() predicate may call accepted()/received() under the lock
    lock: threading.RLock = field(default_factory=threading.RLock)
    cond: threading.Condition = field(init=False)
    connections: set[socket.socket] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.cond = threading.Condition(self.lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real receivers
    # Headers and body go out in separate writes; with Nagle on, the client's delayed ACK
    # would add ~40 ms to every answer.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.state.lock:
            self.server.state.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.state.lock:
                self.server.state.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _route(self) -> tuple[str, Route]:
        path = urlsplit(self.path).path
        state = self.server.state
        with state.lock:
            return path, state.routes.get(path, Route())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path, route = self._route()
        query = parse_qs(urlsplit(self.path).query)
        token = (query.get("challenge") or [""])[0]
        with self.server.state.lock:
            self.server.state.challenges.append(path)
        if route.challenge_delay_s:
            time.sleep(route.challenge_delay_s)
        if route.challenge == "404":
            self._answer(404, b"not found")
        elif route.challenge == "wrong":
            self._answer(200, b"hello")
        else:
            self._answer(200, token.encode())

    def do_POST(self) -> None:
        path, route = self._route()
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if route.delay_s:
            time.sleep(route.delay_s)
        status = route.status
        if route.decide is not None:
            try:
                decided = route.decide(json.loads(body))
            except ValueError:
                decided = None
            if decided is not None:
                status = decided
        record = Received(
            path=path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            at=time.monotonic(),
            status=status,
        )
        state = self.server.state
        with state.cond:
            state.received.append(record)
            state.cond.notify_all()
        self._answer(status, route.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, port: int, state: _State) -> None:
        self.state = state
        super().__init__(("127.0.0.1", port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:  # dropped peers: quiet
        pass


class Receiver:
    """The receiver; ``with Receiver() as r:`` starts it and stops it at the end."""

    def __init__(self) -> None:
        self._state = _State()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (on the same port as before, after a :meth:`stop`)."""
        deadline = time.monotonic() + 10
        while True:
            try:
                self._server = _Server(self.port, self._state)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Go down: stop listening and drop open connections."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._state.lock:
            conns = list(self._state.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- configuration ----------------------------------------------------------------------

    def url(self, path: str = "/hook") -> str:
        """The URL of ``path`` on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path: str, **options: Any) -> Route:
        """Configure how ``path`` answers (see :class:`Route`)."""
        route = Route(**options)
        with self._state.lock:
            self._state.routes[path] = route
        return route

    # --- what arrived -----------------------------------------------------------------------

    def received(self, path: str | None = None) -> list[Received]:
        """POSTs so far (to ``path``), in arrival order."""
        with self._state.lock:
            return [r for r in self._state.received if path is None or r.path == path]

    def accepted(self, path: str | None = None) -> list[Received]:
        """POSTs answered 2xx."""
        return [r for r in self.received(path) if 200 <= r.status < 300]

    def challenges(self) -> list[str]:
        """Paths that got a challenge GET."""
        with self._state.lock:
            return list(self._state.challenges)

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout_s: float = 30.0
    ) -> list[Received]:
        """Wait until ``predicate(all received)`` holds; AssertionError on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._state.cond:
            while not predicate(list(self._state.received)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"receiver: condition not met in {timeout_s} s "
                        f"({len(self._state.received)} requests received)"
                    )
                self._state.cond.wait(min(left, 0.2))
            return list(self._state.received)

    def wait_accepted(self, path: str, count: int, timeout_s: float = 30.0) -> list[Received]:
        """Wait until ``count`` distinct notification ids were accepted on ``path``."""

        def enough(items: list[Received]) -> bool:
            ids = {r.json()["id"] for r in items if r.path == path and 200 <= r.status < 300}
            return len(ids) >= count

        self.wait_for(enough, timeout_s)
        return self.accepted(path)
