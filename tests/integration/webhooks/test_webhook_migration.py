"""Migration 0101 produces exactly the schema the models describe."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import pipeline.webhooks.models  # noqa: F401  (registers the tables on Base.metadata)
from pipeline.db import get_engine
from pipeline.models import Base

pytestmark = pytest.mark.services

WEBHOOK_TABLES = {
    "webhook_destinations",
    "webhook_outbox",
    "webhook_deliveries",
    "webhook_attempts",
}


def _mentions_webhooks(diff: object) -> bool:
    return "webhook" in repr(diff)


def test_migration_matches_models(database_url: str) -> None:
    with get_engine(database_url).connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        diffs = [d for d in compare_metadata(context, Base.metadata) if _mentions_webhooks(d)]
        tables = set(
            conn.exec_driver_sql(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE 'webhook%%'"
            ).scalars()
        )
    assert tables == WEBHOOK_TABLES
    assert diffs == []


def test_revision_is_a_branch_off_the_foundation() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from pipeline.db import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    script = ScriptDirectory.from_config(cfg).get_revision("0101")
    assert script is not None
    assert script.down_revision == "0001"
