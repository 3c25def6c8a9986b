"""The webhook side of the address guard: destination URLs must resolve to public addresses only.

The rules (which addresses are public, every IPv4-in-IPv6 spelling, resolving with a deadline)
live in :mod:`pipeline.netguard`, shared with the IMAP and SMTP hosts users name; this module
splits a webhook URL and words the refusals for webhooks. A destination is refused when its host
resolves to *any* address that is not public, unless the operator allowed it with
``allow_private_destinations`` or listed its network in ``allowed_networks``. The check runs
when a destination is created or changed and again before every delivery batch, so a name that
later starts resolving to an internal address is caught. Redirects are never followed. The
delivery POST itself resolves the name through the same guard
(:class:`pipeline.webhooks.sender.GuardedResolver`) and connects to the address that lookup
checked, so a name that turns internal between the check and the POST (DNS rebinding) is refused.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pipeline import netguard
from pipeline.config.webhooks import WebhookSettings
from pipeline.errors import AddressRefused, HostUnresolved
from pipeline.netguard import AddressPolicy, IpAddress, Resolver, is_public
from pipeline.webhooks.errors import DestinationRefused, InvalidWebhookRequest

__all__ = ["Resolver", "check_destination", "is_public", "resolve", "split_url"]

ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (:func:`pipeline.netguard.resolve`).

    Raises:
        InvalidWebhookRequest: the name does not resolve, or not in time.
    """
    try:
        return netguard.resolve(host, port)
    except HostUnresolved as exc:
        raise InvalidWebhookRequest(f"The webhook host: {exc}") from exc


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
    policy = AddressPolicy.of(settings.allowed_networks)
    try:
        netguard.check_host(host, port, policy, resolver=resolver)
    except HostUnresolved as exc:
        raise InvalidWebhookRequest(f"The webhook host: {exc}") from exc
    except AddressRefused as exc:
        address: IpAddress | None = exc.address  # type: ignore[assignment]
        raise DestinationRefused(
            f"The webhook URL's host {host!r} resolves to {address}, a private, loopback, "
            "link-local or otherwise non-public address; such destinations are refused. To "
            "allow it, set IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS (e.g. 127.0.0.0/8) or "
            "IMAP_PIPELINE_WEBHOOK_ALLOW_PRIVATE_DESTINATIONS=true."
        ) from exc
