"""Transport settings of the asyncio IMAP client (:mod:`pipeline.imap.aio`) at scale.

One listener holds 2,000 connections, so what each costs in memory matters: one shared
:class:`ssl.SSLContext` per trust setting (a context with the system CA store is ~800 KiB) and
:func:`limit_tls_read_buffers` (asyncio zero-fills a 256 KiB read buffer per TLS connection).
TCP keepalive finds a peer that vanished without a word between two IDLE renewals.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import socket
import ssl

from pipeline.imap.client import Endpoint
from pipeline.tls import client_context

TCP_KEEPALIVE_IDLE_S = 60  # kernel probes a silent peer after this long...
TCP_KEEPALIVE_INTERVAL_S = 20  # ...every this long...
TCP_KEEPALIVE_COUNT = 3  # ...and gives up after this many unanswered probes
TLS_READ_BUFFER_BYTES = 17 * 1024  # one TLS record (16 KiB) plus headroom; asyncio's is 256 KiB


def ssl_context(endpoint: Endpoint) -> ssl.SSLContext:
    """The TLS context for an endpoint: shared by every connection with the same trust settings
    (:func:`pipeline.tls.client_context`), the listener's and the workers' alike.

    Sharing matters at scale: a context loaded with the system's CA store holds about 800 KiB,
    which per connection would cost gigabytes for 2,000 connections.
    """
    return client_context(endpoint.verify_tls, endpoint.ca_file)


def limit_tls_read_buffers(size: int = TLS_READ_BUFFER_BYTES) -> None:
    """Shrink asyncio's per-connection TLS read buffer for this process (call at start-up).

    asyncio allocates and zero-fills ``SSLProtocol.max_size`` (256 KiB) for every TLS
    connection: 500 MiB for 2,000 IDLE connections that each receive a few bytes a minute.
    One TLS record is at most 16 KiB, so a smaller buffer only means more reads for bulk
    transfers, which a listener never makes. This changes a class attribute of the standard
    library for the whole process, so only the listener's entry point calls it.
    """
    asyncio.sslproto.SSLProtocol.max_size = size


def keepalive(writer: asyncio.StreamWriter) -> None:
    """Let the kernel find a silent peer (a dead NAT entry) between IDLE renewals."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, TCP_KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, TCP_KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, TCP_KEEPALIVE_COUNT)
