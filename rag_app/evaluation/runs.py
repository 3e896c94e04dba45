"""The `rag-app eval ...` jobs end to end: load a dataset, index what needs indexing, evaluate, report.

Kept apart from :mod:`rag_app.evaluation.retrieval` (the measuring) so the CLI stays a formatter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_app.core.errors import InputError
from rag_app.core.settings import SEARCH_MODES, Settings, check_search_mode
from rag_app.evaluation.datasets import EvalExample, dataset_hash, load_beir_queries, load_eval_jsonl
from rag_app.evaluation.report import (
    DatasetInfo,
    EvalReport,
    ReportRow,
    format_table,
    models_from_settings,
    settings_snapshot,
    write_report,
)
from rag_app.evaluation.retrieval import RERANK_KEYS, evaluate_retrieval, index_beir, reranker_fn
from rag_app.models.rerank import unavailable_note

METRIC_KEYS = ("recall@5", "recall@20", "mrr@5", "ndcg@10")


@dataclass
class RetrievalEvalResult:
    rows: list[ReportRow]
    modes: list[str]
    rerank: bool
    notes: list[str] = field(default_factory=list)
    report_files: dict[str, Path] = field(default_factory=dict)

    def metrics(self, config: str) -> dict[str, float | None]:
        row = next(r for r in self.rows if r.config == config)
        return {key: row.metrics.get(key) for key in METRIC_KEYS}

    def json_payload(self) -> dict[str, Any]:
        """One mode: exactly the four metric keys; with --rerank: {"retrieval", "reranked"};
        several modes: {config: metrics}."""
        if len(self.modes) == 1:
            mode = self.modes[0]
            if not self.rerank:
                return self.metrics(mode)
            plain, reranked = self.metrics(mode), self.metrics(f"{mode}+rerank")
            return {
                "retrieval": {k: plain[k] for k in RERANK_KEYS},
                "reranked": {k: reranked[k] for k in RERANK_KEYS},
            }
        return {row.config: self.metrics(row.config) for row in self.rows}

    def table(self) -> str:
        return format_table(self.rows)


def retrieval_eval(
    settings: Settings,
    *,
    beir: Path | None = None,
    split: str = "test",
    dataset: Path | None = None,
    site: str | None = None,
    mode: str | None = None,
    k: int = 20,
    rerank: bool = False,
    limit: int | None = None,
    report_dir: Path | None = None,
    progress: bool = True,
) -> RetrievalEvalResult:
    if mode is not None:
        check_search_mode(mode)
    if not 1 <= k <= 100:
        raise InputError(f"--k must be between 1 and 100, got {k}")
    modes = [mode] if mode else list(SEARCH_MODES)
    notes: list[str] = []
    collections: list[str] | None
    if beir is not None:
        if not beir.is_dir():
            raise InputError(f"--beir {beir}: not a folder")
        examples = load_beir_queries(beir, split=split)
        settings, collection, ingest = index_beir(settings, beir, progress=progress)
        notes.append(ingest.summary())
        eval_site, collections, name, source = "eval", [collection], f"{beir.name} ({split})", beir
    else:
        assert dataset is not None
        examples = load_eval_jsonl(dataset)
        eval_site = site or _single_site(examples, dataset)
        examples = [e for e in examples if (e.site or eval_site) == eval_site]
        collections, name, source = None, dataset.stem, dataset
    if limit:
        examples = examples[:limit]
    if not examples:
        raise InputError("no queries with relevance judgments to evaluate")
    rerank_fn = None
    if rerank:
        rerank_fn, reranker = reranker_fn(settings)
        note = unavailable_note(reranker)
        if note:
            notes.append(f"{note} (the '+rerank' rows keep retrieval order)")
    rows = evaluate_retrieval(
        settings, eval_site, collections, examples, modes=modes, k=k, rerank_fn=rerank_fn, progress=progress
    )
    result = RetrievalEvalResult(rows, modes, rerank, notes)
    if report_dir is not None:
        report = EvalReport(
            title=f"Retrieval: {name}",
            settings=settings_snapshot(settings),
            models=models_from_settings(settings),
            dataset=DatasetInfo(
                name=name, path=str(source), hash=dataset_hash(source), n_queries=len(examples)
            ),
            rows=rows,
        )
        result.report_files = write_report(report, report_dir)
    return result


def _single_site(examples: list[EvalExample], path: Path) -> str:
    sites = {e.site for e in examples if e.site}
    if len(sites) != 1:
        raise InputError(f"{path}: rows name sites {sorted(sites)}; pass --site")
    return sites.pop()
