"""Migrations and models agree: a freshly migrated database is what the models declare.

``alembic check`` compares the same way (:mod:`pipeline.schema`); this test runs it on every
change, so a model edited without a migration, or a migration without the model, fails here.
Storage settings (a column's compression, say) are invisible to the comparison and never fail.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text

from pipeline.db import migrate, normalize_url
from pipeline.schema import drift
from tests.conftest import _admin, _pg_url, service_unavailable

pytestmark = pytest.mark.services


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A new database with nothing in it (not a copy of the session's template)."""
    name = f"ipt_schema_{uuid.uuid4().hex[:12]}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        service_unavailable("Postgres")
    yield _pg_url(name)
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def describe(diffs: list[Any]) -> list[str]:
    """One line per difference: Alembic's operation, then the table and what in it."""
    lines: list[str] = []
    for diff in diffs:
        for kind, *parts in diff if isinstance(diff, list) else [diff]:
            words: list[str] = []
            for part in parts:
                if part is None or isinstance(part, dict):
                    continue
                table = getattr(getattr(part, "table", None), "name", None)
                name = str(getattr(part, "name", part))
                words.append(f"{table}.{name}" if table else name)
            lines.append(" ".join([kind, *words[:2]]))
    return lines


def test_a_migrated_database_matches_the_models(empty_database: str) -> None:
    migrate(empty_database)
    assert describe(drift(empty_database)) == []


def test_drift_in_either_direction_is_reported(database_url: str) -> None:
    engine = create_engine(normalize_url(database_url))
    try:
        with engine.begin() as conn:
            conn.execute(
                text("ALTER TABLE api_redirect_uris DROP CONSTRAINT uq_api_redirect_uris_url")
            )
            conn.execute(
                text("ALTER TABLE api_auth_codes DROP CONSTRAINT api_auth_codes_grant_id_fkey")
            )
            conn.execute(text("ALTER TABLE api_redirect_uris ALTER COLUMN platform DROP DEFAULT"))
            conn.execute(text("ALTER TABLE grants ADD COLUMN undeclared integer"))
            # invisible to the comparison, as a later migration's storage settings would be
            conn.execute(text("ALTER TABLE messages ALTER COLUMN body SET COMPRESSION pglz"))
    finally:
        engine.dispose()

    ops = {line.split(" ", 1)[0] for line in describe(drift(database_url))}
    assert ops == {"add_constraint", "add_fk", "modify_default", "remove_column"}, ops
