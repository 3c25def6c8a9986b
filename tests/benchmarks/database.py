"""A throwaway, migrated database on the tests' Postgres for one benchmark run."""

from __future__ import annotations

import os

import psycopg

from pipeline.db import migrate

PG_ADMIN = os.environ.get("IMAP_PIPELINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def create_database(name: str) -> str:
    """Create database ``name``, apply the migrations, return its URL."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    migrate(url)
    return url


def drop_database(name: str) -> None:
    """Drop database ``name`` if it exists, closing its connections."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
