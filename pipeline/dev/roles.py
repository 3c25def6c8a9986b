"""The roles ``imap-pipeline up`` runs: ``deploy/Procfile`` read into :class:`Role` values,
and :class:`RoleLog`, each role's rotated log file under ``<data_dir>/logs``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.errors import ServiceError

PROCFILE = Path(__file__).resolve().parents[2] / "deploy" / "Procfile"
ROLE_LOG_MAX_BYTES = 10 * 1024 * 1024  # per role log file before it is rotated
ROLE_LOG_BACKUPS = 5  # rotated files kept per role (api.log.1 … api.log.5)


class RoleLog:
    """A role's log file under ``<data_dir>/logs``: a line is written as it arrives, and the
    file is rotated at :data:`ROLE_LOG_MAX_BYTES` (``api.log`` -> ``api.log.1`` -> … ->
    ``api.log.{ROLE_LOG_BACKUPS}``, the oldest dropped)."""

    def __init__(
        self, path: Path, max_bytes: int = ROLE_LOG_MAX_BYTES, backups: int = ROLE_LOG_BACKUPS
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: IO[bytes] = path.open("ab", buffering=0)  # unbuffered: one write per line

    def write(self, line: bytes) -> None:
        """Append one line (bytes, with its newline), rotating first if the file is full."""
        if self._file.tell() + len(line) > self.max_bytes and self._file.tell() > 0:
            self._rotate()
        self._file.write(line)

    def _rotate(self) -> None:
        self._file.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("ab", buffering=0)

    def close(self) -> None:
        """Close the file."""
        self._file.close()


@dataclass(frozen=True)
class Role:
    """One line of the Procfile."""

    name: str
    command: str


def read_procfile(path: Path = PROCFILE) -> list[Role]:
    """The roles of a Procfile: ``role: command`` lines; blank lines and ``#`` comments skipped.

    Raises:
        ServiceError: the file is missing or a line is malformed.
    """
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ServiceError(
            f"{path} not found: `imap-pipeline up` runs from a source checkout "
            "(git clone, then scripts/up)."
        ) from exc
    roles: list[Role] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, command = stripped.partition(":")
        name, command = name.strip(), command.strip()
        if not sep or not name.replace("-", "").replace("_", "").isalnum() or not command:
            raise ServiceError(f"{path}:{number}: expected `role: command`, got {stripped!r}")
        if any(r.name == name for r in roles):
            raise ServiceError(f"{path}:{number}: role {name!r} is listed twice")
        roles.append(Role(name, command))
    if not roles:
        raise ServiceError(f"{path} lists no roles.")
    return roles
