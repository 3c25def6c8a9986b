"""TCP ports on 127.0.0.1 for the local servers: free ones to start on, and whether one is
in use or can be bound.
"""

from __future__ import annotations

import contextlib
import socket

LOCALHOST = "127.0.0.1"
PORT_PROBE_TIMEOUT_S = 0.5


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    The port is only probably free by the time it is used; callers that race other processes
    for ports (parallel test runs) should retry on a bind failure.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now: for one
    service with several listeners (``free_port()`` twice in a row may give the same port,
    since the first is free again once it returns). As free as :func:`free_port`'s."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOCALHOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_in_use(port: int, host: str = LOCALHOST) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=PORT_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def can_bind(port: int, host: str = LOCALHOST) -> bool:
    """Whether a server could listen on ``host:port`` now (nothing holds it on any address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # what servers set too: a port in TIME_WAIT is free for them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
