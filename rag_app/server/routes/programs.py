"""``/v1/programs``: the programs a key may call, one typed route per site program (so ``/docs`` shows
each program's Input and Output), and a generic route for any program by name.

Every answer carries the request's ``request_id`` next to the program's Output fields, and is logged
under it for ``POST /v1/feedback`` (:mod:`rag_app.server.routes.feedback`)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from rag_app.server.openapi import SCHEMA_REF, json_body
from rag_app.server.program_rules import (
    PROGRAM_INPUT_RULES,
    ProgramInputRules,
    program_input_schema,
)
from rag_app.server.routes.feedback import record_answer, with_request_id
from rag_app.server.routes.shared import (
    State,
    api_key,
    authorize,
    check_program,
    check_site,
    read_program_input,
    run_program,
)
from rag_app.server.schemas import ERROR_RESPONSES, ProgramsResponse
from rag_app.server.state import ServerState

log = logging.getLogger("rag_app.server")

#: The typed routes' 200 body: the program's Output plus the request id (OpenAPI 3.1 allows keywords
#: beside ``$ref``; merged into FastAPI's response schema for the Output model).
REQUEST_ID_RESPONSE: dict[str, Any] = {
    "responses": {
        "200": {
            "content": {
                "application/json": {
                    "schema": {
                        "properties": {
                            "request_id": {
                                "type": "string",
                                "description": "This answer's id: send it to POST /v1/feedback to rate it.",
                            }
                        },
                        "required": ["request_id"],
                    }
                }
            }
        }
    }
}


async def answer(request: Request, site: str, program: str, inputs: BaseModel) -> JSONResponse:
    """Run the program, log its answer for feedback, and send its Output with the request id."""
    output = await run_program(request, site, program, inputs)
    await record_answer(request, site, program, inputs, output)
    return JSONResponse(with_request_id(output.model_dump(mode="json"), request))


async def list_programs(request: Request, state: State) -> ProgramsResponse:
    key = api_key(request)
    index = {site: names for site, names in state.programs_index.items() if key is None or key.allows(site)}
    return ProgramsResponse(programs=index)


async def run_any_program(site: str, program: str, request: Request, state: State) -> Response:
    check_site(state, site)
    authorize(request, site)
    check_program(state, site, program)
    cls = await asyncio.to_thread(lambda: type(state.program(site, program)))
    inputs = await read_program_input(request, cls.Input, PROGRAM_INPUT_RULES.get((site, program)))
    return await answer(request, site, program, inputs)


def _program_endpoint(site: str, name: str, model: type[BaseModel], rules: ProgramInputRules | None) -> Any:
    """The typed route's handler, bound to its program, Input model and the server's rules for it."""

    async def endpoint(request: Request) -> Any:
        authorize(request, site)
        inputs = await read_program_input(request, model, rules)
        return await answer(request, site, name, inputs)

    endpoint.__name__ = f"program_{site}_{name}"
    return endpoint


def _add_typed_routes(router: APIRouter, state: ServerState) -> dict[str, dict[str, Any]]:
    """One typed route per program found now; returns their Input schemas (OpenAPI components): each
    program's own plus the server's rules for it (:data:`~rag_app.server.program_rules.PROGRAM_INPUT_RULES`),
    which is what the route enforces. Also records the programs in ``state.programs_index``."""
    from rag_app.answering.registry import list_programs as find_programs
    from rag_app.answering.registry import program_class

    components: dict[str, dict[str, Any]] = {}
    try:
        index = find_programs(state.settings)
    except Exception as exc:  # the generic route still answers; startup reports the problem
        log.warning("cannot list site programs for typed routes: %s: %s", type(exc).__name__, exc)
        return components
    state.programs_index = index
    for site, names in index.items():
        for name in names:
            cls = program_class(state.settings, site, name)
            rules = PROGRAM_INPUT_RULES.get((site, name))
            schema, defs = program_input_schema(cls.Input, rules, SCHEMA_REF)
            component = f"{site}.{name}.Input"
            for def_name, def_schema in defs.items():
                if components.setdefault(def_name, def_schema) != def_schema:
                    raise RuntimeError(f"two different program input schemas named {def_name!r}")
            components[component] = schema
            router.add_api_route(
                f"/v1/programs/{site}/{name}",
                _program_endpoint(site, name, cls.Input, rules),
                methods=["POST"],
                response_model=cls.Output,
                responses=ERROR_RESPONSES,
                name=f"{site}.{name}",
                summary=f"{site} / {name}",
                description=inspect.cleandoc(cls.__doc__ or ""),
                openapi_extra=json_body(component) | REQUEST_ID_RESPONSE,
            )
    return components


def programs_router(state: ServerState) -> tuple[APIRouter, dict[str, dict[str, Any]]]:
    """The programs routes for the programs ``state``'s settings name, and their OpenAPI components.

    The typed routes come before the generic one, so their paths match them first.
    """
    router = APIRouter(tags=["programs"])
    router.add_api_route(
        "/v1/programs",
        list_programs,
        methods=["GET"],
        response_model=ProgramsResponse,
        name="programs",
        summary="Site programs this API key may call",
    )
    components = _add_typed_routes(router, state)
    router.add_api_route(
        "/v1/programs/{site}/{program}",
        run_any_program,
        methods=["POST"],
        responses=ERROR_RESPONSES,
        summary="Run a site program (typed routes above document each program's Input and Output)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "The program's Input (see its typed route)",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    )
    return router, components
