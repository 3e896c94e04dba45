"""``POST /v1/chat-bridge``: a conversation -> the site's ``chat_bridge`` program -> a grounded answer
(JSON, or Server-Sent Events with ``stream: true``, see :mod:`rag_app.server.routes.chat_stream`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from rag_app.server.errors import ApiError, validation_error
from rag_app.server.openapi import SCHEMA_REF, json_body
from rag_app.server.routes.chat_stream import SSE_SCHEMA, chat_payload, stream_chat
from rag_app.server.routes.feedback import record_answer
from rag_app.server.routes.shared import State, authorize, check_program, check_site, read_body, run_program
from rag_app.server.schemas import ERROR_RESPONSES, ChatRequest, ChatResponse
from rag_app.server.state import ServerState

#: The site program that answers ``/v1/chat-bridge``.
CHAT_PROGRAM = "chat_bridge"

router = APIRouter(tags=["chat"])


def chat_components(state: ServerState) -> dict[str, dict[str, Any]]:
    """The chat body's OpenAPI schemas, with this server's message limits and chat sites."""
    settings = state.settings
    chat = ChatRequest.model_json_schema(ref_template=SCHEMA_REF, mode="validation")
    out: dict[str, dict[str, Any]] = chat.pop("$defs", {})
    chat["properties"]["messages"]["maxItems"] = settings.max_history_turns + 1
    out["ChatMessage"]["properties"]["content"]["maxLength"] = settings.max_message_chars
    chat_sites = sorted(site for site, names in state.programs_index.items() if CHAT_PROGRAM in names)
    if chat_sites:
        chat["properties"]["site"]["enum"] = chat_sites
    out["ChatRequest"] = chat
    return out


def chat_inputs(state: ServerState, site: str, body: ChatRequest) -> BaseModel:
    """Check the conversation and map it to the chat program's Input (message + history)."""
    from rag_app.answering.registry import program_class

    settings = state.settings
    messages = body.messages
    last = len(messages) - 1
    if last > settings.max_history_turns:
        raise ApiError(
            422,
            "too_many_messages",
            f"messages: {len(messages)} messages, over the limit of {settings.max_history_turns + 1} "
            f"(max_history_turns={settings.max_history_turns} earlier turns plus the question)",
            field="messages",
        )
    for i, message in enumerate(messages):
        if len(message.content) > settings.max_message_chars:
            raise ApiError(
                422,
                "message_too_long",
                f"messages[{i}].content: {len(message.content)} characters, over the limit of "
                f"{settings.max_message_chars} (max_message_chars)",
                field=f"messages[{i}].content",
            )
    if messages[last].role != "user":
        raise ApiError(
            422,
            "invalid_request",
            f"messages[{last}].role: the last message must be the user's, got {messages[last].role!r}",
            field=f"messages[{last}].role",
        )
    cls = program_class(settings, site, CHAT_PROGRAM)
    payload = {"message": messages[last].content, "history": [m.model_dump() for m in messages[:last]]}

    def rename(name: str) -> str:
        if name.startswith("message"):
            return f"messages[{last}].content" if name == "message" else name
        return name.replace("history[", "messages[", 1)

    try:
        return cls.Input.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False), skip_first=False, rename=rename) from None


@router.post(
    "/v1/chat-bridge",
    response_model=ChatResponse,
    responses={
        **ERROR_RESPONSES,
        200: {
            "description": "The answer as JSON, or with `stream: true` as Server-Sent Events",
            "content": {
                "text/event-stream": {"schema": SSE_SCHEMA},
            },
        },
    },
    summary="Answer the last user message of a conversation (JSON, or SSE with stream=true)",
    openapi_extra=json_body("ChatRequest"),
)
async def chat_bridge(request: Request, state: State) -> Response:
    """Answer the last user message, grounded in the site's passages, with inline [n] citations.

    With `stream: true` the answer comes as Server-Sent Events: `passages` (as soon as retrieval and
    reranking finish), then `token` events (the LM's answer text as it is written; in extractive
    mode the whole answer in one event), then `done` with `answer`, `citations`, `mode`, `timings`,
    `notes` and `request_id`. Grounding runs after the LM and may drop invalid citations or replace
    the answer with "Not found in the sources.", so `done.answer` is authoritative: render tokens
    live, then replace them with `done.answer`. Errors before the stream opens keep their HTTP
    status (503 overloaded, 504 deadline); later ones arrive as `event: error` (the JSON error
    body) and end the stream.

    Every answer is logged under its `request_id`, which `POST /v1/feedback` rates.
    """
    body = await read_body(request, ChatRequest)
    site = check_site(state, body.site, field="site")
    authorize(request, site)
    check_program(state, site, CHAT_PROGRAM, field="site")
    inputs = chat_inputs(state, site, body)
    if body.stream:
        return await stream_chat(request, site, CHAT_PROGRAM, inputs)
    output = await run_program(request, site, CHAT_PROGRAM, inputs)
    await record_answer(request, site, CHAT_PROGRAM, inputs, output)
    return JSONResponse(chat_payload(output))
