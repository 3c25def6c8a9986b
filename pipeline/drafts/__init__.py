"""Drafts: messages kept in the account's Drafts folder on the IMAP server (and in Postgres
like any message the sync stores), composed and read back by :mod:`pipeline.drafts.mime`;
the queries the Drafts API adds are in :mod:`pipeline.drafts.repository`.
"""
