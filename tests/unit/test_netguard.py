"""The address guard over a table of spellings: resolve and check only, no packet leaves.

Numeric spellings go through the real resolver (``getaddrinfo`` normalizes them without asking
DNS); names that would need DNS get a resolver that answers from a table.
"""

from __future__ import annotations

import ipaddress

import pytest

from pipeline.errors import AddressRefused, HostUnresolved
from pipeline.netguard import AddressPolicy, check_host, embedded_ipv4, is_public

NOTHING_ALLOWED = AddressPolicy()
LOOPBACK_ALLOWED = AddressPolicy.of(["127.0.0.0/8", "::1/128"])

REFUSED = [
    # IPv4, the usual and the odd spellings (inet_aton forms the resolver normalizes)
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "0x7f.0.0.1",
    "0177.0.0.1",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.0.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # shared address space (CGNAT)
    "0.0.0.0",
    "0",
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
    # IPv6 itself
    "::1",
    "::",
    "fe80::1",
    "fe80::1%1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",  # site-local (deprecated)
    "ff02::1",  # multicast
    "100::1",  # discard-only
    "2001:db8::1",  # documentation
    "64:ff9b:1::a9fe:a9fe",  # NAT64, local-use prefix
    # IPv6 carrying a private IPv4 address
    "::ffff:127.0.0.1",  # mapped
    "::ffff:a9fe:a9fe",  # mapped, hex
    "::ffff:0:7f00:1",  # translated (SIIT)
    "::127.0.0.1",  # compatible
    "::169.254.169.254",  # compatible
    "::a00:1",  # compatible, hex
    "64:ff9b::a9fe:a9fe",  # NAT64
    "64:ff9b::127.0.0.1",  # NAT64, dotted
    "64:ff9b::10.0.0.1",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "2002:c0a8:1::1",  # 6to4 of 192.168.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001::7f00:1",  # Teredo prefix
    "[::127.0.0.1]",  # as a user writes it in a host field
    "[::ffff:10.0.0.1]",
]

PUBLIC = [
    "93.184.215.14",
    "8.8.8.8",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",  # mapped public
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize("host", REFUSED)
def test_every_spelling_of_a_non_public_address_is_refused(host: str) -> None:
    with pytest.raises(AddressRefused):
        check_host(host, 993, NOTHING_ALLOWED)


@pytest.mark.parametrize("host", PUBLIC)
def test_public_addresses_pass_and_are_returned_as_checked(host: str) -> None:
    (address,) = check_host(host, 993, NOTHING_ALLOWED)
    assert is_public(address)


def test_localhost_by_name_is_refused_and_allowed_only_by_the_operator() -> None:
    with pytest.raises(AddressRefused):
        check_host("localhost", 143, NOTHING_ALLOWED)
    addresses = check_host("localhost", 143, LOOPBACK_ALLOWED)
    assert addresses and all(a.is_loopback for a in addresses)


def test_one_private_address_among_public_ones_refuses_the_name() -> None:
    table = {"mail.example.test": ["93.184.215.14", "2606:4700:4700::1111", "10.1.2.3"]}
    with pytest.raises(AddressRefused, match=r"10\.1\.2\.3"):
        check_host("mail.example.test", 993, NOTHING_ALLOWED, resolver=lambda h, p: table[h])


def test_a_name_answered_with_an_embedded_private_address_is_refused() -> None:
    table = {"rebind.example.test": ["64:ff9b::a9fe:a9fe"]}
    with pytest.raises(AddressRefused):
        check_host("rebind.example.test", 993, NOTHING_ALLOWED, resolver=lambda h, p: table[h])


def test_allowed_networks_let_exactly_those_through() -> None:
    assert check_host("127.0.0.1", 143, LOOPBACK_ALLOWED) == [ipaddress.ip_address("127.0.0.1")]
    check_host("::ffff:127.0.0.1", 143, LOOPBACK_ALLOWED)  # the IPv4 it carries is allowed
    check_host("::1", 143, LOOPBACK_ALLOWED)
    # tunnels and translators are not "this machine": allowing 127/8 does not allow them
    for host in ("[::127.0.0.1]", "64:ff9b::7f00:1", "2002:7f00:1::1"):
        with pytest.raises(AddressRefused):
            check_host(host, 143, LOOPBACK_ALLOWED)
    for host in ("10.0.0.1", "169.254.169.254", "64:ff9b::a9fe:a9fe", "fe80::1", "::127.0.0.1"):
        with pytest.raises(AddressRefused):
            check_host(host, 143, LOOPBACK_ALLOWED)


@pytest.mark.parametrize("host", ["", "   ", "a b", "x\x00y", "a" * 300, "[", "nope..invalid"])
def test_what_is_not_a_resolvable_host_is_refused_as_unresolved(host: str) -> None:
    def no_dns(name: str, port: int) -> list[str]:
        raise HostUnresolved(f"{name!r} does not resolve")

    with pytest.raises(HostUnresolved):
        check_host(host, 993, NOTHING_ALLOWED, resolver=no_dns)


def test_embedded_ipv4_reads_every_form() -> None:
    expected = ipaddress.IPv4Address("169.254.169.254")
    for spelling in ("::ffff:a9fe:a9fe", "::ffff:0:a9fe:a9fe", "::a9fe:a9fe", "64:ff9b::a9fe:a9fe"):
        assert embedded_ipv4(ipaddress.IPv6Address(spelling)) == expected, spelling
    assert embedded_ipv4(ipaddress.IPv6Address("2002:a9fe:a9fe::1")) == expected
    assert embedded_ipv4(ipaddress.IPv6Address("::1")) is None
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700:4700::1111")) is None
