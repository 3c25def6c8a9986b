"""A throwaway Dovecot IMAP server for the demo and the test suite.

:class:`LocalDovecot` writes a self-contained configuration into its folder and runs Dovecot
in the foreground as a child process on 127.0.0.1. Several can run at once on different ports
and folders. Layout::

    <root>/dovecot.conf   generated on every start
    <root>/users/<name>   one passwd-file per user: ``name:{PLAIN}password::::::``
    <root>/mail/<user>/   each user's Maildir++ (folders as ``.Name`` with modified UTF-7)
    <root>/state/         Dovecot's state
    <root>/run/           sockets and master.pid (a short temporary folder if the path is long)
    <root>/dovecot.log    Dovecot's log

What clients see: ``IDLE UIDPLUS CONDSTORE QRESYNC MOVE SPECIAL-USE``, hierarchy separator
``/``, special-use flags on ``Drafts Sent Junk Trash Archive``, PLAIN/LOGIN authentication
without TLS (it is 127.0.0.1), and with a certificate STARTTLS on the plain port plus implicit
TLS on ``imaps_port``. Unlike a production server it answers a wrong password at once and does
not slow down later logins after failures (no auth penalty).

Running as root, the mail and login processes run as Debian's ``dovecot`` user; otherwise as
the current user.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pipeline.dev.folders import chown_tree, reachable_dir, system_user
from pipeline.dev.ports import LOCALHOST, port_in_use
from pipeline.dev.processes import (
    ChildProcess,
    ServerContext,
    log_tail,
    process_group_members,
    wait_until,
)
from pipeline.errors import ServiceError

DOVECOT_BIN = Path("/usr/sbin/dovecot")
DOVEADM_BIN = Path("/usr/bin/doveadm")
DOVECOT_START_TIMEOUT_S = 10.0
DOVECOT_STOP_TIMEOUT_S = 10.0
DOVEADM_TIMEOUT_S = 60.0
GREETING_TIMEOUT_S = 1.0
IDLE_CHECK_INTERVAL_S = 1  # IDLE notices changes inotify missed (it runs out: 128 instances/user)
INOTIFY_MIN_INSTANCES = 8192  # kernel default 128 caps how many IDLE sessions inotify watches
INOTIFY_MIN_WATCHES = 65536
NOFILE_LIMIT = 20000  # open files for the master: it holds every client's connection
MAX_BASE_DIR_CHARS = 60  # sockets such as "<base_dir>/login/imap-urlauth" must fit in 107 bytes
SPECIAL_USE = {
    "Drafts": "\\Drafts",
    "Sent": "\\Sent",
    "Junk": "\\Junk",
    "Trash": "\\Trash",
    "Archive": "\\Archive",
}
_LINGERING = {"dovecot", "log"}  # the master and its log process, once all else has ended
_USER_NAME = re.compile(r"^[A-Za-z0-9._@+-]+$")


def ensure_dovecot_installed() -> None:
    """Check that Debian's Dovecot IMAP server is installed.

    Raises:
        ServiceError: it is not, with the command that installs it.
    """
    missing = [str(p) for p in (DOVECOT_BIN, DOVEADM_BIN) if not p.is_file()]
    if missing:
        raise ServiceError(
            f"Dovecot is not installed ({', '.join(missing)} missing). Install it with "
            "`sudo apt-get update && sudo apt-get install -y dovecot-imapd` (the package's own "
            "service is not needed and can stay stopped), or run `scripts/up --demo`, "
            "which installs it."
        )


def raise_inotify_limits() -> None:
    """Raise the kernel's inotify limits where this process may (as root); ignore failure."""
    for name, minimum in (
        ("max_user_instances", INOTIFY_MIN_INSTANCES),
        ("max_user_watches", INOTIFY_MIN_WATCHES),
    ):
        knob = Path("/proc/sys/fs/inotify") / name
        with contextlib.suppress(OSError, ValueError):
            if int(knob.read_text()) < minimum:
                knob.write_text(str(minimum))


class LocalDovecot(ServerContext):
    """A Dovecot IMAP server on 127.0.0.1, run as a child process, with its own users and mail.

    Example::

        with LocalDovecot(tmp_path / "dovecot", free_port()) as dovecot:
            dovecot.add_user("alice", "secret")
            box = imap_tools.MailBoxUnencrypted(dovecot.host, dovecot.port)
            with box.login("alice", "secret") as mb:
                ...

    Args:
        root: Folder for configuration, users, mail and logs (created; kept after stop).
        port: Plain IMAP port (STARTTLS offered when TLS is configured).
        imaps_port: Implicit-TLS port; needs ``tls_cert`` and ``tls_key``.
        tls_cert: PEM certificate chain, enables TLS.
        tls_key: PEM private key of ``tls_cert``.
        mail_user: System user of the mail processes (default: ``dovecot`` as root, else the
            current user).
        separator: Hierarchy separator clients see.
        special_use: Announce special-use flags on the usual folder names.
    """

    def __init__(
        self,
        root: Path,
        port: int,
        imaps_port: int | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        *,
        mail_user: str | None = None,
        separator: str = "/",
        special_use: bool = True,
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if imaps_port is not None and tls_cert is None:
            raise ValueError("imaps_port needs tls_cert and tls_key")
        if imaps_port == port:
            raise ValueError(f"port and imaps_port are both {port}: two listeners need two ports")
        self.root = root.expanduser().absolute()
        self.port = port
        self.imaps_port = imaps_port
        self.tls_cert = tls_cert.absolute() if tls_cert else None
        self.tls_key = tls_key.absolute() if tls_key else None
        self.mail_user = mail_user or ("dovecot" if os.geteuid() == 0 else _user_name(os.geteuid()))
        self.separator = separator
        self.special_use = special_use
        self.home = self.root  # the real folder, once started (may be a stand-in)
        self._process: ChildProcess | None = None
        self._short_base_dir: Path | None = None

    # --- where things are -------------------------------------------------------------------

    @property
    def host(self) -> str:
        """Address the server listens on."""
        return LOCALHOST

    @property
    def config_path(self) -> Path:
        """The generated dovecot.conf."""
        return self.home / "dovecot.conf"

    @property
    def users_path(self) -> Path:
        """The folder of passwd-files, one per user.

        One file per user, because Dovecot re-reads a passwd-file at most once a second: a
        user added to a shared file could not log in until then, while a new file is read at
        the user's first login.
        """
        return self.home / "users"

    @property
    def log_path(self) -> Path:
        """Dovecot's log."""
        return self.home / "dovecot.log"

    @property
    def base_dir(self) -> Path:
        """Dovecot's runtime folder (sockets, master.pid)."""
        run = self.home / "run"
        return self._short_base_dir or run

    @property
    def running(self) -> bool:
        """Whether the master process is alive."""
        return self._process is not None and self._process.running

    def maildir(self, user: str) -> Path:
        """The Maildir++ root of ``user`` (exists once the user logged in or was seeded)."""
        return self.home / "mail" / user

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Write the configuration, start Dovecot and wait until it greets clients.

        Raises:
            ServiceError: Dovecot is missing, a port is taken, or it did not come up in time.
        """
        if self.running:
            return
        ensure_dovecot_installed()
        for port in (self.port, self.imaps_port):
            if port is not None and port_in_use(port):
                raise ServiceError(
                    f"Port {port} is already in use; start LocalDovecot on another "
                    "(pipeline.dev.ports.free_port() finds one)."
                )
        self._prepare_folders()
        # left by a configuration with auth penalties: auth would retry connecting to it for 5 s
        (self.base_dir / "anvil-auth-penalty").unlink(missing_ok=True)
        self.config_path.write_text(self._config())
        raise_inotify_limits()
        self._process = ChildProcess(
            "dovecot",
            [str(DOVECOT_BIN), "-F", "-c", str(self.config_path)],
            log_path=self.home / "dovecot.out",
            cwd=self.home,
            nofile=NOFILE_LIMIT,
        )
        self._process.start()
        self.wait_ready()

    def wait_ready(self, timeout_s: float = DOVECOT_START_TIMEOUT_S) -> None:
        """Wait until the plain port greets with ``* OK`` and the TLS port accepts connections.

        Raises:
            ServiceError: not ready within ``timeout_s`` (the message has the end of the log).
        """
        ready = wait_until(
            lambda: self._greets() and (self.imaps_port is None or port_in_use(self.imaps_port)),
            timeout_s=timeout_s,
            abort=self._died,
        )
        if not ready:
            self.stop()
            raise ServiceError(
                f"Dovecot did not greet on port {self.port} within {timeout_s:.0f} s. "
                f"End of {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def stop(self) -> None:
        """SIGTERM the master (it ends its children), SIGKILL after a timeout. Mail is kept."""
        process = self._process
        if process is not None and process.pid is not None:
            process.send_signal(signal.SIGTERM)
            # the mail, login and auth processes end within milliseconds; the master then
            # lingers about a second for its log process, which holds nothing worth waiting for
            pgid = process.pid
            wait_until(
                lambda: (
                    process.poll() is not None
                    or all(comm in _LINGERING for _, comm in process_group_members(pgid))
                ),
                timeout_s=DOVECOT_STOP_TIMEOUT_S,
            )
            process.kill()
            self._process = None
        if self._short_base_dir is not None:
            shutil.rmtree(self._short_base_dir, ignore_errors=True)
            self._short_base_dir = None

    # --- users and mail -----------------------------------------------------------------------

    def add_user(self, name: str, password: str) -> None:
        """Add a user, who can log in at once; or change a password (effective within 1 s).

        Raises:
            ValueError: the name or password cannot be stored in a passwd-file.
        """
        if not _USER_NAME.match(name) or name.startswith("."):
            raise ValueError(f"user name {name!r}: use letters, digits and . _ @ + -")
        if not password or any(c in password for c in ":\n\r"):
            raise ValueError("password must be non-empty without ':' or line breaks")
        if not self.users_path.is_dir():
            self._prepare_folders()
        final = self.users_path / name
        tmp = self.users_path / f".{name}.tmp"
        tmp.write_text(f"{name}:{{PLAIN}}{password}::::::\n")
        self._own(tmp, mode=0o600)
        tmp.replace(final)

    def doveadm(self, *args: str, stdin: bytes | None = None) -> str:
        """Run ``doveadm`` against this instance and return its standard output.

        Raises:
            ServiceError: doveadm failed (the message has its error output).
        """
        argv = [str(DOVEADM_BIN), "-c", str(self.config_path), *args]
        try:
            done = subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                timeout=DOVEADM_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"doveadm {' '.join(args[:2])} timed out") from exc
        if done.returncode != 0:
            raise ServiceError(
                f"doveadm {' '.join(args)} failed (exit {done.returncode}): "
                f"{done.stderr.decode(errors='replace').strip()}"
            )
        return done.stdout.decode("utf-8", errors="replace")

    def mailbox_status(self, user: str, folder: str = "INBOX") -> dict[str, int]:
        """``messages recent uidnext uidvalidity unseen highestmodseq`` of one folder.

        Args:
            user: The mail user.
            folder: Folder name as clients see it (UTF-8, ``separator`` between levels).
        """
        out = self.doveadm(
            "-f", "flow", "mailbox", "status", "-u", user,
            "messages recent uidnext uidvalidity unseen highestmodseq", folder,
        )  # fmt: skip
        status: dict[str, int] = {}
        for field in out.split():
            key, _, value = field.partition("=")
            if value.isdigit():
                status[key] = int(value)
        return status

    def save(self, user: str, raw: bytes, folder: str = "INBOX") -> None:
        """Deliver one message into an existing folder now (as mail arriving would)."""
        self.doveadm("save", "-u", user, "-m", folder, stdin=raw)

    # --- internals ----------------------------------------------------------------------------

    def _prepare_folders(self) -> None:
        self.home = reachable_dir(self.root, self.mail_user)
        self.home.chmod(0o755)
        for sub in ("mail", "state"):
            (self.home / sub).mkdir(exist_ok=True)
            self._own(self.home / sub, mode=0o700)
        run = self.home / "run"
        if self._short_base_dir is None and len(str(run)) > MAX_BASE_DIR_CHARS:
            self._short_base_dir = Path(tempfile.mkdtemp(prefix="dovecot-"))
            self._short_base_dir.chmod(0o755)
        else:
            run.mkdir(exist_ok=True)
        if self.users_path.is_file():  # one shared passwd-file, as earlier versions kept
            lines = self.users_path.read_text().splitlines()
            self.users_path.unlink()
            self.users_path.mkdir()
            for line in lines:
                name = line.split(":", 1)[0]
                if _USER_NAME.match(name):
                    (self.users_path / name).write_text(line + "\n")
                    self._own(self.users_path / name, mode=0o600)
        self.users_path.mkdir(exist_ok=True)
        self._own(self.users_path, mode=0o700)

    def _own(self, path: Path, mode: int) -> None:
        path.chmod(mode)
        if os.geteuid() == 0:
            chown_tree(path, self.mail_user, recursive=False)

    def _tls_lines(self) -> tuple[str, str]:
        """The ``ssl`` settings and the ``imaps`` listener of :meth:`_config`."""
        ssl_lines = (
            f"ssl = yes\nssl_cert = <{self.tls_cert}\nssl_key = <{self.tls_key}\n"
            "ssl_min_protocol = TLSv1.2\n"
            if self.tls_cert is not None
            else "ssl = no\n"
        )
        imaps = (
            f"  inet_listener imaps {{\n    address = {LOCALHOST}\n"
            f"    port = {self.imaps_port}\n    ssl = yes\n  }}\n"
            if self.imaps_port is not None
            # Dovecot's built-in defaults add an imaps listener on 993; port 0 turns it off, so
            # two instances (or one beside a system Dovecot) never fight over that port.
            else "  inet_listener imaps {\n    port = 0\n  }\n"
        )
        return ssl_lines, imaps

    def _config(self) -> str:
        entry = system_user(self.mail_user)
        group = _group_name(entry.pw_gid)
        mailboxes = "".join(
            f"  mailbox {name} {{\n    special_use = {flag}\n  }}\n"
            for name, flag in SPECIAL_USE.items()
            if self.special_use
        )
        ssl_lines, imaps = self._tls_lines()
        return f"""# Generated by pipeline.dev.dovecot on every start; edits are lost.
protocols = imap
listen = {LOCALHOST}
base_dir = {self.base_dir}
state_dir = {self.home / "state"}
instance_name = imap-pipeline-dovecot-{self.port}
log_path = {self.log_path}
{ssl_lines}disable_plaintext_auth = no
auth_mechanisms = plain login
# refuse wrong passwords at once (default: after 2 s); this server is for tests and demos
auth_failure_delay = 0
default_internal_user = {self.mail_user}
default_internal_group = {group}
default_login_user = {self.mail_user}
mail_location = maildir:{self.home / "mail"}/%u
# system users such as Debian's "dovecot" have a uid below the default of 500
first_valid_uid = {entry.pw_uid}
mailbox_idle_check_interval = {IDLE_CHECK_INTERVAL_S} secs
namespace inbox {{
  inbox = yes
  separator = {self.separator}
{mailboxes}}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.users_path}/%u
}}
userdb {{
  driver = static
  args = uid={entry.pw_uid} gid={entry.pw_gid} home={self.home / "mail"}/%u
}}
service anvil {{
  chroot =
  # no auth penalty: after a failed login, Dovecot would delay every later login from the same
  # address (all tests share 127.0.0.1) by up to 15 s. The auth process logs one harmless
  # "net_connect_unix(anvil-auth-penalty) failed" error and carries on without penalties.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {LOCALHOST}
    port = {self.port}
  }}
{imaps}  # one long-lived login process serves many clients; one process per login
  # (service_count = 1) stalls a burst of connections at its listen backlog
  service_count = 0
  process_min_avail = 2
  process_limit = 16
  client_limit = 1000
}}
service imap {{
  process_limit = 4096
  client_limit = 1
}}
default_process_limit = 4096
default_client_limit = 10000
protocol imap {{
  # the default allows 10 connections per user and address; tests hold hundreds
  mail_max_userip_connections = 10000
  imap_idle_notify_interval = 2 mins
}}
"""

    def _greets(self) -> bool:
        try:
            with socket.create_connection((LOCALHOST, self.port), timeout=GREETING_TIMEOUT_S) as s:
                deadline = time.monotonic() + GREETING_TIMEOUT_S
                data = b""
                while b"\n" not in data and time.monotonic() < deadline:
                    chunk = s.recv(512)
                    if not chunk:
                        break
                    data += chunk
                return data.startswith(b"* OK")
        except OSError:
            return False

    def _died(self) -> str | None:
        code = self._process.poll() if self._process else None
        if code is None:
            return None
        detail = log_tail(self.home / "dovecot.out") + "\n" + log_tail(self.log_path)
        return f"Dovecot exited with code {code} while starting:\n{detail.strip()}"


def _user_name(uid: int) -> str:
    return pwd.getpwuid(uid).pw_name


def _group_name(gid: int) -> str:
    return grp.getgrgid(gid).gr_name
