"""Test-side descriptions of the services the fixtures start."""

from __future__ import annotations

from pathlib import Path

import trustme

from pipeline.dev.dovecot import LocalDovecot
from tests.support.courier import LocalCourier
from tests.support.cyrus import LocalCyrus

AnyServer = LocalDovecot | LocalCyrus | LocalCourier
SERVER_KINDS = ("dovecot", "cyrus", "courier")  # the servers behaviour tests run against


class TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost."""

    def __init__(self, folder: Path) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = folder / "ca.pem"
        self.cert_file = folder / "cert.pem"
        self.key_file = folder / "key.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.cert_file))
        cert.private_key_pem.write_to_path(str(self.key_file))
        for path in (self.ca_file, self.cert_file, self.key_file):
            path.chmod(0o644)


class MailUser:
    """A user made for one test, on the test Dovecot or (``server_user``) Cyrus or Courier."""

    def __init__(self, server: AnyServer, name: str, password: str) -> None:
        self.server = server
        self.name = name
        self.password = password
        self.email = f"{name}@example.test"

    @property
    def kind(self) -> str:
        """``dovecot``, ``cyrus`` or ``courier``."""
        return "dovecot" if isinstance(self.server, LocalDovecot) else self.server.kind

    @property
    def starttls(self) -> bool:
        """Whether grants connect with STARTTLS (the test Dovecot) or in plaintext."""
        return isinstance(self.server, LocalDovecot)

    @property
    def separator(self) -> str:
        """The server's hierarchy separator."""
        return self.server.separator

    def folder(self, name: str) -> str:
        """The raw name a client's ``CREATE name`` gets: ``INBOX.name`` on Courier."""
        return name if isinstance(self.server, LocalDovecot) else self.server.folder(name)
