"""Several "machines" on this one: Linux network namespaces joined by a bridge, for tests.

Layout (all addresses live inside namespaces this module creates; the host's own network is
never touched)::

    namespace <name>-svc    bridge br0 10.77.0.1/24, and a TCP forwarder per service:
                            10.77.0.1:PORT -> this machine's 127.0.0.1:PORT (the test's
                            Postgres, Redis and Dovecot)
    namespace <name>-m1     veth 10.77.0.11/24 ─┐
    namespace <name>-m2     veth 10.77.0.12/24 ─┼─ bridged in <name>-svc
    namespace <name>-m3     veth 10.77.0.13/24 ─┘

A machine runs commands with :meth:`Network.machine_argv` (its own host name too, so Celery's
``%h`` and listener ids tell machines apart). The forwarder works because a socket belongs to
the network namespace its thread was in when it was made: the listening sockets are made inside
the svc namespace, every upstream connection in the test's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
SUBNET = "10.77.0"
SVC_ADDRESS = f"{SUBNET}.1"
IP_TIMEOUT_S = 10
CHUNK_BYTES = 64 * 1024  # one read of a forwarded connection
FORWARDER_START_TIMEOUT_S = 10


def available() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare", "hostname"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=IP_TIMEOUT_S, capture_output=True)


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run the block's socket creation in ``namespace`` (this thread only)."""
    home = f"/proc/self/task/{threading.get_native_id()}/ns/net"
    back = os.open(home, os.O_RDONLY)
    try:
        _setns(f"/run/netns/{namespace}")
        yield
    finally:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setns(back, CLONE_NEWNET)
        os.close(back)


class Network:
    """The svc namespace, ``machines`` machine namespaces, and forwarders to local services."""

    def __init__(self, machines: int = 3) -> None:
        self.name = f"ipt{uuid.uuid4().hex[:6]}"
        self.svc = f"{self.name}-svc"
        self.machines = [f"{self.name}-m{i + 1}" for i in range(machines)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> Network:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        _ip("netns", "add", self.svc)
        _ip("-n", self.svc, "link", "set", "lo", "up")
        _ip("-n", self.svc, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.svc, "addr", "add", f"{SVC_ADDRESS}/24", "dev", "br0")
        _ip("-n", self.svc, "link", "set", "br0", "up")
        for index, machine in enumerate(self.machines, start=1):
            _ip("netns", "add", machine)
            _ip("-n", machine, "link", "set", "lo", "up")
            # both ends are made in the svc namespace, then one moves to the machine
            _ip("-n", self.svc, "link", "add", f"m{index}", "type", "veth", "peer", "eth0")
            _ip("-n", self.svc, "link", "set", "eth0", "netns", machine)
            _ip("-n", self.svc, "link", "set", f"m{index}", "master", "br0")
            _ip("-n", self.svc, "link", "set", f"m{index}", "up")
            _ip("-n", machine, "addr", "add", f"{self.address(machine)}/24", "dev", "eth0")
            _ip("-n", machine, "link", "set", "eth0", "up")

    def address(self, machine: str) -> str:
        """The machine's address."""
        return f"{SUBNET}.{10 + self.machines.index(machine) + 1}"

    def machine_argv(self, machine: str, argv: list[str]) -> list[str]:
        """``argv`` run on ``machine``: in its namespace, with its own host name."""
        short = machine.rsplit("-", 1)[1]
        return [
            "ip", "netns", "exec", machine,
            "unshare", "--uts",
            "sh", "-c", 'hostname "$0" && exec "$@"', short,
            *argv,
        ]  # fmt: skip

    def forward(self, *ports: int) -> None:
        """Make 127.0.0.1:PORT of this machine reachable as SVC_ADDRESS:PORT from the machines."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="netns-forwarder", daemon=True
            )
            self._thread.start()
        for port in ports:
            with inside(self.svc):
                listening = __import__("socket").create_server((SVC_ADDRESS, port))
            future = asyncio.run_coroutine_threadsafe(self._serve(listening, port), self._loop)
            self._servers.append(future.result(timeout=FORWARDER_START_TIMEOUT_S))

    async def _serve(self, sock: object, port: int) -> asyncio.base_events.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.add(writer)
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                writer.close()
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
            finally:
                self._writers.discard(writer)
                self._writers.discard(up_writer)

        return await asyncio.start_server(handle, sock=sock)  # type: ignore[arg-type]

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Stop the forwarders and delete the namespaces (their links go with them)."""
        if self._loop is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._loop.close()
        for namespace in [*self.machines, self.svc]:
            if Path(f"/run/netns/{namespace}").exists():
                subprocess.run(["ip", "netns", "del", namespace], timeout=IP_TIMEOUT_S, check=False)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK_BYTES):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
