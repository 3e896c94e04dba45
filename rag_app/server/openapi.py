"""The OpenAPI document: request bodies the routes read themselves, declared by schema reference.

Routes read their JSON bodies strictly (:func:`~rag_app.server.routes.shared.read_body`) instead of
through FastAPI's body parameters, so FastAPI cannot see those bodies: each route declares its body as
a ``$ref`` to ``components/schemas/NAME`` (:func:`json_body`), and the route modules supply those
schemas, with this server's limits and sites filled in; :func:`install_components` merges them into
FastAPI's generated document.

The document also declares the API's bearer scheme (``Authorization: Bearer <key>``, the
``securitySchemes`` entry :data:`BEARER_SCHEME`), on every operation that the request-context
middleware asks a key for, so ``/docs`` has an Authorize button and generated clients send the key.
While the server has no keys (auth off, loopback only), the key is declared optional there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from rag_app.server.middleware import _needs_key  # the one rule for which paths take a key

#: Where request-body schemas live in the OpenAPI document (see :func:`json_body`).
SCHEMA_REF = "#/components/schemas/{model}"

#: The name of the bearer scheme in ``components/securitySchemes``.
BEARER_SCHEME = "bearerAuth"
_BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key from `rag-app keys add`, sent as `Authorization: Bearer <key>`.",
}


def json_body(component: str, description: str = "") -> dict[str, Any]:
    """``openapi_extra`` for a required JSON body whose schema is ``components/schemas/{component}``."""
    body: dict[str, Any] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": SCHEMA_REF.format(model=component)}}},
    }
    if description:
        body["description"] = description
    return {"requestBody": body}


def declare_bearer(document: dict[str, Any], needs_key: Callable[[str], bool], required: bool) -> None:
    """Declare the bearer scheme, and on each operation whose path ``needs_key``, that it takes the
    key: as a requirement, or (``required`` False: the server has no keys yet) as an option."""
    document.setdefault("components", {}).setdefault("securitySchemes", {})[BEARER_SCHEME] = _BEARER
    security: list[dict[str, list[str]]] = [{BEARER_SCHEME: []}] if required else [{BEARER_SCHEME: []}, {}]
    for path, operations in document.get("paths", {}).items():
        if not needs_key(path):
            continue
        for operation in operations.values():
            if isinstance(operation, dict):
                operation["security"] = security


def install_components(
    app: FastAPI,
    components: dict[str, dict[str, Any]],
    *,
    auth_required: Callable[[], bool] | None = None,
) -> None:
    """Make ``app``'s document FastAPI's own plus ``components`` (refused if a name means two schemas),
    with the bearer scheme declared (:func:`declare_bearer`); ``auth_required`` says whether the server
    requires keys now (read on each request for the document, as keys may be created while it runs)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in components.items():
                if name in schemas and schemas[name] != schema:
                    raise RuntimeError(f"two different OpenAPI schemas named {name!r}")
                schemas[name] = schema
        required = True if auth_required is None else auth_required()
        declare_bearer(app.openapi_schema, _needs_key, required)  # type: ignore[arg-type]
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the document
