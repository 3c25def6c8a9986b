"""The API's envelope, auth, limits and errors, without any service (no route here hits the DB)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from pipeline.api import create_app
from pipeline.config import Settings

with warnings.catch_warnings():
    # Starlette 1.x asks for the `httpx2` package at import; the httpx client works the same.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

KEY = "unit-test-key"
LIMIT = 1024


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(
        database_url="postgresql://nobody@127.0.0.1:1/unused",  # never connected to here
        api_keys=SecretStr(f"{KEY}, another-key "),
    )
    app = create_app(settings, enqueue_sync=lambda grant_id, provider: None, max_body_bytes=LIMIT)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response: object, status: int, type_: str) -> dict[str, object]:
    from httpx import Response

    assert isinstance(response, Response)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"request_id", "error"}
    assert body["error"]["type"] == type_
    assert body["error"]["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body  # type: ignore[no-any-return]


def test_api_key_required(client: TestClient) -> None:
    assert_error(client.get("/v3/connectors"), 401, "unauthorized")
    assert_error(client.get("/v3/connectors", headers=auth("wrong")), 401, "unauthorized")
    assert_error(
        client.get("/v3/connectors", headers={"Authorization": f"Basic {KEY}"}),
        401,
        "unauthorized",
    )
    ok = client.get("/v3/connectors", headers=auth())
    assert ok.status_code == 200
    assert client.get("/v3/connectors", headers=auth("another-key")).status_code == 200
    body = ok.json()
    assert body["data"] == [
        {"provider": p, "settings": {}, "scope": []} for p in ("imap", "icloud", "yahoo")
    ]
    assert body["next_cursor"] is None
    assert body["request_id"] == ok.headers["x-request-id"]


def test_no_configured_keys_refuses_everything() -> None:
    app = create_app(Settings(database_url="postgresql://nobody@127.0.0.1:1/unused"))
    with TestClient(app) as c:
        body = assert_error(c.get("/v3/connectors", headers=auth()), 401, "unauthorized")
    assert "IMAP_PIPELINE_API_KEYS" in str(body["error"])


def test_openapi_and_docs_are_served(client: TestClient) -> None:
    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    for path in (
        "/v3/connect/custom",
        "/v3/grants",
        "/v3/grants/{grant_id}/messages",
        "/v3/grants/{grant_id}/messages/{message_id}",
        "/v3/grants/{grant_id}/folders",
        "/v3/grants/{grant_id}/threads",
        "/v3/grants/{grant_id}/attachments/{attachment_id}/download",
    ):
        assert path in paths
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_error(client.get("/v3/nothing-here", headers=auth()), 404, "not_found_error")
    assert_error(client.delete("/v3/connectors", headers=auth()), 405, "method_not_allowed")


def test_malformed_json_and_invalid_bodies_are_400(client: TestClient) -> None:
    headers = {**auth(), "Content-Type": "application/json"}
    body = assert_error(
        client.post("/v3/connectors", content=b'{"provider": ', headers=headers),
        400,
        "invalid_request_error",
    )
    assert "not valid JSON" in str(body["error"])
    assert_error(
        client.post("/v3/connectors", json={"nope": 1}, headers=auth()),
        400,
        "invalid_request_error",
    )
    assert_error(
        client.post("/v3/connectors", json={"provider": "google"}, headers=auth()),
        400,
        "invalid_request_error",
    )
    assert_error(
        client.post("/v3/providers/detect", params={"email": "x"}, headers=auth()),
        400,
        "invalid_request_error",
    )


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    big = b'{"provider": "' + b"x" * (LIMIT * 2) + b'"}'
    response = client.post(
        "/v3/connectors", content=big, headers={**auth(), "Content-Type": "application/json"}
    )
    assert_error(response, 413, "request_too_large")


def test_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"provider": "'
        for _ in range(4):
            yield b"x" * LIMIT
        yield b'"}'

    response = client.post(
        "/v3/connectors", content=chunks(), headers={**auth(), "Content-Type": "application/json"}
    )
    assert_error(response, 413, "request_too_large")


def test_database_down_is_503_without_details(client: TestClient) -> None:
    body = assert_error(client.get("/v3/grants", headers=auth()), 503, "service_unavailable")
    assert "nobody" not in str(body)
    assert "127.0.0.1" not in str(body)


def test_provider_detection(client: TestClient) -> None:
    r = client.post("/v3/providers/detect", params={"email": "me@icloud.com"}, headers=auth())
    assert r.status_code == 200
    assert r.json()["data"]["type"] == "icloud"
    assert r.json()["data"]["settings"]["smtp_port"] == 587


def test_nul_in_the_url_is_400(client: TestClient) -> None:
    body = assert_error(
        client.get("/v3/connectors?subject=a%00b", headers=auth()), 400, "invalid_request_error"
    )
    assert "NUL" in str(body["error"])
