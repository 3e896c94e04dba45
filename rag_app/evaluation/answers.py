"""Answer evaluation: run a site program on eval rows and score what it answers.

Each row's ``query`` becomes the program's main input through the program's own
``input_from_question`` (builddaily ``chat_bridge``: ``message`` plus the row's ``history``;
``resources_search``: ``query``; paiddaily: ``setup``/``description`` plus the row's ``filters``;
sagedaily ``reading``: ``question``); further ``Input`` fields can be given per row in
``metadata["inputs"]``. The program then runs through its typed ``run`` entry point, exactly as the
CLI and the server run it.

Per row, from :mod:`rag_app.evaluation.metrics`:

* ``exact_match`` and ``token_f1`` (SQuAD) against the gold ``answer``, on the answer text with its
  ``[n]`` citation markers removed (a marker is not part of the claim). Rows without a gold answer
  get ``None`` and are left out of these averages;
* ``citation_precision``: share of cited passages whose document is in the row's ``relevant_ids``
  (``None`` when the answer cites nothing or the row has no judgments);
* ``not_found``: 1 when the answer is the programs' not-found phrase; its mean is ``not_found_rate``.

With an LM configured and reachable (or passed in), DSPy's LM-judged metrics are added for rows with
a gold answer: ``semantic_f1`` (:class:`dspy.evaluate.SemanticF1`: ``example.question`` /
``example.response`` against ``pred.response``) and ``complete_and_grounded``
(:class:`dspy.evaluate.CompleteAndGrounded`, which also reads ``pred.context``: the passages the
program answered from, numbered as the program showed them). A judge call that fails leaves ``None``
for that row and is counted in the notes.

The answer mode is recorded: ``lm`` when every answer came from the LM, else ``extractive`` (with
the per-mode counts), since extractive answers and LM answers are not comparable numbers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rag_app.answering.not_found import is_not_found
from rag_app.core.errors import InputError
from rag_app.core.settings import Settings
from rag_app.evaluation.datasets import EvalExample, dataset_hash, load_eval_jsonl
from rag_app.evaluation.metrics import citation_precision, exact_match, mean_metrics, token_f1
from rag_app.evaluation.report import (
    DatasetInfo,
    EvalReport,
    ReportRow,
    format_table,
    models_from_settings,
    settings_snapshot,
    write_report,
)

#: Per-row metric keys (``not_found`` averages to :data:`NOT_FOUND_RATE`).
ANSWER_KEYS = ("exact_match", "token_f1", "citation_precision", "not_found")
#: LM-judged metric keys, present only when a judge LM was available.
JUDGE_KEYS = ("semantic_f1", "complete_and_grounded")
NOT_FOUND_RATE = "not_found_rate"

_CITE = re.compile(r"\[\s*(?:(?:passage|source)\s*)?\d+(?:\s*(?:,|;|and)\s*\d+)*\s*\]", re.IGNORECASE)

__all__ = [
    "ANSWER_KEYS",
    "JUDGE_KEYS",
    "NOT_FOUND_RATE",
    "AnswerEvalResult",
    "AnswerRow",
    "answer_metrics",
    "answers_eval",
    "evaluate_answers",
    "lm_name",
    "program_input",
    "select_rows",
    "strip_citations",
    "write_answers_report",
]


# ============================================================================================ rows


def strip_citations(text: str) -> str:
    """The answer without its ``[n]``/``[n, m]``/``[Passage n]`` markers, whitespace tidied."""
    cleaned = _CITE.sub(" ", text or "")
    cleaned = re.sub(r"\s+([.,;:!?])", r"\1", re.sub(r"[ \t]{2,}", " ", cleaned))
    return cleaned.strip()


def select_rows(
    examples: Sequence[EvalExample], site: str, program: str | None = None, *, all_rows: bool = False
) -> tuple[list[EvalExample], int]:
    """Rows of ``site`` (rows naming no site count as the site's) meant for ``program``.

    Rows naming another program are left out unless ``all_rows`` (every row of the site then runs
    through ``program``). Returns the rows and how many were left out.
    """
    kept = [
        e
        for e in examples
        if (e.site or site) == site and (all_rows or program is None or e.program in (None, program))
    ]
    return kept, len(examples) - len(kept)


def row_label(example: EvalExample, index: int) -> str:
    return f"row {index + 1}" + (f" ({example.id})" if example.id else "")


def program_input(cls: Any, example: EvalExample, index: int = 0) -> BaseModel:
    """The program's ``Input`` for a row: ``query`` as its main input, ``history``/``filters`` passed
    through where the program takes them, and ``metadata["inputs"]`` as further fields."""
    history = [turn.model_dump() for turn in example.history] or None
    extra: dict[str, Any] = dict(example.metadata.get("inputs") or {})
    if example.filters:
        extra["filters"] = dict(example.filters)
    try:
        return cls.input_from_question(example.query, history, **extra)
    except ValueError as exc:
        raise InputError(
            f"{row_label(example, index)}: invalid input for {cls.site}/{cls.name}: {exc}"
        ) from exc


def answer_metrics(
    answer: str,
    cited_doc_ids: Sequence[str],
    gold: str | None,
    relevant: Mapping[str, float] | Sequence[str] | None,
) -> dict[str, float | None]:
    """The per-row answer metrics (see the module docstring); ``None`` where undefined."""
    text = strip_citations(answer)
    has_gold = gold is not None and bool(gold.strip())
    return {
        "exact_match": exact_match(text, gold) if has_gold else None,  # type: ignore[arg-type]
        "token_f1": token_f1(text, gold) if has_gold else None,  # type: ignore[arg-type]
        "citation_precision": citation_precision(list(cited_doc_ids), relevant) if relevant else None,
        "not_found": 1.0 if is_not_found(text) else 0.0,
    }


def lm_name(lm: Any) -> str | None:
    """A printable id of an LM object (``dspy.LM.model``), or ``None``."""
    if lm is None:
        return None
    return str(getattr(lm, "model", None) or type(lm).__name__)


# ========================================================================================== judges


class _Judges:
    """SemanticF1 and CompleteAndGrounded under one LM; failures give ``None`` and are counted."""

    def __init__(self, lm: Any) -> None:
        import dspy

        self.lm = lm
        self.semantic = dspy.evaluate.SemanticF1()
        self.grounded = dspy.evaluate.CompleteAndGrounded()
        self.failures: Counter[str] = Counter()

    def __call__(self, question: str, gold: str, answer: str, context: str) -> dict[str, float | None]:
        import dspy

        example = dspy.Example(question=question, response=gold)
        pred = dspy.Prediction(response=answer, context=context)
        scores: dict[str, float | None] = {}
        for key, judge in (("semantic_f1", self.semantic), ("complete_and_grounded", self.grounded)):
            try:
                with dspy.context(lm=self.lm):
                    scores[key] = float(judge(example, pred).score)
            except Exception as exc:
                self.failures[f"{key}: {type(exc).__name__}"] += 1
                scores[key] = None
        return scores


# ========================================================================================== result


@dataclass
class AnswerRow:
    """One evaluated row: what the program answered and how it scored."""

    id: str | None
    query: str
    answer: str
    gold: str | None
    mode: str
    cited_doc_ids: list[str]
    metrics: dict[str, float | None]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "query": self.query,
            "answer": self.answer,
            "gold": self.gold,
            "mode": self.mode,
            "cited_doc_ids": self.cited_doc_ids,
            "metrics": self.metrics,
            "notes": self.notes,
        }


@dataclass
class AnswerEvalResult:
    site: str
    program: str
    rows: list[AnswerRow]
    metrics: dict[str, float | None]
    mode: str
    mode_counts: dict[str, int]
    judged: bool
    lm: str | None = None
    judge_lm: str | None = None
    state: str | None = None
    state_sha256: str | None = None
    retrieval_config: dict[str, Any] = field(default_factory=dict)
    skipped_rows: int = 0
    notes: list[str] = field(default_factory=list)
    dataset: DatasetInfo | None = None
    report_files: dict[str, Path] = field(default_factory=dict)

    @property
    def config(self) -> str:
        return f"{self.site}/{self.program} [{self.mode}]"

    def report_row(self) -> ReportRow:
        return ReportRow(config=self.config, metrics=self.metrics)

    def table(self) -> str:
        return format_table([self.report_row()])

    def json_payload(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "program": self.program,
            "mode": self.mode,
            "mode_counts": self.mode_counts,
            "lm": self.lm,
            "judged": self.judged,
            "judge_lm": self.judge_lm,
            "state": self.state,
            "state_sha256": self.state_sha256,
            "retrieval_config": self.retrieval_config,
            "n_rows": len(self.rows),
            "skipped_rows": self.skipped_rows,
            "metrics": self.metrics,
            "dataset": self.dataset.model_dump() if self.dataset else None,
            "notes": self.notes,
            "report_files": {k: str(v) for k, v in self.report_files.items()},
        }


def _aggregate(rows: Sequence[AnswerRow]) -> dict[str, float | None]:
    means = mean_metrics([row.metrics for row in rows])
    return {(NOT_FOUND_RATE if key == "not_found" else key): value for key, value in means.items()}


# ======================================================================================= evaluation


def evaluate_answers(
    settings: Settings,
    site: str,
    program: str,
    examples: Sequence[EvalExample],
    *,
    lm: Any = None,
    judge: bool = True,
    judge_lm: Any = None,
    program_obj: Any = None,
    all_rows: bool = False,
    limit: int | None = None,
    progress: bool = False,
    on_row: Callable[[int, int, AnswerRow], None] | None = None,
) -> AnswerEvalResult:
    """Run ``site``/``program`` on the rows meant for it and score the answers.

    ``lm``: the LM the program uses (default: the one from settings, resolved per call by the program;
    none configured or reachable means extractive answers). ``judge_lm``: the LM of the DSPy judges
    (default: ``lm``, else the settings' LM when configured and reachable); ``judge=False`` skips them.
    ``program_obj``: an already built program (tests). ``on_row(i, n, row)`` is called after each row.
    """
    from tqdm.auto import tqdm

    from rag_app.answering.grounding import format_passages
    from rag_app.answering.registry import program_class
    from rag_app.models.lm import LMResolver
    from rag_app.retrieval.config import load_retrieval_config
    from rag_app.runtime import Runtime

    cls = program_class(settings, site, program)
    rows_in, skipped = select_rows(examples, site, program, all_rows=all_rows)
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be at least 1, got {limit}")
        rows_in = rows_in[:limit]
    if not rows_in:
        raise InputError(
            f"no rows for {site}/{program} in the dataset ({skipped} row(s) name another site or program; "
            "--all-rows runs every row of the site through the program)"
        )
    notes: list[str] = []
    if skipped:
        notes.append(f"left out {skipped} row(s) naming another site or program")

    instance = program_obj if program_obj is not None else cls(settings, services=Runtime(settings), lm=lm)
    judges = None
    judge_model: Any = None
    if judge:
        judge_model, why_not = LMResolver(settings).resolve(judge_lm if judge_lm is not None else lm)
        if judge_model is not None:
            judges = _Judges(judge_model)
        else:
            why = re.sub(r"[:;] extractive answer$", "", why_not or "no LM")
            notes.append(f"SemanticF1 and CompleteAndGrounded not computed: {why}")

    results: list[AnswerRow] = []
    bar = tqdm(total=len(rows_in), desc=f"answers {site}/{program}", disable=not progress, leave=False)
    try:
        for index, example in enumerate(rows_in):
            out = instance.run(program_input(cls, example, index))
            cited = [c.doc_id for c in out.citations]
            metrics = answer_metrics(out.answer, cited, example.answer, example.relevant)
            if judges is not None:
                has_gold = example.answer is not None and bool(example.answer.strip())
                if has_gold:
                    metrics.update(
                        judges(
                            example.query,
                            example.answer,  # type: ignore[arg-type]
                            strip_citations(out.answer),
                            format_passages(out.passages),
                        )
                    )
                else:
                    metrics.update(dict.fromkeys(JUDGE_KEYS))
            row = AnswerRow(
                id=example.id,
                query=example.query,
                answer=out.answer,
                gold=example.answer,
                mode=out.mode,
                cited_doc_ids=cited,
                metrics=metrics,
                notes=list(out.notes),
            )
            results.append(row)
            bar.update(1)
            if on_row is not None:
                on_row(index + 1, len(rows_in), row)
    finally:
        bar.close()

    if judges is not None and judges.failures:
        failed = ", ".join(f"{n}x {what}" for what, n in sorted(judges.failures.items()))
        notes.append(f"judge calls failed (left out of the averages): {failed}")
    state = getattr(instance, "state", None)
    state = state if isinstance(state, str) and Path(state).is_file() else None
    mode_counts = dict(Counter(row.mode for row in results))
    mode = "lm" if mode_counts.get("lm", 0) == len(results) else "extractive"
    if mode == "extractive" and mode_counts.get("lm"):
        notes.append(f"mixed answer modes: {mode_counts}")
    return AnswerEvalResult(
        site=site,
        program=program,
        rows=results,
        metrics=_aggregate(results),
        mode=mode,
        mode_counts=mode_counts,
        judged=judges is not None,
        lm=lm_name(lm) or (settings.lm_model if mode_counts.get("lm") else None),
        judge_lm=lm_name(judge_model) if judges is not None else None,
        state=state,
        state_sha256=hashlib.sha256(Path(state).read_bytes()).hexdigest() if state else None,
        retrieval_config=load_retrieval_config(settings, site),
        skipped_rows=skipped,
        notes=notes,
    )


def write_answers_report(
    result: AnswerEvalResult, settings: Settings, out_dir: str | Path, *, title: str | None = None
) -> dict[str, Path]:
    """``report.json``/``.md``/``.png`` (provenance: settings, models, dataset hash, git commit, answer
    mode) plus ``answers.jsonl`` with every row's answer and metrics. Returns the paths."""
    models: dict[str, Any] = dict(models_from_settings(settings))
    models.update(
        {
            "answer_mode": result.mode,
            "lm_used": result.lm,
            "judge_lm": result.judge_lm,
            "judged": result.judged,
            "program_state": result.state,
            "program_state_sha256": result.state_sha256,
            "retrieval_config": result.retrieval_config or None,
        }
    )
    name = result.dataset.name if result.dataset else "answers"
    report = EvalReport(
        title=title or f"Answers: {result.site}/{result.program} on {name} (mode: {result.mode})",
        settings=settings_snapshot(settings),
        models=models,
        dataset=result.dataset,
        rows=[result.report_row()],
    )
    paths = write_report(report, out_dir)
    details = Path(out_dir) / "answers.jsonl"
    with details.open("w", encoding="utf-8") as handle:
        for row in result.rows:
            handle.write(json.dumps(row.to_json(), ensure_ascii=False, default=str) + "\n")
    paths["answers"] = details
    result.report_files = paths
    return paths


def answers_eval(
    settings: Settings,
    site: str,
    program: str,
    dataset: Path,
    *,
    limit: int | None = None,
    report_dir: Path | None = None,
    all_rows: bool = False,
    judge: bool = True,
    lm: Any = None,
    judge_lm: Any = None,
    program_obj: Any = None,
    progress: bool = True,
) -> AnswerEvalResult:
    """The ``rag-app eval answers`` job: load the dataset, evaluate, optionally write the report."""
    examples = load_eval_jsonl(dataset)
    result = evaluate_answers(
        settings,
        site,
        program,
        examples,
        lm=lm,
        judge=judge,
        judge_lm=judge_lm,
        program_obj=program_obj,
        all_rows=all_rows,
        limit=limit,
        progress=progress,
    )
    result.dataset = DatasetInfo(
        name=dataset.stem, path=str(dataset), hash=dataset_hash(dataset), n_queries=len(result.rows)
    )
    if report_dir is not None:
        write_answers_report(result, settings, report_dir)
    return result
