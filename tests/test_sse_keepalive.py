"""Issue 13: SSE streams stay alive while retrieval, reranking or the LM run.

Both streams (``/v1/chat-bridge`` with ``stream: true`` and ``/v1/chat/completions`` with
``stream: true``) send a ``: ping`` comment whenever they have been silent for ``sse_keepalive_s``
seconds. The real app under uvicorn, with a TEST DOUBLE embedder (``SlowEmbedderTestDouble``: the
real MiniLM, but a query naming "slowpoke" or "glacier" sleeps first, so retrieval is slow for real):
the keep-alive interval is a small fraction of that sleep, so pings must arrive before the passages.
A run still silent past its deadline ends the opened stream with an in-stream deadline error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from rag_app.models.embeddings import load_embedder
from rag_app.server.app import create_app
from tests.conftest import make_test_settings
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(300)

DEADLINE_S = 3.0
DELAYS = {"slowpoke": 1.5, "glacier": DEADLINE_S + 1.5}


class SlowEmbedderTestDouble:
    """TEST DOUBLE: the real embedder; queries naming a word of :data:`DELAYS` sleep that long first."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.max_tokens = inner.max_tokens

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed_query(self, text: str) -> Any:
        for word, delay in DELAYS.items():
            if word in text:
                time.sleep(delay)
        return self.inner.embed_query(text)

    def embed_documents(self, texts: Any) -> Any:
        return self.inner.embed_documents(texts)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.inner.token_spans(text)


@pytest.fixture(scope="module")
def live(sample_index_dir: Path) -> Iterator[LiveServer]:
    settings = make_test_settings(
        sample_index_dir,
        sites={"builddaily": ["resources"]},
        sse_keepalive_s=0.1,
        request_deadline_s=DEADLINE_S,
    )
    app = create_app(settings, embedder=SlowEmbedderTestDouble(load_embedder(settings)))
    with LiveServer(app) as server:
        yield server


def stream_lines(live: LiveServer, path: str, body: dict[str, Any]) -> list[str]:
    with live.client() as http, http.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line for line in r.iter_lines() if line]


def chat_bridge(question: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}], "site": "builddaily", "stream": True}


def completion(question: str) -> dict[str, Any]:
    return {
        "model": "builddaily/chat_bridge",
        "messages": [{"role": "user", "content": question}],
        "stream": True,
    }


def test_chat_bridge_stream_pings_while_retrieval_runs(live: LiveServer) -> None:
    lines = stream_lines(live, "/v1/chat-bridge", chat_bridge("slowpoke: how long can a Forge job run?"))
    first_event = next(i for i, line in enumerate(lines) if line.startswith("event:"))
    assert lines[0] == ": ping" and first_event > 0  # pings before the passages
    assert set(lines[:first_event]) == {": ping"}
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event:")]
    assert events[0] == "passages" and events[-1] == "done"
    done = json.loads(lines[-1].removeprefix("data: "))
    assert "6 hours" in done["answer"]


def test_openai_stream_pings_and_sdks_ignore_them(live: LiveServer) -> None:
    lines = stream_lines(live, "/v1/chat/completions", completion("slowpoke: how long can a Forge job run?"))
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert first_data > 0 and set(lines[:first_data]) == {": ping"}
    assert lines[-1] == "data: [DONE]"

    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused: auth is off", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="builddaily/chat_bridge",
            messages=[{"role": "user", "content": "slowpoke: how long can a Forge job run?"}],
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "6 hours" in text and chunks[-1].choices[0].finish_reason == "stop"


def test_a_stream_opened_by_pings_reports_its_deadline_in_stream(live: LiveServer) -> None:
    lines = stream_lines(live, "/v1/chat-bridge", chat_bridge("glacier: how long can a Forge job run?"))
    assert lines[0] == ": ping" and lines[-2] == "event: error"
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["code"] == "deadline_exceeded" and f"{DEADLINE_S:g}s" in error["message"]

    lines = stream_lines(live, "/v1/chat/completions", completion("glacier: how long can a Forge job run?"))
    assert lines[0] == ": ping"
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["code"] == "deadline_exceeded" and error["type"] == "timeout_error"
    with httpx.Client(base_url=live.url, timeout=60) as http:  # the server is still serving
        assert http.get("/healthz").status_code == 200
