"""The HTTP API in the Nylas v3 shape. Build it with :func:`create_app`; run it with
``imap-pipeline api``.

Resources, one module (and APIRouter) each: ``connect`` (custom auth, connectors), ``hosted``
(sign-in page, code exchange, redirect URIs), ``grants``, ``providers``, ``messages``, ``send``,
``drafts``, ``folders``, ``threads``, ``attachments``, ``webhooks``, ``health`` (probes, no API
key), ``docs`` (Swagger UI). Beneath them: ``lean`` (the message and thread lists on plain
Starlette routes, matched first), ``params`` (their query string as one model), ``search``
(``search_query_native``), ``rawmime`` (``fields=raw_mime``), ``filters`` (list filters and a
change's target folder, shared by messages and threads), ``gate`` (the sign-in gate's HTTP
answers), ``errors`` (the v3 error envelope and the mapping of the domain's errors onto it),
``auth`` (API keys), ``pagination`` (page tokens), ``deps`` (what endpoints share), ``app``
(the factory). The SQL the pages run is the domain's (:mod:`pipeline.messages.queries`,
:mod:`pipeline.threads.queries`); the API has none of its own.

The routes are HTTP only for what they change: they call the domain's services with typed
arguments, :mod:`pipeline.messages.service` (flags, moves, deletes) and
:mod:`pipeline.messages.content` (raw messages, attachments), :mod:`pipeline.folders.service`,
:mod:`pipeline.drafts.service`, :mod:`pipeline.outbound.compose` and
:mod:`pipeline.outbound.submit`, :mod:`pipeline.grants.signin`, :mod:`pipeline.applications`
(redirect URIs, authorization codes), on IMAP sessions of
:func:`pipeline.grants.interactive.grant_imap`.
"""

from __future__ import annotations

from pipeline.api.app import create_app

__all__ = ["create_app"]
