"""A hostile HTTP receiver for webhook tests and the delivery benchmark.

An asyncio server on 127.0.0.1 (on a thread of its own) that answers the ``GET ?challenge=``
handshake correctly, so destinations pointing at it can be created the normal way, and then
answers every POST to a path the way that path is told to:

- ``hang``: reads the request, never answers.
- ``trickle_headers``: sends a status line and headers one byte every ``interval_s``.
- ``trickle_body``: complete headers at once (200, a large Content-Length), then the body one
  byte every ``interval_s``.
- ``huge_body``: 200 and a body of zeros streamed as fast as the client takes it (``max_bytes``,
  gigabytes by default).
- ``gzip_bomb``: 200, ``Content-Encoding: gzip``, a gzip stream that inflates ~1000-fold.
- ``endless_headers``: one header line that never ends, streamed fast.
- ``redirect``: 302 to another host (the cloud metadata address).
- ``redirect_loop``: 307 to the same URL.
- ``ok``: 200 ``ok`` (the default).

Trickling stops after ``trickle_for_s`` (the connection is then closed), so a client without a
total deadline is bounded by that, not by the test's timeout. It counts per path the POSTs it
got, the connections it is serving right now, and the bytes it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import zlib
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

BEHAVIOURS = (
    "ok",
    "hang",
    "trickle_headers",
    "trickle_body",
    "huge_body",
    "gzip_bomb",
    "endless_headers",
    "redirect",
    "redirect_loop",
)
REQUEST_HEAD_LIMIT_BYTES = 64 * 1024
REQUEST_BODY_LIMIT_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 64 * 1024
ZEROS_PER_GZIP_BLOCK = 16 * 1024 * 1024
METADATA_URL = "http://169.254.169.254/latest/meta-data/"


def _gzip_blocks() -> tuple[bytes, bytes]:
    """The first block of an endless gzip stream of zeros, and a block that repeats after it.

    A full flush resets the compressor's history, so every block after the first compresses
    the same input to the same bytes.
    """
    zeros = bytes(ZEROS_PER_GZIP_BLOCK)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    return first, again


class HostileReceiver:
    """The receiver; ``with HostileReceiver() as r:`` starts it and stops it at the end.

    Args:
        interval_s: seconds between trickled bytes.
        trickle_for_s: a trickle (or a hang) gives up and closes after this long.
        max_bytes: the most ``huge_body``/``gzip_bomb`` send on one connection.
    """

    def __init__(
        self,
        *,
        interval_s: float = 1.0,
        trickle_for_s: float = 120.0,
        max_bytes: int = 8 * 1024**3,
    ) -> None:
        self.interval_s = interval_s
        self.trickle_for_s = trickle_for_s
        self.max_bytes = max_bytes
        self.port = 0
        self._routes: dict[str, str] = {}
        self._hostile_gets: set[str] = set()
        self._posts: Counter[str] = Counter()
        self._active: Counter[str] = Counter()
        self._sent: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._gzip = _gzip_blocks()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on a free loopback port."""
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(
                    self._serve, "127.0.0.1", 0, limit=REQUEST_HEAD_LIMIT_BYTES, backlog=512
                )
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="hostile-receiver", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("hostile receiver did not start")

    def stop(self) -> None:
        """Stop listening and drop every connection."""
        loop, self._loop = self._loop, None
        if loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()

    def __enter__(self) -> HostileReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- configuration and what happened ------------------------------------------------------

    def url(self, path: str) -> str:
        """The URL of ``path`` on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path: str, behaviour: str, *, on_get: bool = False) -> str:
        """Make POSTs to ``path`` get ``behaviour`` (challenge GETs too, with ``on_get``).

        Returns the path's URL.
        """
        assert behaviour in BEHAVIOURS, behaviour
        with self._lock:
            self._routes[path] = behaviour
            if on_get:
                self._hostile_gets.add(path)
        return self.url(path)

    def posts(self, path: str) -> int:
        """POSTs that arrived on ``path``."""
        with self._lock:
            return self._posts[path]

    def active(self, path: str | None = None) -> int:
        """Connections being answered right now (on ``path``, or on any path)."""
        with self._lock:
            return self._active[path] if path is not None else sum(self._active.values())

    def bytes_sent(self, path: str) -> int:
        """Bytes of answers written on ``path`` (what the client took, give or take buffers)."""
        with self._lock:
            return self._sent[path]

    # --- serving ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): the server goes down mid-answer (asyncio would log it as an error)
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; whether the connection stays open for another."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip()
            for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)
        }
        length = min(int(headers.get("content-length", "0")), REQUEST_BODY_LIMIT_BYTES)
        await reader.readexactly(length)
        parts = urlsplit(target)
        path = parts.path
        with self._lock:
            hostile_get = path in self._hostile_gets
        if method == "GET" and not hostile_get:
            token = (parse_qs(parts.query).get("challenge") or [""])[0]
            await self._write(writer, path, _response(200, token.encode()))
            return True
        with self._lock:
            self._posts[path] += method == "POST"
            behaviour = self._routes.get(path, "ok")
            self._active[path] += 1
        try:
            handler = getattr(self, f"_{behaviour}")
            keep_alive: bool = await handler(reader, writer, path)
            return keep_alive
        finally:
            with self._lock:
                self._active[path] -= 1

    async def _write(self, writer: asyncio.StreamWriter, path: str, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        with self._lock:
            self._sent[path] += len(data)

    async def _trickle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, data: bytes
    ) -> None:
        give_up = time.monotonic() + self.trickle_for_s
        for i in range(len(data)):
            if time.monotonic() > give_up or reader.at_eof():
                return
            await self._write(writer, path, data[i : i + 1])
            await asyncio.sleep(self.interval_s)

    async def _ok(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
    ) -> bool:
        await self._write(writer, path, _response(200, b"ok"))
        return True

    async def _hang(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
    ) -> bool:
        give_up = time.monotonic() + self.trickle_for_s
        while time.monotonic() < give_up and not reader.at_eof():
            await asyncio.sleep(0.05)
        return False

    async def _trickle_headers(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
    ) -> bool:
        endless = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"z" * 10_000
        await self._trickle(reader, writer, path, endless)
        return False

    async def _trickle_body(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
    ) -> bool:
        size = 10_000
        await self._write(
            writer,
            path,
            _head(200, size),
        )
        await self._trickle(reader, writer, path, b"y" * size)
        return False

    async def _huge_body(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
    ) -> bool:
        await self._write(
            writer,
            path,
            _head(200, self.max_bytes),
        )
        chunk = bytes(CHUNK_BYTES)
        for _ in range(self.max_bytes // CHUNK_BYTES):
            await self._write(writer, path, chunk)
        return False

    async def _gzip_bomb(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
    ) -> bool:
        await self._write(
            writer,
            path,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\n"
            b"Connection: close\r\n\r\n",
        )
        first, again = self._gzip
        await self._write(writer, path, first)
        for _ in range(self.max_bytes // len(again)):
            await self._write(writer, path, again)
        return False

    async def _endless_headers(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
    ) -> bool:
        await self._write(writer, path, b"HTTP/1.1 200 OK\r\nX-Junk: ")
        chunk = b"j" * CHUNK_BYTES
        for _ in range(self.max_bytes // CHUNK_BYTES):
            await self._write(writer, path, chunk)
        return False

    async def _redirect(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
    ) -> bool:
        await self._write(writer, path, _response(302, b"moved", Location=METADATA_URL))
        return True

    async def _redirect_loop(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
    ) -> bool:
        await self._write(writer, path, _response(307, b"again", Location=self.url(path)))
        return True


def _head(status: int, length: int, **headers: Any) -> bytes:
    reason = {200: "OK", 302: "Found", 307: "Temporary Redirect"}.get(status, "Status")
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def _response(status: int, body: bytes, **headers: Any) -> bytes:
    return _head(status, len(body), **headers) + body
