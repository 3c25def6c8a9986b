"""The HTTP API in the Nylas v3 shape. Build it with :func:`create_app`; run it with
``imap-pipeline api``.

Resources, one module (and APIRouter) each: ``connect`` (custom auth, connectors), ``hosted``
(sign-in page, code exchange, redirect URIs), ``grants``, ``providers``, ``messages``, ``send``,
``folders``, ``threads``, ``attachments``, ``webhooks``. Beneath them: ``queries`` (every SQL
query; the tables are the domain's, e.g. :mod:`pipeline.applications.tables`), ``filters`` (list
filters messages and threads share), ``writeback`` (changes sent to the IMAP server, then
recorded), ``sessions`` (pooled IMAP sessions), ``limits`` (the shared login and operation
budget), ``errors`` (the v3 error envelope), ``auth`` (API keys), ``pagination`` (page tokens),
``deps`` (what endpoints share), ``app`` (the factory).
"""

from __future__ import annotations

from pipeline.api.app import create_app

__all__ = ["create_app"]
