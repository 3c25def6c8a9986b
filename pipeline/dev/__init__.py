"""Dev tooling, not the domain: real servers on one machine, the ``up`` supervisor, demo mail.

``imap-pipeline up`` and the test suite start the same classes::

    EmbeddedPostgres   pipeline.dev.postgres   initdb + postgres, database imap_pipeline
    EmbeddedRedis      pipeline.dev.redis      redis-server with an append-only file
    LocalDovecot       pipeline.dev.dovecot    IMAP server with users, maildirs, optional TLS

``pipeline.dev.up`` runs the whole pipeline in one terminal (``imap-pipeline up``),
``pipeline.dev.mailgen`` writes realistic demo mailboxes and ``pipeline.dev.seed`` puts them
into a server. The domain never imports this package; only the CLI's ``up`` command and the
tests do.

Each server is a direct child of this process (nothing daemonizes): it lives in its own process
group so a Ctrl-C in the terminal reaches only the parent, which stops the children in order,
and it dies with its parent when started from the main thread (``PR_SET_PDEATHSIG``).

Running as root, Postgres and Dovecot's mail processes run as the ``postgres`` and ``dovecot``
system users. Those users must be able to enter their folder; when a folder sits below one they
cannot enter (``/root``, pytest's ``/tmp/pytest-of-root``), :func:`reachable_dir` keeps the data
in a stand-in folder they can reach and leaves a symbolic link at the requested place.

This module holds the helpers the servers share; import the servers from their modules.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import grp
import hashlib
import os
import pwd
import resource
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from pipeline.errors import ServiceError

__all__ = [
    "LOCALHOST",
    "ChildProcess",
    "ServerContext",
    "can_enter",
    "child_preexec",
    "chown_tree",
    "free_port",
    "hold_signals",
    "log_tail",
    "port_in_use",
    "process_group_members",
    "reachable_dir",
    "system_user",
    "wait_until",
]

LOCALHOST = "127.0.0.1"
STOP_TIMEOUT_S = 10.0  # how long a server gets to shut down cleanly before SIGKILL
KILL_WAIT_S = 5.0  # how long to wait for a process after SIGKILL
PORT_PROBE_TIMEOUT_S = 0.5
LOG_TAIL_LINES = 25
PERSISTENT_STAND_IN_BASE = Path("/var/lib/imap-pipeline")
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    The port is only probably free by the time it is used; callers that race other processes
    for ports (parallel test runs) should retry on a bind failure.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now: for one
    service with several listeners (``free_port()`` twice in a row may give the same port,
    since the first is free again once it returns). As free as :func:`free_port`'s."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOCALHOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_in_use(port: int, host: str = LOCALHOST) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=PORT_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def can_bind(port: int, host: str = LOCALHOST) -> bool:
    """Whether a server could listen on ``host:port`` now (nothing holds it on any address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # what servers set too: a port in TIME_WAIT is free for them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def system_user(name: str) -> pwd.struct_passwd:
    """The passwd entry of ``name``, or a ServiceError that says how to get it."""
    try:
        return pwd.getpwnam(name)
    except KeyError as exc:
        raise ServiceError(
            f"The system user {name!r} does not exist. It comes with the server's Debian "
            f"package; reinstall it (for example `apt-get install --reinstall "
            f"{'postgresql' if name == 'postgres' else 'dovecot-core'}`)."
        ) from exc


def chown_tree(path: Path, user: str, *, recursive: bool = True) -> None:
    """Give ``path`` (and everything below it) to ``user``; symbolic links are not followed."""
    entry = system_user(user)
    uid, gid = entry.pw_uid, entry.pw_gid
    os.chown(path, uid, gid, follow_symlinks=False)
    if not recursive:
        return
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def can_enter(path: Path, user: str) -> bool:
    """Whether ``user`` may enter ``path`` and every folder above it (mode bits; no ACLs).

    Folders that do not exist yet are assumed to be created enterable.
    """
    entry = system_user(user)
    if entry.pw_uid == 0:
        return True
    groups = set(os.getgrouplist(user, entry.pw_gid))
    real = path.resolve()
    for folder in (real, *real.parents):
        try:
            st = folder.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == entry.pw_uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def reachable_dir(path: Path, user: str) -> Path:
    """A folder for ``user``'s server data at ``path``, or at a stand-in ``user`` can reach.

    When ``user`` can enter ``path``, it is created (mode 0755) and returned. Otherwise (only
    possible as root) the data goes into a stand-in folder and ``path`` becomes a symbolic link
    to it: under ``/var/lib/imap-pipeline`` for lasting data, or under the system's temporary
    folder when ``path`` is itself temporary (test runs). Stand-ins of temporary folders that
    have since been deleted are removed; a lasting one whose link was deleted is renamed
    ``*.orphaned-<time>`` when the link is made again.

    Args:
        path: Where the caller wants the data.
        user: The system user the server runs as.

    Returns:
        The real folder (symbolic links resolved), which is what the server must be given.

    Raises:
        ServiceError: ``path`` holds data ``user`` cannot reach and cannot be moved aside.
    """
    path = path.expanduser().absolute()
    if path.exists():
        if can_enter(path, user):
            return path.resolve()
        if path.is_symlink() or any(path.iterdir()):
            blocker = _first_blocker(path, user)
            raise ServiceError(
                f"The {user!r} user cannot enter {path} ({blocker} is closed to it). Let it in "
                f"with `chmod o+x {blocker}`, or choose a folder elsewhere."
            )
        path.rmdir()  # an empty folder nobody relies on yet: replace it by a link
    elif can_enter(path, user):
        path.mkdir(parents=True)
        path.chmod(0o755)
        return path.resolve()
    if os.geteuid() != 0:
        raise ServiceError(f"The {user!r} user cannot enter {path}; choose a folder it can reach.")
    temporary = _is_under(path, Path(tempfile.gettempdir()))
    base = _stand_in_base(temporary)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    target = base / f"{path.name}-{digest}"
    if target.exists():  # left by an earlier link someone deleted: start afresh
        if temporary:
            shutil.rmtree(target)
        else:  # lasting data: keep it aside rather than destroy it
            target.rename(target.with_name(f"{target.name}.orphaned-{int(time.time())}"))
    target.mkdir(mode=0o755)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target, target_is_directory=True)
    if temporary:
        (base / f"{target.name}.source").write_text(str(path))
        _collect_orphan_stand_ins(base)
    return target


def _first_blocker(path: Path, user: str) -> Path:
    real = path.resolve()
    for folder in reversed((real, *real.parents)):
        if folder.exists() and not can_enter(folder, user) and can_enter(folder.parent, user):
            return folder
    return real


def _is_under(path: Path, base: Path) -> bool:
    try:
        path.resolve().relative_to(base.resolve())
    except ValueError:
        return False
    return True


def _stand_in_base(temporary: bool) -> Path:
    base = (
        Path(tempfile.gettempdir()) / f"imap-pipeline-{os.geteuid()}"
        if temporary
        else PERSISTENT_STAND_IN_BASE
    )
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o755, parents=not temporary)
    # a shared temporary folder: refuse a base someone else planted there
    st = base.lstat()
    if (
        not stat.S_ISDIR(st.st_mode)
        or st.st_uid != os.geteuid()
        or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        raise ServiceError(
            f"{base} is not a folder owned by this user and closed to others; remove it and retry."
        )
    base.chmod(0o755)
    return base


def _collect_orphan_stand_ins(base: Path) -> None:
    for marker in base.glob("*.source"):
        target = base / marker.name.removesuffix(".source")
        try:
            source = Path(marker.read_text())
        except FileNotFoundError:
            continue  # another test run collected it between the listing and the read
        if source.is_symlink() and source.resolve() == target.resolve():
            continue
        if _server_running_in(target):
            continue  # its link is gone, but a Dovecot or Postgres still works in it
        shutil.rmtree(target, ignore_errors=True)
        marker.unlink(missing_ok=True)


def _server_running_in(folder: Path) -> bool:
    for pid_file in (folder / "run" / "master.pid", folder / "pgdata" / "postmaster.pid"):
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            continue
        return True
    return False


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
