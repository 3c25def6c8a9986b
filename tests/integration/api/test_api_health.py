"""The API's probes (/healthz, /readyz) and its offline /docs page, on a real server."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import pytest
from api_support import ApiServer

pytestmark = pytest.mark.services


def test_healthz_and_readyz_answer_without_an_api_key(api: ApiServer) -> None:
    with api.http(key=None) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"postgres": True, "redis": True}}


def test_docs_page_loads_everything_from_the_api_itself(api: ApiServer) -> None:
    with api.http(key=None) as http:
        page = http.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
        assert urls, page.text
        for url in urls:
            # no CDN: every asset and the spec come from this server
            assert not re.match(r"^(https?:)?//", url), url
            asset = http.get(urljoin(f"{api.url}/docs", url))
            assert asset.status_code == 200, url
            assert asset.content, url
    assert any(u.endswith("swagger-ui-bundle.js") for u in urls)
    assert "validatorUrl" in page.text  # the online validator badge is off
