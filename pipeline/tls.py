"""TLS client contexts, built once per trust setting and shared by every connection.

A context that trusts the system's CA store holds about 800 KiB and takes milliseconds of CPU to
load, so IMAP (the workers' and the API's sessions, the listener's IDLE connections), SMTP and
a sign-in's TLS probe each take theirs from :func:`client_context`: one per verify mode and CA
bundle. A bundle replaced in place (same path, new modification time or size) is read again,
as it was when every connection loaded its own.
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

CONTEXTS_KEPT = 16  # trust settings of one process: verify or not, a CA bundle or two (rotated)

_Stamp = tuple[int, int] | None  # a CA bundle's (mtime ns, size): a changed file, a new context


def client_context(verify: bool, ca_file: Path | None) -> ssl.SSLContext:
    """The shared client context: the system's CAs plus ``ca_file`` when given; with
    ``verify`` False, no certificate or host name check (and no CA read).

    Raises:
        OSError: ``ca_file`` cannot be read (as :func:`ssl.create_default_context` raises it).
    """
    if not verify:
        return _built(False, None, None)
    stamp: _Stamp = None
    if ca_file is not None:
        try:
            stat = ca_file.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            pass  # loading it raises what a missing or unreadable bundle always raised
    return _built(True, ca_file, stamp)


@functools.lru_cache(maxsize=CONTEXTS_KEPT)
def _built(verify: bool, ca_file: Path | None, stamp: _Stamp) -> ssl.SSLContext:
    if not verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
