"""Fixtures of the unit tests that run on the real store: the session's one database, one
rolled-back transaction per test (:mod:`tests.support.rollback`)."""

from tests.support.rollback import pg_connection, pg_sessions, pg_store_engine, pg_store_url

__all__ = ["pg_connection", "pg_sessions", "pg_store_engine", "pg_store_url"]
