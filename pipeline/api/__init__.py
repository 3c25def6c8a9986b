"""The HTTP API in the Nylas v3 shape. Build it with :func:`create_app`; run it with
``imap-pipeline api``.

Resources, one module (and APIRouter) each: ``connect`` (custom auth, connectors), ``hosted``
(sign-in page, code exchange, redirect URIs), ``grants``, ``providers``, ``messages``, ``send``,
``drafts``, ``folders``, ``threads``, ``attachments``, ``webhooks``. Beneath them: ``queries``
(the list and search pages' SQL; the tables are the domain's), ``filters`` (list filters messages
and threads share), ``gate`` (the sign-in gate's HTTP answers), ``errors`` (the v3 error
envelope and the mapping of the domain's errors onto it), ``auth`` (API keys), ``pagination``
(page tokens), ``deps`` (what endpoints share), ``app`` (the factory).

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
