"""Issue #10: a client that leaves an SSE stream gets no more work done for it.

The real app under uvicorn (``LiveServer``) with one LM slot, and the loopback Ollama STAND-IN as a slow
LM: its first answer waits until the test releases it, so the other streams queue for the LM stage. The
queued clients disconnect; once the first answer is released, the stand-in must not be asked again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rag_app.server.app import create_app
from tests.conftest import make_test_settings
from tests.live_server import LiveServer
from tests.ollama_standin import OllamaStandIn, dspy_chat_reply
from tests.test_server import metric_value
from tests.test_streaming import iter_sse

pytestmark = pytest.mark.timeout(300)

REPLY = "Failed deliveries are retried with exponential backoff [1]."
QUEUED = 5


def chat(content: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "site": "builddaily", "stream": True}


def wait_for(condition: Any, what: str) -> None:
    """Poll ``condition()`` until true (a generous safety limit, not a timing assertion)."""
    limit = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < limit, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_queued_streams_of_gone_clients_never_call_the_lm(sample_index_dir: Path) -> None:
    release = threading.Event()
    calls: list[str] = []
    lock = threading.Lock()

    def responder(request: dict[str, Any]) -> str:
        with lock:
            calls.append(str(request.get("messages", ""))[-200:])
        release.wait(60)
        return dspy_chat_reply(answer=REPLY)

    with OllamaStandIn(chat_responder=responder) as ollama:
        settings = make_test_settings(
            sample_index_dir,
            lm_model="ollama_chat/llama3.2",
            lm_api_base=ollama.host,
            lm_cache=False,
            lm_retries=0,
            lm_timeout_s=90,
            request_deadline_s=120,
            max_concurrency_lm=1,
        )
        with LiveServer(create_app(settings)) as server, server.client() as probe:

            def lm_waiting() -> float | None:
                return metric_value(probe.get("/metrics").text, "rag_stage_waiting", stage="lm")

            with contextlib.ExitStack() as stack:
                first_client = stack.enter_context(server.client())
                first = stack.enter_context(
                    first_client.stream("POST", "/v1/chat-bridge", json=chat("How do webhooks retry?"))
                )
                first_events = iter_sse(first)
                assert next(first_events)[0] == "passages"
                wait_for(lambda: len(calls) == 1, "the first LM call")

                opened: list[Any] = []
                with contextlib.ExitStack() as queued:
                    for i in range(QUEUED):
                        c = queued.enter_context(server.client())
                        r = queued.enter_context(
                            c.stream("POST", "/v1/chat-bridge", json=chat(f"How do I cancel plan {i}?"))
                        )
                        assert r.status_code == 200
                        events = iter_sse(r)  # kept: closing it would close the connection now
                        opened.append(events)
                        assert next(events)[0] == "passages"  # the stream is open, the LM is not
                    wait_for(lambda: lm_waiting() == QUEUED, "the queued streams to wait for the LM")
                # every queued client has disconnected: their requests leave the LM queue
                wait_for(lambda: lm_waiting() == 0, "the gone clients to leave the LM queue")
                release.set()
                rest = list(first_events)
                assert rest[-1][0] == "done" and rest[-1][1]["mode"] == "lm", rest[-1]
            assert len(calls) == 1, f"gone clients' LM calls ran: {len(calls) - 1}"
            assert lm_waiting() == 0
