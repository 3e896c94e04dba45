"""Operations routes: ``/healthz`` (the process is up), ``/readyz`` (can serve), ``/metrics`` (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from rag_app.server.metrics import CONTENT_TYPE
from rag_app.server.routes.shared import State
from rag_app.server.schemas import ERROR_RESPONSES, HealthResponse, ReadyResponse

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=HealthResponse, summary="The process is up")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="Can serve requests: models loaded and warmed, indexes present (the LM state is reported)",
    description="200 once every request can be served; an unreachable LM does not make the server "
    "unready (answers are then extractive): `lm` and `answers` in the body say which.",
    responses={503: {"model": ReadyResponse, "description": "Not ready yet"}},
)
async def readyz(state: State) -> Response:
    if state.loaded:
        await asyncio.to_thread(state.check_lm)
    ready = state.ready
    state.metrics.ready.set(1 if ready else 0)
    lm, answers = state.lm_status
    body = ReadyResponse(ready=ready, lm=lm, answers=answers, checks=state.checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}
    }
    | {code: ERROR_RESPONSES[code] for code in (401, 403)},
)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
