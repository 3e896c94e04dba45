"""``POST /v1/search``: retrieve and rerank only (no LM), both scores on every passage.

The query's rules have one home each: the request schema (blank, JSON types) answers 422, and the
library's own check (:func:`rag_app.models.embeddings.base.check_query`, e.g. over ``max_query_chars``)
raises :class:`~rag_app.core.errors.InputError`, which :func:`rag_app.server.errors.to_api_error`
maps to 400 ``invalid_input``, as on every other route that runs a query.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from rag_app.models.rerank.base import unavailable_note
from rag_app.server.errors import ApiError
from rag_app.server.logging import request_id_var
from rag_app.server.openapi import SCHEMA_REF, json_body
from rag_app.server.routes.shared import State, authorize, check_site, read_body, request_scope
from rag_app.server.schemas import ERROR_RESPONSES, SearchRequest, SearchResponse
from rag_app.server.state import ServerState

router = APIRouter(tags=["search"])


def search_components(state: ServerState) -> dict[str, dict[str, Any]]:
    """The search body's OpenAPI schemas, with this server's query limit and sites."""
    settings = state.settings
    search = SearchRequest.model_json_schema(ref_template=SCHEMA_REF, mode="validation")
    out: dict[str, dict[str, Any]] = search.pop("$defs", {})
    search["properties"]["query"]["maxLength"] = settings.max_query_chars
    search["properties"]["site"]["enum"] = sorted(settings.sites)
    out["SearchRequest"] = search
    return out


@router.post(
    "/v1/search",
    response_model=SearchResponse,
    responses=ERROR_RESPONSES,
    summary="Retrieve the top k passages and rerank them to the best top_n (no LM)",
    openapi_extra=json_body("SearchRequest"),
)
async def search(request: Request, state: State) -> SearchResponse:
    settings = state.settings
    body = await read_body(request, SearchRequest)
    site = check_site(state, body.site, field="site")
    authorize(request, site)
    if body.collection is not None and body.collection not in settings.sites[site]:
        raise ApiError(
            404,
            "unknown_collection",
            f"site {site!r} has no collection {body.collection!r}; its collections: "
            f"{', '.join(settings.sites[site])}",
            field="collection",
        )
    query = body.query.strip()  # not blank: the schema refused that; the length is the library's rule
    pipeline = await asyncio.to_thread(state.pipeline, site, body.collection)
    k = body.k
    top_n = body.top_n if body.top_n is not None else settings.rerank_top_n
    if k is not None:
        top_n = min(top_n, k)
    queued: dict[str, float] = {}
    pred = await state.runner.run(
        "request",
        pipeline,
        query=query,
        k=k,
        top_n=top_n,
        filters=body.filters,
        mode=body.mode,
        timings=queued,
    )
    rscope = request_scope(request)
    if rscope.overloaded:
        raise rscope.overloaded[0]
    timings = {**pred.timings, **queued}
    state.metrics.observe_timings(timings)
    request.scope["state"]["timings"] = timings
    describe = state.reranker.describe()
    note = None if pred.reranked else unavailable_note(state.reranker)
    notes = [note] if note else []
    return SearchResponse(
        query=query,
        site=site,
        collection=body.collection,
        mode=str(getattr(pred, "mode", None) or body.mode or settings.search_mode),
        reranked=bool(pred.reranked),
        reranker=str(describe),
        passages=list(pred.passages),
        timings=timings,
        notes=notes,
        request_id=request_id_var.get(),
    )
