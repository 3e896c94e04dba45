"""Evaluation sets: our own JSONL format, BEIR folders (SciFact) and FinanceBench, as EvalExample lists.

Every loader fails with a :class:`~rag_app.core.errors.LoaderError` that names the file and the line, so a
typo in a hand-written eval file is fixed in seconds instead of surfacing as a skewed metric.
:func:`dataset_hash` fingerprints the files so a report says exactly which data produced it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rag_app.core.errors import LoaderError, validation_message
from rag_app.core.types import SearchFilters

#: Files whose bytes make up a dataset folder's identity (SOURCE.md and README edits do not count).
DATA_SUFFIXES = frozenset({".jsonl", ".json", ".tsv", ".csv"})
_QRELS_HEADER = ("query-id", "corpus-id", "score")


class HistoryTurn(BaseModel):
    """One earlier message of a conversation, for multi-turn eval questions."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class EvalExample(BaseModel):
    """One evaluation question with its judgments and, where known, its gold answer.

    Relevance is given as ``relevant_ids`` (grade 1 each) and/or ``relevance`` (id -> grade, for graded
    sets like BEIR's); :attr:`relevant` merges them. Unknown fields are rejected so a misspelt key in a
    hand-written file is an error, not a silently unjudged question; free-form extras go in ``metadata``.
    """

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    query: str = Field(min_length=1)
    site: str | None = None
    program: str | None = None
    collection: str | None = None
    relevant_ids: list[str] = Field(default_factory=list)
    relevance: dict[str, int] = Field(default_factory=dict)
    answer: str | None = None
    history: list[HistoryTurn] = Field(default_factory=list)
    filters: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is blank")
        return value

    @field_validator("filters")
    @classmethod
    def _filters_valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Checked against the store's filter model now, so a bad filter fails at load time with a line.
        if value is not None:
            SearchFilters.model_validate(value)
        return value

    @property
    def relevant(self) -> dict[str, int]:
        """Judged-relevant ids -> grade (> 0 only); ``relevance`` grades override ``relevant_ids``."""
        grades = dict.fromkeys(self.relevant_ids, 1)
        grades.update(self.relevance)
        return {doc_id: grade for doc_id, grade in grades.items() if grade > 0}

    @property
    def search_filters(self) -> SearchFilters | None:
        """``filters`` as the store's filter model (None when the example has none)."""
        return None if self.filters is None else SearchFilters.model_validate(self.filters)


# --- reading ------------------------------------------------------------------------------------


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text) of non-blank lines, decoding each line as UTF-8 on its own.

    Decoding per line is what lets a bad byte be reported with its line number.
    """
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise LoaderError(path, "file not found") from None
    except OSError as exc:
        raise LoaderError(path, f"cannot open: {exc.strerror or exc}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[exc.start : exc.start + 1].hex()
                raise LoaderError(
                    path, f"not valid UTF-8 (byte 0x{bad} at column {exc.start + 1})", line=number
                ) from None
            if text.strip():
                yield number, text


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line, which must hold one JSON object."""
    for number, text in _iter_lines(path):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LoaderError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", line=number) from None
        if not isinstance(obj, dict):
            raise LoaderError(path, f"expected a JSON object, got {type(obj).__name__}", line=number)
        yield number, obj


def load_eval_jsonl(path: str | Path) -> list[EvalExample]:
    """Read an eval file: one :class:`EvalExample` JSON object per line, blank lines skipped.

    Ids, when given, must be unique, because per-query results and reports are keyed by them.
    """
    path = Path(path)
    examples: list[EvalExample] = []
    first_line_of: dict[str, int] = {}
    for number, obj in _iter_jsonl(path):
        try:
            example = EvalExample.model_validate(obj)
        except ValidationError as exc:
            raise LoaderError(path, validation_message(exc), line=number) from None
        if example.id is not None:
            if example.id in first_line_of:
                raise LoaderError(
                    path,
                    f"duplicate id {example.id!r} (first on line {first_line_of[example.id]})",
                    line=number,
                )
            first_line_of[example.id] = number
        examples.append(example)
    if not examples:
        raise LoaderError(path, "no examples (the file is empty)")
    return examples


# --- BEIR ---------------------------------------------------------------------------------------


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV (header ``query-id corpus-id score``) into qid -> {doc id: grade}."""
    qrels: dict[str, dict[str, int]] = {}
    lines = _iter_lines(path)
    header = next(lines, None)
    if header is None:
        raise LoaderError(path, "empty qrels file (expected a 'query-id\\tcorpus-id\\tscore' header)")
    number, text = header
    if tuple(field.strip() for field in text.rstrip("\r\n").split("\t")) != _QRELS_HEADER:
        raise LoaderError(
            path, f"expected the header 'query-id\\tcorpus-id\\tscore', got {text.strip()!r}", line=number
        )
    for number, text in lines:
        fields = [field.strip() for field in text.rstrip("\r\n").split("\t")]
        if len(fields) != 3 or not fields[0] or not fields[1]:
            raise LoaderError(path, f"expected 3 tab-separated fields, got {text.strip()!r}", line=number)
        query_id, doc_id, score_text = fields
        try:
            score = int(score_text)
        except ValueError:
            raise LoaderError(path, f"score {score_text!r} is not an integer", line=number) from None
        grades = qrels.setdefault(query_id, {})
        if grades.get(doc_id, score) != score:
            raise LoaderError(
                path,
                f"conflicting scores for ({query_id}, {doc_id}): {grades[doc_id]} and {score}",
                line=number,
            )
        grades[doc_id] = score
    return qrels


def _read_beir_queries(path: Path) -> dict[str, tuple[int, dict[str, Any]]]:
    queries: dict[str, tuple[int, dict[str, Any]]] = {}
    for number, obj in _iter_jsonl(path):
        query_id, text = obj.get("_id"), obj.get("text")
        if not isinstance(query_id, str | int) or not isinstance(text, str) or not text.strip():
            raise LoaderError(path, "expected a non-empty '_id' and 'text'", line=number)
        query_id = str(query_id)
        if query_id in queries:
            raise LoaderError(
                path, f"duplicate _id {query_id!r} (first on line {queries[query_id][0]})", line=number
            )
        queries[query_id] = (number, obj)
    return queries


def load_beir_queries(beir_dir: str | Path, split: str = "test") -> list[EvalExample]:
    """Questions of one BEIR split with their graded judgments, in ``queries.jsonl`` order.

    Like BEIR, only queries with at least one positive judgment in ``qrels/<split>.tsv`` are kept (the
    queries file holds every split's questions). A judgment for a query that is not in the queries file
    is an error rather than a silently dropped question.
    """
    beir_dir = Path(beir_dir)
    if not beir_dir.is_dir():
        raise LoaderError(beir_dir, "BEIR folder not found")
    qrels_path = beir_dir / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = sorted(p.stem for p in (beir_dir / "qrels").glob("*.tsv"))
        available = ", ".join(splits) if splits else "none (no qrels/*.tsv files)"
        raise LoaderError(qrels_path, f"no qrels for split {split!r}; splits available: {available}")
    queries = _read_beir_queries(beir_dir / "queries.jsonl")
    qrels = _read_qrels(qrels_path)
    unknown = sorted(set(qrels) - set(queries))
    if unknown:
        raise LoaderError(
            qrels_path, f"{len(unknown)} judged query id(s) missing from queries.jsonl, e.g. {unknown[:3]}"
        )
    examples = []
    for query_id, (_, obj) in queries.items():
        grades = {doc_id: grade for doc_id, grade in qrels.get(query_id, {}).items() if grade > 0}
        if grades:
            metadata = obj.get("metadata")
            examples.append(
                EvalExample(
                    id=query_id,
                    query=obj["text"],
                    relevance=grades,
                    metadata=dict(metadata) if isinstance(metadata, dict) else {},
                )
            )
    return examples


def load_financebench(financebench_dir: str | Path) -> list[EvalExample]:
    """FinanceBench's 150 questions: relevant evidence pages (``<doc_name>_p<page>``) and gold answers.

    The folder is BEIR-shaped plus ``answers.jsonl`` (``_id``, ``answer``, ``question_type``, ...), joined
    here so retrieval and answer quality are scored on the same examples.
    """
    financebench_dir = Path(financebench_dir)
    examples = load_beir_queries(financebench_dir, split="test")
    answers_path = financebench_dir / "answers.jsonl"
    answers: dict[str, dict[str, Any]] = {}
    for number, obj in _iter_jsonl(answers_path):
        answer = obj.get("answer")
        if not isinstance(obj.get("_id"), str) or not isinstance(answer, str) or not answer.strip():
            raise LoaderError(answers_path, "expected a string '_id' and a non-empty 'answer'", line=number)
        answers[obj["_id"]] = obj
    joined = []
    for example in examples:
        row = answers.get(example.id or "")
        if row is None:
            raise LoaderError(answers_path, f"no gold answer for question {example.id!r}")
        metadata = dict(example.metadata)
        for key in ("company", "doc_name", "question_type"):
            if key in row:
                metadata[key] = row[key]
        joined.append(example.model_copy(update={"answer": row["answer"], "metadata": metadata}))
    return joined


# --- fingerprint --------------------------------------------------------------------------------


def _data_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower() in DATA_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def dataset_hash(path_or_paths: str | Path | Sequence[str | Path]) -> str:
    """SHA-256 hex digest of a dataset, so a report names exactly the data it was computed on.

    One file: the digest of its bytes (equal to ``sha256sum``). A folder or several paths: each data
    file (``.jsonl``/``.json``/``.tsv``/``.csv``, recursively, sorted, hidden ones skipped) contributes
    its name relative to its folder, its size and its bytes, so renaming or editing a file changes the
    hash while copying the folder elsewhere or editing README/SOURCE files does not.
    """
    paths = (
        [Path(path_or_paths)] if isinstance(path_or_paths, str | Path) else [Path(p) for p in path_or_paths]
    )
    if not paths:
        raise ValueError("dataset_hash needs at least one path")
    for path in paths:
        if not path.exists():
            raise LoaderError(path, "dataset path not found")
    if len(paths) == 1 and paths[0].is_file():
        return hashlib.sha256(paths[0].read_bytes()).hexdigest()
    entries: list[tuple[str, Path]] = []
    for path in paths:
        if path.is_dir():
            files = _data_files(path)
            if not files:
                raise LoaderError(path, f"no data files ({', '.join(sorted(DATA_SUFFIXES))}) in folder")
            entries.extend((file.relative_to(path).as_posix(), file) for file in files)
        else:
            entries.append((path.name, path))
    digest = hashlib.sha256()
    for name, file in entries:
        data = file.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()
