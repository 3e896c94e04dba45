"""The OpenAPI document: request bodies the routes read themselves, declared by schema reference.

Routes read their JSON bodies strictly (:func:`~rag_app.server.routes.shared.read_body`) instead of
through FastAPI's body parameters, so FastAPI cannot see those bodies: each route declares its body as
a ``$ref`` to ``components/schemas/NAME`` (:func:`json_body`), and the route modules supply those
schemas, with this server's limits and sites filled in; :func:`install_components` merges them into
FastAPI's generated document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

#: Where request-body schemas live in the OpenAPI document (see :func:`json_body`).
SCHEMA_REF = "#/components/schemas/{model}"


def json_body(component: str, description: str = "") -> dict[str, Any]:
    """``openapi_extra`` for a required JSON body whose schema is ``components/schemas/{component}``."""
    body: dict[str, Any] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": SCHEMA_REF.format(model=component)}}},
    }
    if description:
        body["description"] = description
    return {"requestBody": body}


def install_components(app: FastAPI, components: dict[str, dict[str, Any]]) -> None:
    """Make ``app``'s document FastAPI's own plus ``components`` (refused if a name means two schemas)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in components.items():
                if name in schemas and schemas[name] != schema:
                    raise RuntimeError(f"two different OpenAPI schemas named {name!r}")
                schemas[name] = schema
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the document
