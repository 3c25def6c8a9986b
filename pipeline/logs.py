"""Log output of every role: one line per event, as text or as JSON (``IMAP_PIPELINE_LOG_FORMAT``).

A JSON line carries ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and, when known,
the ids of what the event is about as fields of their own: ``grant_id``, ``folder_id``,
``task_id``, ``task_name``. Ids come from the call (``log.info(..., extra={"grant_id": g})``) or
from :func:`bind`, which a Celery task's start sets for everything it logs. A traceback goes into
``exc`` of the same line, so a line is always one event. Messages never carry secrets (they are
written that way), and nothing here adds any.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
ID_FIELDS = ("grant_id", "folder_id", "task_id", "task_name")
MAX_MESSAGE_CHARS = 16_384  # one line stays one line a log shipper takes whole

_bound: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "imap_pipeline_log_ids", default=None
)


@contextmanager
def bind(**ids: str | None) -> Iterator[None]:
    """Every line logged inside the block carries these ids (those that are not None)."""
    current = dict(_bound.get() or {})
    current.update({k: v for k, v in ids.items() if v is not None})
    token = _bound.set(current)
    try:
        yield
    finally:
        _bound.reset(token)


def bind_ids(**ids: str | None) -> contextvars.Token[dict[str, str] | None]:
    """Like :func:`bind`, for code that starts and ends in two places (signal handlers)."""
    current = dict(_bound.get() or {})
    current.update({k: v for k, v in ids.items() if v is not None})
    return _bound.set(current)


def unbind(token: contextvars.Token[dict[str, str] | None]) -> None:
    """End what :func:`bind_ids` started."""
    _bound.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage()[:MAX_MESSAGE_CHARS],
        }
        for name, value in (_bound.get() or {}).items():
            line[name] = value
        for name in ID_FIELDS:
            extra = getattr(record, name, None)
            if extra not in (None, "", "???"):  # Celery's placeholder outside a task
                line[name] = str(extra)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``log_format`` (``text`` or ``json``)."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(level: int | str, log_format: str) -> None:
    """Log to stderr in ``log_format``, one line per event (replaces earlier handlers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
