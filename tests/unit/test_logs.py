"""JSON log lines: one event per line, with the ids of what it is about as fields."""

from __future__ import annotations

import json
import logging

from pipeline import logs


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("pipeline.sync", logging.WARNING, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def test_a_json_line_carries_bound_ids_and_ids_given_by_the_call() -> None:
    formatter = logs.JsonFormatter()
    with logs.bind(grant_id="g-1", folder_id=None):
        line = formatter.format(record("batch of %d stored", 5, folder_id="f-9"))
    outside = json.loads(formatter.format(record("after")))
    event = json.loads(line)
    assert "\n" not in line
    assert event["message"] == "batch of 5 stored"
    assert event["level"] == "WARNING"
    assert event["logger"] == "pipeline.sync"
    assert (event["grant_id"], event["folder_id"]) == ("g-1", "f-9")
    assert "grant_id" not in outside  # the binding ended with its block


def test_a_traceback_stays_in_the_line_of_its_event() -> None:
    try:
        raise ValueError("broken\nacross lines")
    except ValueError:
        import sys

        rec = record("failed")
        rec.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(rec)
    assert len(line.splitlines()) == 1
    assert "ValueError: broken" in json.loads(line)["exc"]
