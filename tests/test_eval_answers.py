"""Answer evaluation: metrics against hand-computed values on a toy set (a stand-in program and a
DummyLM judge), row selection and input mapping, and ``rag-app eval answers`` on the real index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from dspy.utils import DummyLM
from typer.testing import CliRunner

from rag_app.answering.grounded import GroundedOutput
from rag_app.answering.not_found import NOT_FOUND_ANSWER
from rag_app.answering.registry import program_class
from rag_app.cli.quality import register
from rag_app.core.errors import InputError
from rag_app.core.settings import Settings
from rag_app.core.types import Citation, Passage
from rag_app.evaluation.answers import (
    answer_metrics,
    answers_eval,
    evaluate_answers,
    program_input,
    select_rows,
    strip_citations,
)
from rag_app.evaluation.datasets import EvalExample, dataset_hash, load_eval_jsonl
from tests.conftest import set_offline_cli_env

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO / "data" / "eval"

# query -> (answer, cited doc ids); gold answers and judgments are in TOY_ROWS.
CANNED = {
    "capital of France?": ("Paris [1]", ["a"]),
    "largest animal?": ("A blue whale lives here [1][2]", ["b", "x"]),
    "unanswerable?": (NOT_FOUND_ANSWER, []),
}
TOY_ROWS = [
    {"id": "r1", "query": "capital of France?", "answer": "Paris", "relevant_ids": ["a"]},
    {"id": "r2", "query": "largest animal?", "answer": "the blue whale", "relevant_ids": ["b"]},
    {"id": "r3", "query": "unanswerable?", "relevant_ids": ["c"]},
]
# Judges: SemanticF1 from recall 1.0 / precision 0.5, CompleteAndGrounded from completeness 1.0 /
# groundedness 0.5: both F1(1.0, 0.5) = 2/3.
JUDGE_ANSWERS = {
    "## recall ##": {"reasoning": "r", "recall": 1.0, "precision": 0.5},
    "## completeness ##": {
        "reasoning": "r",
        "ground_truth_key_ideas": "a",
        "system_response_key_ideas": "b",
        "discussion": "c",
        "completeness": 1.0,
    },
    "## groundedness ##": {
        "reasoning": "r",
        "system_response_claims": "a",
        "discussion": "c",
        "groundedness": 0.5,
    },
}


class CannedProgram:
    """Answers from :data:`CANNED`, like a program's ``run`` would (typed output, cited passages)."""

    def __init__(self) -> None:
        self.inputs: list[Any] = []

    def run(self, inputs: Any) -> GroundedOutput:
        self.inputs.append(inputs)
        answer, doc_ids = CANNED[inputs.message]
        passages = [Passage(id=f"{d}#0", doc_id=d, text=f"text of {d}", score=1.0) for d in doc_ids]
        citations = [
            Citation(index=i, passage_id=p.id, doc_id=p.doc_id) for i, p in enumerate(passages, start=1)
        ]
        return GroundedOutput(answer=answer, citations=citations, passages=passages, mode="lm")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "rag", programs_dir=REPO / "programs", lm_model=None)


def test_answer_metrics_match_hand_computed_values(settings: Settings, tmp_path: Path) -> None:
    dataset = tmp_path / "toy.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in TOY_ROWS))
    fake = CannedProgram()
    result = answers_eval(
        settings,
        "builddaily",
        "chat_bridge",
        dataset,
        program_obj=fake,
        judge_lm=DummyLM(JUDGE_ANSWERS),
        report_dir=tmp_path / "report",
        progress=False,
    )
    assert [i.message for i in fake.inputs] == [row["query"] for row in TOY_ROWS]
    by_id = {row.id: row.metrics for row in result.rows}
    # r1: "Paris" == "Paris"; the one cited doc is relevant.
    assert by_id["r1"]["exact_match"] == 1.0 and by_id["r1"]["token_f1"] == 1.0
    assert by_id["r1"]["citation_precision"] == 1.0 and by_id["r1"]["not_found"] == 0.0
    # r2: "blue whale lives here" vs "blue whale": P = 2/4, R = 2/2, F1 = 2/3; 1 of 2 cited docs relevant.
    assert by_id["r2"]["exact_match"] == 0.0 and by_id["r2"]["token_f1"] == pytest.approx(2 / 3)
    assert by_id["r2"]["citation_precision"] == 0.5
    # r3: no gold answer (no EM/F1), cites nothing (no precision), not found.
    assert by_id["r3"]["exact_match"] is None and by_id["r3"]["token_f1"] is None
    assert by_id["r3"]["citation_precision"] is None and by_id["r3"]["not_found"] == 1.0
    assert by_id["r1"]["semantic_f1"] == pytest.approx(2 / 3) and by_id["r3"]["semantic_f1"] is None

    expected = {
        "exact_match": 0.5,
        "token_f1": (1 + 2 / 3) / 2,
        "citation_precision": 0.75,
        "not_found_rate": 1 / 3,
        "semantic_f1": 2 / 3,
        "complete_and_grounded": 2 / 3,
    }
    assert result.metrics == pytest.approx(expected)
    assert result.mode == "lm" and result.mode_counts == {"lm": 3} and result.judged
    assert result.judge_lm == "dummy" and not [n for n in result.notes if "failed" in n]

    files = result.report_files
    assert {name: path.name for name, path in files.items()} == {
        "json": "report.json",
        "md": "report.md",
        "png": "report.png",
        "answers": "answers.jsonl",
    }
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(files["json"].read_text())
    assert report["dataset"]["hash"] == dataset_hash(dataset) and report["dataset"]["n_queries"] == 3
    assert report["models"]["answer_mode"] == "lm" and "embedder" in report["models"]
    assert report["settings"]["programs_dir"] and "git_commit" in report
    assert report["rows"][0]["metrics"] == pytest.approx(expected)
    markdown = files["md"].read_text()
    assert "| builddaily/chat_bridge [lm] |" in markdown and "0.833" in markdown
    details = [json.loads(line) for line in files["answers"].read_text().splitlines()]
    assert [d["id"] for d in details] == ["r1", "r2", "r3"] and details[1]["cited_doc_ids"] == ["b", "x"]


def test_without_an_lm_the_judges_are_skipped_and_said_so(settings: Settings) -> None:
    rows = [EvalExample.model_validate(row) for row in TOY_ROWS]
    result = evaluate_answers(settings, "builddaily", "chat_bridge", rows, program_obj=CannedProgram())
    assert not result.judged and set(result.metrics) == {
        "exact_match",
        "token_f1",
        "citation_precision",
        "not_found_rate",
    }
    assert any("SemanticF1 and CompleteAndGrounded not computed" in n for n in result.notes)
    limited = evaluate_answers(
        settings, "builddaily", "chat_bridge", rows, program_obj=CannedProgram(), limit=1, judge=False
    )
    assert len(limited.rows) == 1 and limited.metrics["exact_match"] == 1.0


def test_rows_are_selected_and_mapped_to_each_programs_input(settings: Settings) -> None:
    rows = load_eval_jsonl(EVAL / "builddaily.jsonl")
    chat, skipped = select_rows(rows, "builddaily", "chat_bridge")
    assert len(chat) == 9 and skipped == 11 and all(r.program == "chat_bridge" for r in chat)
    assert len(select_rows(rows, "builddaily", "chat_bridge", all_rows=True)[0]) == 20
    assert select_rows(rows, "paiddaily", "tickers") == ([], 20)

    follow_up = next(r for r in chat if r.history)
    inputs = program_input(program_class(settings, "builddaily", "chat_bridge"), follow_up)
    assert inputs.message == follow_up.query and [t.content for t in inputs.history] == [
        t.content for t in follow_up.history
    ]
    search = program_input(program_class(settings, "builddaily", "resources_search"), rows[0])
    assert search.query == rows[0].query

    filtered = next(r for r in load_eval_jsonl(EVAL / "paiddaily.jsonl") if r.filters)
    cls = program_class(settings, "paiddaily", filtered.program or "tickers")
    mapped = program_input(cls, filtered)
    for key in ("date_from", "date_to"):
        if filtered.filters and filtered.filters.get(key):
            assert str(getattr(mapped, key)) == filtered.filters[key]
    reading = program_input(
        program_class(settings, "sagedaily", "reading"),
        EvalExample(query="Work?", metadata={"inputs": {"cards": ["The Tower"]}}),
    )
    assert reading.question == "Work?" and reading.cards == ["The Tower"]
    with pytest.raises(InputError, match=r"row 1 \(bad\): invalid input for paiddaily/tickers"):
        program_input(
            program_class(settings, "paiddaily", "tickers"),
            EvalExample(id="bad", query="x", metadata={"inputs": {"limit": 0}}),
        )
    with pytest.raises(InputError, match="no rows for paiddaily/tickers"):
        evaluate_answers(settings, "paiddaily", "tickers", chat, program_obj=CannedProgram())


def test_strip_citations_and_answer_metrics() -> None:
    assert strip_citations("Yes [1][2], since 2.6 [Passage 3]; not Data Center [4, 5].") == (
        "Yes, since 2.6; not Data Center."
    )
    assert answer_metrics("3 [1]", ["a"], "3", ["a"])["exact_match"] == 1.0
    assert answer_metrics("Not found in the sources. [2]", [], None, [])["not_found"] == 1.0


# ================================================================================= real index


def test_cli_eval_answers_on_the_real_index(
    sample_index_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index_dir = sample_index_dir
    monkeypatch.chdir(tmp_path)
    set_offline_cli_env(monkeypatch, index_dir, REPO / "programs")
    app, eval_app = typer.Typer(), typer.Typer()
    app.add_typer(eval_app, name="eval")
    register(app, eval_app)
    report_dir = tmp_path / "report"
    args = [
        "eval",
        "answers",
        "--site",
        "builddaily",
        "--program",
        "chat_bridge",
        "--data-dir",
        str(index_dir),
    ]
    dataset = str(EVAL / "builddaily.jsonl")
    result = CliRunner().invoke(
        app, [*args, "--dataset", dataset, "--limit", "2", "--json", "--report-dir", str(report_dir)]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["mode"] == "extractive" and payload["judged"] is False and payload["n_rows"] == 2
    assert payload["skipped_rows"] == 11 and payload["dataset"]["hash"] == dataset_hash(
        EVAL / "builddaily.jsonl"
    )
    metrics = payload["metrics"]
    assert set(metrics) == {"exact_match", "token_f1", "citation_precision", "not_found_rate"}
    assert (
        0 < metrics["token_f1"] <= 1 and metrics["citation_precision"] > 0 and metrics["not_found_rate"] == 0
    )
    assert {p.name for p in report_dir.iterdir()} == {
        "report.json",
        "report.md",
        "report.png",
        "answers.jsonl",
    }
    assert json.loads((report_dir / "report.json").read_text())["models"]["answer_mode"] == "extractive"

    table = CliRunner().invoke(app, [*args, "--dataset", dataset, "--limit", "1"])
    assert table.exit_code == 0 and "builddaily/chat_bridge [extractive]" in table.output
    missing = CliRunner().invoke(app, [*args, "--dataset", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code != 0 and "nope.jsonl" in missing.output
