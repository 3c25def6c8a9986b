"""The HTTP API in the Nylas v3 shape. Build it with :func:`create_app`; run it with
``imap-pipeline api``.

Resources, one module (and APIRouter) each: ``connect`` (custom auth, connectors), ``hosted``
(sign-in page, code exchange, redirect URIs), ``grants``, ``providers``, ``messages``, ``send``,
``folders``, ``threads``, ``attachments``, ``webhooks``. Beneath them: ``queries`` (every SQL
query; the tables are the domain's, e.g. :mod:`pipeline.applications.tables`), ``filters`` (list
filters messages and threads share), ``limits`` (the shared login budget of sign-ins),
``errors`` (the v3 error envelope), ``auth`` (API keys), ``pagination`` (page tokens),
``deps`` (what endpoints share), ``app`` (the factory). The routes call the domain's services
for what they change: :mod:`pipeline.messages.service` (flags, moves, deletes written to the
IMAP server, then recorded), :mod:`pipeline.applications` (redirect URIs, authorization codes),
on IMAP sessions of :func:`pipeline.grants.interactive.grant_imap`.
"""

from __future__ import annotations

from pipeline.api.app import create_app

__all__ = ["create_app"]
