"""The schema as the code declares it, and how Alembic compares it with a database.

``migrations/env.py`` (``alembic check``, ``alembic revision --autogenerate``) and the test that
keeps models and migrations in agreement both use these, so they compare the same way:

- every table, on the one MetaData of :mod:`pipeline.models` (``Base.metadata``): the models
  there, and the tables each domain declares beside them (:mod:`pipeline.webhooks.models`,
  :mod:`pipeline.outbound.outbox`, :mod:`pipeline.applications.tables`,
  :mod:`pipeline.search.tables`), imported here so the MetaData holds them all;
- column types and server defaults are compared, not only tables, columns and constraints;
- indexes a migration creates by hand and no model declares (expression, partial and trigram
  indexes) are left alone rather than reported for removal.

Not visible to the comparison: storage settings such as a column's compression, functions,
extensions.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData, create_engine

# each declares its tables on Base.metadata when imported
import pipeline.applications.tables
import pipeline.outbound.outbox
import pipeline.search.tables
import pipeline.webhooks.models  # noqa: F401
from pipeline.db import CONNECT_TIMEOUT_S, normalize_url
from pipeline.models import Base

COMPARE_OPTIONS: dict[str, Any] = {"compare_type": True, "compare_server_default": True}


def target_metadata() -> list[MetaData]:
    """The MetaData whose tables the migrations create.

    A list, not the MetaData itself: given a MetaData, Alembic would apply its naming convention
    to the constraints the migrations' ``op.create_table`` leaves unnamed, and name them
    differently from the databases migrated so far.
    """
    return [Base.metadata]


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Compare everything but indexes that exist only in the database (made by hand in a
    migration, such as expression or trigram indexes, which no model declares)."""
    return not (type_ == "index" and reflected and compare_to is None)


def drift(database_url: str) -> list[Any]:
    """What Alembic would change to make the database at ``database_url`` match the models.

    Empty when the migrations and the models agree. Each entry is one of Alembic's diff
    tuples, e.g. ``("remove_constraint", UniqueConstraint(...))``.
    """
    from alembic.autogenerate import compare_metadata  # imported late: Alembic is slow
    from alembic.migration import MigrationContext

    engine = create_engine(
        normalize_url(database_url), connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
    )
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "target_metadata": target_metadata(),
                    "include_object": include_object,
                    **COMPARE_OPTIONS,
                },
            )
            # a list of MetaData works as in env.py's target_metadata; the stub names only one
            return list(compare_metadata(context, target_metadata()))  # type: ignore[arg-type]
    finally:
        engine.dispose()
