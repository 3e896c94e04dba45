"""Eval reports: the JSON/Markdown/PNG bundle, the aligned terminal table and best-effort provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag_app.core.settings import Settings
from rag_app.evaluation import report as report_module
from rag_app.evaluation.report import (
    DatasetInfo,
    EvalReport,
    ReportRow,
    format_table,
    git_commit,
    load_report,
    models_from_settings,
    settings_snapshot,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROWS = [
    {"config": "retrieve", "metrics": {"recall@5": 0.5, "recall@20": 0.8, "mrr@5": 0.41666, "ndcg@10": 0.45}},
    {
        "config": "retrieve+rerank",
        "metrics": {"recall@5": 0.7, "recall@20": 0.8, "mrr@5": 0.6, "ndcg@10": 0.6234},
    },
]


@pytest.fixture
def no_git_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder git cannot resolve to a repository, even if a parent folder were one."""
    outside = tmp_path / "not_a_checkout"
    outside.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    return outside


def _report(**overrides: object) -> EvalReport:
    fields: dict[str, object] = {
        "title": "SciFact test: retrieval",
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "settings": settings_snapshot(Settings(lm_api_key="sk-secret")),
        "models": models_from_settings(Settings()),
        "dataset": DatasetInfo(name="scifact", path="../shared/data/scifact", hash="ab" * 32, n_queries=300),
        "rows": ROWS,
    }
    fields.update(overrides)
    return EvalReport.model_validate(fields)


def test_write_report_creates_the_three_files(tmp_path: Path) -> None:
    paths = write_report(_report(), tmp_path / "out" / "run1")
    assert set(paths) == {"json", "md", "png"}
    assert paths == {
        "json": tmp_path / "out" / "run1" / "report.json",
        "md": tmp_path / "out" / "run1" / "report.md",
        "png": tmp_path / "out" / "run1" / "report.png",
    }
    assert all(path.is_file() and path.stat().st_size > 0 for path in paths.values())


def test_json_round_trips(tmp_path: Path) -> None:
    report = _report()
    paths = write_report(report, tmp_path)
    assert load_report(paths["json"]) == report
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["rows"][1] == ROWS[1]
    assert data["dataset"]["n_queries"] == 300


def test_markdown_has_the_table_and_provenance(tmp_path: Path) -> None:
    text = write_report(_report(), tmp_path)["md"].read_text(encoding="utf-8")
    assert text.startswith("# SciFact test: retrieval\n")
    assert "| config | recall@5 | recall@20 | mrr@5 | ndcg@10 |" in text
    assert "|---|---:|---:|---:|---:|" in text
    assert "| retrieve | 0.500 | 0.800 | 0.417 | 0.450 |" in text
    assert "| retrieve+rerank | 0.700 | 0.800 | 0.600 | 0.623 |" in text
    assert "0123456789abcdef0123456789abcdef01234567" in text
    assert "300 queries" in text
    assert "ab" * 32 in text
    assert "BAAI/bge-reranker-base" in text


def test_png_is_a_png(tmp_path: Path) -> None:
    data = write_report(_report(), tmp_path)["png"].read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000


def test_missing_metrics_render_as_dashes(tmp_path: Path) -> None:
    rows = [*ROWS, {"config": "answers", "metrics": {"em": 0.25, "citation_precision": None}}]
    paths = write_report(_report(rows=rows), tmp_path)
    text = paths["md"].read_text(encoding="utf-8")
    assert "| answers | - | - | - | - | 0.250 | - |" in text
    assert paths["png"].read_bytes().startswith(PNG_MAGIC)


def test_empty_report_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no rows"):
        write_report(_report(rows=[]), tmp_path)


def test_secrets_never_reach_the_report(tmp_path: Path) -> None:
    report = _report(settings={"lm_api_key": "sk-secret", "nested": {"password": "x"}, "chunk_tokens": 256})
    assert report.settings == {"lm_api_key": "***", "nested": {"password": "***"}, "chunk_tokens": 256}
    paths = write_report(_report(), tmp_path)
    for path in (paths["json"], paths["md"]):
        assert "sk-secret" not in path.read_text(encoding="utf-8")


def test_format_table_is_aligned() -> None:
    table = format_table(ROWS)
    lines = table.splitlines()
    assert lines[0].split() == ["config", "recall@5", "recall@20", "mrr@5", "ndcg@10"]
    assert lines[2].split() == ["retrieve", "0.500", "0.800", "0.417", "0.450"]
    assert len({len(line) for line in lines}) == 1  # every line as wide as the header
    # Numbers are right-aligned under their header.
    assert lines[0].index("ndcg@10") + len("ndcg@10") == lines[2].index("0.450") + len("0.450")
    assert format_table([ReportRow.model_validate(row) for row in ROWS]) == table


def test_git_commit_is_none_outside_a_checkout(no_git_here: Path) -> None:
    assert git_commit(no_git_here) is None


def test_git_commit_is_none_without_git(no_git_here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(no_git_here))
    assert git_commit() is None


def test_report_outside_a_checkout_has_no_commit(no_git_here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_module, "PROJECT_DIR", no_git_here)
    report = EvalReport(title="t", rows=ROWS)
    assert report.git_commit is None
    assert report.created_at.tzinfo is not None


def test_git_commit_in_the_project_is_a_hash_or_none() -> None:
    commit = git_commit()
    assert commit is None or len(commit) in (40, 64)
