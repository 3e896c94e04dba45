"""Request and response bodies of the HTTP API (pydantic; they are also the OpenAPI schemas)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rag_app.programs import AnswerMode
from rag_app.settings import SearchMode
from rag_app.types import Citation, Passage, SearchFilters


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system"]
    content: str


class ChatRequest(BaseModel):
    """A conversation; the last message is the user's question, earlier ones are history."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "messages": [{"role": "user", "content": "How do I rotate an API key?"}],
                    "site": "builddaily",
                }
            ]
        },
    )

    messages: list[ChatMessage] = Field(
        min_length=1, description="Oldest first; the last one must be the user's."
    )
    site: str = Field("builddaily", description="Which site's chat-bridge program answers.")
    stream: bool = Field(
        False,
        description="Answer as Server-Sent Events: passages, then LM tokens as generated, then done "
        "(whose answer is authoritative: grounding may drop invented citations).",
    )


class ChatResponse(BaseModel):
    answer: str
    citations: list[Citation] = Field(default_factory=list)
    passages: list[Passage] = Field(default_factory=list)
    mode: AnswerMode
    timings: dict[str, float] = Field(default_factory=dict, description="Milliseconds per stage.")
    notes: list[str] = Field(default_factory=list, description="Degradations (e.g. reranker fallback).")
    request_id: str


class SearchRequest(BaseModel):
    """Retrieve the top ``k`` passages and rerank them to the best ``top_n`` (no LM)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"site": "builddaily", "query": "configure SSO with Okta", "k": 20, "top_n": 5}]
        },
    )

    site: str
    collection: str | None = Field(None, description="One collection of the site; default all of them.")
    query: str = Field(min_length=1)
    k: int | None = Field(
        None, ge=1, le=1000, description="Candidates retrieved (default settings.retrieve_k)."
    )
    top_n: int | None = Field(
        None, ge=1, le=100, description="Passages kept after rerank (default rerank_top_n)."
    )
    mode: SearchMode | None = Field(None, description="vector, fts or hybrid (default settings.search_mode).")
    filters: SearchFilters | None = None


class SearchResponse(BaseModel):
    query: str
    site: str
    collection: str | None = None
    mode: str
    reranked: bool = Field(description="False when the reranker is unavailable and retrieval order was kept.")
    reranker: str = Field("", description="Which reranker scored the passages.")
    passages: list[Passage] = Field(
        description="Best first; retrieval_score/retrieval_rank and rerank_score/relevance on each."
    )
    timings: dict[str, float] = Field(default_factory=dict, description="Milliseconds per stage.")
    notes: list[str] = Field(default_factory=list)
    request_id: str


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_request, deadline_exceeded.")
    message: str
    field: str | None = Field(None, description="The request field at fault, e.g. messages[0].content.")
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    checks: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ProgramsResponse(BaseModel):
    programs: dict[str, list[str]]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Bad input",
        401: "Missing or invalid API key",
        403: "Key not allowed for this site",
        404: "Unknown site or program",
        413: "Body too large",
        422: "Validation error (names the field)",
        503: "Overloaded (Retry-After) or a dependency is unavailable",
        504: "Deadline exceeded",
    }.items()
}
