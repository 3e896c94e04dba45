"""``POST /v1/chat/completions`` with ``stream: true``: OpenAI's ``chat.completion.chunk`` stream.

The program runs as a :class:`~rag_app.server.routes.program_stream.ProgramStream` (the same run, gates,
deadline and client-gone handling as the chat bridge's stream); this module writes its items in
OpenAI's wire format, one ``data: {chunk}`` line each:

* a first chunk with ``delta.role = "assistant"`` (when the passages are ready, or with the first text);
* ``delta.content`` pieces: the LM's answer text as it is written, or the whole extractive answer;
* a last chunk with ``finish_reason: "stop"`` and the ``rag`` evidence (citations, passages, mode,
  notes, request id, and ``answer``: the grounded answer, authoritative since grounding runs after
  the LM and may drop unsupported sentences or invented citations);
* with ``stream_options.include_usage``, a chunk with ``usage`` and no choices;
* ``data: [DONE]``.

A ``: ping`` comment goes out whenever the stream has been silent for ``sse_keepalive_s`` seconds (SDKs
skip comments). An error after the stream opened is one ``data: {"error": {...}}`` line in OpenAI's
shape, which the SDKs raise as ``APIError``; before that, errors keep their HTTP status.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from rag_app.server.openai_errors import openai_error_body
from rag_app.server.openai_schemas import evidence, usage_of
from rag_app.server.routes.feedback import record_answer
from rag_app.server.routes.program_stream import KEEPALIVE_FRAME, SSE_HEADERS, ProgramStream, stream_error

DONE_FRAME = b"data: [DONE]\n\n"


def _data(payload: Any) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def stream_completion(
    request: Request,
    site: str,
    program: str,
    inputs: BaseModel,
    *,
    model: str,
    created: int,
    notes: list[str],
    tracker: Any,
    include_usage: bool,
) -> Response:
    """The chunk stream of one completion (see the module docstring)."""
    stream = ProgramStream(
        request, site, program, inputs, keepalive_s=request.app.state.rag.settings.sse_keepalive_s
    )
    if not await stream.open():
        return Response(status_code=499)  # written to nobody; labels the access log and metrics
    base = {
        "id": f"chatcmpl-{stream.request_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _data({**base, "choices": [choice], **extra})

    async def frames() -> AsyncIterator[bytes]:
        opened, texts = False, []
        async for name, data in stream.items():
            if name == "ping":
                yield KEEPALIVE_FRAME
                continue
            if name == "error":
                yield _data(openai_error_body(stream_error(request, data), stream.request_id))
                return
            if not opened and name in ("passages", "token", "done"):
                opened = True
                yield chunk({"role": "assistant", "content": ""})
            if name == "token" and data:
                texts.append(data)
                yield chunk({"content": data})
            elif name == "done":
                await record_answer(request, site, program, inputs, data)  # rateable by rag.request_id
                if not texts and data.answer:
                    yield chunk({"content": data.answer})
                usage, source = usage_of(data, tracker)
                streamed = "".join(texts) if texts else data.answer
                rag = evidence(data, notes, source, answer=data.answer)
                if streamed != data.answer:
                    rag.notes.append("grounding changed the streamed text: rag.answer is the answer")
                yield chunk({}, "stop", rag=rag.model_dump(mode="json"))
                if include_usage:
                    yield _data({**base, "choices": [], "usage": usage.model_dump()})
                yield DONE_FRAME

    return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)
