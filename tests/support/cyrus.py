"""A throwaway Cyrus IMAP 3.6 server for the test suite, run from Debian's unpacked packages.

:class:`LocalCyrus` writes ``imapd.conf`` and ``cyrus.conf`` into its folder and runs Cyrus's
``master`` in the foreground as a child process (it needs root: it binds the port, then its
services run as ``CYRUS_USER``, Debian's ``mail`` here since the unpacked packages made no
``cyrus`` user). Layout::

    <root>/imapd.conf, cyrus.conf   generated on every start
    <root>/sasldb2                  users and passwords (SASL auxprop ``sasldb``)
    <root>/conf/                    Cyrus's databases (mailboxes list, seen state...); in
                                    conf/socket/ idled's socket and one per idling imapd
    <root>/spool/                   the mail
    <root>/run/                     locks, process table, master.pid

What clients see: ``IMAP4rev1 IDLE CONDSTORE QRESYNC MOVE UIDPLUS SPECIAL-USE``, folders beside
INBOX (``altnamespace``) with the ``/`` separator, and INBOX plus ``Drafts Sent Trash Junk
Archive`` made at the first login with their special-use flags. PLAIN/LOGIN without TLS.
IDLE: ``idled`` runs, so a change made by another session reaches an idling one at once
(without it imapd would look every ``imapidlepoll`` seconds). A wrong password is answered
after Cyrus's own failure delay (a few seconds).

UIDVALIDITY changes only when a folder is made again (:func:`tests.support.mail.recreate_folder`).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
from pathlib import Path

from pipeline.dev.folders import chown_tree, reachable_dir
from pipeline.dev.ports import LOCALHOST, port_in_use
from pipeline.dev.processes import ChildProcess, ServerContext, log_tail, wait_until
from pipeline.errors import ServiceError
from tests.support.unpacked import library_path, run_tool, unpacked

CYRUS_USER = "mail"  # Debian's base system user for mail; the unpacked package made no "cyrus"
START_TIMEOUT_S = 20.0  # recovery of the empty databases, then the first imapd greets
STOP_TIMEOUT_S = 10.0
GREETING_TIMEOUT_S = 2.0
SPECIAL_FOLDERS = ("Drafts", "Sent", "Trash", "Junk", "Archive")
BIN = "usr/lib/cyrus/bin"


class LocalCyrus(ServerContext):
    """Cyrus IMAP on 127.0.0.1, run as a child process, with its own users and mail.

    Args:
        root: Folder for configuration, databases, mail and logs (created; kept after stop).
        port: Plain IMAP port.
    """

    kind = "cyrus"
    separator = "/"
    starttls = False

    def __init__(self, root: Path, port: int) -> None:
        self.root = root.expanduser().absolute()
        self.port = port
        self.home = self.root
        self._process: ChildProcess | None = None

    @property
    def host(self) -> str:
        """Address the server listens on."""
        return LOCALHOST

    @property
    def running(self) -> bool:
        """Whether the master process is alive."""
        return self._process is not None and self._process.running

    def folder(self, name: str) -> str:
        """The raw name of a top-level folder ``name`` (beside INBOX here)."""
        return name

    def start(self) -> None:
        """Write the configuration, start ``master`` and wait until imapd greets.

        Raises:
            ServiceError: not root, the packages are not unpacked, the port is taken, or
                Cyrus did not come up in time.
        """
        if self.running:
            return
        if os.geteuid() != 0:
            raise ServiceError("LocalCyrus needs root: Cyrus's master binds as root, then drops")
        master = unpacked(f"{BIN}/master")
        if port_in_use(self.port):
            raise ServiceError(f"Port {self.port} is already in use; pick another for LocalCyrus")
        self.home = reachable_dir(self.root, CYRUS_USER)
        self.home.chmod(0o755)
        for sub in ("conf", "conf/socket", "spool", "sieve", "run", "run/proc", "run/lock"):
            (self.home / sub).mkdir(exist_ok=True)
        (self.home / "imapd.conf").write_text(self._imapd_conf())
        (self.home / "cyrus.conf").write_text(self._cyrus_conf())
        chown_tree(self.home, CYRUS_USER)
        conf, services = self.home / "imapd.conf", self.home / "cyrus.conf"
        q = shlex.quote
        master_cmd = " ".join(
            q(str(a))
            for a in (master, "-C", conf, "-M", services, "-p", self.home / "run/master.pid", "-D")
        )
        # master drops root once its port is bound, and a change of user clears the signal a
        # child gets when its parent dies; so a root shell waits for it and passes that signal
        # (and the stop's SIGTERM) on: a killed test run leaves no Cyrus behind
        script = f'{master_cmd} & m=$!; trap "kill -TERM $m" TERM; wait $m; wait $m'
        self._process = ChildProcess(
            "cyrus",
            ["/bin/sh", "-c", script],
            log_path=self.home / "master.out",
            env={"LD_LIBRARY_PATH": library_path(), "PATH": os.environ.get("PATH", "")},
            cwd=self.home,
            stop_signal=signal.SIGTERM,
        )
        self._process.start()
        if not wait_until(self._greets, timeout_s=START_TIMEOUT_S, abort=self._died):
            self.stop()
            raise ServiceError(
                f"Cyrus did not greet on port {self.port} within {START_TIMEOUT_S:.0f} s "
                f"(it logs to syslog). End of its output:\n{log_tail(self.home / 'master.out')}"
            )

    def stop(self) -> None:
        """Stop master and every service it started. Mail is kept."""
        if self._process is not None:
            self._process.stop(STOP_TIMEOUT_S)
            self._process = None

    def add_user(self, name: str, password: str) -> None:
        """Add a user (or change a password); the mailbox is made at the first login."""
        sasldb = self.home / "sasldb2"
        run_tool(
            [str(unpacked("usr/sbin/saslpasswd2")), "-p", "-c", "-f", str(sasldb), "-u", "", name],
            stdin=password.encode() + b"\n",
            env={"LD_LIBRARY_PATH": library_path()},
        )
        chown_tree(sasldb, CYRUS_USER, recursive=False)

    def _imapd_conf(self) -> str:
        home = self.home
        special = "".join(f"xlist-{f.lower()}: {f}\n" for f in SPECIAL_FOLDERS)
        return f"""# Generated by tests.support.cyrus on every start; edits are lost.
configdirectory: {home / "conf"}
proc_path: {home / "run" / "proc"}
mboxname_lockpath: {home / "run" / "lock"}
defaultpartition: default
partition-default: {home / "spool"}
sievedir: {home / "sieve"}
cyrus_user: {CYRUS_USER}
cyrus_group: {CYRUS_USER}
admins: cyrusadmin
# folders beside INBOX, separated by "/", as most clients expect
altnamespace: yes
unixhierarchysep: yes
# the user's INBOX and special folders are made at the first login
autocreate_quota: 0
autocreate_inbox_folders: {"|".join(SPECIAL_FOLDERS)}
autocreate_subscribe_folders: {"|".join(SPECIAL_FOLDERS)}
{special}allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {home / "sasldb2"}
sasl_mech_list: PLAIN LOGIN
# an idling imapd binds {{configdirectory}}/socket/idle.<pid> (not configurable) and idled
# must sit beside it, or imapd falls back to looking every imapidlepoll (60) seconds
idlesocket: {home / "conf" / "socket" / "idle"}
notifysocket: {home / "conf" / "socket" / "notify"}
lmtpsocket: {home / "conf" / "socket" / "lmtp"}
syslog_prefix: cyrus-test-{self.port}
"""

    def _cyrus_conf(self) -> str:
        binaries = unpacked(BIN)
        conf = self.home / "imapd.conf"
        return f"""# Generated by tests.support.cyrus on every start; edits are lost.
START {{
  recover cmd="{binaries}/ctl_cyrusdb -r -C {conf}"
}}
SERVICES {{
  imap cmd="{binaries}/imapd -C {conf}" listen="{LOCALHOST}:{self.port}" prefork=2 maxchild=400
}}
EVENTS {{
}}
DAEMON {{
  idled cmd="{binaries}/idled -C {conf}"
}}
"""

    def _greets(self) -> bool:
        try:
            with socket.create_connection((LOCALHOST, self.port), timeout=GREETING_TIMEOUT_S) as s:
                return s.recv(512).startswith(b"* OK")
        except OSError:
            return False

    def _died(self) -> str | None:
        code = self._process.poll() if self._process else None
        if code is None:
            return None
        return f"Cyrus's master exited with code {code}:\n{log_tail(self.home / 'master.out')}"
