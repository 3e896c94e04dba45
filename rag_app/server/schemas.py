"""Request and response bodies of the HTTP API (pydantic; they are also the OpenAPI schemas).

Request bodies are parsed with :func:`parse_body` (pydantic *strict* JSON mode), so a value is accepted
only when its JSON type is the one the OpenAPI schema names: ``stream: 0``, ``limit: true`` or
``date_from: 0`` are 422s, not silently coerced. Rules that depend on the server's settings (message and
history limits, the configured sites) are added to the published schema by the route modules; rules JSON
Schema cannot state (one date before another) are documented in the schema's ``description``. The
server's extra rules for site programs' inputs are in :mod:`rag_app.server.program_rules`.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rag_app.answering.program import AnswerMode
from rag_app.core.settings import SearchMode
from rag_app.core.types import Citation, Passage, SearchFilters

#: The not-blank rule as a regex: "at least one character that is not white space", with white space
#: spelled out as exactly the characters ``str.isspace()`` accepts (what ``str.strip()`` removes). An
#: explicit class, because ``\s`` differs between Python, pydantic's Rust engine and JSON Schema's ECMA
#: regexes, and the published pattern must reject exactly what the programs' ``not_blank`` rejects.
NOT_BLANK = (
    "[^\\u0009-\\u000d\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
)
_NOT_BLANK_RE = re.compile(NOT_BLANK)

M = TypeVar("M", bound=BaseModel)


def is_blank(text: str) -> bool:
    """True when ``text`` is only white space, by the same rule as the published schema pattern."""
    return _NOT_BLANK_RE.search(text) is None


def _not_blank(value: str) -> str:
    if is_blank(value):
        raise ValueError("is blank")
    return value


def _number(text: str) -> int | float:
    """A JSON number with a fraction or exponent; integral ones (``10.0``) become ints, because JSON
    Schema counts them as integers, and strict validation would refuse them for an ``integer`` field."""
    value = float(text)
    return int(value) if value.is_integer() else value


def parse_body(model: type[M], raw: bytes) -> M:
    """``raw`` JSON as ``model`` in strict mode: JSON types must match the schema (no ``0`` for ``false``).

    Strict JSON mode still reads ISO dates from strings (JSON has no date type), but not from numbers.
    Raises pydantic's ValidationError (locations start at the body's top level; malformed JSON is
    reported by pydantic too, from the original bytes).
    """
    try:
        normalized: bytes | str = json.dumps(json.loads(raw or b"null", parse_float=_number))
    except (ValueError, RecursionError):
        normalized = raw or b"null"
    return model.model_validate_json(normalized, strict=True)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system"]
    content: str = Field(
        min_length=1,
        description="The message text; not blank. At most `max_message_chars` characters (the schema's "
        "maxLength shows the server's setting).",
        json_schema_extra={"pattern": NOT_BLANK},
    )

    _content_not_blank = field_validator("content")(_not_blank)


class ChatRequest(BaseModel):
    """A conversation; the last message is the user's question, earlier ones are history.

    Rules beyond the JSON types: at most `max_history_turns` earlier messages before the question
    (`maxItems`), each message at most `max_message_chars` characters (`maxLength`), and the last
    message's role is `user` (checked by the server: 422 naming `messages[i].role`).
    """

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
    citations: list[Citation] = Field(
        default_factory=list,
        description="[n] markers resolved to passages; start_char/end_char frame the quote in the source "
        "document when it is verbatim (else the whole passage), page_start/page_end its PDF pages.",
    )
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
    query: str = Field(
        min_length=1,
        description="Not blank; at most `max_query_chars` characters (maxLength; 400 `invalid_input` "
        "otherwise, as on every route that runs a query).",
        json_schema_extra={"pattern": NOT_BLANK},
    )
    k: int | None = Field(
        None, ge=1, le=1000, description="Candidates retrieved (default settings.retrieve_k)."
    )
    top_n: int | None = Field(
        None, ge=1, le=100, description="Passages kept after rerank (default rerank_top_n)."
    )
    mode: SearchMode | None = Field(None, description="vector, fts or hybrid (default settings.search_mode).")
    filters: SearchFilters | None = Field(
        None, description="Prefilters; `date_from` must not be after `date_to` (checked by the server)."
    )

    _query_not_blank = field_validator("query")(_not_blank)


class SearchResponse(BaseModel):
    query: str
    site: str
    collection: str | None = None
    mode: str
    reranked: bool = Field(description="False when the reranker is unavailable and retrieval order was kept.")
    reranker: str = Field("", description="Which reranker scored the passages.")
    passages: list[Passage] = Field(
        description="Best first; retrieval_score/retrieval_rank and rerank_score/relevance on each, and "
        "where each lies in its document: start_char/end_char (offsets in the document's extracted text, "
        "null for tables indexed before offsets existed) and page_start/page_end (PDF pages, else null)."
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
    """Ready means "can serve requests"; the LM is optional (without it answers are extractive)."""

    ready: bool
    lm: Literal["reachable", "unreachable", "not_configured"] = Field(
        description="The LM's state (re-probed at most every 5 s)."
    )
    answers: AnswerMode = Field(description="How answers are written now: by the LM, or extractively.")
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
