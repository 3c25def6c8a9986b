"""A Postgres server of our own, from the locally installed binaries, in a data folder.

Layout of the folder given to :class:`EmbeddedPostgres`::

    <folder>/pgdata/        the cluster (initdb'ed on first start, kept afterwards)
    <folder>/run/           the Unix socket
    <folder>/postgres.log   the server's output
    <folder>/superuser.password   the ``postgres`` role's password (owner-only, made once)

The server listens on 127.0.0.1 only, and every connection, over TCP or the socket, needs the
password (SCRAM): another local user of the machine cannot walk in as the superuser. A cluster
made by an older version with ``trust`` is given the password on its next start.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pipeline.dev.folders import chown_tree, reachable_dir
from pipeline.dev.ports import LOCALHOST, port_in_use
from pipeline.dev.processes import ChildProcess, ServerContext, log_tail, wait_until
from pipeline.errors import ServiceError

DEFAULT_DATABASE = "imap_pipeline"
SUPERUSER = "postgres"
SYSTEM_USER = "postgres"  # initdb and postgres refuse to run as root
PG_START_TIMEOUT_S = 30.0  # crash recovery of a large cluster can take a while
PG_STOP_TIMEOUT_S = 30.0  # fast shutdown writes a checkpoint first
PG_INITDB_TIMEOUT_S = 120.0
PG_CONNECT_TIMEOUT_S = 2
PG_CONFIG_TIMEOUT_S = 10.0
MAX_SOCKET_DIR_CHARS = 80  # sun_path holds 107 bytes, and ".s.PGSQL.<port>.lock" follows
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PW_FILE_NAME = "superuser.password"
PASSWORD_BYTES = 24  # token_urlsafe: URL-safe, so it goes into the URL as it is
AUTH_METHOD = "scram-sha-256"
# Everything local needs the password; nothing else may connect at all.
PG_HBA = f"""# Written by imap-pipeline: the password of the postgres role is in {PW_FILE_NAME}.
local   all   all                 {AUTH_METHOD}
host    all   all   127.0.0.1/32  {AUTH_METHOD}
host    all   all   ::1/128       {AUTH_METHOD}
"""


def find_postgres_bindir() -> Path:
    """The folder holding ``postgres`` and ``initdb``.

    Tries ``pg_config --bindir`` first, then Debian's ``/usr/lib/postgresql/<version>/bin``
    (newest version first).

    Raises:
        ServiceError: no Postgres server binaries are installed.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                check=True,
                timeout=PG_CONFIG_TIMEOUT_S,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            candidates.append(Path(out))
    debian = sorted(glob.glob(DEBIAN_BIN_GLOB), key=_version_key, reverse=True)
    candidates.extend(Path(d) for d in debian)
    for folder in candidates:
        if (folder / "postgres").is_file() and (folder / "initdb").is_file():
            return folder
    raise ServiceError(
        "No Postgres server binaries found (looked at `pg_config --bindir` and "
        f"{DEBIAN_BIN_GLOB}). Install them (`apt-get install -y postgresql`) or point "
        "IMAP_PIPELINE_DATABASE_URL at a running Postgres."
    )


def _version_key(folder: str) -> tuple[int, ...]:
    version = Path(folder).parent.name
    return tuple(int(p) for p in version.split(".") if p.isdigit()) or (0,)


class EmbeddedPostgres(ServerContext):
    """A Postgres server run as a child process, with a database ``imap_pipeline``.

    Example::

        with EmbeddedPostgres(Path("~/.imap-pipeline/postgres").expanduser(), 55432) as pg:
            engine = sqlalchemy.create_engine(pg.url)

    Running as root, initdb and postgres run as the ``postgres`` system user and the folder is
    given to it (see :func:`pipeline.dev.folders.reachable_dir` for folders it cannot enter).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        database: str = DEFAULT_DATABASE,
        start_timeout_s: float = PG_START_TIMEOUT_S,
    ) -> None:
        self.data_dir = data_dir.expanduser().absolute()
        self.port = port
        self.database = database
        self.start_timeout_s = start_timeout_s
        self.run_as = SYSTEM_USER if os.geteuid() == 0 else None
        self.folder = self.data_dir  # the real folder, once started (may be a stand-in)
        self._process: ChildProcess | None = None
        self._short_socket_dir: Path | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database (psycopg 3 driver, with the superuser's password)."""
        return (
            f"postgresql+psycopg://{SUPERUSER}:{self.password}@{LOCALHOST}:{self.port}"
            f"/{self.database}"
        )

    @property
    def conninfo(self) -> str:
        """libpq connection string of the database."""
        return (
            f"host={LOCALHOST} port={self.port} user={SUPERUSER} password={self.password} "
            f"dbname={self.database}"
        )

    @property
    def password_path(self) -> Path:
        """Where the superuser's password is kept (readable by this user only)."""
        return self.folder / PW_FILE_NAME

    @property
    def password(self) -> str:
        """The superuser's password ("" before the first start made one)."""
        try:
            return self.password_path.read_text().strip()
        except FileNotFoundError:
            return ""

    def _ensure_password(self) -> str:
        if not self.password:
            fd = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(PASSWORD_BYTES) + "\n")
        os.chmod(self.password_path, 0o600)
        return self.password

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.folder / "postgres.log"

    @property
    def pgdata(self) -> Path:
        """The cluster folder."""
        return self.folder / "pgdata"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.running

    def start(self) -> None:
        """initdb if needed, start the server, wait for it, create the database if missing.

        Raises:
            ServiceError: the binaries are missing, the port is taken, or the server did not
                come up in time (the message carries the end of its log).
        """
        if self.running:
            return
        bindir = find_postgres_bindir()
        if self.run_as is not None:
            self.folder = reachable_dir(self.data_dir, self.run_as)
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.folder = self.data_dir.resolve()
        self._refuse_running_cluster()
        if port_in_use(self.port):
            raise ServiceError(
                f"Port {self.port} is already in use, so the embedded Postgres cannot listen "
                "there. Stop whatever uses it or choose another port "
                "(IMAP_PIPELINE_EMBEDDED_POSTGRES_PORT)."
            )
        socket_dir = self._socket_dir()
        if self.run_as is not None:
            chown_tree(self.folder, self.run_as, recursive=False)
        self.folder.chmod(0o700)  # the cluster's log can show query text
        password = self._ensure_password()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bindir, password)
        self._check_version(bindir)
        self._process = ChildProcess(
            "postgres",
            [
                str(bindir / "postgres"),
                "-D", str(self.pgdata),
                "-p", str(self.port),
                "-k", str(socket_dir),
                "-c", f"listen_addresses={LOCALHOST}",
            ],
            log_path=self.log_path,
            run_as=self.run_as,
            cwd=self.folder,
            stop_signal=signal.SIGINT,  # "fast" shutdown: SIGTERM would wait for every client
            parent_death_signal=signal.SIGINT,
        )  # fmt: skip
        self._process.start()
        if not wait_until(self._accepts, timeout_s=self.start_timeout_s, abort=self._died):
            self.stop()
            raise ServiceError(
                f"Postgres did not accept connections on port {self.port} within "
                f"{self.start_timeout_s:.0f} s. End of {self.log_path}:\n{log_tail(self.log_path)}"
            )
        self._require_password(password)
        self._create_database()

    def stop(self) -> None:
        """Fast shutdown (clients disconnected, checkpoint written); SIGKILL after a timeout."""
        if self._process is not None:
            self._process.stop(PG_STOP_TIMEOUT_S)
            self._process = None
        if self._short_socket_dir is not None:
            shutil.rmtree(self._short_socket_dir, ignore_errors=True)
            self._short_socket_dir = None

    def _socket_dir(self) -> Path:
        socket_dir = self.folder / "run"
        if len(str(socket_dir)) > MAX_SOCKET_DIR_CHARS:
            socket_dir = self._short_socket_dir = Path(tempfile.mkdtemp(prefix="pg-"))
            socket_dir.chmod(0o755)
        socket_dir.mkdir(exist_ok=True)
        if self.run_as is not None:
            chown_tree(socket_dir, self.run_as)
        return socket_dir

    def _refuse_running_cluster(self) -> None:
        pid_file = self.pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return  # stale: postgres cleans it up itself
        except PermissionError:
            pass
        raise ServiceError(
            f"A Postgres (pid {pid}) is already running on {self.pgdata}, left over from an "
            f"earlier run. Stop it with `kill -INT {pid}` and try again."
        )

    def _require_password(self, password: str) -> None:
        """A cluster made with ``trust`` (older versions) gets the password and SCRAM now."""
        hba = self.pgdata / "pg_hba.conf"
        if hba.read_text() == PG_HBA:
            return
        try:
            with self._connect("postgres", autocommit=True) as conn:
                conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(SUPERUSER), sql.Literal(password)
                    )
                )
                hba.write_text(PG_HBA)  # keeps its owner: the server reads it
                conn.execute("SELECT pg_reload_conf()")
        except psycopg.Error as exc:
            raise ServiceError(
                f"Cannot give the embedded Postgres in {self.pgdata} its password: {exc}"
            ) from exc

    def _connect(self, dbname: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=LOCALHOST,
            port=self.port,
            user=SUPERUSER,
            password=self.password,
            dbname=dbname,
            autocommit=autocommit,
            connect_timeout=PG_CONNECT_TIMEOUT_S,
        )

    def _initdb(self, bindir: Path, password: str) -> None:
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise ServiceError(
                f"{self.pgdata} is not empty but holds no Postgres cluster (no PG_VERSION). "
                "Move it aside and try again."
            )
        # initdb (run as the server's user) reads the password from a file of its own
        pwfile = self.folder / "initdb.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        if self.run_as is not None:
            chown_tree(pwfile, self.run_as, recursive=False)
        argv = [
            str(bindir / "initdb"),
            "-D", str(self.pgdata),
            "-U", SUPERUSER,
            f"--pwfile={pwfile}",
            f"--auth-local={AUTH_METHOD}",
            f"--auth-host={AUTH_METHOD}",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # a fresh, empty cluster: nothing to lose in a crash
        ]  # fmt: skip
        initdb = ChildProcess(
            "initdb", argv, log_path=self.folder / "initdb.log", run_as=self.run_as, cwd=self.folder
        )
        initdb.start()
        try:
            code = initdb.wait(PG_INITDB_TIMEOUT_S)
        finally:
            pwfile.unlink(missing_ok=True)
        if code is None:
            initdb.kill()
            raise ServiceError(
                f"initdb did not finish within {PG_INITDB_TIMEOUT_S:.0f} s:\n{initdb.log_tail()}"
            )
        if code != 0:
            raise ServiceError(
                f"initdb failed (exit {code}) for {self.pgdata}:\n{initdb.log_tail()}"
            )

    def _check_version(self, bindir: Path) -> None:
        cluster = (self.pgdata / "PG_VERSION").read_text().strip()
        binary = bindir.parent.name
        if binary.replace(".", "").isdigit() and binary.split(".")[0] != cluster:
            raise ServiceError(
                f"The cluster in {self.pgdata} was made by Postgres {cluster}, but the installed "
                f"server is {binary}. Install Postgres {cluster}, or move the folder aside to "
                "start afresh (its data is then gone from this instance)."
            )

    def _accepts(self) -> bool:
        try:
            with self._connect("postgres"):
                return True
        except psycopg.OperationalError:
            return False

    def _died(self) -> str | None:
        code = self._process.poll() if self._process else None
        if code is None:
            return None
        return f"Postgres exited with code {code} while starting. End of {self.log_path}:\n" + (
            log_tail(self.log_path)
        )

    def _create_database(self) -> None:
        try:
            with self._connect("postgres", autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
                ).fetchone()
                if exists is None:
                    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database))
                    conn.execute(create)
        except psycopg.Error as exc:
            raise ServiceError(
                f"Cannot create the database {self.database!r} on the embedded Postgres: {exc}"
            ) from exc
