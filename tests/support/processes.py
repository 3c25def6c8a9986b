"""Run the pipeline's own processes (Celery workers) as a user would, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import httpx
import pytest

from pipeline.config import Settings, reset_settings
from pipeline.presets import queue_names
from tests.support.waiting import wait_for

WORKER_READY_TIMEOUT_S = 60
CLI_TIMEOUT_S = 60


def run_cli(settings: Settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``imap-pipeline ARGS`` as a person runs it, on ``settings``' services."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=pipeline_env(settings),
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def pipeline_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a pipeline process needs to use ``settings``' services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAP_PIPELINE_")}
    env.update(
        {
            "IMAP_PIPELINE_DATABASE_URL": settings.require_database_url(),
            "IMAP_PIPELINE_REDIS_URL": settings.require_redis_url(),
            "IMAP_PIPELINE_ENCRYPTION_KEYS": ",".join(settings.encryption_key_list),
            "IMAP_PIPELINE_DATA_DIR": str(settings.data_dir),
            "IMAP_PIPELINE_SYNC_BATCH_SIZE": str(settings.sync.batch_size),
        }
    )
    if settings.imap.ca_file:
        env["IMAP_PIPELINE_IMAP_CA_FILE"] = str(settings.imap.ca_file)
    env.update(extra)
    return env


@contextlib.contextmanager
def this_process_on(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's ``IMAP_PIPELINE_*`` variables set from ``env`` (e.g. :func:`pipeline_env`),
    and its settings (:func:`pipeline.config.get_settings`, which task code run in-process
    reads) read from them; read again afterwards, once ``monkeypatch`` has restored them."""
    for key, value in env.items():
        if key.startswith("IMAP_PIPELINE_"):
            monkeypatch.setenv(key, value)
    reset_settings()
    try:
        yield
    finally:
        reset_settings()


class CeleryWorker:
    """``celery -A workers worker`` in its own process group, logging to a file."""

    def __init__(self, env: dict[str, str], log_dir: Path, *, concurrency: int = 2) -> None:
        self.env = env
        self.name = f"test-{uuid.uuid4().hex[:8]}"
        self.log_path = log_dir / f"{self.name}.log"
        self.concurrency = concurrency
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> CeleryWorker:
        queues = ",".join([*queue_names(), "send", "webhooks", "maintenance"])
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.process = self._spawn(queues, log)
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"worker did not start:\n{self.log()[-3000:]}")
            return b" ready." in self.log_path.read_bytes()

        try:
            wait_for(ready, "the worker to be ready", WORKER_READY_TIMEOUT_S, interval_s=0.2)
        except AssertionError as exc:
            raise RuntimeError(f"worker did not start:\n{self.log()[-3000:]}") from exc
        return self

    def _spawn(self, queues: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers",
                "worker",
                "-Q",
                queues,
                "-c",
                str(self.concurrency),
                "-n",
                f"{self.name}@%h",
                "-l",
                "info",
                "--without-gossip",
                "--without-mingle",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def children(self) -> list[int]:
        """The pool processes (the main process's children) that are alive now."""
        assert self.process is not None
        return child_pids(self.process.pid)

    def log(self) -> str:
        """Everything the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and children), as a crash would."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Warm shutdown."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


class RoleProcess:
    """One role of deploy/Procfile, started with its exact line as ``up`` and containers do."""

    def __init__(
        self, role: str, env: dict[str, str], log_dir: Path, *, wrap: list[str] | None = None
    ) -> None:
        from pipeline.dev.roles import read_procfile

        self.wrap = wrap or []  # e.g. run it in a network namespace (tests/support/netns.py)
        (self.command,) = [r.command for r in read_procfile() if r.name == role]
        self.role = role
        self.env = dict(env)
        # the role's programs (celery, imap-pipeline) are next to this interpreter
        self.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        self.log_path = log_dir / f"{role}-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RoleProcess:
        """Start it (it runs in its own process group)."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*self.wrap, "/bin/sh", "-c", f"exec {self.command}"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        """Everything it printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, url: str, timeout_s: float) -> None:
        """Wait until ``url/healthz`` answers 200 (the API role), failing if the role exits."""

        def healthy() -> bool:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            assert self.process is not None and self.process.poll() is None, self.log()
            return False

        wait_for(healthy, lambda: f"{url}/healthz:\n{self.log()[-3000:]}", timeout_s, 0.2)

    def kill(self) -> None:
        """SIGKILL the whole group, as a machine that dies takes everything with it."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM the group, as ``up``, Docker and Kubernetes do; SIGKILL after 30 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def child_pids(pid: int) -> list[int]:
    """The live children of ``pid`` (Linux: /proc/PID/task/*/children)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return sorted(set(out))


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` (resident now) and ``VmHWM`` (the peak resident size over the process's life)
    of a process, in KiB, from /proc/PID/status."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values
