"""The v3 error envelope and the mapping of every failure onto it.

Every error leaves the API as ``{"request_id": ..., "error": {"type": ..., "message": ...}}``
with one of the Nylas v3 types::

    invalid_request_error   400  bad JSON, a bad parameter, an invalid page token
    unauthorized            401  no or wrong API key
    not_found_error         404  unknown grant, message, folder, thread, attachment, route
    method_not_allowed      405  a known path with an unsupported method
    conflict_error          409  a sign-in names an address connected with another server or
                                 username (pipeline.grants.service: the takeover rule); a
                                 draft another change holds, or whose scheduled send started
    request_too_large       413  a body over the configured limit
    rate_limit_error        429  the provider throttled us, or the account's own limits (a
                                 connection slot, a login or operation token) answer later:
                                 Retry-After says when
    api_error               500  a bug (the log has the details, the response never does)
    service_unavailable     503  Postgres or another local service is down
    provider_error          504  the IMAP server could not be reached or answered badly

Messages are short sentences for the person reading them; they never carry a stack trace,
a password or a SQL statement.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.drafts.scheduling import DraftBusy
from pipeline.drafts.server import DraftNotReadBack
from pipeline.drafts.service import SavedNotSendable
from pipeline.errors import (
    ConfigurationError,
    GrantConflict,
    GrantInvalid,
    GrantNotFound,
    ImapAuthError,
    ImapError,
    ImapFolderError,
    ImapThrottledError,
    InvalidRequest,
    NotFound,
    PipelineError,
    RequestError,
    ServiceError,
)
from pipeline.grants.gate import GateFull, SignInTooSlow
from pipeline.limits import RateLimited
from pipeline.outbound.submit import KeyReused, SendRefused
from pipeline.webhooks.errors import ChallengeFailed, InvalidWebhookRequest, WebhookNotFound

log = logging.getLogger(__name__)

MAX_VALIDATION_DETAILS = 5  # problems listed in one message; more are summarized


class ApiError(RequestError):
    """An error with its HTTP status and v3 type; raise it from any endpoint.

    A :class:`~pipeline.errors.RequestError`, so that work the domain runs for the API (an
    IMAP session of :func:`pipeline.grants.interactive.grant_imap`) treats it as the request's
    refusal, not as a broken session.
    """

    def __init__(
        self, status: int, type_: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers or {}


def invalid_request(message: str) -> ApiError:
    """A 400 ``invalid_request_error``."""
    return ApiError(400, "invalid_request_error", message)


def not_found(message: str) -> ApiError:
    """A 404 ``not_found_error``."""
    return ApiError(404, "not_found_error", message)


def rate_limited(message: str, wait_s: float) -> ApiError:
    """A 429 ``rate_limit_error`` with ``Retry-After`` (whole seconds, at least 1)."""
    retry = max(1, math.ceil(wait_s))
    return ApiError(429, "rate_limit_error", message, headers={"Retry-After": str(retry)})


def request_id_of(request: Request) -> str:
    """The id the request-id middleware gave this request (``"unknown"`` outside it)."""
    return str(getattr(request.state, "request_id", "unknown"))


def error_body(request_id: str, type_: str, message: str) -> dict[str, Any]:
    """The v3 error envelope."""
    return {"request_id": request_id, "error": {"type": type_, "message": message}}


def error_response(request: Request, status: int, type_: str, message: str) -> JSONResponse:
    """A JSON error response in the v3 envelope."""
    return JSONResponse(error_body(request_id_of(request), type_, message), status_code=status)


def from_pipeline_error(exc: PipelineError) -> ApiError:
    """Map the engine's exception tree onto HTTP statuses and v3 types."""
    message = str(exc)
    if isinstance(exc, GrantNotFound | WebhookNotFound | NotFound):
        return not_found(message)
    if isinstance(exc, InvalidWebhookRequest | ChallengeFailed | InvalidRequest):
        return invalid_request(message)
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, GateFull):  # a full sign-in gate: at once, never queued
        return ApiError(
            429, "rate_limit_error", message, headers={"Retry-After": str(exc.retry_after_s)}
        )
    if isinstance(exc, SignInTooSlow):
        return ApiError(504, "provider_error", message)
    if isinstance(exc, SavedNotSendable):
        refused = from_pipeline_error(exc.refusal)
        return ApiError(
            refused.status,
            refused.type,
            f"The draft was saved, but cannot be sent as it now is ({refused.message}); its "
            "scheduled send is cancelled.",
        )
    if isinstance(exc, SendRefused):
        return ApiError(exc.status, exc.type, message)
    if isinstance(exc, KeyReused):
        return ApiError(409, "api.invalid_idempotent_request", message)
    if isinstance(exc, DraftNotReadBack):
        return ApiError(502, "provider_error", message)
    if isinstance(exc, DraftBusy):
        return ApiError(409, "conflict_error", message)
    if isinstance(exc, RateLimited):  # no token or connection slot now: retry after the wait
        return rate_limited(message, exc.retry_after_s)
    if isinstance(exc, GrantConflict):
        return ApiError(409, "conflict_error", message)
    if isinstance(exc, GrantInvalid):
        return ApiError(400, "invalid_request_error", message)
    if isinstance(exc, ImapAuthError):
        return ApiError(401, "unauthorized", message)
    if isinstance(exc, ImapThrottledError):
        return ApiError(429, "rate_limit_error", message)
    if isinstance(exc, ImapFolderError):
        return not_found(message)
    if isinstance(exc, ImapError):
        return ApiError(504, "provider_error", message)
    if isinstance(exc, ConfigurationError):
        return invalid_request(message)
    if isinstance(exc, ServiceError):
        return ApiError(503, "service_unavailable", message)
    return ApiError(500, "api_error", "The request failed; the server log has the details.")


def _validation_message(exc: RequestValidationError) -> str:
    problems: list[str] = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return "The request body is not valid JSON."
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body", "query", "path")]
        where = ".".join(loc) or "request"
        if err.get("loc", ("",))[0] == "body" and not loc:
            where = "body"
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    shown = problems[:MAX_VALIDATION_DETAILS]
    more = len(problems) - len(shown)
    return "Invalid request: " + "; ".join(shown) + (f" (and {more} more)" if more else "") + "."


_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found_error",
    405: "method_not_allowed",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    response = error_response(request, exc.status, exc.type, exc.message)
    response.headers.update(exc.headers)
    return response


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(request, 400, "invalid_request_error", _validation_message(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = _STATUS_TYPES.get(exc.status_code, "api_error")
    if exc.status_code == 404:
        message = f"No such endpoint: {request.method} {request.url.path}."
    elif exc.status_code == 405:
        message = f"{request.method} is not supported on {request.url.path}."
    else:
        message = str(exc.detail)
    response = error_response(request, exc.status_code, type_, message)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _pipeline_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PipelineError)
    mapped = from_pipeline_error(exc)
    if mapped.status >= 500:
        log.warning(
            "request failed: %s",
            type(exc).__name__,
            extra={"request_id": request_id_of(request)},
        )
    response = error_response(request, mapped.status, mapped.type, mapped.message)
    response.headers.update(mapped.headers)
    return response


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    # The driver's message can quote SQL and parameters: log the class only.
    log.warning(
        "database error: %s",
        type(exc).__name__,
        extra={"request_id": request_id_of(request)},
    )
    if isinstance(exc, OperationalError):
        return error_response(
            request, 503, "service_unavailable", "The database is unavailable; retry later."
        )
    if isinstance(exc, DataError):  # a value Postgres cannot take: NUL, out of range, ...
        return error_response(
            request,
            400,
            "invalid_request_error",
            "A value in the request cannot be used (for example a NUL character or a "
            "number out of range).",
        )
    return error_response(
        request, 500, "api_error", "The request failed; the server log has the details."
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "unhandled error in %s %s",
        request.method,
        request.url.path,
        exc_info=exc,
        extra={"request_id": request_id_of(request)},
    )
    return error_response(
        request, 500, "api_error", "The request failed; the server log has the details."
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into the v3 envelope."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(PipelineError, _pipeline_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
