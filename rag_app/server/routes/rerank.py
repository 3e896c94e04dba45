"""``POST /v1/rerank``: the runtime's cross-encoder as a service, in Cohere's (and Infinity's) shape.

``{model?, query, documents: [str | {text}], top_n?, return_documents?}`` ->
``{id, results: [{index, relevance_score, document?: {text}}], meta}``, best first. Clients written for
Cohere's rerank API work unchanged, e.g. LiteLLM:
``litellm.rerank(model="cohere/rag", query=..., documents=[...], api_base="<server>/v1/rerank",
api_key="<key>")`` (LiteLLM's Cohere provider posts to ``api_base`` as is when it ends in ``/v1/rerank``).

The documents are scored by the same reranker the search pipelines use (``state.runtime.reranker``,
through the ``rerank`` stage gate, with its score cache and length-sorted batches), under the same
admission limit, deadline, metrics and access log as every route. ``relevance_score`` is
``sigmoid(logit)``: it orders one query's documents, it is not a calibrated probability and not
comparable across models. ``model`` is accepted and not used to choose: the served reranker is named in
``meta.model``. Without reranker weights (the fallback reranker) the route answers 503
``reranker_unavailable`` rather than invent scores. A remote reranker (``reranker_backend=remote``) is
asked on every request, its circuit breaker deciding whether a request goes (a server that failed a
moment ago may answer now); when it fails, or its circuit is open, the answer is the same 503 with the
server's own reason and the settings to check. Errors keep the API's own ``{"error": {...}}`` shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rag_app.models.remote_http import RemoteRefusedError, RemoteServerError
from rag_app.models.rerank.base import relevance_from_logits
from rag_app.server.errors import ApiError
from rag_app.server.logging import request_id_var
from rag_app.server.openapi import SCHEMA_REF, json_body
from rag_app.server.routes.shared import State, read_body, request_scope
from rag_app.server.schemas import ERROR_RESPONSES, NOT_BLANK, is_blank
from rag_app.server.state import ServerState

#: The most documents one request may rerank (the body limit, ``max_body_bytes``, applies too).
MAX_DOCUMENTS = 1000

router = APIRouter(tags=["rerank"])


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: str = Field(description="At most `max_message_chars` characters; other keys are ignored.")


class RerankRequest(BaseModel):
    """Cohere's rerank body. Documents are strings or `{"text": ...}` objects; blank ones score too."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "query": "rotate an API key",
                    "documents": ["Keys are rotated in Settings > API keys.", {"text": "Pricing plans"}],
                    "top_n": 1,
                    "return_documents": True,
                }
            ]
        },
    )

    model: str | None = Field(None, description="Accepted, not used: the served reranker is `meta.model`.")
    query: str = Field(
        min_length=1,
        description="Not blank; at most `max_query_chars` characters.",
        json_schema_extra={"pattern": NOT_BLANK},
    )
    documents: list[str | RerankDocument] = Field(min_length=1, max_length=MAX_DOCUMENTS)
    top_n: int | None = Field(None, ge=1, description="Results returned, best first (default all).")
    return_documents: bool | None = Field(None, description="Echo each result's text (default false).")

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        if is_blank(value):
            raise ValueError("is blank")
        return value

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(description="Position of the document in the request.")
    relevance_score: float = Field(description="sigmoid(logit), 0-1; orders this query's documents only.")
    document: RerankResultDocument | None = None


class RerankResponse(BaseModel):
    id: str = Field(description="The request id.")
    results: list[RerankResult]
    meta: dict[str, Any] = Field(
        description="`api_version`, `billed_units`, and this server's `model` (the reranker), "
        "`reranker` (its description), `timings` (ms) and `request_id`."
    )


def rerank_components(state: ServerState) -> dict[str, dict[str, Any]]:
    """The rerank body's OpenAPI schemas, with this server's query and document limits."""
    settings = state.settings
    schema = RerankRequest.model_json_schema(ref_template=SCHEMA_REF, mode="validation")
    out: dict[str, dict[str, Any]] = schema.pop("$defs", {})
    schema["properties"]["query"]["maxLength"] = settings.max_query_chars
    for option in schema["properties"]["documents"]["items"]["anyOf"]:
        if option.get("type") == "string":
            option["maxLength"] = settings.max_message_chars
    out["RerankDocument"]["properties"]["text"]["maxLength"] = settings.max_message_chars
    out["RerankRequest"] = schema
    return out


def check_lengths(state: ServerState, body: RerankRequest) -> list[str]:
    """The document texts; 422 naming the first one over ``max_message_chars`` or a query over
    ``max_query_chars``."""
    settings = state.settings
    if len(body.query) > settings.max_query_chars:
        raise ApiError(
            422,
            "query_too_long",
            f"query: {len(body.query)} characters, over the limit of {settings.max_query_chars} "
            "(max_query_chars)",
            field="query",
        )
    texts = body.texts()
    for i, text in enumerate(texts):
        if len(text) > settings.max_message_chars:
            where = f"documents[{i}]" if isinstance(body.documents[i], str) else f"documents[{i}].text"
            raise ApiError(
                422,
                "document_too_long",
                f"{where}: {len(text)} characters, over the limit of {settings.max_message_chars} "
                "(max_message_chars)",
                field=where,
            )
    return texts


def remote_failure_message(exc: RemoteServerError) -> str:
    """What the 503 says when the remote reranker failed: the server's reason (which names the URL and
    what happened), then the settings that govern it (a refusal already names the one to fix)."""
    if isinstance(exc, RemoteRefusedError):
        return f"the remote reranker could not score the documents: {exc}"
    return (
        f"the remote reranker could not score the documents: {exc}. Check the server RAG_RERANKER_URL "
        "names; after RAG_REMOTE_CIRCUIT_FAILURES consecutive failures calls fail fast for "
        "RAG_REMOTE_CIRCUIT_RESET_S seconds, then resume on their own; /v1/search still answers in "
        "retrieval order when reranker_on_missing=fallback"
    )


@router.post(
    "/v1/rerank",
    response_model=RerankResponse,
    response_model_exclude_none=True,
    responses=ERROR_RESPONSES,
    summary="Score documents against a query with the cross-encoder (Cohere/Infinity rerank shape)",
    openapi_extra=json_body("RerankRequest"),
)
async def rerank(request: Request, state: State) -> RerankResponse:
    body = await read_body(request, RerankRequest)
    texts = check_lengths(state, body)
    reranker = state.reranker
    remote = reranker.backend == "remote"
    if not remote and not reranker.available:
        raise ApiError(
            503,
            "reranker_unavailable",
            f"no reranker is loaded, so documents cannot be scored: {reranker.describe()}. Install the "
            "weights (reranker_model) and restart; /v1/search still answers in retrieval order",
        )
    query = body.query
    timings: dict[str, float] = {}
    try:
        logits = await state.runner.run("request", reranker.score, query, texts, timings=timings)
    except RemoteServerError as exc:
        if not remote:
            raise
        raise ApiError(503, "reranker_unavailable", remote_failure_message(exc)) from exc
    rscope = request_scope(request)
    if rscope.overloaded:
        raise rscope.overloaded[0]
    timings.update(rscope.stage_ms)
    state.metrics.observe_timings(timings)
    request.scope["state"]["timings"] = timings
    relevance = relevance_from_logits(logits)
    order = sorted(range(len(texts)), key=lambda i: (-float(logits[i]), i))
    if body.top_n is not None:
        order = order[: body.top_n]
    results = [
        RerankResult(
            index=i,
            relevance_score=float(relevance[i]),
            document=RerankResultDocument(text=texts[i]) if body.return_documents else None,
        )
        for i in order
    ]
    request_id = request_id_var.get()
    return RerankResponse(
        id=request_id,
        results=results,
        meta={
            "api_version": {"version": "1"},
            "billed_units": {"search_units": 1},
            "model": reranker.model_id,
            "reranker": reranker.describe(),
            "timings": timings,
            "request_id": request_id,
        },
    )
