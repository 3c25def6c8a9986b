"""Limits every process shares through Redis, so a provider sees one well-behaved client.

Three kinds, one module each::

    buckets   how fast: login and operation tokens per account and per provider
              (RateLimiter; a wait, or a turn reserved ahead for the listener)
    backoff   when not at all: an account, or its whole provider, backs off after throttling
              answers (Backoffs, which RateLimiter extends: no token while backing off)
    slots     how many at once: the connections an account may have open, shared by priority
              (IDLE listener > INTERACTIVE API request > BULK sync) under the provider's cap

Callers import from here; :mod:`pipeline.imap.connections` (the sessions that hold slots) and
the listener build on these, never the other way round. Every key is named in
:mod:`pipeline.redis`; a Redis error surfaces as :class:`pipeline.errors.ServiceError` (the
listener's asyncio slots raise Redis's own errors and fail open).
"""

from pipeline.limits.backoff import Backoff, Backoffs, scope_of
from pipeline.limits.buckets import (
    Limits,
    LoginTurn,
    RateLimited,
    RateLimiter,
    capacity,
    default_limits,
)
from pipeline.limits.slots import (
    AsyncConnectionSlots,
    ConnectionSlots,
    Priority,
    Shares,
    idle_allowed,
    idle_holder,
    new_holder,
    priority_of,
    shares,
)

__all__ = [
    "AsyncConnectionSlots",
    "Backoff",
    "Backoffs",
    "ConnectionSlots",
    "Limits",
    "LoginTurn",
    "Priority",
    "RateLimited",
    "RateLimiter",
    "Shares",
    "capacity",
    "default_limits",
    "idle_allowed",
    "idle_holder",
    "new_holder",
    "priority_of",
    "scope_of",
    "shares",
]
