"""Generated mail (:class:`pipeline.dev.mailgen.GeneratedMessage`) into a server.

Two ways: :func:`seed_maildir` writes files straight into a Dovecot Maildir++ tree (thousands
of messages per second; INTERNALDATE comes from the file's mtime), and :func:`append_imap`
uses IMAP APPEND (slower, works against any server).
"""

from __future__ import annotations

import base64
import math
import os
import socket
import ssl
from collections.abc import Iterable
from pathlib import Path

from pipeline.dev.folders import system_user
from pipeline.dev.mailgen import GeneratedMessage

__all__ = ["append_imap", "encode_modified_utf7", "maildir_folder_path", "seed_maildir"]

IMAP_TIMEOUT_S = 60.0
_LF = b"\n"
_MAILDIR_FLAGS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}


def encode_modified_utf7(name: str) -> str:
    """A folder name in IMAP's modified UTF-7 (RFC 3501 section 5.1.3), as Maildir++ stores it."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            utf16 = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(utf16).rstrip(b"=").decode().replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def maildir_folder_path(maildir_root: Path, folder: str, separator: str = "/") -> Path:
    """Where Dovecot's Maildir++ layout keeps ``folder`` (``INBOX`` is the root itself).

    Raises:
        ValueError: the name holds a ``.``, which Maildir++ uses between levels.
    """
    if folder.upper() == "INBOX":
        return maildir_root
    levels = folder.split(separator)
    if any("." in level or not level for level in levels):
        raise ValueError(f"folder {folder!r}: Maildir++ names cannot hold '.' or empty levels")
    return maildir_root / ("." + ".".join(encode_modified_utf7(level) for level in levels))


def seed_maildir(
    maildir_root: Path,
    messages: Iterable[GeneratedMessage],
    owner: str | None = None,
    *,
    separator: str = "/",
) -> int:
    """Write messages straight into a Dovecot Maildir++ tree; much faster than APPEND.

    Folders become ``.Name`` folders (modified UTF-7, ``.`` between levels) with a
    ``maildirfolder`` file; each message goes through ``tmp/`` into ``cur/`` with its flags in
    the ``:2,`` suffix and its mtime set to the INTERNALDATE, which Dovecot reports. Safe while
    Dovecot runs: it picks up new files at the next access.

    Args:
        maildir_root: The user's Maildir++ root (``LocalDovecot.maildir(user)``).
        messages: What to write.
        owner: System user that must own the files (``LocalDovecot.mail_user``); None keeps
            the current owner.
        separator: The hierarchy separator clients see.

    Returns:
        How many messages were written.

    Raises:
        ValueError: a flag has no Maildir letter, or a folder name cannot be stored.
    """
    entry = system_user(owner) if owner else None
    ids = (entry.pw_uid, entry.pw_gid) if entry else None
    made: dict[str, Path] = {}
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    pid = os.getpid()
    written = 0
    for message in messages:
        folder = made.get(message.folder)
        if folder is None:
            folder = made[message.folder] = _make_maildir(
                maildir_root, maildir_folder_path(maildir_root, message.folder, separator), ids
            )
        letters = []
        for flag in message.flags:
            if flag == "\\Recent":
                continue
            if flag not in _MAILDIR_FLAGS:
                raise ValueError(f"flag {flag!r} has no Maildir letter")
            letters.append(_MAILDIR_FLAGS[flag])
        data = message.raw.replace(b"\r\n", b"\n")
        stamp = message.internaldate.timestamp()
        written += 1
        name = (
            f"{math.floor(stamp)}.M{written % 1_000_000}P{pid}Q{written}.{host}"
            f",S={len(data)},W={len(data) + data.count(_LF)}"
        )
        tmp = folder / "tmp" / name
        with open(tmp, "xb") as fh:
            fh.write(data)
        os.utime(tmp, (stamp, stamp))
        if ids is not None:
            os.chown(tmp, *ids)
        tmp.rename(folder / "cur" / f"{name}:2,{''.join(sorted(letters))}")
    return written


def _make_maildir(root: Path, folder: Path, ids: tuple[int, int] | None) -> Path:
    for path in (root, folder):
        created = not path.exists()
        for sub in ("", "cur", "new", "tmp"):
            (path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
            if created and ids is not None:
                os.chown(path / sub, *ids)
    marker = folder / "maildirfolder"
    if folder != root and not marker.exists():
        marker.touch()
        if ids is not None:
            os.chown(marker, *ids)
    return folder


def append_imap(
    host: str,
    port: int,
    user: str,
    password: str,
    messages: Iterable[GeneratedMessage],
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """APPEND messages over IMAP with their INTERNALDATE and flags; folders are created.

    Args:
        host: IMAP server.
        port: Its port.
        user: Login name.
        password: Password (never logged).
        messages: What to append.
        ssl_context: Use implicit TLS with this context; None for a plain connection.

    Returns:
        How many messages were appended.
    """
    from imap_tools import MailBox, MailBoxUnencrypted  # imported late: tests need it rarely

    mailbox = (
        MailBox(host, port, timeout=IMAP_TIMEOUT_S, ssl_context=ssl_context)
        if ssl_context is not None
        else MailBoxUnencrypted(host, port, timeout=IMAP_TIMEOUT_S)
    )
    appended = 0
    with mailbox.login(user, password, initial_folder=None) as box:
        existing = {f.name for f in box.folder.list()}
        for message in messages:
            if message.folder not in existing:
                box.folder.create(message.folder)
                existing.add(message.folder)
            box.append(
                message.raw,
                message.folder,
                dt=message.internaldate,
                flag_set=[f for f in message.flags if f != "\\Recent"],
            )
            appended += 1
    return appended
