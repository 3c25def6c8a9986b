"""Database engine, sessions and migrations.

The caller that owns the unit of work (a task, a request, a CLI command) opens a session with
:func:`session_scope`; repositories and helpers below it never commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from pipeline.errors import ServiceError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
CONNECT_TIMEOUT_S = 10  # fail fast with a clear message when Postgres is down
STATEMENT_TIMEOUT_MS = 120_000  # no single statement may hold locks for longer


def normalize_url(database_url: str) -> str:
    """Accept ``postgres://`` and ``postgresql://`` URLs and use the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    return database_url


@lru_cache(maxsize=8)
def get_engine(database_url: str, pool_size: int = 5) -> Engine:
    """One pooled engine per URL and process."""
    return create_engine(
        normalize_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            "application_name": "imap-pipeline",
        },
    )


def sessionmaker_for(database_url: str) -> sessionmaker[Session]:
    """A session factory bound to the engine for ``database_url``."""
    return sessionmaker(get_engine(database_url), expire_on_commit=False)


@contextmanager
def session_scope(database_url: str) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    session = sessionmaker_for(database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def check_connection(database_url: str) -> None:
    """Raise ServiceError with a readable message when Postgres cannot be reached."""
    try:
        with get_engine(database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        raise ServiceError(
            f"Postgres is not reachable at {_redact(database_url)}: {exc.orig}. "
            "Start it, or unset IMAP_PIPELINE_DATABASE_URL and let `imap-pipeline up` start one."
        ) from exc


def _redact(database_url: str) -> str:
    """The URL without a password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(normalize_url(database_url)).render_as_string(hide_password=True)


def migrate(database_url: str, revision: str = "heads") -> None:
    """Apply Alembic migrations up to ``revision`` (all heads by default)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = normalize_url(database_url)
    command.upgrade(cfg, revision)
