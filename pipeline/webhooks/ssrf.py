"""The SSRF guard: destination URLs must resolve to public addresses only.

A destination is refused when its host resolves to *any* address that is not globally routable
(private, loopback, link-local — cloud metadata lives at 169.254.169.254 —, shared, reserved,
multicast, unspecified; IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry),
unless the operator allowed it with ``allow_private_destinations`` or listed its network in
``allowed_networks``. The check runs when a destination is created or changed and again before
every delivery batch, so a name that later starts resolving to an internal address is caught.
Redirects are never followed. What remains is the rebinding window between a check and the
connection, which only an egress proxy closes completely.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urlsplit

from pipeline.webhooks.errors import DestinationRefused, InvalidWebhookRequest
from pipeline.webhooks.settings import IpNetwork, WebhookSettings

RESOLVE_TIMEOUT_S = 5.0  # getaddrinfo has no timeout of its own
ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _resolver_pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook-dns")
        return _executor


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, within :data:`RESOLVE_TIMEOUT_S`.

    Raises:
        InvalidWebhookRequest: the name does not resolve, or not in time.
    """
    future = _resolver_pool().submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=RESOLVE_TIMEOUT_S)
    except FutureTimeout as exc:
        raise InvalidWebhookRequest(
            f"Resolving {host!r} took longer than {RESOLVE_TIMEOUT_S:g} s; check the URL and DNS."
        ) from exc
    except OSError as exc:
        raise InvalidWebhookRequest(
            f"The webhook host {host!r} does not resolve ({exc.strerror or exc}); check the URL."
        ) from exc
    return sorted({str(info[4][0]) for info in infos})


def is_public(address: IpAddress) -> bool:
    """Whether ``address`` is globally routable unicast (the only kind allowed by default)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _allowed(address: IpAddress, networks: Sequence[IpNetwork]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in networks)


def split_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of a webhook URL.

    Raises:
        InvalidWebhookRequest: not an absolute http(s) URL with a host.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhookRequest(f"The webhook URL is malformed: {exc}.") from exc
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise InvalidWebhookRequest(
            "The webhook URL must start with https:// (or http://); "
            f"got scheme {parts.scheme or '(none)'!r}."
        )
    if not parts.hostname:
        raise InvalidWebhookRequest(
            "The webhook URL has no host; give e.g. https://example.com/hook."
        )
    return scheme, parts.hostname, port or DEFAULT_PORTS[scheme]


def check_destination(url: str, settings: WebhookSettings, *, resolver: Resolver = resolve) -> None:
    """Refuse ``url`` unless every address it resolves to is allowed.

    Raises:
        InvalidWebhookRequest: the URL is malformed or does not resolve.
        DestinationRefused: it resolves to an address the settings do not allow.
    """
    _scheme, host, port = split_url(url)
    if settings.allow_private_destinations:
        return
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolver(host, port)]
    if not addresses:
        raise InvalidWebhookRequest(f"The webhook host {host!r} resolves to no address.")
    for address in addresses:
        if is_public(address) or _allowed(address, settings.allowed_networks):
            continue
        raise DestinationRefused(
            f"The webhook URL's host {host!r} resolves to {address}, a private, loopback or "
            "link-local address; such destinations are refused. To allow it, set "
            "IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS (e.g. 127.0.0.0/8) or "
            "IMAP_PIPELINE_WEBHOOK_ALLOW_PRIVATE_DESTINATIONS=true."
        )
