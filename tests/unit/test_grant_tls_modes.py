"""Which TLS modes a grant request settles at once, and which it leaves to a probe."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from pipeline.grants.schemas import GrantRequest


def _request(**settings: object) -> GrantRequest:
    return GrantRequest(
        email="alice@example.test",
        password=SecretStr("pw"),
        imap_host="imap.example.test",
        **settings,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(("port", "tls"), [(993, "ssl"), (143, "starttls")])
def test_well_known_imap_ports_say_their_mode(port: int, tls: str) -> None:
    resolved = _request(imap_port=port).resolve()
    assert (resolved.imap_tls, resolved.imap_tls_probe) == (tls, False)


def test_another_imap_port_without_a_mode_is_probed() -> None:
    assert _request(imap_port=10993).resolve().imap_tls_probe
    given = _request(imap_port=10993, imap_tls="ssl").resolve()
    assert (given.imap_tls, given.imap_tls_probe) == ("ssl", False)


@pytest.mark.parametrize(("port", "tls"), [(465, "ssl"), (587, "starttls"), (25, "starttls")])
def test_well_known_smtp_ports_say_their_mode(port: int, tls: str) -> None:
    resolved = _request(smtp_host="smtp.example.test", smtp_port=port).resolve()
    assert (resolved.smtp_tls, resolved.smtp_tls_probe) == (tls, False)


def test_another_smtp_port_without_a_mode_is_probed() -> None:
    assert _request(smtp_host="smtp.example.test", smtp_port=2525).resolve().smtp_tls_probe
    given = _request(smtp_host="smtp.example.test", smtp_port=2525, smtp_tls="ssl").resolve()
    assert (given.smtp_tls, given.smtp_tls_probe) == ("ssl", False)


def test_no_port_takes_the_presets_mode_without_a_probe() -> None:
    resolved = _request(smtp_host="smtp.example.test").resolve()
    assert (resolved.imap_port, resolved.imap_tls, resolved.imap_tls_probe) == (993, "ssl", False)
    assert (resolved.smtp_port, resolved.smtp_tls, resolved.smtp_tls_probe) == (465, "ssl", False)


def _smtp_probe(greeting: bytes, ehlo_answer: bytes) -> str:
    """Probe a scripted SMTP server on a local socket: the greeting (sent in two pieces, as a
    slow server may), then ``ehlo_answer`` once EHLO arrives. Returns the mode or the error."""
    import socket
    import ssl
    import threading

    from pipeline.grants.tlsprobe import ProbeFailed, probe_tls

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(greeting[:10])
            conn.sendall(greeting[10:])
            seen.append(conn.recv(1024))
            conn.sendall(ehlo_answer)
            conn.recv(1024)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        found = probe_tls(
            "127.0.0.1", "127.0.0.1", port, ssl.create_default_context(), deadline_s=5, smtp=True
        ).tls
    except ProbeFailed as exc:
        found = f"{type(exc).__name__}: {exc.tried}"
    finally:
        thread.join(timeout=5)
        listener.close()
    assert seen and seen[0].startswith(b"EHLO ")
    return found


def test_the_smtp_probe_requires_starttls_in_the_ehlo_answer() -> None:
    greeting = b"220-mx.example.test ESMTP\r\n220 welcome\r\n"
    offered = b"250-mx.example.test\r\n250-SIZE 1000\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n"
    assert _smtp_probe(greeting, offered) == "starttls"
    missing = b"250-mx.example.test\r\n250-SIZE 1000\r\n250 AUTH PLAIN LOGIN\r\n"
    assert _smtp_probe(greeting, missing).startswith("NoStartTls")
    assert "refused" in _smtp_probe(greeting, b"502 no EHLO here\r\n")
