"""``/healthz`` and ``/readyz``: the API's liveness and readiness, without an API key.

``/healthz`` answers 200 as long as the process serves requests (a liveness probe restarts it
otherwise). ``/readyz`` answers 200 only when Postgres and Redis answer too, each bounded by
:data:`READY_CHECK_TIMEOUT_S`, so a load balancer stops sending requests an API could not serve.
Bodies say which dependency fails, not why: the reason (host names, driver messages) goes to the
log, not to whoever can reach the port.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from pipeline import health
from pipeline.api.deps import ApiState

log = logging.getLogger(__name__)

READY_CHECK_TIMEOUT_S = 2.0  # per dependency: two of them stay under a 5 s probe timeout

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Readiness: Postgres and Redis answer within their bounds (run in the threadpool)."""
    state: ApiState = request.app.state.api
    settings = state.settings
    checks = [health.postgres(settings.require_database_url(), READY_CHECK_TIMEOUT_S)]
    if settings.redis_url:
        checks.append(health.redis_ping(settings.redis_url, READY_CHECK_TIMEOUT_S))
    for check in checks:
        if not check.ok:
            log.warning("readiness: %s failing: %s", check.name, check.detail)
    ready = all(c.ok for c in checks)
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": {c.name: c.ok for c in checks}},
        status_code=200 if ready else 503,
    )
