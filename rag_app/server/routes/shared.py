"""Steps every route shares: its app's state, the site/program/key checks, strict body reading, and
running a program under the stage gates."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from rag_app.core.errors import InputError
from rag_app.server.auth import KeyInfo
from rag_app.server.errors import ApiError, validation_error
from rag_app.server.gates import RequestScope
from rag_app.server.program_rules import ProgramInputRules, check_program_rules
from rag_app.server.schemas import parse_body
from rag_app.server.state import ServerState

M = TypeVar("M", bound=BaseModel)


async def get_state(request: Request) -> ServerState:
    """The :class:`ServerState` of the app serving ``request`` (a FastAPI dependency; async, so it
    runs on the event loop rather than in a thread)."""
    return request.app.state.rag


#: A route parameter that receives the app's :class:`ServerState`.
State = Annotated[ServerState, Depends(get_state)]


def request_scope(request: Request) -> RequestScope:
    """The request's deadline, overload and stage-time record (set by the request-context middleware)."""
    return request.scope["state"]["rag_scope"]


def api_key(request: Request) -> KeyInfo | None:
    """The request's checked API key; None when auth is off."""
    return request.scope.get("state", {}).get("api_key")


def check_site(state: ServerState, site: str, *, field: str | None = None) -> str:
    try:
        state.settings.check_sites([site])
    except InputError as exc:
        raise ApiError(404, "unknown_site", str(exc), field=field) from None
    return site


def check_program(state: ServerState, site: str, program: str, *, field: str | None = None) -> None:
    known = state.programs_index.get(site, [])
    if program not in known:
        raise ApiError(
            404,
            "unknown_program",
            f"site {site!r} has no program {program!r}; its programs: {', '.join(known) or 'none'}",
            field=field,
        )


def authorize(request: Request, site: str) -> KeyInfo | None:
    """403 unless the request's key may use ``site``."""
    key = api_key(request)
    if key is not None and not key.allows(site):
        raise ApiError(
            403,
            "forbidden",
            f"this API key ({key.name!r}) may not use site {site!r}; it is scoped to: {', '.join(key.sites)}",
        )
    return key


async def run_program(request: Request, site: str, name: str, inputs: BaseModel) -> Any:
    """Run a program in a worker thread under admission and per-stage limits; record its timings."""
    state: ServerState = request.app.state.rag
    program = await asyncio.to_thread(state.program, site, name)
    queued: dict[str, float] = {}
    output = await state.runner.run("request", program.run, inputs, timings=queued)
    scope = request_scope(request)
    if scope.overloaded:  # a stage turned the program away and it degraded instead: still a 503
        raise scope.overloaded[0]
    extra = dict(queued)
    if "lm_ms" in scope.stage_ms:
        extra["lm_ms"] = scope.stage_ms["lm_ms"]
    timings = dict(getattr(output, "timings", {}) or {})
    for key, value in extra.items():
        if key not in timings:
            timings[key] = value
            with contextlib.suppress(Exception):
                output.timings[key] = value
    state.metrics.observe_timings(timings)
    request.scope["state"]["timings"] = timings
    return output


async def read_body(request: Request, model: type[M]) -> M:
    """The request body as ``model``, strictly typed (:func:`~rag_app.server.schemas.parse_body`); 422
    naming the first bad field otherwise. Routes read their bodies here rather than through FastAPI's
    (lax) body parameters, so ``stream: 0`` or ``limit: true`` are refused as the schema says."""
    try:
        return parse_body(model, await request.body())
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False), skip_first=False) from None


async def read_program_input(request: Request, model: type[M], rules: ProgramInputRules | None) -> M:
    """A program's Input from the body: strict types, then the server's rules for it (enums)."""
    inputs = await read_body(request, model)
    errors = check_program_rules(inputs, rules)
    if errors:
        raise validation_error(errors, skip_first=False)
    return inputs
