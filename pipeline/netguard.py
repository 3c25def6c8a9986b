"""The address guard: hosts named by users (IMAP, SMTP, webhooks) may reach public addresses only.

A host is resolved once (:func:`resolve`, with a deadline) and refused when *any* of its addresses
is not public unicast: private, loopback, link-local (cloud metadata lives at 169.254.169.254),
shared (100.64/10), reserved, documentation, multicast or unspecified. IPv6 addresses that carry
an IPv4 address are judged as that IPv4 address, in every spelling that routes to it:

    ::ffff:a.b.c.d          IPv4-mapped
    ::ffff:0:a.b.c.d        IPv4-translated (SIIT)
    ::a.b.c.d               IPv4-compatible (deprecated; ``::`` and ``::1`` are refused anyway)
    64:ff9b::a.b.c.d        NAT64, the well-known prefix (64:ff9b:1::/48, local use: refused)
    2002:AABB:CCDD::/48     6to4
    2001:0::/32             Teredo (refused whatever it carries: an obsolete tunnel)

Any other IPv6 address must be global unicast (2000::/3) and not special-purpose. Numeric IPv4
spellings such as ``2130706433``, ``0x7f.1`` or ``127.1`` are normalized by the resolver first,
so they are judged as the address they mean.

The operator lets chosen networks through with :class:`AddressPolicy` (from a setting such as
``IMAP_PIPELINE_MAIL_ALLOWED_NETWORKS``); a network that contains the address (or, for an
IPv4-mapped address, its IPv4 address) allows it: allowing 127.0.0.0/8 allows
``::ffff:127.0.0.1`` but not ``::127.0.0.1`` or ``64:ff9b::7f00:1``. The caller connects to the
address this module checked, never to the name again, so a name cannot resolve to a public
address for the check and to an internal one for the connection (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from pipeline.errors import AddressRefused, HostUnresolved

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

RESOLVE_TIMEOUT_S = 5.0  # getaddrinfo has no timeout of its own
# Lookups in flight at once per pool. getaddrinfo cannot be cancelled: a lookup given up after
# RESOLVE_TIMEOUT_S keeps its thread until the system resolver gives up too, so names from the
# public sign-ins resolve in a pool of their own and cannot starve the others.
RESOLVER_THREADS = 8
SIGN_IN_POOL = "sign-in"
MAX_HOST_CHARS = 253  # RFC 1035: the longest name DNS can carry

_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")

_executors: dict[str, ThreadPoolExecutor] = {}
_executor_lock = threading.Lock()


@dataclass(frozen=True)
class AddressPolicy:
    """Which non-public networks the operator allows (none by default)."""

    allowed_networks: tuple[IpNetwork, ...] = ()

    @classmethod
    def of(cls, networks: Iterable[IpNetwork | str]) -> AddressPolicy:
        """A policy allowing ``networks`` (CIDR strings or network objects)."""
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in networks))

    def allows(self, address: IpAddress) -> bool:
        """Whether ``address`` may be reached: public, or in an allowed network."""
        return is_public(address) or self._listed(address)

    def _listed(self, address: IpAddress) -> bool:
        candidates: list[IpAddress] = [address]
        # An IPv4-mapped address is the same socket destination as its IPv4 address; the other
        # embedding forms go through tunnels or translators, so only the network of the IPv6
        # address itself can allow them.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(
            a.version == net.version and a in net
            for a in candidates
            for net in self.allowed_networks
        )


def _resolver_pool(name: str) -> ThreadPoolExecutor:
    with _executor_lock:
        if name not in _executors:
            _executors[name] = ThreadPoolExecutor(
                max_workers=RESOLVER_THREADS, thread_name_prefix=f"netguard-dns-{name}"
            )
        return _executors[name]


def resolve(host: str, port: int, *, pool: str = "shared") -> list[str]:
    """Every address ``host`` resolves to (numeric spellings normalized), within
    :data:`RESOLVE_TIMEOUT_S`, on the resolver threads called ``pool``.

    Raises:
        HostUnresolved: the name does not resolve, or not in time.
    """
    future = _resolver_pool(pool).submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=RESOLVE_TIMEOUT_S)
    except FutureTimeout as exc:
        raise HostUnresolved(
            f"Resolving {host!r} took longer than {RESOLVE_TIMEOUT_S:g} s; check the name."
        ) from exc
    except (OSError, UnicodeError) as exc:
        raise HostUnresolved(f"{host!r} does not resolve; check the name.") from exc
    return sorted({str(info[4][0]) for info in infos})


def resolve_for_sign_in(host: str, port: int) -> list[str]:
    """:func:`resolve` on the public sign-ins' own resolver threads."""
    return resolve(host, port, pool=SIGN_IN_POOL)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address routes to, if it is one of the embedding forms."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _MAPPED or address in _TRANSLATED or address in _NAT64:
        return low32
    if address in _COMPATIBLE and int(address) > 1:  # ``::`` and ``::1`` are not IPv4
        return low32
    return address.sixtofour


def is_public(address: IpAddress) -> bool:
    """Whether ``address`` is globally routable unicast (the only kind allowed by default)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _TEREDO:
            return False
        carried = embedded_ipv4(address)
        if carried is not None:
            return _public_v4(carried)
        return (
            address in _GLOBAL_UNICAST
            and address.is_global
            and not (address.is_reserved or address.is_private or address.is_site_local)
        )
    return _public_v4(address)


def _public_v4(address: ipaddress.IPv4Address) -> bool:
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_unspecified
    )


def literal(host: str) -> IpAddress | None:
    """``host`` as an IP address when it is one (brackets and a zone id allowed), else None."""
    bare = host.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    try:
        return ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        return None


def check_host(
    host: str, port: int, policy: AddressPolicy, *, resolver: Resolver = resolve
) -> list[IpAddress]:
    """Resolve ``host`` once and return its addresses if every one of them is allowed.

    The caller connects to one of the returned addresses (never to the name again).

    Raises:
        HostUnresolved: empty, too long, does not resolve (in time), or resolves to nothing.
        AddressRefused: one of its addresses is not allowed by ``policy``.
    """
    name = host.strip()
    if not name or len(name) > MAX_HOST_CHARS or any(c.isspace() or c == "\x00" for c in name):
        raise HostUnresolved(f"{host[:MAX_HOST_CHARS]!r} is not a host name.")
    direct = literal(name)
    if direct is not None:
        addresses: Sequence[IpAddress] = [direct]
    else:
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolver(name, port)]
    if not addresses:
        raise HostUnresolved(f"{name!r} resolves to no address.")
    for address in addresses:
        if not policy.allows(address):
            raise AddressRefused(
                f"{name!r} resolves to {address}, which is not a public address.",
                address=address,
            )
    return list(addresses)
