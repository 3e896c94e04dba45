"""OpenAI-compatible chat: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/models/{id}``.

A thin route over the same runtime, keys, stage gates, deadlines, metrics and logs as
``/v1/chat-bridge``: a *model* is a site's chat program (``builddaily/chat_bridge``), the messages map
to its message and history exactly as the chat bridge maps them
(:func:`~rag_app.server.routes.chat.chat_inputs`), and the grounded answer keeps its evidence: the
``[n]`` markers stay in the text, citations and passages travel in the extra ``rag`` field. Any OpenAI
SDK works against it (``base_url=<server>/v1``, ``api_key=<rag key>``); errors on these routes have
OpenAI's shape (:mod:`rag_app.server.openai_errors`), so the SDKs raise the right exception and retry
503s after ``Retry-After``. ``stream: true`` is :mod:`rag_app.server.routes.openai_stream`.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from rag_app.server.errors import ApiError, validation_error
from rag_app.server.lm_options import lm_call_scope
from rag_app.server.logging import request_id_var
from rag_app.server.openai_errors import OPENAI_ERROR_RESPONSES
from rag_app.server.openai_schemas import (
    CHUNK_STREAM_SCHEMA,
    IGNORED_FIELDS,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ModelCard,
    ModelList,
    evidence,
    openai_components,
    usage_of,
)
from rag_app.server.openapi import json_body
from rag_app.server.routes.chat import CHAT_PROGRAM, chat_inputs
from rag_app.server.routes.feedback import record_answer
from rag_app.server.routes.openai_stream import stream_completion
from rag_app.server.routes.shared import State, api_key, run_program
from rag_app.server.schemas import ChatMessage, ChatRequest, parse_body
from rag_app.server.state import ServerState

router = APIRouter(tags=["openai"])


# ============================================================================================ models


def served_models(state: ServerState) -> list[tuple[str, str]]:
    """``(site, program)`` of every conversation program this server serves (its chat programs)."""
    index = state.programs_index
    return [(site, CHAT_PROGRAM) for site in sorted(index) if CHAT_PROGRAM in index[site]]


def model_card(state: ServerState, site: str, program: str) -> ModelCard:
    path = state.settings.programs_dir / f"{site}.py"
    created = int(path.stat().st_mtime) if path.is_file() else 0
    return ModelCard(id=f"{site}/{program}", created=created, owned_by=site)


def visible_models(request: Request, state: ServerState) -> list[tuple[str, str]]:
    """The served models whose site the request's key may use (all of them when auth is off)."""
    key = api_key(request)
    return [(site, name) for site, name in served_models(state) if key is None or key.allows(site)]


def resolve_model(request: Request, state: ServerState, model: str) -> tuple[str, str]:
    """``(site, program)`` for a model id: 404 ``model_not_found`` unless served, 403 when the key
    may not use its site."""
    site, _, program = model.partition("/")
    if (site, program) not in served_models(state):
        known = ", ".join(f"{s}/{p}" for s, p in visible_models(request, state)) or "none"
        raise ApiError(
            404,
            "model_not_found",
            f"the model {model!r} does not exist; models served to this key: {known} (GET /v1/models)",
            field="model",
        )
    key = api_key(request)
    if key is not None and not key.allows(site):
        raise ApiError(
            403,
            "forbidden",
            f"this API key ({key.name!r}) may not use site {site!r} (model {model!r}); it is scoped "
            f"to: {', '.join(key.sites)}",
            field="model",
        )
    return site, program


def openai_chat_components(state: ServerState) -> dict[str, dict[str, Any]]:
    """The chat-completion body's OpenAPI schemas, with this server's limits and models."""
    settings = state.settings
    models = [f"{site}/{name}" for site, name in served_models(state)]
    return openai_components(settings.max_history_turns + 1, settings.max_message_chars, models)


@router.get(
    "/v1/models",
    response_model=ModelList,
    responses=OPENAI_ERROR_RESPONSES,
    summary="The models (site chat programs) this key may use, in OpenAI's list format",
)
async def list_models(request: Request, state: State) -> ModelList:
    return ModelList(data=[model_card(state, s, p) for s, p in visible_models(request, state)])


@router.get(
    "/v1/models/{model:path}",
    response_model=ModelCard,
    responses=OPENAI_ERROR_RESPONSES,
    summary="One model (`site/program`), in OpenAI's format",
)
async def get_model(model: str, request: Request, state: State) -> ModelCard:
    site, program = resolve_model(request, state, model)
    return model_card(state, site, program)


# ====================================================================================== completions


async def read_completion_request(request: Request) -> ChatCompletionRequest:
    """The body, strictly typed; 400 naming the first bad field (OpenAI answers invalid requests 400)."""
    try:
        return parse_body(ChatCompletionRequest, await request.body())
    except ValidationError as exc:
        error = validation_error(exc.errors(include_url=False), skip_first=False)
        error.status = 400
        raise error from None


def conversation_inputs(state: ServerState, site: str, body: ChatCompletionRequest) -> Any:
    """The chat program's Input for the messages, by the chat bridge's own mapping and limits
    (``developer`` turns count as ``system``; text parts are joined with newlines); 400 naming the
    message at fault."""
    last = len(body.messages) - 1
    if body.messages[last].role != "user":
        raise ApiError(
            400,
            "invalid_request",
            f"messages[{last}].role: the last message must be the user's, got {body.messages[last].role!r}",
            field=f"messages[{last}].role",
        )
    chat = ChatRequest(
        messages=[
            ChatMessage(role="system" if m.role == "developer" else m.role, content=m.text())
            for m in body.messages
        ],
        site=site,
    )
    try:
        return chat_inputs(state, site, chat)
    except ApiError as exc:
        if exc.status == 422:
            exc.status = 400
        raise


def lm_options(body: ChatCompletionRequest) -> tuple[dict[str, Any], list[str]]:
    """The LM call options the body sets, and notes naming the known fields that have no effect."""
    options: dict[str, Any] = {}
    if body.temperature is not None:
        options["temperature"] = body.temperature
    if body.top_p is not None:
        options["top_p"] = body.top_p
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    ignored = [name for name in IGNORED_FIELDS if getattr(body, name) not in (None, False)]
    notes = [f"accepted but not applied: {', '.join(ignored)}"] if ignored else []
    return options, notes


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={
        **OPENAI_ERROR_RESPONSES,
        200: {
            "description": "A `chat.completion`, or with `stream: true` `chat.completion.chunk` events",
            "content": {"text/event-stream": {"schema": CHUNK_STREAM_SCHEMA}},
        },
    },
    summary="OpenAI-compatible chat completion: a grounded answer with inline [n] citations",
    openapi_extra=json_body("ChatCompletionRequest"),
)
async def chat_completions(request: Request, state: State) -> Response:
    """Answer the last user message with the model's (site's) chat program.

    The answer text keeps its `[n]` markers; `rag` holds the passages they number (n = position + 1),
    the citations, `mode` (lm or extractive), `notes` and `request_id`; `id` is `chatcmpl-<request
    id>`. `usage` counts the LM's tokens when it reports them (`rag.usage_source`). With `stream: true`
    the answer comes as `chat.completion.chunk` events ending with `data: [DONE]`; the last chunk
    with a `finish_reason` carries `rag`, whose `answer` is authoritative (grounding runs after the LM).
    """
    body = await read_completion_request(request)
    site, program = resolve_model(request, state, body.model)
    inputs = conversation_inputs(state, site, body)
    options, notes = lm_options(body)
    created = int(time.time())
    with lm_call_scope(options) as (tracker, applied):
        if options and not applied:
            notes.append(f"not applied (another DSPy adapter is configured): {', '.join(sorted(options))}")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await stream_completion(
                request,
                site,
                program,
                inputs,
                model=body.model,
                created=created,
                notes=notes,
                tracker=tracker,
                include_usage=include_usage,
            )
        output = await run_program(request, site, program, inputs)
    await record_answer(request, site, program, inputs, output)  # rateable by rag.request_id
    usage, source = usage_of(output, tracker)
    completion = ChatCompletion(
        id=f"chatcmpl-{request_id_var.get()}",
        created=created,
        model=body.model,
        choices=[Choice(message=AssistantMessage(content=output.answer))],
        usage=usage,
        rag=evidence(output, notes, source),
    )
    return JSONResponse(completion.model_dump(mode="json"))
