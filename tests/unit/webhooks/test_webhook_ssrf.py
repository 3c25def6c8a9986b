"""The SSRF guard refuses non-public destinations unless the operator allows them."""

from __future__ import annotations

import pytest

from pipeline.config.webhooks import WebhookSettings
from pipeline.webhooks.errors import DestinationRefused, InvalidWebhookRequest
from pipeline.webhooks.ssrf import check_destination, is_public, split_url

PUBLIC = "93.184.215.14"


def _resolver(*addresses: str):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.8.9.10:8080/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://100.64.0.1/",  # shared address space
        "http://0.0.0.0/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[::ffff:127.0.0.1]/",  # IPv4-mapped loopback
        "http://224.0.0.1/",
    ],
)
def test_non_public_literal_addresses_are_refused(url: str) -> None:
    with pytest.raises(DestinationRefused, match="IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS"):
        check_destination(url, WebhookSettings(), resolver=_resolver())


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    with pytest.raises(DestinationRefused, match=r"10\.0\.0\.5"):
        check_destination(
            "https://hooks.example.com/x", WebhookSettings(), resolver=_resolver(PUBLIC, "10.0.0.5")
        )


def test_localhost_by_name_is_refused() -> None:
    with pytest.raises(DestinationRefused):
        check_destination("http://localhost:8080/", WebhookSettings())


def test_public_addresses_pass() -> None:
    check_destination("https://hooks.example.com/x", WebhookSettings(), resolver=_resolver(PUBLIC))
    check_destination(f"http://{PUBLIC}:8443/x", WebhookSettings())
    check_destination("https://[2606:4700:4700::1111]/x", WebhookSettings())


def test_allowed_networks_let_loopback_through_and_nothing_else() -> None:
    s = WebhookSettings(allowed_networks="127.0.0.0/8")  # type: ignore[arg-type]
    check_destination("http://127.0.0.1:9/hook", s)
    check_destination("http://[::ffff:127.0.0.1]:9/hook", s)
    with pytest.raises(DestinationRefused):
        check_destination("http://10.0.0.1/hook", s)
    with pytest.raises(DestinationRefused):
        check_destination("http://[::1]/hook", s)


def test_allow_private_destinations_allows_everything() -> None:
    check_destination("http://10.0.0.1/x", WebhookSettings(allow_private_destinations=True))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "example.com/hook",
        "http:///nohost",
        "http://[::1/",
        "file:///etc/passwd",
    ],
)
def test_malformed_urls_are_invalid(url: str) -> None:
    with pytest.raises(InvalidWebhookRequest):
        check_destination(url, WebhookSettings(allow_private_destinations=True))


def test_unresolvable_host_is_a_clear_error() -> None:
    with pytest.raises(InvalidWebhookRequest, match=r"(?i)resolv"):
        check_destination("https://no-such-host.invalid/x", WebhookSettings())


def test_split_url_defaults_ports() -> None:
    assert split_url("https://example.com/x") == ("https", "example.com", 443)
    assert split_url("HTTP://Example.com:8080") == ("http", "example.com", 8080)


def test_is_public() -> None:
    import ipaddress

    assert is_public(ipaddress.ip_address(PUBLIC))
    assert not is_public(ipaddress.ip_address("127.0.0.1"))


@pytest.mark.parametrize(
    "url",
    [
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of the metadata address
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:a9fe:a9fe::1]/",  # 6to4
        "http://[2002:7f00:1::]/",
        "http://[::169.254.169.254]/",  # IPv4-compatible
        "http://[::127.0.0.1]/",
        "http://[::a00:1]/",
        "http://[::ffff:0:7f00:1]/",  # IPv4-translated
        "http://[::ffff:a9fe:a9fe]/",  # mapped, hex
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
        "http://[64:ff9b:1::1]/",  # NAT64 local-use prefix
        "http://[fec0::1]/",  # site-local
        "http://[ff02::1]/",  # multicast
    ],
)
def test_ipv6_forms_embedding_private_ipv4_are_refused(url: str) -> None:
    with pytest.raises(DestinationRefused):
        check_destination(url, WebhookSettings(), resolver=_resolver())
    # allowing this machine's loopback does not open tunnels or translators to it
    loopback = WebhookSettings(allowed_networks="127.0.0.0/8")  # type: ignore[arg-type]
    with pytest.raises(DestinationRefused):
        check_destination(url, loopback, resolver=_resolver())
