"""The HTTP API in the Nylas v3 shape. Build it with :func:`create_app`; run it with
``imap-pipeline api``.

One module per resource (``connect``, ``grants``, ``providers``, ``messages``, ``folders``,
``threads``, ``attachments``), each with an APIRouter; ``queries`` holds every SQL query they run,
``errors`` the v3 error envelope, ``auth`` the API keys, ``pagination`` the page tokens.
"""

from __future__ import annotations

from pipeline.api.app import create_app

__all__ = ["create_app"]
