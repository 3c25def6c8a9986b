"""Test-side descriptions of the services the fixtures start."""

from __future__ import annotations

from pathlib import Path

import trustme

from pipeline.local.dovecot import LocalDovecot


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
    """A Dovecot user made for one test."""

    def __init__(self, server: LocalDovecot, name: str, password: str) -> None:
        self.server = server
        self.name = name
        self.password = password
        self.email = f"{name}@example.test"
