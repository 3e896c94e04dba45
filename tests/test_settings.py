"""One settings object: defaults < rag.toml < RAG_* env vars < explicit overrides (CLI flags)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rag_app.settings import BUNDLED_MINILM, Settings


def test_defaults_work_offline() -> None:
    s = Settings()
    assert (s.retrieve_k, s.rerank_top_n, s.search_mode) == (20, 5, "hybrid")
    assert s.resolved_embedder_model == BUNDLED_MINILM
    assert s.reranker_model == "BAAI/bge-reranker-base" and s.reranker_revision
    assert Settings(embedder_backend="ollama").resolved_embedder_model == "nomic-embed-text"


def test_precedence_toml_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rag.toml").write_text('retrieve_k = 30\nsearch_mode = "fts"\nrerank_top_n = 4\n')
    assert Settings().retrieve_k == 30  # ./rag.toml is read
    monkeypatch.setenv("RAG_RETRIEVE_K", "25")
    s = Settings.load()
    assert (s.retrieve_k, s.search_mode, s.rerank_top_n) == (25, "fts", 4)  # env beats the file
    s = Settings.load(retrieve_k=12, search_mode=None)  # a flag beats both; None means "not given"
    assert (s.retrieve_k, s.search_mode) == (12, "fts")


def test_explicit_config_file_and_ollama_host_alias(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "custom.toml"
    config.write_text('data_dir = "/srv/rag"\n[sites]\nbuilddaily = ["resources", "changelog"]\n')
    s = Settings.load(config)
    assert s.data_dir == Path("/srv/rag") and s.collections_for("builddaily") == ["resources", "changelog"]
    monkeypatch.setenv("OLLAMA_HOST", "http://10.0.0.5:11434")
    assert Settings().ollama_host == "http://10.0.0.5:11434"
    with pytest.raises(FileNotFoundError, match="config file not found"):
        Settings.load(tmp_path / "missing.toml")


def test_invalid_values_are_rejected_with_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="chunk_overlap"):
        Settings(chunk_tokens=64, chunk_overlap=64)
    with pytest.raises(ValidationError, match="search_mode"):
        Settings(search_mode="fuzzy")
    with pytest.raises(ValidationError, match="no_such_setting"):
        Settings(no_such_setting=1)
    assert Settings(lm_model="").lm_model is None  # empty = no LM: extractive answers
