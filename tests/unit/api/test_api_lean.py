"""The lean list routes (pipeline.api.lean) answer exactly as the FastAPI routes they stand in
for: the same status, headers and body for every request that reaches no data (no key, a wrong
key, another method, HEAD, the database down), and the OpenAPI document is unchanged."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from pipeline.api import create_app
from pipeline.api.lean import LeanRoute
from pipeline.config import Settings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

KEY = "unit-test-key"
GRANT = "0b6a3b5e-8a52-4c39-9f7e-2d1c5e9b7a10"
PATHS = (f"/v3/grants/{GRANT}/messages", f"/v3/grants/{GRANT}/threads")


def _app(*, lean: bool) -> FastAPI:
    settings = Settings(
        database_url="postgresql://nobody@127.0.0.1:1/unused",  # refused at once: a 503
        api_keys=SecretStr(KEY),
    )
    app = create_app(settings, enqueue_sync=lambda grant_id, provider: None)
    if not lean:
        app.router.routes[:] = [r for r in app.router.routes if not isinstance(r, LeanRoute)]
    return app


@pytest.fixture
def clients() -> Iterator[tuple[TestClient, TestClient]]:
    with (
        TestClient(_app(lean=True), raise_server_exceptions=False) as lean,
        TestClient(_app(lean=False), raise_server_exceptions=False) as plain,
    ):
        yield lean, plain


REQUESTS = [
    ("GET", {}),
    ("GET", {"Authorization": "Bearer wrong"}),
    ("GET", {"Authorization": f"Basic {KEY}"}),
    ("GET", {"Authorization": "Bearer"}),
    ("GET", {"Authorization": f"bearer {KEY}"}),  # accepted: the 503 of the database
    ("GET", {"Authorization": f"Bearer {KEY}"}),
    ("HEAD", {"Authorization": f"Bearer {KEY}"}),
    ("POST", {"Authorization": f"Bearer {KEY}"}),
    ("DELETE", {}),
]


def _answer(client: TestClient, method: str, path: str, headers: dict[str, str]) -> object:
    response = client.request(method, path + "?limit=5&in=INBOX", headers=headers)
    kept = {k: v for k, v in response.headers.items() if k != "x-request-id"}
    body = response.json() if response.content else None
    if isinstance(body, dict):
        assert body.pop("request_id") == response.headers["x-request-id"]
    return response.status_code, kept, body


@pytest.mark.parametrize(("method", "headers"), REQUESTS)
@pytest.mark.parametrize("path", PATHS)
def test_lean_routes_answer_as_fastapi_routes(
    clients: tuple[TestClient, TestClient], method: str, headers: dict[str, str], path: str
) -> None:
    lean, plain = clients
    assert _answer(lean, method, path, headers) == _answer(plain, method, path, headers)


def test_the_lists_are_matched_by_the_lean_routes_first() -> None:
    app = _app(lean=True)
    for path in PATHS:
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
        first = next(r for r in app.router.routes if r.matches(scope)[0].name == "FULL")
        assert isinstance(first, LeanRoute), path


def test_openapi_document_is_unchanged() -> None:
    lean, plain = _app(lean=True), _app(lean=False)
    assert lean.openapi() == plain.openapi()
    listed = lean.openapi()["paths"]["/v3/grants/{grant_id}/messages"]["get"]
    assert {p["name"] for p in listed["parameters"]} >= {"grant_id", "limit", "in", "unread"}
    assert listed["security"]
