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
