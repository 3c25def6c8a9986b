"""Alembic environment: URL from the caller (pipeline.db.migrate) or IMAP_PIPELINE_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

import pipeline.webhooks.models  # noqa: F401  (registers its tables for autogenerate)
from pipeline.api import tables as api_tables
from pipeline.config import Settings
from pipeline.db import normalize_url
from pipeline.models import Base

config = context.config
# Every domain's tables: the shared Base, plus the API's own MetaData.
target_metadata = [Base.metadata, api_tables.metadata]


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Autogenerate must not drop what migrations create by hand (expression and trigram
    indexes, functions) just because no model declares it."""
    return not (type_ == "index" and reflected and compare_to is None)


def _url() -> str:
    url = config.attributes.get("database_url")
    if url:
        return str(url)
    return normalize_url(Settings.load().require_database_url())


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url())
    with engine.connect() as connection:
        # one migrator at a time: several processes may call migrate on startup
        connection.exec_driver_sql("SELECT pg_advisory_lock(7261001)")
        context.configure(
            connection=connection, target_metadata=target_metadata, include_object=include_object
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.exec_driver_sql("SELECT pg_advisory_unlock(7261001)")
        connection.commit()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
