"""One settings object: defaults < rag.toml < RAG_* env vars < explicit overrides (CLI flags)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rag_app.core.errors import validation_message
from rag_app.core.settings import BUNDLED_MINILM, Settings, setting_origin
from tests.conftest import set_offline_cli_env


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
    monkeypatch.delenv("RAG_OLLAMA_HOST", raising=False)
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


def test_rag_ollama_host_beats_ollamas_own_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Error messages tell users to set RAG_OLLAMA_HOST: it must win over a stray OLLAMA_HOST."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OLLAMA_HOST", "http://ollama-cli:11434")
    monkeypatch.setenv("RAG_OLLAMA_HOST", "http://rag:11434")
    s = Settings()
    assert s.ollama_host == "http://rag:11434"
    assert setting_origin(s, "ollama_host") == "RAG_OLLAMA_HOST"
    (tmp_path / "rag.toml").write_text('ollama_host = "http://from-file:11434"\n')
    monkeypatch.delenv("RAG_OLLAMA_HOST")
    assert Settings().ollama_host == "http://from-file:11434"  # the project's file beats OLLAMA_HOST
    (tmp_path / "rag.toml").unlink()
    s = Settings()
    assert (s.ollama_host, setting_origin(s, "ollama_host")) == ("http://ollama-cli:11434", "OLLAMA_HOST")
    monkeypatch.delenv("OLLAMA_HOST")
    assert setting_origin(Settings(), "ollama_host") == "default"


@pytest.mark.parametrize("name", ["Bad Site", "../etc", "a" * 49, "", "-lead", "ünïcode", "dot.ted"])
def test_site_and_collection_names_are_checked_at_load(name: str) -> None:
    with pytest.raises(ValidationError, match="invalid site name"):
        Settings(sites={name: ["resources"]})
    with pytest.raises(ValidationError, match="invalid collection"):
        Settings(sites={"builddaily": [name]})


def test_validation_errors_render_as_one_line_naming_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(sites={"Bad Site": ["x"]}, retrieve_k=0)
    message = validation_message(info.value)
    assert "\n" not in message and "errors.pydantic.dev" not in message
    assert message.startswith("sites: invalid site name 'Bad Site'") and "retrieve_k:" in message


def test_cli_prints_bad_dates_and_bad_config_names_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from rag_app.cli import app

    set_offline_cli_env(monkeypatch, tmp_path)
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    result = runner.invoke(app, ["search", "--site", "paiddaily", "--date-from", "2024-13-45", "gap up"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "date_from:" in lines[0] and "month value" in lines[0]
    config = tmp_path / "bad.toml"
    config.write_text('[sites]\n"Bad Site" = ["x"]\n')
    result = runner.invoke(app, ["search", "--config", str(config), "--site", "x", "q"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "invalid site name 'Bad Site'" in lines[0]


def test_doctor_says_where_the_ollama_host_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from rag_app.cli import app
    from tests.ollama_standin import dead_host

    set_offline_cli_env(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    host = dead_host()
    monkeypatch.setenv("OLLAMA_HOST", "http://ignored:1")
    monkeypatch.setenv("RAG_OLLAMA_HOST", host)
    result = CliRunner().invoke(app, ["doctor", "--json", "--data-dir", str(tmp_path / "data")])
    checks = {c["component"]: c for c in json.loads(result.stdout)}
    assert checks["ollama server"]["detail"].startswith(f"{host} (from RAG_OLLAMA_HOST) did not answer")


def test_scale_out_settings_refuse_unsafe_combinations() -> None:
    """A retention below the replicas' consistency interval would delete versions they still read; a
    remote retry budget past the request deadline would turn the reranker's fallback into a 504."""
    with pytest.raises(
        ValidationError, match=r"maintain_retention_s \(1.0\) must not be below read_consistency_s"
    ):
        Settings(read_consistency_s=5, maintain_retention_s=1)
    assert Settings(read_consistency_s=5, maintain_retention_s=5).maintain_retention_s == 5
    with pytest.raises(
        ValidationError, match=r"remote_timeout_s \(5.0\) x 3 attempts .* RAG_REMOTE_TIMEOUT_S"
    ):
        Settings(reranker_backend="remote", reranker_url="http://127.0.0.1:1", request_deadline_s=10)
    # the budget only binds when a model is remote; local setups keep short deadlines
    assert Settings(request_deadline_s=1).request_deadline_s == 1


def test_foreign_otel_variables_sit_below_rag_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "rag-blue")
    assert Settings().otel_exporter_otlp_endpoint == "http://collector:4318"
    assert Settings().otel_service_name == "rag-blue"
    monkeypatch.setenv("RAG_OTEL_EXPORTER_OTLP_ENDPOINT", "http://mine:4318")
    assert Settings().otel_exporter_otlp_endpoint == "http://mine:4318"
    assert "secret" not in repr(Settings(storage_options={"aws_secret_access_key": "secret"}))
