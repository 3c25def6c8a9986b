"""A TLS client context is built once per trust setting and shared by every connection.

Building one loads the CA store (about 800 KiB, and milliseconds of CPU); a worker or the API
that logged in with a context of its own per connection paid both every time.
"""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from pipeline.imap import login
from pipeline.imap.client import Endpoint
from pipeline.imap.transport import ssl_context


class _Captured:
    """Stands in for BoundedIMAP4: keeps the context each connection's TLS was started with
    (implicit TLS: given to the connection; STARTTLS: given to its command)."""

    contexts: list[ssl.SSLContext | None]

    def __init__(self, *args: Any, ssl_context: ssl.SSLContext | None = None, **kwargs: Any):
        if ssl_context is not None:
            _Captured.contexts.append(ssl_context)

    def starttls(self, ctx: ssl.SSLContext) -> None:
        _Captured.contexts.append(ctx)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[ssl.SSLContext | None]:
    _Captured.contexts = []
    monkeypatch.setattr(login, "BoundedIMAP4", _Captured)
    return _Captured.contexts


def _endpoint(tls: str = "ssl", *, verify: bool = True, ca_file: Path | None = None) -> Endpoint:
    return Endpoint("imap.example.com", 993, tls, "u", verify_tls=verify, ca_file=ca_file)  # type: ignore[arg-type]


def _ca_file(path: Path) -> Path:
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def _connect(endpoint: Endpoint) -> None:
    login._connect(endpoint, time.monotonic() + 10)


def test_two_connections_share_one_context(
    captured: list[ssl.SSLContext | None], tmp_path: Path
) -> None:
    ca = _ca_file(tmp_path / "ca.pem")
    for endpoint in (_endpoint(), _endpoint("starttls"), _endpoint(ca_file=ca)):
        captured.clear()
        _connect(endpoint)
        _connect(endpoint)
        first, second = captured
        assert first is not None and first is second
        assert first is ssl_context(endpoint)  # the listener's IDLE connections share it too
        assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname


def test_another_ca_or_verify_mode_gives_another_context(
    captured: list[ssl.SSLContext | None], tmp_path: Path
) -> None:
    ca = _ca_file(tmp_path / "ca.pem")
    other = _ca_file(tmp_path / "other.pem")
    for endpoint in (_endpoint(), _endpoint(ca_file=ca), _endpoint(ca_file=other)):
        _connect(endpoint)
    _connect(_endpoint(verify=False, ca_file=ca))
    _connect(_endpoint(verify=False))
    system, private, other_private, unverified, unverified_too = captured
    assert len({id(system), id(private), id(other_private), id(unverified)}) == 4
    assert unverified is unverified_too  # no CA is read when nothing is verified
    assert unverified is not None and unverified.verify_mode == ssl.CERT_NONE


def test_a_ca_file_replaced_in_place_is_read_again(
    captured: list[ssl.SSLContext | None], tmp_path: Path
) -> None:
    """An operator who rotates the private CA's bundle needs no restart (as when every
    connection read it)."""
    ca = _ca_file(tmp_path / "ca.pem")
    _connect(_endpoint(ca_file=ca))
    _ca_file(ca)
    stat = ca.stat()
    os.utime(ca, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    _connect(_endpoint(ca_file=ca))
    before, after = captured
    assert before is not after
