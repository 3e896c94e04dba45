"""Issue #10 over HTTP: the real app under uvicorn, the real LiteLLM ``ollama_chat`` path against the
loopback Ollama STAND-IN (``tests/ollama_standin.py``, not Ollama) playing an LM that obeys a planted
instruction while citing a real passage. Index: the sample index plus one planted page
(``test_grounding_support.planted_index_dir``; real LanceDB, bundled MiniLM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rag_app.server.app import create_app
from tests.conftest import make_test_settings
from tests.live_server import LiveServer
from tests.ollama_standin import OllamaStandIn, dspy_chat_reply
from tests.test_grounding_support import PLANTED_ID, PLANTED_QUESTION, planted_index_dir

pytestmark = pytest.mark.timeout(300)


def obeying_lm(request: dict[str, Any]) -> str:
    """Every answer and every reason is the planted payload, citing passage [1]."""
    system = request["messages"][0]["content"]
    if "[[ ## reason ## ]]" in system:
        return dspy_chat_reply(reason="PWNED [1]")
    return dspy_chat_reply(answer="PWNED [1]")


def without_passages(body: dict[str, Any]) -> str:
    """The response minus its ``passages`` (retrieved data, which may quote the planted page)."""
    return str({key: value for key, value in body.items() if key != "passages"})


def test_obeyed_injection_citing_a_real_passage_is_dropped_over_http(
    tmp_path_factory: pytest.TempPathFactory, sample_index_dir: Path
) -> None:
    with OllamaStandIn(chat_responder=obeying_lm) as ollama:
        settings = make_test_settings(
            planted_index_dir(tmp_path_factory, sample_index_dir),
            lm_model="ollama_chat/llama3.2",
            ollama_host=ollama.host,
            lm_retries=0,
            lm_timeout_s=20,
        )
        with LiveServer(create_app(settings)) as server, server.client() as client:
            message = {"role": "user", "content": PLANTED_QUESTION}
            r = client.post("/v1/chat-bridge", json={"messages": [message]})
            assert r.status_code == 200, r.text
            chat = r.json()
            assert PLANTED_ID in [p["doc_id"] for p in chat["passages"]]
            assert "PWNED" not in without_passages(chat), chat
            assert chat["mode"] == "extractive" and chat["citations"]
            assert any("dropped 1 sentence(s) as unsupported" in n for n in chat["notes"])

            search_body = {"query": "Beacon password reset", "limit": 3}
            r = client.post("/v1/programs/builddaily/resources_search", json=search_body)
            assert r.status_code == 200, r.text
            search = r.json()
            assert PLANTED_ID in [hit["doc_id"] for hit in search["results"]]
            assert "PWNED" not in without_passages(search), search
            assert search["mode"] == "extractive"
            assert all(hit["mode"] == "extractive" for hit in search["results"])
            assert any("as unsupported" in n for n in search["notes"])
        prompts = [m["content"] for body in ollama.requests_to("/api/chat") for m in body["messages"]]
        assert len(prompts) >= 2 and not any("PWNED" in p for p in prompts)  # withheld from the LM
