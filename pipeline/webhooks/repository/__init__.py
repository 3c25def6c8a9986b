"""Every query of the webhook domain. Functions take the caller's session and never commit.

Callers use the package (``repository.claim_due(session, ...)``); its parts, one per concern:
:mod:`~pipeline.webhooks.repository.destinations` (destinations and their health),
:mod:`~pipeline.webhooks.repository.dispatch` (the outbox and its fan-out into deliveries),
:mod:`~pipeline.webhooks.repository.deliveries` (drain leases, claiming what is due in order,
attempts, reads for operators) and :mod:`~pipeline.webhooks.repository.sql` (the database
clock and the deliverable statuses they share).

Times that decide what is due (leases, retries) come from the database clock
(``clock_timestamp()``), so workers on hosts with skewed clocks agree.
"""

from pipeline.webhooks.repository.deliveries import (
    ClaimedDelivery,
    DeliveryView,
    LeasedDestination,
    acquire_lease,
    attempts_for,
    claim_due,
    deliveries_for,
    destinations_with_due_work,
    has_due_work,
    mark_delivered,
    mark_given_up,
    record_attempts,
    release_lease,
    schedule_retries,
    seconds_until_next_due,
    unclaim,
)
from pipeline.webhooks.repository.destinations import (
    abandon_pending,
    add_destination,
    delete_destination,
    fail_overdue_destinations,
    find_destination_by_url,
    get_destination,
    list_destinations,
    mark_failing,
    mark_healthy,
    set_status,
    touch_destination,
)
from pipeline.webhooks.repository.dispatch import (
    DISPATCH_LOCK_KEY,
    PendingEvent,
    Subscriber,
    deliverable_destinations,
    has_pending_events,
    insert_deliveries,
    insert_event,
    live_leases,
    lock_dispatcher,
    mark_dispatched,
    pending_events,
    purge_dispatched,
)
from pipeline.webhooks.repository.sql import (
    DELIVERABLE,
)

__all__ = [
    "DELIVERABLE",
    "DISPATCH_LOCK_KEY",
    "ClaimedDelivery",
    "DeliveryView",
    "LeasedDestination",
    "PendingEvent",
    "Subscriber",
    "abandon_pending",
    "acquire_lease",
    "add_destination",
    "attempts_for",
    "claim_due",
    "delete_destination",
    "deliverable_destinations",
    "deliveries_for",
    "destinations_with_due_work",
    "fail_overdue_destinations",
    "find_destination_by_url",
    "get_destination",
    "has_due_work",
    "has_pending_events",
    "insert_deliveries",
    "insert_event",
    "list_destinations",
    "live_leases",
    "lock_dispatcher",
    "mark_delivered",
    "mark_dispatched",
    "mark_failing",
    "mark_given_up",
    "mark_healthy",
    "pending_events",
    "purge_dispatched",
    "record_attempts",
    "release_lease",
    "schedule_retries",
    "seconds_until_next_due",
    "set_status",
    "touch_destination",
    "unclaim",
]
