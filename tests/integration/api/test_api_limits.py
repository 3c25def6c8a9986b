"""Bodies over the limit, against the real server."""

from __future__ import annotations

import httpx
import pytest
from api_support import ApiServer

pytestmark = pytest.mark.services

FIFTY_MB = 50 * 1024 * 1024


def test_a_50_mb_body_is_refused_with_413(api: ApiServer) -> None:
    body = b'{"provider": "' + b"x" * FIFTY_MB + b'"}'
    with api.http() as http:
        response = http.post(
            "/v3/connect/custom", content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 413
    error = response.json()
    assert error["error"]["type"] == "request_too_large"
    assert error["request_id"] == response.headers["x-request-id"]


def test_no_key_and_wrong_key_are_401_on_the_real_server(api: ApiServer) -> None:
    for key in (None, "not-a-key"):
        with api.http(key=key) as http:
            response = http.get("/v3/grants")
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "unauthorized"
    with httpx.Client(base_url=api.url, timeout=10) as http:
        assert http.get("/openapi.json").status_code == 200
