"""Request and response bodies of the HTTP API (pydantic; they are also the OpenAPI schemas).

Request bodies are parsed with :func:`parse_body` (pydantic *strict* JSON mode), so a value is accepted
only when its JSON type is the one the OpenAPI schema names: ``stream: 0``, ``limit: true`` or
``date_from: 0`` are 422s, not silently coerced. Rules that depend on the server's settings (message and
history limits, the configured sites) are added to the published schema by ``app.py``; rules JSON Schema
cannot state (one date before another) are documented in the schema's ``description``.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
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
    "[^\\u0009-\\u000d\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029"
    "\\u202f\\u205f\\u3000]"
)
_NOT_BLANK_RE = re.compile(NOT_BLANK)

#: GICS sectors of the PaidDaily sample ticker pages (``data/paiddaily/tickers``; a test keeps them in
#: sync). The ``tickers`` program's ``sector`` is one of these, so the schema can say which are valid.
SECTORS: tuple[str, ...] = (
    "Communication Services",
    "Consumer Discretionary",
    "Consumer Staples",
    "Energy",
    "Financials",
    "Health Care",
    "Industrials",
    "Information Technology",
    "Materials",
    "Real Estate",
    "Utilities",
)

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
    query: str = Field(
        min_length=1,
        description="Not blank; at most `max_query_chars` characters (maxLength).",
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


# ================================================================================ program input rules


@dataclass(frozen=True)
class ProgramInputRules:
    """What the server adds to a site program's ``Input`` schema (the programs live in ``programs/``).

    ``enums`` restricts a string field to listed values (the server checks it before the program runs);
    ``at_least_one`` names fields of which one must be non-empty (list with a non-blank item, or non-blank
    text; the program's model validator checks it, the schema states it as ``anyOf``); ``notes`` documents
    cross-field rules JSON Schema cannot express (the program's model validators check them).
    """

    enums: dict[str, tuple[str, ...]] = field(default_factory=dict)
    at_least_one: tuple[str, ...] = ()
    notes: str = ""


_DATE_ORDER = "Model rule: `date_from` must not be after `date_to` (422 otherwise)."

#: Rules per ``(site, program)`` of the bundled programs; programs without an entry get the generic
#: rules only (strict JSON types; a string field with ``min_length`` is not blank).
PROGRAM_INPUT_RULES: dict[tuple[str, str], ProgramInputRules] = {
    ("paiddaily", "tickers"): ProgramInputRules(enums={"sector": SECTORS}, notes=_DATE_ORDER),
    ("paiddaily", "catalysts"): ProgramInputRules(notes=_DATE_ORDER),
    ("sagedaily", "reading"): ProgramInputRules(
        at_least_one=("cards", "transits", "question"),
        notes="Model rules: at least one non-blank card, transit or question (the `anyOf`); at most "
        "10 cards and transits together (422 otherwise).",
    ),
}


def program_input_schema(
    model: type[BaseModel], rules: ProgramInputRules | None, ref_template: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(schema, $defs)`` of a program's Input as the server enforces it: ``model``'s own JSON schema
    plus the not-blank pattern on required-text fields, ``rules``' enums, ``anyOf`` and notes."""
    schema = copy.deepcopy(model.model_json_schema(ref_template=ref_template, mode="validation"))
    defs = schema.pop("$defs", {})
    props: dict[str, Any] = schema.get("properties", {})
    for prop in props.values():
        if prop.get("type") == "string" and prop.get("minLength", 0) >= 1:
            prop["pattern"] = NOT_BLANK  # the programs' ``not_blank`` validators go with ``min_length``
    rules = rules or ProgramInputRules()
    for name, values in rules.enums.items():
        prop = props[name]
        branches = prop.get("anyOf", [prop])
        for branch in branches:
            if branch.get("type") == "string":
                branch["enum"] = list(values)
        prop["description"] = f"{prop.get('description', '')} One of: {', '.join(values)}.".strip()
    if rules.at_least_one:
        any_of = []
        for name in rules.at_least_one:
            if props[name].get("type") == "array":
                check: dict[str, Any] = {"contains": {"type": "string", "pattern": NOT_BLANK}}
            else:
                check = {"type": "string", "pattern": NOT_BLANK}
            any_of.append({"required": [name], "properties": {name: check}})
        schema["anyOf"] = any_of
    if rules.notes:
        schema["description"] = f"{schema.get('description', '')}\n\n{rules.notes}".strip()
    return schema, defs


def check_program_rules(inputs: BaseModel, rules: ProgramInputRules | None) -> list[dict[str, Any]]:
    """The server-enforced part of ``rules`` (enums), as pydantic-style error dicts (empty when fine)."""
    errors = []
    for name, values in (rules.enums if rules else {}).items():
        value = getattr(inputs, name, None)
        if value is not None and value not in values:
            errors.append(
                {"loc": (name,), "msg": f"{value!r} is not one of: {', '.join(values)}", "type": "enum"}
            )
    return errors

