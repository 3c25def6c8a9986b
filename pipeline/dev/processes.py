"""Server processes as direct children: :class:`ChildProcess`, :class:`ServerContext`
(``with server:``), stop signals held while a child is spawned, and waiting for readiness.

Each server is a direct child of this process (nothing daemonizes): it lives in its own process
group so a Ctrl-C in the terminal reaches only the parent, which stops the children in order,
and it dies with its parent when started from the main thread (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import grp
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from pipeline.dev.folders import system_user
from pipeline.errors import ServiceError

STOP_TIMEOUT_S = 10.0  # how long a server gets to shut down cleanly before SIGKILL
KILL_WAIT_S = 5.0  # how long to wait for a process after SIGKILL
LOG_TAIL_LINES = 25
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class _SignalHold:
    """Holds stop signals while this process spawns a child and records it.

    A Python signal handler runs between bytecodes of the main thread, which includes the
    callbacks ``fork`` runs in the parent (logging's lock release among them): an exception a
    handler raises there is printed as "Exception ignored" and lost, and one raised between a
    spawn and the line that records the child leaves the child unrecorded. A handler that
    raises asks :meth:`held` first; what it held is raised again, by ``signal.raise_signal``,
    when the outermost hold ends. Only the main thread holds (handlers run only there).
    """

    def __init__(self) -> None:
        self._depth = 0
        self._held: list[int] = []

    def held(self, signum: int) -> bool:
        """Whether ``signum`` was held for later (a hold is open); the handler returns if so."""
        if self._depth == 0:
            return False
        self._held.append(signum)
        return True

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._held:
                held, self._held = self._held, []
                for signum in dict.fromkeys(held):
                    signal.raise_signal(signum)


hold_signals = _SignalHold()


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("" if it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _libc_prctl() -> Callable[..., int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _libc_prctl()


def child_preexec(
    parent_death_signal: signal.Signals | None, nofile: int | None
) -> Callable[[], None] | None:
    """A ``preexec_fn``: raise the open-files limit, and die with this process.

    Linux sends the parent-death signal when the *thread* that started the child ends, so it is
    only asked for from the main thread.
    """
    prctl = _PRCTL if threading.current_thread() is threading.main_thread() else None
    if parent_death_signal is None:
        prctl = None
    if prctl is None and nofile is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        if nofile is not None:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            wanted = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
            if soft != resource.RLIM_INFINITY and soft < wanted:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        if prctl is not None and parent_death_signal is not None:
            prctl(_PR_SET_PDEATHSIG, int(parent_death_signal))
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)

    return preexec


class ChildProcess:
    """One server process, a direct child of this process, its output in a log file.

    The child runs in its own session and process group (a terminal's Ctrl-C reaches only the
    parent), optionally as another system user (``run_as``, when this process is root), and is
    sent ``parent_death_signal`` if the parent dies without stopping it (only when started from
    the main thread). ``nofile`` raises its open-files limit.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        run_as: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        parent_death_signal: signal.Signals | None = signal.SIGTERM,
        nofile: int | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.run_as = run_as
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.parent_death_signal = parent_death_signal
        self.nofile = nofile
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id while it has been started."""
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Start the child.

        Raises:
            ServiceError: the program could not be executed.
        """
        if self._proc is not None and self._proc.poll() is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        user_args: dict[str, object] = {}
        if self.run_as is not None and os.geteuid() == 0:
            entry = system_user(self.run_as)
            user_args = {
                "user": entry.pw_uid,
                "group": entry.pw_gid,
                "extra_groups": [g.gr_gid for g in grp.getgrall() if self.run_as in g.gr_mem],
            }
        with self.log_path.open("ab") as log, hold_signals():
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                    preexec_fn=child_preexec(self.parent_death_signal, self.nofile),
                    **user_args,  # type: ignore[call-overload]
                )
            except OSError as exc:
                raise ServiceError(f"Cannot run {self.argv[0]} ({self.name}): {exc}") from exc

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child (not its group), if it runs."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def poll(self) -> int | None:
        """The exit code if the child has ended, else None (also None before start)."""
        return self._proc.poll() if self._proc else None

    @property
    def running(self) -> bool:
        """Whether the child has been started and has not ended."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Ask the child to stop, wait up to ``timeout_s``, then kill its process group.

        Returns:
            The exit code, or None if the child was never started.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        # the group may still hold helpers (Dovecot's, a worker pool's) that outlived the leader
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode

    def wait(self, timeout_s: float) -> int | None:
        """Wait up to ``timeout_s`` for the child to end; its exit code, or None on timeout."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Kill the child and its process group at once, and reap it."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        try:
            proc.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"{self.name} (pid {proc.pid}) survived SIGKILL.") from exc

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the child's log."""
        return log_tail(self.log_path, lines)


def process_group_members(pgid: int) -> list[tuple[int, str]]:
    """Live processes (pid, command name) of a process group, from /proc; zombies excluded."""
    members: list[tuple[int, str]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError:
            continue  # ended meanwhile
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        # fields after the name: state ppid pgrp ...
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append((int(entry.name), comm))
    return members


def wait_until(
    check: Callable[[], bool],
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    abort: Callable[[], str | None] | None = None,
) -> bool:
    """Call ``check`` until it returns True or ``timeout_s`` passes.

    Args:
        check: Returns True when the awaited condition holds.
        timeout_s: Give up after this many seconds.
        interval_s: Pause between checks.
        abort: Returns a reason to stop waiting early (e.g. the process died), or None.

    Returns:
        True if ``check`` succeeded in time, False on timeout.

    Raises:
        ServiceError: ``abort`` returned a reason.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if abort is not None and (reason := abort()) is not None:
            raise ServiceError(reason)
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


class ServerContext:
    """Mixin: ``with server:`` starts it and always stops it."""

    def start(self) -> None:  # pragma: no cover - overridden
        """Start the server."""
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        """Stop the server."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
