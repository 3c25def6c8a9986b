"""A Redis server of our own, keeping its data in a folder with an append-only file.

The pipeline's queue lives in this Redis, so it persists every write (``appendonly yes``) and
takes no RDB snapshots: a restart of ``imap-pipeline up`` finds the queued work again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import redis

from pipeline.dev.ports import LOCALHOST, port_in_use
from pipeline.dev.processes import ChildProcess, ServerContext, log_tail, wait_until
from pipeline.errors import ServiceError

REDIS_START_TIMEOUT_S = 30.0  # loading a large append-only file takes a while
REDIS_STOP_TIMEOUT_S = 15.0  # SIGTERM: flush the append-only file, then exit
REDIS_PING_TIMEOUT_S = 1.0


def find_redis_server() -> str:
    """The path of ``redis-server``.

    Raises:
        ServiceError: it is not installed.
    """
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None
    )
    if found is None:
        raise ServiceError(
            "redis-server is not installed. Install it (`apt-get install -y redis-server`) or "
            "point IMAP_PIPELINE_REDIS_URL at a running Redis."
        )
    return found


class EmbeddedRedis(ServerContext):
    """A Redis server run as a child process, listening on 127.0.0.1 only.

    Example::

        with EmbeddedRedis(Path("/tmp/r"), 56379) as r:
            client = redis.Redis.from_url(r.url)
    """

    def __init__(
        self, data_dir: Path, port: int, *, start_timeout_s: float = REDIS_START_TIMEOUT_S
    ) -> None:
        self.data_dir = data_dir.expanduser().absolute()
        self.port = port
        self.start_timeout_s = start_timeout_s
        self._process: ChildProcess | None = None

    @property
    def url(self) -> str:
        """Redis URL of database 0."""
        return f"redis://{LOCALHOST}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.data_dir / "redis.log"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.running

    def start(self) -> None:
        """Start the server and wait until it answers PING.

        Raises:
            ServiceError: redis-server is missing, the port is taken, or the server did not
                come up in time (the message carries the end of its log).
        """
        if self.running:
            return
        binary = find_redis_server()
        if port_in_use(self.port):
            raise ServiceError(
                f"Port {self.port} is already in use, so the embedded Redis cannot listen there. "
                "Stop whatever uses it or choose another port (IMAP_PIPELINE_EMBEDDED_REDIS_PORT)."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # the append-only file holds queued task arguments
        self._process = ChildProcess(
            "redis",
            [
                binary,
                "--port", str(self.port),
                "--bind", LOCALHOST,
                "--dir", str(self.data_dir),
                "--appendonly", "yes",
                "--save", "",
                "--daemonize", "no",
                "--logfile", "",
            ],
            log_path=self.log_path,
            cwd=self.data_dir,
        )  # fmt: skip
        self._process.start()
        if not wait_until(self._pings, timeout_s=self.start_timeout_s, abort=self._died):
            self.stop()
            raise ServiceError(
                f"Redis did not answer PING on port {self.port} within "
                f"{self.start_timeout_s:.0f} s. End of {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def stop(self) -> None:
        """SIGTERM (Redis flushes its append-only file), SIGKILL after a timeout."""
        if self._process is not None:
            self._process.stop(REDIS_STOP_TIMEOUT_S)
            self._process = None

    def _pings(self) -> bool:
        client = redis.Redis(
            host=LOCALHOST,
            port=self.port,
            socket_timeout=REDIS_PING_TIMEOUT_S,
            socket_connect_timeout=REDIS_PING_TIMEOUT_S,
        )
        try:
            return bool(client.ping())
        except redis.RedisError:  # refused, or still loading the append-only file
            return False
        finally:
            client.close()

    def _died(self) -> str | None:
        code = self._process.poll() if self._process else None
        if code is None:
            return None
        return f"Redis exited with code {code} while starting. End of {self.log_path}:\n" + (
            log_tail(self.log_path)
        )
