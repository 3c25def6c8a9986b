"""System users and the folders their servers keep data in.

Running as root, Postgres and Dovecot's mail processes run as the ``postgres`` and ``dovecot``
system users. Those users must be able to enter their folder; when a folder sits below one they
cannot enter (``/root``, pytest's ``/tmp/pytest-of-root``), :func:`reachable_dir` keeps the data
in a stand-in folder they can reach and leaves a symbolic link at the requested place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import stat
import tempfile
import time
from pathlib import Path

from pipeline.errors import ServiceError

PERSISTENT_STAND_IN_BASE = Path("/var/lib/imap-pipeline")


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
