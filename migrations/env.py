"""Alembic environment: URL from the caller (pipeline.db.migrate) or IMAP_PIPELINE_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from pipeline.config import Settings
from pipeline.db import normalize_url
from pipeline.schema import COMPARE_OPTIONS, include_object, target_metadata

config = context.config


def _url() -> str:
    url = config.attributes.get("database_url")
    if url:
        return str(url)
    return normalize_url(Settings.load().require_database_url())


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url())
    with engine.connect() as connection:
        # one migrator at a time: several processes may call migrate on startup
        connection.exec_driver_sql("SELECT pg_advisory_lock(7261001)")
        # the same comparison as pipeline.schema.drift (alembic check, autogenerate)
        context.configure(
            connection=connection,
            target_metadata=target_metadata(),
            include_object=include_object,
            **COMPARE_OPTIONS,
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
