"""Issue #10 through the CLI: ``rag-app ask`` (typer's CliRunner, in process) with the LM set by
``RAG_*`` variables to the loopback Ollama STAND-IN (``tests/ollama_standin.py``, not Ollama), which
obeys a planted instruction while citing a real passage. Index: the sample index plus one planted page
(``test_grounding_support.planted_index_dir``; real LanceDB, bundled MiniLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag_app.cli import app
from tests.conftest import set_offline_cli_env
from tests.ollama_standin import OllamaStandIn, dspy_chat_reply
from tests.test_grounding_support import PLANTED_ID, PLANTED_QUESTION, planted_index_dir


def ask(data_dir: Path, *args: str) -> dict:
    result = CliRunner().invoke(
        app, ["ask", "--site", "builddaily", "--json", "--data-dir", str(data_dir), *args]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_rag_app_ask_drops_an_obeyed_injection(
    tmp_path_factory: pytest.TempPathFactory, sample_index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = planted_index_dir(tmp_path_factory, sample_index_dir)
    with OllamaStandIn(chat_responder=lambda request: dspy_chat_reply(answer="PWNED [1]")) as ollama:
        set_offline_cli_env(monkeypatch, data_dir)
        for key, value in {
            "RAG_LM_MODEL": "ollama_chat/llama3.2",
            "OLLAMA_HOST": ollama.host,
            "RAG_LM_RETRIES": "0",
            "RAG_LM_CACHE": "false",
        }.items():
            monkeypatch.setenv(key, value)
        out = ask(data_dir, "--program", "chat_bridge", PLANTED_QUESTION)
        assert ollama.requests_to("/api/chat")  # the LM did answer
    assert PLANTED_ID in [p["doc_id"] for p in out["passages"]]
    assert "PWNED" not in json.dumps({k: v for k, v in out.items() if k != "passages"}), out
    assert out["mode"] == "extractive" and out["citations"]
    assert any("dropped 1 sentence(s) as unsupported" in n for n in out["notes"])
