"""``POST /v1/chat-bridge`` with ``stream: true``: token-by-token SSE from the LM, end to end.

The real app under uvicorn (``LiveServer``) over the session's sample index, with the loopback Ollama
STAND-IN (``OllamaStandIn``) as the LM: it streams NDJSON chunks word by word when asked to stream, and
its replies are in DSPy's ChatAdapter format (``dspy_chat_reply``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag_app.server.app import create_app
from tests.conftest import make_test_settings
from tests.live_server import LiveServer
from tests.ollama_standin import OllamaStandIn, dspy_chat_reply

pytestmark = pytest.mark.timeout(300)

QUESTION = "How do webhooks retry failed deliveries?"
REPLY = "Failed deliveries are retried with exponential backoff [1], up to several times [2]."


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "site": "builddaily", **extra}


def iter_sse(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """``(event, json data)`` as each Server-Sent Event arrives."""
    name, data = "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].lstrip())
    if data:
        yield name, json.loads("\n".join(data))


def lm_settings(index_dir: Path, host: str, **overrides: Any) -> Any:
    return make_test_settings(
        index_dir,
        lm_model="ollama_chat/llama3.2",
        lm_api_base=host,
        lm_cache=False,
        lm_retries=0,
        lm_timeout_s=20,
        **overrides,
    )


def test_lm_answer_streams_token_by_token_after_the_passages(sample_index_dir: Path) -> None:
    """The passages event reaches the client before the LM is even asked (the stand-in holds its reply
    until the client has seen it), then the answer arrives in several token events."""
    passages_seen = threading.Event()
    waited: list[bool] = []

    def responder(request: dict[str, Any]) -> str:
        waited.append(passages_seen.wait(15))
        return dspy_chat_reply(answer=REPLY)

    with OllamaStandIn(chat_responder=responder) as ollama:
        settings = lm_settings(sample_index_dir, ollama.host)
        with LiveServer(create_app(settings)) as server, server.client() as c:
            events: list[tuple[str, Any]] = []
            with c.stream("POST", "/v1/chat-bridge", json=chat(QUESTION, stream=True)) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                for event in iter_sse(r):
                    events.append(event)
                    if event[0] == "passages":
                        passages_seen.set()
            assert waited == [True], "the LM was asked before the passages event went out"
            streamed_chats = [b for b in ollama.requests_to("/api/chat") if b.get("stream") is True]
            assert streamed_chats, "the LM was not asked to stream"

            names = [name for name, _ in events]
            assert names[0] == "passages" and names[-1] == "done", names
            assert set(names[1:-1]) == {"token"} and len(names) - 2 >= 2, names
            tokens = "".join(data["text"] for name, data in events if name == "token")
            assert tokens == REPLY
            done = events[-1][1]
            assert done["mode"] == "lm" and done["answer"] == REPLY
            passage_ids = {p["id"] for p in events[0][1]["passages"]}
            assert done["citations"] and {c["passage_id"] for c in done["citations"]} <= passage_ids
            assert done["request_id"] == events[0][1]["request_id"]
            assert "total_ms" in done["timings"] and done["timings"]["lm_ms"] > 0

            # the JSON path is unchanged: same answer and passages, in one piece
            passages_seen.set()
            body = c.post("/v1/chat-bridge", json=chat(QUESTION)).json()
            assert body["mode"] == "lm" and body["answer"] == REPLY
            assert [p["id"] for p in body["passages"]] == [p["id"] for p in events[0][1]["passages"]]


def test_done_answer_is_the_grounded_one(sample_index_dir: Path) -> None:
    """Grounding runs after the LM: an invalid citation is streamed raw but dropped in done.answer."""
    reply = "Retries use exponential backoff [1] and a dead-letter queue [99]."
    with OllamaStandIn(chat_responder=lambda request: dspy_chat_reply(answer=reply)) as ollama:
        settings = lm_settings(sample_index_dir, ollama.host)
        with (
            LiveServer(create_app(settings)) as server,
            server.client() as c,
            c.stream("POST", "/v1/chat-bridge", json=chat(QUESTION, stream=True)) as r,
        ):
            events = list(iter_sse(r))
    names = [name for name, _ in events]
    assert names[0] == "passages" and names[-1] == "done" and names.count("token") >= 2
    assert "".join(d["text"] for n, d in events if n == "token") == reply
    done = events[-1][1]
    assert "[99]" not in done["answer"] and "[1]" in done["answer"]


def test_extractive_stream_sends_the_answer_in_one_token(sample_index_dir: Path) -> None:
    settings = make_test_settings(sample_index_dir)
    with LiveServer(create_app(settings)) as server, server.client() as c:
        plain = c.post("/v1/chat-bridge", json=chat(QUESTION)).json()
        with c.stream("POST", "/v1/chat-bridge", json=chat(QUESTION, stream=True)) as r:
            assert r.status_code == 200
            events = list(iter_sse(r))
    assert [name for name, _ in events] == ["passages", "token", "done"]
    assert events[1][1]["text"] == events[2][1]["answer"] == plain["answer"]
    assert events[2][1]["mode"] == "extractive"


def test_deadline_after_the_stream_opened_is_an_error_event(sample_index_dir: Path) -> None:
    """The passages went out, then the LM outlived the request deadline: ``event: error``, stream ends."""
    release = threading.Event()

    def responder(request: dict[str, Any]) -> str:
        release.wait(10)
        return dspy_chat_reply(answer=REPLY)

    with OllamaStandIn(chat_responder=responder) as ollama:
        settings = lm_settings(sample_index_dir, ollama.host, request_deadline_s=3.0)
        try:
            with LiveServer(create_app(settings)) as server, server.client() as c:
                with c.stream("POST", "/v1/chat-bridge", json=chat(QUESTION, stream=True)) as r:
                    assert r.status_code == 200
                    events = list(iter_sse(r))
                names = [name for name, _ in events]
                assert names == ["passages", "error"], names
                error = events[-1][1]["error"]
                assert error["code"] == "deadline_exceeded" and error["request_id"]
        finally:
            release.set()
