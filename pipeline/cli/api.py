"""``imap-pipeline api``: serve the HTTP API with uvicorn."""

from __future__ import annotations

import argparse
import gc
import logging
from typing import TYPE_CHECKING, Any

from pipeline.config import ApiSettings, Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

KEEPALIVE_TIMEOUT_S = 5  # idle keep-alive connections are closed after this long
GRACEFUL_SHUTDOWN_S = 30  # in-flight requests get this long to finish on Ctrl-C / SIGTERM


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``api`` command."""
    api = sub.add_parser("api", help="serve the HTTP API (Nylas v3 shape)")
    api.add_argument("--host", help="address to listen on (default: IMAP_PIPELINE_API_HOST)")
    api.add_argument("--port", type=int, help="port to listen on (default: IMAP_PIPELINE_API_PORT)")
    api.add_argument(
        "--workers",
        type=_positive,
        help="uvicorn worker processes (default: IMAP_PIPELINE_API_WORKERS)",
    )
    api.set_defaults(handler=_api)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("at least 1 worker process")
    return number


def worker_count(args: argparse.Namespace, api: ApiSettings) -> int:
    """uvicorn processes to run: ``--workers``, else ``IMAP_PIPELINE_API_WORKERS``."""
    return int(args.workers) if args.workers is not None else api.workers


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from pipeline import metrics

    settings = Settings.load()
    host = args.host or settings.api.host
    port = args.port or settings.api.port
    workers = worker_count(args, settings.api)
    logging_options: dict[str, Any] = {"log_level": settings.log_level.lower()}
    if settings.log_format == "json":
        # uvicorn's loggers then go through the root handler (JSON) instead of its own
        logging_options["log_config"] = None
        logging.getLogger("uvicorn").setLevel(settings.log_level.upper())
    metrics.reset_multiprocess_dir()
    metrics.serve(settings.metrics_port, settings.metrics_host)
    if workers > 1:
        # Each worker process builds its own app (and engine) from the environment.
        uvicorn.run(
            "pipeline.cli.api:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            timeout_keep_alive=KEEPALIVE_TIMEOUT_S,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            **logging_options,
        )
        return 0
    app = _create_app(settings)
    _freeze_startup_objects()
    uvicorn.run(
        app,
        host=host,
        port=port,
        timeout_keep_alive=KEEPALIVE_TIMEOUT_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        **logging_options,
    )
    return 0


def app_from_environment() -> object:
    """The app built from the environment (uvicorn's factory for several workers)."""
    app = _create_app(Settings.load())
    _freeze_startup_objects()
    return app


def _create_app(settings: Settings) -> FastAPI:
    """The API, sending its background work through :class:`pipeline.jobs.Jobs` (the API itself
    never imports Celery)."""
    from pipeline.api import create_app
    from pipeline.jobs import Jobs

    jobs = Jobs.from_settings(settings)
    return create_app(
        settings,
        enqueue_sync=jobs.sync_grant,
        kick_webhooks=jobs.kick_webhooks,
        enqueue_send=jobs.deliver_sends,
    )


def _freeze_startup_objects() -> None:
    """Keep what import and app creation made (modules, mappers, routes, schemas: hundreds of
    thousands of objects) out of the cyclic garbage collector's full collections: each one
    walked them all in the middle of a request, 110-230 ms of a page that otherwise takes
    10-20 ms, the p99 of the API's lists and searches (measured on the search benchmark's
    requests; after the freeze, 10-20 ms a full collection)."""
    gc.collect()
    gc.freeze()
