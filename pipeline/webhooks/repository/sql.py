"""SQL pieces every part of the webhook repository shares.

Times that decide what is due (leases, retries) come from the database clock
(``clock_timestamp()``), so workers on hosts with skewed clocks agree.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, literal_column

DELIVERABLE = ("active", "failing")
ONE_SECOND: ColumnElement[Any] = literal_column("interval '1 second'")


def due_in(seconds: Any) -> Any:
    """``clock_timestamp() + seconds`` as a SQL expression."""
    return func.clock_timestamp() + ONE_SECOND * seconds
