"""``GET /api/openapi.json``: the API description, built once per app from its routes (``web.openapi``)."""

from __future__ import annotations

from flask import Blueprint, current_app

from web.api import api_route
from web.openapi import build_document

bp = Blueprint("docs", __name__, url_prefix="/api")


@api_route(bp, "/openapi.json", methods=["GET"], auth=None, summary="This API description (OpenAPI 3.1)")
def openapi():
    cache = current_app.extensions.setdefault("latentlab_openapi", {})
    if "document" not in cache:
        cache["document"] = build_document(current_app)
    return cache["document"]
