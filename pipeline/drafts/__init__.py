"""Drafts: messages kept in the account's Drafts folder on the IMAP server (and in Postgres
like any message the sync stores), composed and read back by :mod:`pipeline.drafts.mime`,
created, updated, sent and removed step by step by :mod:`pipeline.drafts.service` (a request's
body: :mod:`pipeline.drafts.schemas`), changed on the server by :mod:`pipeline.drafts.server`,
scheduled and locked by :mod:`pipeline.drafts.scheduling`; their queries are in
:mod:`pipeline.drafts.repository`.
"""
