"""The command line of a webhook worker (``celery worker -Q webhooks``) as the tests and the
webhook benchmark start it: one place, so both run the worker the same way."""

from __future__ import annotations

import sys
from pathlib import Path


def webhook_worker_command(
    *, concurrency: int, name: str, log_level: str, log_file: Path
) -> list[str]:
    """``celery worker`` on the ``webhooks`` queue of ``webhook_worker_app`` (prefork,
    ``concurrency`` processes, node ``name``), logging at ``log_level`` into ``log_file``."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "webhook_worker_app",
        "worker",
        "-Q",
        "webhooks",
        "-c",
        str(concurrency),
        "-P",
        "prefork",
        "-n",
        name,
        "--without-gossip",
        "--without-mingle",
        "-l",
        log_level,
        f"--logfile={log_file}",
    ]
