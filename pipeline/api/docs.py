"""``/docs``: Swagger UI served from this process, so the page works without internet access.

FastAPI's default page loads Swagger UI from a CDN (a blank page offline or behind a strict
proxy). The assets come from the ``swagger-ui-bundle-v2`` package (Apache-2.0, Swagger UI 5,
which renders the OpenAPI 3.1 that FastAPI writes) and are served under ``/docs/assets``.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"


def install(app: FastAPI, openapi_url: str) -> None:
    """Serve the Swagger UI page at ``/docs`` and its assets under ``/docs/assets``."""
    app.mount(ASSETS_URL, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - docs",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
            # the online validator badge would call validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None},
        )
