"""Smoke: the server starts and answers."""

from __future__ import annotations

import pytest
from api_support import ApiServer

pytestmark = pytest.mark.services


def test_smoke(api: ApiServer) -> None:
    with api.http() as http:
        r = http.get("/v3/grants")
    assert r.status_code == 200, r.text
