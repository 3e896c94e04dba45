"""Request and response bodies of the OpenAI-compatible routes (``/v1/chat/completions``, ``/v1/models``).

The request follows OpenAI's Chat Completions body: unknown fields are accepted and ignored, as OpenAI
clients (and their newer SDK versions) expect; known fields are typed strictly, so a wrong JSON type is
a 400 naming the field. A few fields are narrower than OpenAI's, because this service cannot do more:
``n`` is 1, message content is text (a string or ``text`` parts), and roles are ``system``,
``developer``, ``user`` and ``assistant`` (no tool calls). The published schema says all of that, with
this server's message limits and models filled in by :func:`openai_components`.

Responses are OpenAI's ``chat.completion`` / ``chat.completion.chunk`` / ``list`` of ``model`` objects,
plus one extra top-level field ``rag`` (:class:`RagEvidence`): the grounded answer's citations and
passages, its mode and notes, and the request id. The ``[n]`` markers stay in the answer text.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rag_app.answering.program import AnswerMode
from rag_app.core.types import Citation, Passage
from rag_app.server.lm_options import usage_totals
from rag_app.server.logging import request_id_var
from rag_app.server.openapi import SCHEMA_REF
from rag_app.server.schemas import NOT_BLANK, is_blank

UsageSource = Literal["lm", "no_lm", "unknown"]


def _not_blank(value: str) -> str:
    if is_blank(value):
        raise ValueError("is blank")
    return value


class TextPart(BaseModel):
    """One ``{"type": "text", "text": ...}`` part of a message's content."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str = Field(min_length=1, json_schema_extra={"pattern": NOT_BLANK})

    _text_not_blank = field_validator("text")(_not_blank)


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="system/developer messages are kept as system turns of the history."
    )
    content: str | list[TextPart] = Field(
        description="Text, or a list of text parts (joined with newlines); not blank. At most "
        "`max_message_chars` characters in all."
    )
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _content_not_blank(cls, value: str | list[TextPart]) -> str | list[TextPart]:
        if isinstance(value, str):
            return _not_blank(value)
        if not value:
            raise ValueError("has no text parts")
        return value

    def text(self) -> str:
        """The content as one string (text parts joined with newlines)."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = Field(
        None, description="Send a last chunk with `usage` and no choices before `data: [DONE]`."
    )


class ChatCompletionRequest(BaseModel):
    """OpenAI's Chat Completions body. The model is a `site/program` (see `GET /v1/models`); the last
    message must be the user's (400 naming `messages[i].role` otherwise). `temperature`, `top_p` and
    `max_tokens` (or `max_completion_tokens`) are passed to the LM calls of the answer; the other known
    fields are accepted and have no effect (the response's `rag.notes` names them); unknown fields are
    ignored."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "model": "builddaily/chat_bridge",
                    "messages": [{"role": "user", "content": "How do I rotate an API key?"}],
                }
            ]
        },
    )

    model: str = Field(min_length=1, description="A `site/program` id from `GET /v1/models`.")
    messages: list[OpenAIMessage] = Field(min_length=1, description="Oldest first; the last is the user's.")
    stream: bool | None = Field(None, description="Answer as `chat.completion.chunk` events (SSE).")
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=1, description="Only 1 choice is produced.")
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None


#: Known request fields that are accepted but change nothing (named in ``rag.notes`` when set).
IGNORED_FIELDS = (
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
)


class RagEvidence(BaseModel):
    """What grounds the answer: the passages it may cite as `[n]` (n = position + 1 in `passages`), the
    citations it does make, how it was written, degradations, and the request id."""

    request_id: str
    mode: AnswerMode = Field(description="lm, or extractive (quoted from the passages).")
    citations: list[Citation] = Field(default_factory=list)
    passages: list[Passage] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict, description="Milliseconds per stage.")
    usage_source: UsageSource = Field(
        description="Where `usage` comes from: lm (reported by the LM), no_lm (extractive answer: no "
        "tokens), unknown (the LM reported nothing, e.g. a cached reply: zeros)."
    )
    answer: str | None = Field(
        None,
        description="Streams only: the grounded answer. Deltas are the LM's raw text; grounding may drop "
        "unsupported sentences or invented citations afterwards, so this is authoritative.",
    )


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop"] = "stop"


class ChatCompletion(BaseModel):
    id: str = Field(description="`chatcmpl-<request id>`.")
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    rag: RagEvidence


class ModelCard(BaseModel):
    id: str = Field(description="`site/program`.")
    object: Literal["model"] = "model"
    created: int = Field(description="When the site's program file last changed (Unix seconds).")
    owned_by: str = Field(description="The site.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def usage_of(output: Any, tracker: Any) -> tuple[Usage, str]:
    """The response's ``usage`` and where it comes from (see :class:`RagEvidence.usage_source`)."""
    totals = usage_totals(tracker)
    if totals is not None:
        return Usage(**totals), "lm"
    return Usage(), "unknown" if output.mode == "lm" else "no_lm"


def evidence(output: Any, notes: list[str], usage_source: str, **extra: Any) -> RagEvidence:
    """The ``rag`` field for a chat program's output (``notes`` are the route's own, added last)."""
    return RagEvidence(
        request_id=request_id_var.get(),
        mode=output.mode,
        citations=output.citations,
        passages=output.passages,
        notes=[*output.notes, *notes],
        timings=output.timings,
        usage_source=usage_source,  # type: ignore[arg-type]
        **extra,
    )


#: The ``text/event-stream`` body of ``/v1/chat/completions`` with ``stream: true``, for the OpenAPI doc.
CHUNK_STREAM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Server-Sent Events, each `data: JSON` line a `chat.completion.chunk` (the first with "
    "`delta.role`, then `delta.content` pieces, the last with `finish_reason` and the `rag` evidence, "
    "then with `stream_options.include_usage` one with `usage` and no choices), then `data: [DONE]`. "
    'An error after the stream opened is one `data: {"error": {...}}` line. `: ping` comments keep '
    "a silent stream alive.",
    "required": ["data"],
    "properties": {"data": {"type": "string"}},
}


def openai_components(
    max_messages: int, max_message_chars: int, models: list[str]
) -> dict[str, dict[str, Any]]:
    """The request schemas of ``/v1/chat/completions`` with this server's limits and models."""
    request = ChatCompletionRequest.model_json_schema(ref_template=SCHEMA_REF, mode="validation")
    out: dict[str, dict[str, Any]] = request.pop("$defs", {})
    request["properties"]["messages"]["maxItems"] = max_messages
    if models:
        request["properties"]["model"]["enum"] = models
    content = out["OpenAIMessage"]["properties"]["content"]
    for option in content["anyOf"]:
        if option.get("type") == "string":
            option.update(minLength=1, maxLength=max_message_chars, pattern=NOT_BLANK)
        elif option.get("type") == "array":
            option["minItems"] = 1
    out["TextPart"]["properties"]["text"]["maxLength"] = max_message_chars
    out["ChatCompletionRequest"] = request
    return out
