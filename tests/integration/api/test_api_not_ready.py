"""/readyz when Redis does not answer: 503 naming it, while /healthz stays 200."""

from __future__ import annotations

import pytest
from api_support import ApiServer

from pipeline.config import Settings
from pipeline.dev.ports import free_port

pytestmark = pytest.mark.services


@pytest.fixture
def api_settings(api_settings: Settings) -> Settings:
    """The API's settings with a Redis URL where nothing listens."""
    return api_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})


def test_readyz_is_503_naming_the_dependency_that_does_not_answer(api: ApiServer) -> None:
    with api.http(key=None) as http:
        assert http.get("/healthz").status_code == 200  # alive: no restart for a peer's outage
        ready = http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "checks": {"postgres": True, "redis": False}}
    assert "127.0.0.1" not in ready.text  # the reason goes to the log, not to the network
