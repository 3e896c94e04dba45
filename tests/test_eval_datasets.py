"""Eval-set loaders: our JSONL format, BEIR folders, FinanceBench, and the dataset fingerprint."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from rag_app.core.errors import LoaderError
from rag_app.evaluation.datasets import (
    EvalExample,
    dataset_hash,
    load_beir_queries,
    load_eval_jsonl,
    load_financebench,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data from the project root
SCIFACT = SHARED_DATA / "scifact"
FINANCEBENCH = SHARED_DATA / "financebench"
needs_scifact = pytest.mark.skipif(not SCIFACT.is_dir(), reason=f"{SCIFACT} not present")
needs_financebench = pytest.mark.skipif(not FINANCEBENCH.is_dir(), reason=f"{FINANCEBENCH} not present")


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- our JSONL format ----------------------------------------------------------------------------


def test_load_eval_jsonl_reads_examples_and_skips_blank_lines(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "eval.jsonl",
        [
            json.dumps(
                {"id": "q1", "query": "What is FastAPI?", "site": "builddaily", "relevant_ids": ["index"]}
            ),
            "",
            "   ",
            json.dumps(
                {
                    "id": "q2",
                    "query": "And its license?",
                    "relevant_ids": ["a", "b"],
                    "relevance": {"b": 2, "c": 0},
                    "answer": "MIT",
                    "history": [{"role": "user", "content": "What is FastAPI?"}],
                    "filters": {"tickers": ["MMM"], "date_from": "2023-01-01"},
                }
            ),
        ],
    )
    examples = load_eval_jsonl(path)
    assert [e.id for e in examples] == ["q1", "q2"]
    assert examples[0].relevant == {"index": 1}
    assert examples[0].site == "builddaily"
    # relevance grades override relevant_ids; grade 0 is not relevant.
    assert examples[1].relevant == {"a": 1, "b": 2}
    assert examples[1].history[0].role == "user"
    assert examples[1].search_filters is not None
    assert examples[1].search_filters.tickers == ["MMM"]


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "broken.jsonl",
        [json.dumps({"query": "ok"}), "", '{"query": "missing brace"'],
    )
    with pytest.raises(LoaderError) as info:
        load_eval_jsonl(path)
    assert info.value.line == 3
    assert "broken.jsonl:3" in str(info.value)
    assert "invalid JSON" in str(info.value)


def test_non_utf8_bytes_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"query": "fine"}\n{"query": "caf\xe9"}\n')
    with pytest.raises(LoaderError) as info:
        load_eval_jsonl(path)
    assert info.value.line == 2
    assert "latin1.jsonl:2" in str(info.value)
    assert "UTF-8" in str(info.value)
    assert "0xe9" in str(info.value)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"query": "caf\u00e9"}).encode() + b"\n")
    assert load_eval_jsonl(path)[0].query == "café"


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ({"query": "q", "relevent_ids": ["a"]}, "relevent_ids"),  # typo: unknown field
        ({"query": "   "}, "query"),
        ({"relevant_ids": ["a"]}, "query"),
        ({"query": "q", "history": [{"role": "bot", "content": "hi"}]}, "history.0.role"),
        ({"query": "q", "filters": {"ticker": ["MMM"]}}, "filters"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_invalid_records_name_the_line_and_field(tmp_path: Path, record: object, fragment: str) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps({"query": "fine"}), json.dumps(record)])
    with pytest.raises(LoaderError) as info:
        load_eval_jsonl(path)
    assert info.value.line == 2
    assert "bad.jsonl:2" in str(info.value)
    assert fragment in str(info.value)


def test_duplicate_ids_and_empty_or_missing_files(tmp_path: Path) -> None:
    dupes = _write_lines(tmp_path / "dupes.jsonl", [json.dumps({"id": "x", "query": "q"})] * 2)
    with pytest.raises(LoaderError, match=r"dupes.jsonl:2: duplicate id 'x' \(first on line 1\)"):
        load_eval_jsonl(dupes)
    empty = _write_lines(tmp_path / "empty.jsonl", [""])
    with pytest.raises(LoaderError, match="no examples"):
        load_eval_jsonl(empty)
    with pytest.raises(LoaderError, match="file not found"):
        load_eval_jsonl(tmp_path / "nope.jsonl")


def test_relevant_property_is_empty_without_judgments() -> None:
    assert EvalExample(query="q").relevant == {}


# --- BEIR ---------------------------------------------------------------------------------------


def _tiny_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    _write_lines(
        root / "queries.jsonl",
        [
            json.dumps({"_id": "q1", "text": "first question", "metadata": {"kind": "a"}}),
            json.dumps({"_id": "q2", "text": "only judged non-relevant"}),
            json.dumps({"_id": "q3", "text": "not judged in this split"}),
            json.dumps({"_id": "q4", "text": "fourth question"}),
        ],
    )
    _write_lines(root / "corpus.jsonl", [json.dumps({"_id": d, "title": "", "text": d}) for d in "abc"])
    _write_lines(
        root / "qrels" / "test.tsv",
        ["query-id\tcorpus-id\tscore", "q4\tc\t1", "q1\ta\t1", "q1\tb\t2", "q2\tc\t0"],
    )
    return root


def test_load_beir_queries_keeps_judged_queries_with_grades(tmp_path: Path) -> None:
    examples = load_beir_queries(_tiny_beir(tmp_path / "tiny"))
    assert [e.id for e in examples] == ["q1", "q4"]  # queries.jsonl order; q2 (score 0) and q3 dropped
    assert examples[0].query == "first question"
    assert examples[0].relevant == {"a": 1, "b": 2}
    assert examples[0].metadata == {"kind": "a"}
    assert examples[1].relevant == {"c": 1}


def test_load_beir_queries_missing_split_lists_available_splits(tmp_path: Path) -> None:
    root = _tiny_beir(tmp_path / "tiny")
    with pytest.raises(LoaderError) as info:
        load_beir_queries(root, split="dev")
    assert "dev.tsv" in str(info.value)
    assert "splits available: test" in str(info.value)
    with pytest.raises(LoaderError, match="BEIR folder not found"):
        load_beir_queries(tmp_path / "absent")


@pytest.mark.parametrize(
    ("lines", "fragment", "line"),
    [
        (["query-id\tcorpus-id\tscore", "q1\ta"], "expected 3 tab-separated fields", 2),
        (["query-id\tcorpus-id\tscore", "q1\ta\tx"], "not an integer", 2),
        (["q1\ta\t1"], "expected the header", 1),
        (["query-id\tcorpus-id\tscore", "q1\ta\t1", "q1\ta\t2"], "conflicting scores", 3),
    ],
)
def test_bad_qrels_name_the_line(tmp_path: Path, lines: list[str], fragment: str, line: int) -> None:
    root = _tiny_beir(tmp_path / "tiny")
    _write_lines(root / "qrels" / "test.tsv", lines)
    with pytest.raises(LoaderError) as info:
        load_beir_queries(root)
    assert f"test.tsv:{line}" in str(info.value)
    assert fragment in str(info.value)


def test_qrels_for_unknown_queries_are_an_error(tmp_path: Path) -> None:
    root = _tiny_beir(tmp_path / "tiny")
    _write_lines(root / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q9\ta\t1"])
    with pytest.raises(LoaderError, match=r"missing from queries.jsonl, e.g. \['q9'\]"):
        load_beir_queries(root)


@needs_scifact
def test_scifact_splits() -> None:
    test = load_beir_queries(SCIFACT, split="test")
    train = load_beir_queries(SCIFACT, split="train")
    assert len(test) == 300
    assert len(train) == 809
    assert sum(len(e.relevant) for e in test) == 339
    assert sum(len(e.relevant) for e in train) == 919
    assert not {e.id for e in test} & {e.id for e in train}
    assert all(e.relevant and e.query.strip() for e in test + train)


# --- FinanceBench -------------------------------------------------------------------------------


@needs_financebench
def test_financebench_questions_have_evidence_and_answers() -> None:
    examples = load_financebench(FINANCEBENCH)
    assert len(examples) == 150
    assert len({e.id for e in examples}) == 150
    assert all(len(e.relevant) >= 1 for e in examples)
    assert all(e.answer and e.answer.strip() for e in examples)
    assert sum(len(e.relevant) for e in examples) == 187
    first = next(e for e in examples if e.id == "financebench_id_03029")
    assert first.relevant == {"3M_2018_10K_p59": 1}
    assert first.answer == "$1577.00"
    assert first.metadata["question_type"] == "metrics-generated"
    # Evidence pages belong to the filing the question is about.
    assert all(all(doc.startswith(e.metadata["doc_name"] + "_p") for doc in e.relevant) for e in examples)


def test_financebench_missing_answer_is_an_error(tmp_path: Path) -> None:
    root = _tiny_beir(tmp_path / "fb")
    _write_lines(root / "answers.jsonl", [json.dumps({"_id": "q1", "answer": "42"})])
    with pytest.raises(LoaderError, match="no gold answer for question 'q4'"):
        load_financebench(root)
    _write_lines(root / "answers.jsonl", [json.dumps({"_id": "q1", "answer": "42"}), "{oops"])
    with pytest.raises(LoaderError, match=r"answers\.jsonl:2"):
        load_financebench(root)


# --- dataset hash -------------------------------------------------------------------------------


def test_dataset_hash_of_a_file_is_its_sha256(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "eval.jsonl", [json.dumps({"query": "q"})])
    assert dataset_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_dataset_hash_of_a_folder_tracks_data_files_only(tmp_path: Path) -> None:
    root = _tiny_beir(tmp_path / "tiny")
    first = dataset_hash(root)
    assert first == dataset_hash(str(root))
    assert len(first) == 64
    (root / "SOURCE.md").write_text("notes", encoding="utf-8")
    assert dataset_hash(root) == first  # documentation does not change the data
    copy = tmp_path / "elsewhere"
    shutil.copytree(root, copy)
    assert dataset_hash(copy) == first  # location-independent
    with (root / "qrels" / "test.tsv").open("a", encoding="utf-8") as handle:
        handle.write("q1\tc\t1\n")
    assert dataset_hash(root) != first
    assert dataset_hash([root, root / "corpus.jsonl"]) != dataset_hash(root)


def test_dataset_hash_errors(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="not found"):
        dataset_hash(tmp_path / "absent")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("x", encoding="utf-8")
    with pytest.raises(LoaderError, match="no data files"):
        dataset_hash(tmp_path / "docs")
    with pytest.raises(ValueError):
        dataset_hash([])


@needs_scifact
def test_dataset_hash_of_real_folder_is_stable() -> None:
    assert dataset_hash(SCIFACT) == dataset_hash(SCIFACT)
