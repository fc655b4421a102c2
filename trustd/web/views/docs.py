"""The API's own documentation: Swagger UI over `/openapi.json`, served from this process.

FastAPI's default `/docs` loads Swagger UI from a public CDN: blank on an air-gapped
network, where this kind of service runs, and a third-party script in an admin tool. The
assets come from the `swagger-ui-bundle-v2` package instead (Swagger UI 5: version 4 cannot
read the OpenAPI 3.1 document FastAPI writes), and the page has no inline script, so it
keeps the UI's strict Content-Security-Policy (`script-src 'self'`).
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from trustd.api.deps import Exemption, exempt
from trustd.web.rendering import STATIC, secure_headers

ASSETS = Path(swagger_ui_bundle.swagger_ui_path)
ASSETS_URL = "/docs/assets"

router = APIRouter(include_in_schema=False, dependencies=[exempt(Exemption.PUBLIC)])

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>trustd API</title>
<link rel="icon" href="/favicon.ico">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="/ui/static/docs.js"></script>
</body>
</html>
"""


@router.get("/docs")
def docs() -> HTMLResponse:
    """Swagger UI for this server's OpenAPI document."""
    return HTMLResponse(_PAGE.format(assets=ASSETS_URL), headers=secure_headers())


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    return FileResponse(STATIC / "favicon.ico", media_type="image/x-icon")
