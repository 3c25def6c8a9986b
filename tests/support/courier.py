"""A throwaway Courier-IMAP 5.0 server for the test suite, run from Debian's unpacked packages.

Courier's programs have their paths compiled in: ``authdaemond`` reads
``/etc/courier/authdaemonrc``, its ``authuserdb`` module reads ``/etc/courier/userdb.dat``, and
``imaplogin`` asks ``authdaemond`` through ``/run/courier/authdaemon/socket``. So
:class:`LocalCourier` runs them in a private mount namespace (``unshare --mount``, as root) in
which its own folders are bind-mounted over ``/etc/courier`` and ``/run/courier``; the machine's
own files are never touched (only the two empty mount points are made when missing), and the
mounts vanish with the processes. Layout::

    <root>/etc/          authdaemonrc, userdb.dat, userdbshadow.dat   (seen as /etc/courier)
    <root>/run/          authdaemond's socket                          (seen as /run/courier)
    <root>/mail/<user>/Maildir   each user's Maildir++ (folders ``.Name``, seen as INBOX.Name)
    <root>/courier.out   the output of couriertcpd, imaplogin and authdaemond

What clients see: ``IMAP4rev1 UIDPLUS CHILDREN NAMESPACE SORT QUOTA IDLE ACL``; no CONDSTORE,
QRESYNC, MOVE or SPECIAL-USE; folders below INBOX with the ``.`` separator (roles only by
name); SELECT carries no ``[UIDNEXT]`` (STATUS does). IDLE without FAM/gamin
(``IMAP_ENHANCEDIDLE=0``): the server looks at the folder every ``IDLE_POLL_S`` seconds, so an
idling client hears of new mail that late. A wrong password is answered after 5 s.

UIDVALIDITY: :meth:`LocalCourier.lose_uid_db` deletes a folder's ``courierimapuiddb``, as a
restore from a backup without it would; the next session numbers the folder afresh.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import shlex
import socket
import time
from pathlib import Path

from pipeline.dev.folders import chown_tree, reachable_dir, system_user
from pipeline.dev.ports import LOCALHOST, port_in_use
from pipeline.dev.processes import ChildProcess, ServerContext, log_tail, wait_until
from pipeline.errors import ServiceError
from tests.support.unpacked import library_path, run_tool, unpacked

MAIL_USER = "mail"  # Debian's base system user owns every test Maildir
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
GREETING_TIMEOUT_S = 2.0
IDLE_POLL_S = 3  # IMAP_IDLE_TIMEOUT: without FAM, IDLE re-reads the folder this often
MAX_CONNECTIONS = 500  # couriertcpd -maxprocs / -maxperip: every test connects from 127.0.0.1
MOUNT_POINTS = (Path("/etc/courier"), Path("/run/courier"))
CAPABILITIES = (
    "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE"
)


class LocalCourier(ServerContext):
    """Courier-IMAP on 127.0.0.1 in a private mount namespace, with its own users and mail.

    Args:
        root: Folder for configuration, users, mail and logs (created; kept after stop).
        port: Plain IMAP port.
    """

    kind = "courier"
    separator = "."
    starttls = False

    def __init__(self, root: Path, port: int) -> None:
        self.root = root.expanduser().absolute()
        self.port = port
        self.home = self.root
        self._users: dict[str, str] = {}
        self._process: ChildProcess | None = None

    @property
    def host(self) -> str:
        """Address the server listens on."""
        return LOCALHOST

    @property
    def running(self) -> bool:
        """Whether couriertcpd is alive."""
        return self._process is not None and self._process.running

    def folder(self, name: str) -> str:
        """The raw name of a folder ``name`` made by a client (below INBOX here)."""
        return f"INBOX.{name}"

    def maildir(self, user: str) -> Path:
        """The Maildir++ of ``user``."""
        return self.home / "mail" / user / "Maildir"

    def start(self) -> None:
        """Start authdaemond and couriertcpd in a private mount namespace; wait for a greeting.

        Raises:
            ServiceError: not root, the packages are not unpacked, the port is taken, or
                Courier did not come up in time.
        """
        if self.running:
            return
        if os.geteuid() != 0:
            raise ServiceError("LocalCourier needs root: it bind-mounts over /etc/courier")
        tcpd = unpacked("usr/sbin/couriertcpd")
        authdaemond = unpacked("usr/lib/courier/courier-authlib/authdaemond")
        imaplogin = unpacked("usr/lib/courier/courier/imaplogin")
        imapd = unpacked("usr/bin/imapd")
        if port_in_use(self.port):
            raise ServiceError(f"Port {self.port} is already in use; pick another")
        self.home = reachable_dir(self.root, MAIL_USER)
        self.home.chmod(0o755)
        for sub in ("etc", "run/authdaemon", "mail"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        (self.home / "etc" / "authdaemonrc").write_text(
            'authmodulelist="authuserdb"\ndaemons=2\n'
            "authdaemonvar=/run/courier/authdaemon\nDEBUG_LOGIN=0\n"
        )
        self._write_userdb()
        for point in MOUNT_POINTS:
            point.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LD_LIBRARY_PATH": library_path("usr/lib/courier-authlib"),
            "IMAP_CAPABILITY": CAPABILITIES,
            "IMAP_IDLE_TIMEOUT": str(IDLE_POLL_S),
            "IMAP_ENHANCEDIDLE": "0",
            "IMAP_KEYWORDS": "1",
            "IMAP_ACL": "1",
            "IMAP_UMASK": "022",
            "IMAP_USELOCKS": "1",
            "IMAP_TRASHFOLDERNAME": "Trash",
            "IMAP_MOVE_EXPUNGE_TO_TRASH": "0",
            "IMAP_MAILBOX_SANITY_CHECK": "1",
            "IMAP_CHECK_ALL_FOLDERS": "0",
            "IMAP_DISABLETHREADSORT": "0",
            "IMAP_OBSOLETE_CLIENT": "0",
            "IMAP_PROXY": "0",
        }
        q = shlex.quote
        script = " && ".join(
            [
                f"mount --bind {q(str(self.home / 'etc'))} /etc/courier",
                f"mount --bind {q(str(self.home / 'run'))} /run/courier",
                # authdaemond is couriertcpd's child once sh execs it: it ends with it, also
                # when this process is killed outright (couriertcpd has PDEATHSIG)
                f"{{ setpriv --pdeathsig TERM {q(str(authdaemond))} & }}",
                f"exec {q(str(tcpd))} -address={LOCALHOST} -maxprocs={MAX_CONNECTIONS} "
                f"-maxperip={MAX_CONNECTIONS} -nodnslookup -noidentlookup {self.port} "
                f"{q(str(imaplogin))} {q(str(imapd))} Maildir",
            ]
        )
        self._process = ChildProcess(
            "courier",
            ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script],
            log_path=self.home / "courier.out",
            env=env,
            cwd=self.home,
        )
        self._process.start()
        if not wait_until(self._ready, timeout_s=START_TIMEOUT_S, abort=self._died):
            self.stop()
            raise ServiceError(
                f"Courier did not greet on port {self.port} within {START_TIMEOUT_S:.0f} s. "
                f"End of its output:\n{log_tail(self.home / 'courier.out')}"
            )

    def stop(self) -> None:
        """Stop couriertcpd, authdaemond and every session (one process group). Mail is kept."""
        if self._process is not None:
            self._process.stop(STOP_TIMEOUT_S)
            self._process = None

    def add_user(self, name: str, password: str) -> None:
        """Add a user with an empty Maildir (or change a password); effective at once."""
        maildir = self.maildir(name)
        if not maildir.exists():
            maildir.parent.mkdir(parents=True, exist_ok=True)
            run_tool(
                [str(unpacked("usr/bin/maildirmake.courier")), str(maildir)],
                env={"LD_LIBRARY_PATH": library_path()},
            )
            chown_tree(maildir.parent, MAIL_USER)
        self._users[name] = password
        self._write_userdb()

    def lose_uid_db(self, user: str, folder: str = "INBOX") -> None:
        """Delete the folder's UID database: the next session gives it a new UIDVALIDITY.

        Courier takes the new UIDVALIDITY from the clock in whole seconds: a database made in the
        same second as the lost one would get the same value, so this returns only once that
        second is over.
        """
        maildir = self.maildir(user)
        where = maildir if folder == "INBOX" else maildir / folder.removeprefix("INBOX")
        uid_db = where / "courierimapuiddb"
        made = uid_db.stat().st_mtime if uid_db.exists() else time.time()
        uid_db.unlink(missing_ok=True)
        time.sleep(max(0.0, math.floor(made) + 1.05 - time.time()))

    def _write_userdb(self) -> None:
        """userdb.dat (home, Maildir, uid) and userdbshadow.dat (password hashes), anew."""
        etc = self.home / "etc"
        if not etc.is_dir():
            return  # written at start
        entry = system_user(MAIL_USER)
        public = "".join(
            f"{name}\tuid={entry.pw_uid}|gid={entry.pw_gid}|home={self.maildir(name).parent}"
            f"|mail={self.maildir(name)}\n"
            for name in self._users
        )
        shadow = "".join(
            f"{name}\tsystempw={{SHA}}"
            # {SHA}: a scheme authlib checks; these are throwaway test passwords
            f"{base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()}\n"  # noqa: S324
            for name, password in self._users.items()
        )
        makedat = str(unpacked("usr/lib/courier/courier-authlib/makedatprog"))
        for stem, text in (("userdb", public), ("userdbshadow", shadow)):
            tmp = etc / f"{stem}.tmp"
            final = etc / f"{stem}.dat"
            run_tool([makedat, "-", str(tmp), str(final)], stdin=(text + ".\n").encode())
            final.chmod(0o600)

    def _ready(self) -> bool:
        if not (self.home / "run" / "authdaemon" / "socket").exists():
            return False
        try:
            with socket.create_connection((LOCALHOST, self.port), timeout=GREETING_TIMEOUT_S) as s:
                return s.recv(512).startswith(b"* OK")
        except OSError:
            return False

    def _died(self) -> str | None:
        code = self._process.poll() if self._process else None
        if code is None:
            return None
        return f"Courier exited with code {code}:\n{log_tail(self.home / 'courier.out')}"
