"""``imap-pipeline up``: the whole pipeline in one terminal, in the foreground.

What it does, in order::

    lock data_dir ──> services ──> key ──> migrations ──> runtime.env ──> [demo Dovecot]
         │            configured ones if reachable, else embedded Postgres/Redis in data_dir
         v
    Procfile roles as children, output prefixed ──> [demo grant] ──> summary ──> wait
         │
         ├─ Ctrl-C / SIGTERM / SIGHUP: stop roles (SIGTERM, 10 s, SIGKILL), then the
         │  servers, remove runtime.env; exit 0
         └─ a role exits on its own: say which and how, stop everything; exit 1

The roles come from ``deploy/Procfile`` (``role: command`` per line, run by ``/bin/sh``; read
by :mod:`pipeline.dev.roles`), so adding a process to the pipeline is adding a line there. The
demo mailbox is :mod:`pipeline.dev.demo`'s. Each role gets the resolved environment (service
URLs, data folder) and runs in its own process group, so a Ctrl-C in the terminal reaches only
this process, which stops the roles before the servers they use.
``<data_dir>/runtime.env`` tells CLI commands in other terminals where the services are.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.config import ENV_PREFIX, RUNTIME_ENV_NAME, Settings
from pipeline.crypto import generate_key
from pipeline.dev.demo import connect_demo, start_demo
from pipeline.dev.ports import LOCALHOST, can_bind, port_in_use
from pipeline.dev.processes import child_preexec, hold_signals
from pipeline.dev.roles import PROCFILE, Role, RoleLog, read_procfile
from pipeline.errors import PipelineError, ServiceError
from pipeline.metrics import MULTIPROC_ENV

if TYPE_CHECKING:
    from pipeline.dev.postgres import EmbeddedPostgres
    from pipeline.dev.redis import EmbeddedRedis

ROLE_STOP_TIMEOUT_S = 10.0  # a Celery warm shutdown finishes running tasks; then SIGKILL
ROLE_KILL_WAIT_S = 5.0
POLL_INTERVAL_S = 0.2
SERVICE_PROBE_TIMEOUT_S = 3  # is a configured Postgres/Redis reachable?
DEFAULT_SYNC_CONCURRENCY_ENV = "IMAP_PIPELINE_SYNC_CONCURRENCY"
LOCK_NAME = "up.lock"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
OWN_METRICS_ROLES = frozenset({"flower"})  # serves /metrics on its own port
# runtime.env's own lines (the services up resolved) and what finds runtime.env itself
RUNTIME_ENV_OWN = frozenset(
    {"IMAP_PIPELINE_DATABASE_URL", "IMAP_PIPELINE_REDIS_URL", "IMAP_PIPELINE_DATA_DIR"}
)
_SignalHandler = Callable[[int, FrameType | None], Any] | int | None
ROLE_STYLES = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def run_up(settings: Settings, demo: bool) -> int:
    """Run ``imap-pipeline up [--demo]`` in the foreground until Ctrl-C or a role fails.

    Args:
        settings: The settings, as the CLI loaded them.
        demo: Also start a local Dovecot with a seeded ``demo`` mailbox and connect it.

    Returns:
        0 after a requested stop, 1 when a role failed or the start failed.
    """
    return _Up(settings, demo=demo).run()


class _Interrupted(BaseException):
    """A stop was asked for while starting (a BaseException: ``except Exception`` passes it)."""


@dataclass
class _RoleProcess:
    role: Role
    style: str
    proc: subprocess.Popen[bytes]
    log: RoleLog
    pump: threading.Thread | None = None


@dataclass
class _Services:
    database_url: str = ""
    redis_url: str = ""
    notes: dict[str, str] = field(default_factory=dict)


class _Up:
    def __init__(self, settings: Settings, *, demo: bool, procfile: Path = PROCFILE) -> None:
        self.settings = settings
        self.demo = demo
        self.procfile = procfile
        self.data_dir = settings.data_dir.expanduser().absolute()
        self.console = Console(soft_wrap=True, highlight=False)
        self.print_lock = threading.Lock()
        self.stop_requested = threading.Event()
        self.signals_seen = 0
        self.starting = True
        self.name_width = 8
        self.stack = contextlib.ExitStack()
        self.roles: list[_RoleProcess] = []
        self.runtime_env: Path = self.data_dir / RUNTIME_ENV_NAME
        self.runtime_env_text: str | None = None
        self.services = _Services()
        self.demo_rows: list[tuple[str, str]] = []
        self.metrics_ports: dict[str, int] = {}

    # --- the whole run ----------------------------------------------------------------------

    def run(self) -> int:
        previous = self._install_signal_handlers()
        try:
            # the exit stack stops the servers (and unlocks data_dir) after the roles are gone
            with self.stack:
                try:
                    self._start()
                    return self._wait()
                except _Interrupted:
                    self.say("stopping before everything started", "yellow")
                    return 0
                except PipelineError as exc:
                    self.say(f"error: {exc}", "bold red")
                    return 1
                finally:
                    self.starting = False  # a signal from here on must not cut the cleanup short
                    self._stop_roles()
                    self._remove_runtime_env()
        finally:
            self._restore_signal_handlers(previous)

    def _start(self) -> None:
        roles = read_procfile(self.procfile)  # before starting anything: fail fast on typos
        self._check_ports(roles, "Nothing was started.")
        self._lock_data_dir()
        self._resolve_services()
        self._ensure_key()
        self._ensure_api_key()
        self._migrate()
        self._write_runtime_env()
        env = self._role_env()
        demo_account = None
        if self.demo:
            demo_account, self.demo_rows = start_demo(
                self.data_dir, self.stack, self.settings.sync.retention_days, self.say
            )
        self._check_ports(roles, "Stopping.")  # again: starting services took a while
        if (
            any(r.name == "flower" for r in roles)
            and self.settings.flower_host not in LOOPBACK_HOSTS
            and not os.environ.get("FLOWER_BASIC_AUTH")
        ):
            self.say(
                f"warning: Flower listens on {self.settings.flower_host} without a login (task "
                "arguments and results are visible): set FLOWER_BASIC_AUTH=user:password",
                "yellow",
            )
        self.starting = False
        self.metrics_ports = self._metrics_ports(roles)
        self.name_width = max(len(r.name) for r in roles)
        for index, role in enumerate(roles):
            self._start_role(role, ROLE_STYLES[index % len(ROLE_STYLES)], self._env_of(role, env))
        if demo_account is not None:
            row = connect_demo(demo_account, env, self.data_dir, self.say)
            if row is not None:
                self.demo_rows.append(row)
        self._print_summary()

    def _wait(self) -> int:
        while not self.stop_requested.wait(POLL_INTERVAL_S):
            for rp in self.roles:
                code = rp.proc.poll()
                if code is not None:
                    how = (
                        f"killed by {signal.Signals(-code).name}"
                        if code < 0
                        else f"exit code {code}"
                    )
                    self.say(
                        f"role {rp.role.name!r} stopped unexpectedly ({how}); stopping "
                        f"everything. Its output is in {self._log_dir / rp.role.name}.log",
                        "bold red",
                    )
                    return 1
        self.say("stopping …", "yellow")
        return 0

    # --- signals ----------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[signal.Signals, _SignalHandler]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[signal.Signals, _SignalHandler] = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # ignored on purpose by whoever started us (nohup, a background job)
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    def _restore_signal_handlers(self, previous: Mapping[signal.Signals, _SignalHandler]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.starting and hold_signals.held(signum):
            return  # a child is being spawned: raised again once it is recorded
        self.signals_seen += 1
        self.stop_requested.set()
        if self.starting and self.signals_seen == 1:
            raise _Interrupted(signal.Signals(signum).name)

    def _wanted_ports(self, roles: list[Role]) -> list[tuple[str, str, int, str]]:
        """(variable, what, port, host) of every port a role of ``roles`` will listen on."""
        s = self.settings
        names = {r.name for r in roles}
        wanted: list[tuple[str, str, int, str]] = []
        if "api" in names:
            wanted.append(("IMAP_PIPELINE_API_PORT", "the HTTP API", s.api.port, s.api.host))
        if "flower" in names:
            wanted.append(("IMAP_PIPELINE_FLOWER_PORT", "Flower", s.flower_port, s.flower_host))
        for name, port in self._metrics_ports(roles).items():
            wanted.append(("IMAP_PIPELINE_METRICS_PORT", f"{name}'s metrics", port, s.metrics_host))
        return wanted

    def _check_ports(self, roles: list[Role], then: str) -> None:
        """Refuse to start when a port a role needs is taken, naming the variable to change."""
        taken = [
            f"port {port} ({what}) is in use: stop what uses it or set {variable} to a free port"
            for variable, what, port, host in self._wanted_ports(roles)
            if port_in_use(port, LOCALHOST) or not can_bind(port, host)
        ]
        if taken:
            raise ServiceError("; ".join(taken) + ". " + then)

    # --- services ---------------------------------------------------------------------------

    def _lock_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = self.stack.enter_context((self.data_dir / LOCK_NAME).open("a+"))
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise ServiceError(
                f"Another `imap-pipeline up` (pid {holder}) is running with {self.data_dir}. "
                "Stop it first, or give this one another IMAP_PIPELINE_DATA_DIR."
            ) from exc
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()

    def _resolve_services(self) -> None:
        from pipeline.dev.postgres import EmbeddedPostgres
        from pipeline.dev.redis import EmbeddedRedis

        pg = EmbeddedPostgres(self.data_dir / "postgres", self.settings.embedded_postgres_port)
        self.services.database_url = self._configured_or_embedded(
            "Postgres",
            "DATABASE_URL",
            self.settings.database_url,
            _postgres_reachable,
            pg,
            pg.folder,
        )
        rd = EmbeddedRedis(self.data_dir / "redis", self.settings.embedded_redis_port)
        self.services.redis_url = self._configured_or_embedded(
            "Redis", "REDIS_URL", self.settings.redis_url, _redis_reachable, rd, rd.data_dir
        )

    def _configured_or_embedded(
        self,
        name: str,
        variable: str,
        configured: str | None,
        reachable: Callable[[str], bool],
        embedded: EmbeddedPostgres | EmbeddedRedis,
        folder: Path,
    ) -> str:
        """The URL of the configured server when it answers, else of ``embedded``, started (and
        stopped with ``up``); the choice is noted for the summary."""
        note = name.lower()
        if configured and configured != embedded.url and reachable(configured):
            self.services.notes[note] = f"configured (IMAP_PIPELINE_{variable})"
            return configured
        if configured and configured != embedded.url:
            self.say(
                f"warning: IMAP_PIPELINE_{variable} ({redact_url(configured)}) is not "
                f"reachable; starting an embedded {name} instead.",
                "yellow",
            )
        self.say(f"starting an embedded {name} on {LOCALHOST}:{embedded.port} …")
        self.stack.enter_context(embedded)
        self.services.notes[note] = f"embedded, data in {folder}"
        return embedded.url

    def _ensure_key(self) -> None:
        if self.settings.encryption_keys is None and _create_secret_file(
            self.data_dir / "encryption.key", generate_key()
        ):
            self.say(
                f"created an encryption key in {self.data_dir / 'encryption.key'} (back it up: "
                "stored passwords cannot be read without it)"
            )

    def _ensure_api_key(self) -> None:
        if self.settings.api_keys is None and _create_secret_file(
            self.data_dir / "api.key", secrets.token_urlsafe(32)
        ):
            self.say(
                f"created an API key in {self.data_dir / 'api.key'} "
                "(send it as Authorization: Bearer <key>)"
            )

    def _migrate(self) -> None:
        from pipeline.db import migrate  # imported late: Alembic is slow to import

        self.say("applying database migrations …")
        try:
            migrate(self.services.database_url)
        except PipelineError:
            raise
        except Exception as exc:
            raise ServiceError(
                f"Database migrations failed ({type(exc).__name__}: {exc}). Fix the cause and run "
                "`imap-pipeline up` again; `imap-pipeline migrate` applies them alone."
            ) from exc

    def _write_runtime_env(self) -> None:
        # The settings up's roles run with, so that a command in another terminal judges the
        # same way (e.g. webhook destinations it may add) without exporting them again.
        shared = "".join(
            f"{name}={_env_quote(value)}\n"
            for name, value in sorted(os.environ.items())
            if name.startswith(ENV_PREFIX) and name not in RUNTIME_ENV_OWN
        )
        text = (
            "# Written by `imap-pipeline up` while it runs; removed when it stops.\n"
            f"IMAP_PIPELINE_DATABASE_URL={_env_quote(self.services.database_url)}\n"
            f"IMAP_PIPELINE_REDIS_URL={_env_quote(self.services.redis_url)}\n" + shared
        )
        tmp = self.runtime_env.with_name(RUNTIME_ENV_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        tmp.replace(self.runtime_env)
        self.runtime_env_text = text

    def _remove_runtime_env(self) -> None:
        if self.runtime_env_text is None:
            return
        with contextlib.suppress(OSError):
            if self.runtime_env.read_text() == self.runtime_env_text:
                self.runtime_env.unlink()

    # --- demo -------------------------------------------------------------------------------

    # --- roles ------------------------------------------------------------------------------

    @property
    def _log_dir(self) -> Path:
        return self.data_dir / "logs"

    def _role_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "IMAP_PIPELINE_DATABASE_URL": self.services.database_url,
                "IMAP_PIPELINE_REDIS_URL": self.services.redis_url,
                "IMAP_PIPELINE_DATA_DIR": str(self.data_dir),
                "IMAP_PIPELINE_FLOWER_PORT": str(self.settings.flower_port),
                "IMAP_PIPELINE_FLOWER_HOST": self.settings.flower_host,
                "PYTHONUNBUFFERED": "1",  # log lines reach the terminal as they happen
            }
        )
        if self.settings.worker_concurrency > 0:
            env.setdefault(DEFAULT_SYNC_CONCURRENCY_ENV, str(self.settings.worker_concurrency))
        # the roles' programs (celery, imap-pipeline) live next to this interpreter
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", os.defpath)])
        return env

    def _metrics_ports(self, roles: list[Role]) -> dict[str, int]:
        """Each role's metrics port: IMAP_PIPELINE_METRICS_PORT and the next ones, in Procfile
        order (Flower serves its own /metrics on its port); none when the setting is 0."""
        base = self.settings.metrics_port
        serving = [r.name for r in roles if r.name not in OWN_METRICS_ROLES]
        return {name: base + i for i, name in enumerate(serving)} if base else {}

    def _env_of(self, role: Role, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` plus the role's own metrics port and multiprocess folder."""
        own = dict(env)
        own["IMAP_PIPELINE_METRICS_PORT"] = str(self.metrics_ports.get(role.name, 0))
        # each role adds up only its own processes' counters (prometheus-client multiprocess)
        own[MULTIPROC_ENV] = str(self.data_dir / "metrics" / role.name)
        return own

    def _start_role(self, role: Role, style: str, env: Mapping[str, str]) -> None:
        self._log_dir.mkdir(exist_ok=True)
        log = RoleLog(self._log_dir / f"{role.name}.log")
        with hold_signals():  # a Ctrl-C now stops the role with the others, never orphans it
            proc = subprocess.Popen(
                ["/bin/sh", "-c", f"exec {role.command}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=self.data_dir,
                start_new_session=True,
                preexec_fn=child_preexec(signal.SIGTERM, None),
            )
            rp = _RoleProcess(role, style, proc, log)
            self.roles.append(rp)
        rp.pump = threading.Thread(
            target=self._pump, args=(rp,), name=f"up-{role.name}", daemon=True
        )
        rp.pump.start()

    def _pump(self, rp: _RoleProcess) -> None:
        assert rp.proc.stdout is not None
        prefix = Text(f"{rp.role.name:>{self.name_width}} | ", style=rp.style)
        for raw in iter(rp.proc.stdout.readline, b""):
            rp.log.write(raw)  # as it happens: `tail -f` shows it at once
            line = Text.from_ansi(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
            with self.print_lock:
                self.console.print(Text.assemble(prefix, line))

    def _stop_roles(self) -> None:
        running = [rp for rp in self.roles if rp.proc.poll() is None]
        for rp in running:
            with contextlib.suppress(ProcessLookupError):
                rp.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + ROLE_STOP_TIMEOUT_S
        for rp in running:
            while rp.proc.poll() is None and time.monotonic() < deadline:
                if self.signals_seen >= 2 and not self.starting:  # asked twice: no waiting
                    break
                time.sleep(0.05)
        for rp in self.roles:
            if rp.proc.poll() is None:
                self.say(f"{rp.role.name} did not stop in time; killing it", "yellow")
            # also ends what the role left behind in its group (a worker's pool processes)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(rp.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                rp.proc.wait(timeout=ROLE_KILL_WAIT_S)
            if rp.pump is not None:
                rp.pump.join(timeout=ROLE_KILL_WAIT_S)
            if rp.proc.stdout is not None:
                rp.proc.stdout.close()
            rp.log.close()
        self.roles.clear()

    # --- output -----------------------------------------------------------------------------

    def say(self, message: str, style: str = "") -> None:
        """Print a line of ``up``'s own (plain text: brackets in messages stay brackets)."""
        line = Text.assemble((f"{'up':>{self.name_width}} | ", "bold"), (message, style))
        with self.print_lock:
            self.console.print(line)

    def _print_summary(self) -> None:
        table = Table(
            title="imap-pipeline is running (Ctrl-C stops everything)", title_justify="left"
        )
        table.add_column("what", style="bold", no_wrap=True)
        table.add_column("where", overflow="fold")
        table.add_row("Postgres", f"{redact_url(self.services.database_url)}")
        table.add_row("", self.services.notes.get("postgres", ""))
        table.add_row("Redis", f"{redact_url(self.services.redis_url)}")
        table.add_row("", self.services.notes.get("redis", ""))
        if any(rp.role.name == "flower" for rp in self.roles):
            table.add_row(
                "Flower", f"http://{self.settings.flower_host}:{self.settings.flower_port}"
            )
        if any(rp.role.name == "api" for rp in self.roles):
            table.add_row(
                "HTTP API",
                f"http://{self.settings.api.host}:{self.settings.api.port}/v3 "
                f"(docs at /docs; key: IMAP_PIPELINE_API_KEYS or {self.data_dir / 'api.key'})",
            )
        for name, where in self.demo_rows:
            table.add_row(name, where)
        table.add_row("roles", ", ".join(f"{rp.role.name} ({rp.proc.pid})" for rp in self.roles))
        if self.settings.metrics_port:
            ports = ", ".join(f"{name} {port}" for name, port in self.metrics_ports.items())
            table.add_row("metrics", f"http://{self.settings.metrics_host}:PORT/metrics: {ports}")
        table.add_row("logs", str(self._log_dir))
        table.add_row("other terminals", f"find the services through {self.runtime_env}")
        with self.print_lock:
            self.console.print(table)
        self.say(f"in another terminal: {_cli_hint()}")


def _postgres_reachable(url: str) -> bool:
    from sqlalchemy.engine import make_url

    from pipeline.db import normalize_url

    try:
        parsed = make_url(normalize_url(url)).set(drivername="postgresql")
        conninfo = parsed.render_as_string(hide_password=False)
        with psycopg.connect(conninfo, connect_timeout=SERVICE_PROBE_TIMEOUT_S):
            return True
    except Exception:  # refused, timed out, or a malformed URL: all "not reachable"
        return False


def _redis_reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(
            url,
            socket_timeout=SERVICE_PROBE_TIMEOUT_S,
            socket_connect_timeout=SERVICE_PROBE_TIMEOUT_S,
        )
    except ValueError:
        return False
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _env_quote(value: str) -> str:
    """A value for a dotenv file that shells and python-dotenv read back unchanged."""
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cli_hint() -> str:
    """How to run ``imap-pipeline`` from another terminal, exactly."""
    script = Path(sys.executable).parent / "imap-pipeline"
    on_path = shutil.which("imap-pipeline")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "imap-pipeline grants list (and the rest of `imap-pipeline --help`)"
    return (
        f"{script} grants list (not on PATH: run `source {script.parent / 'activate'}` "
        "first to type just imap-pipeline)"
    )


def _create_secret_file(path: Path, value: str) -> bool:
    """Write ``value`` to a new file only its owner can read; False if the file exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return True
