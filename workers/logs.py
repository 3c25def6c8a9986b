"""Log lines of the Celery roles: ``IMAP_PIPELINE_LOG_FORMAT=json`` makes them JSON, and every line
a task logs carries its ``task_id``, ``task_name`` and, for the sync tasks, ``grant_id`` and
``folder_id`` as fields (see :mod:`pipeline.logs`)."""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger, task_postrun, task_prerun

from pipeline import logs
from pipeline.config import get_settings

# the positional arguments of the tasks that take ids (workers.tasks)
ID_ARGUMENTS = {
    "pipeline.sync.grant": ("grant_id",),
    "pipeline.sync.folder": ("grant_id", "folder_id"),
}
_tokens: dict[str, contextvars.Token[dict[str, str] | None]] = {}


@after_setup_logger.connect
@after_setup_task_logger.connect
def _json_lines(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is None or get_settings().log_format != "json":
        return
    for handler in logger.handlers:
        handler.setFormatter(logs.formatter("json"))


@task_prerun.connect
def _bind(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    if task is None or task_id is None:
        return
    ids: dict[str, str | None] = {"task_id": task_id, "task_name": task.name}
    for name, value in zip(ID_ARGUMENTS.get(task.name, ()), args or (), strict=False):
        ids[name] = str(value)
    _tokens[task_id] = logs.bind_ids(**ids)


@task_postrun.connect
def _unbind(task_id: str | None = None, **_: Any) -> None:
    token = _tokens.pop(task_id, None) if task_id is not None else None
    if token is not None:
        logs.unbind(token)
