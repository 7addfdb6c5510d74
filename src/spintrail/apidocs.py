"""The API documentation page (``/docs``): Swagger UI over ``/openapi.json``, working offline.

Swagger UI's files come from a package on the registry, ``fastapi-offline`` (Swagger UI 5, which reads the
OpenAPI 3.1 description FastAPI writes; ``swagger-ui-bundle`` ships Swagger UI 4, which cannot), and are
served by spintrail under ``/docs/assets``; the page and the few lines that start Swagger UI
(``static/api-docs.js``) are spintrail's, so the page needs no other site and no inline script (the
Content-Security-Policy allows neither).
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>spintrail API</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="/static/api-docs.js"></script>
</body>
</html>
"""


def mount(app: FastAPI) -> None:
    """Serve the documentation page and Swagger UI's files (FastAPI's own page loads them from a CDN)."""
    from importlib.resources import files

    assets = files("fastapi_offline") / "static"
    page = _PAGE.format(assets=ASSETS_PATH, openapi=app.openapi_url or "/openapi.json")

    async def docs_page(request: Request) -> Response:
        return HTMLResponse(page)

    app.add_route(DOCS_PATH, docs_page, methods=["GET"], include_in_schema=False)
    app.mount(ASSETS_PATH, StaticFiles(directory=str(assets)), name="docs-assets")
