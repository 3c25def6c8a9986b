"""The list calls served by plain Starlette routes, matched before FastAPI's own.

A client walks ``GET /messages`` and ``GET /threads`` more than anything else, and for each of
them FastAPI's route machinery (the included router's effective route, the request handler
with its telemetry and endpoint context, two exit stacks, and solving the dependencies: the
API key's and the path's ``grant_id``) was about a tenth of the API process's CPU per page.
Those endpoints already take ``request`` and read their query once
(:func:`pipeline.api.deps.json_page`), so what FastAPI did for them is two things, done here
in a few lines with the very same functions: the API key checked by
:func:`~pipeline.api.auth.require_api_key` with the credentials of the same ``HTTPBearer``,
then the endpoint called with the path's ``grant_id``.

The FastAPI routes stay (``/openapi.json`` documents them, their parameters and their
security); a :func:`lean_route` registered first answers the same path instead. Errors go
through the app's exception handlers as from any route (Starlette's ``request_response``),
and a method other than GET gets the same 405 (a Starlette route would also answer HEAD: this
one does not, as the FastAPI route does not).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from starlette.routing import Route

from pipeline.api.auth import bearer, require_api_key

ListEndpoint = Callable[[Request, str], Awaitable[Response]]


class LeanRoute(Route):
    """A route of :func:`lean_route` (a plain Starlette route)."""


def lean_route(path: str, endpoint: ListEndpoint) -> LeanRoute:
    """A GET route for ``path`` (with a ``{grant_id}``) answered by ``endpoint(request,
    grant_id)`` behind the API key, left out of the OpenAPI document."""

    async def answer(request: Request) -> Response:
        await require_api_key(request, await bearer(request))
        return await endpoint(request, request.path_params["grant_id"])

    route = LeanRoute(
        path, answer, methods=["GET"], name=endpoint.__name__, include_in_schema=False
    )
    route.methods = {"GET"}  # Starlette adds HEAD; the FastAPI route answers it with a 405
    return route


def install(app: FastAPI, prefix: str, routes: dict[str, ListEndpoint]) -> None:
    """Register a lean route for each ``path -> endpoint`` of ``routes`` under ``prefix``;
    call it before the routers that hold the same paths, so that these match first."""
    for path, endpoint in routes.items():
        app.router.routes.append(lean_route(prefix + path, endpoint))
