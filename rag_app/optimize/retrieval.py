"""Retrieval-configuration search, no LM needed: ``rag-app optimize --site S --retrieval-only --dev FILE``.

Tries every ``k`` in (10, 20, 30) x mode in (vector, fts, hybrid) x document handling (chunks, cap2,
title, doc) x rerank (off, on), and with an LM also the query rewrites (multi, hyde)
(:mod:`rag_app.optimize.trials`) on the site's judged eval rows and saves the best to
``<state-dir>/<site>/retrieval.json``, which :class:`rag_app.retrieval.retriever.LanceDBRetriever`
reads for its ``default_k``/``default_mode``.

A trial scores what a program would see: the top ``k`` chunks of the mode (with the row's
``filters``, from the row's ``collection`` or all of the site's), reordered by the cross-encoder when
rerank is on (all ``k`` of them), collapsed to a document ranking (:func:`doc_ranking`) and scored
with :func:`retrieval_metrics` (recall@5, recall@20, MRR@5, nDCG@10, plus the chosen metric).

When the reranker is unavailable (its weights are missing; ``reranker_on_missing="fallback"``, or the
search degrades to the fallback itself) rerank-on trials keep retrieval order, score exactly like their
rerank-off twins, and so are never chosen; the notes say so.

Progress and resume: each finished trial is appended to ``<state-dir>/<site>/.retrieval_trials.jsonl``
(:class:`rag_app.optimize.checkpoint.Checkpoint`) with a key made of the dataset hash, the rows used,
the tables' versions, the metric cut-offs and the settings that change rankings (embedder, ``rrf_k``,
reranker and whether it is available). An interrupted search (Ctrl-C, a crash, an exception from
``on_trial``) loses nothing finished: a rerun with the same key skips those trials. ``resume=False``
drops them and starts over.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from rag_app.core.errors import InputError, ModelNotAvailableError
from rag_app.core.settings import SEARCH_MODES, Settings
from rag_app.core.types import Passage
from rag_app.evaluation.datasets import EvalExample, dataset_hash, load_eval_jsonl
from rag_app.evaluation.metrics import doc_ranking, mean_metrics, retrieval_metrics
from rag_app.evaluation.report import (
    DatasetInfo,
    EvalReport,
    ReportRow,
    format_table,
    git_commit,
    models_from_settings,
    settings_snapshot,
    write_report,
)
from rag_app.optimize.checkpoint import Checkpoint, checkpoint_key
from rag_app.optimize.trials import (
    DEFAULT_METRIC,
    DEFAULT_TRIAL_KS,
    DOC_OPTIONS,
    RERANK_OPTIONS,
    REWRITE_OPTIONS,
    Trial,
    TrialResult,
    metric_ks,
    pick_best,
    trial_grid,
)
from rag_app.retrieval.retriever import LanceDBRetriever

CHECKPOINT_NAME = ".retrieval_trials.jsonl"

__all__ = ["CHECKPOINT_NAME", "RetrievalSearchResult", "TrialCallback", "search_retrieval_config"]

#: ``on_trial(done, total, result, best)``, called after each newly run trial is checkpointed.
TrialCallback = Callable[[int, int, TrialResult, TrialResult], None]
#: ``rerank(query, passages)``: all ``passages`` in the cross-encoder's order.
RerankFn = Callable[[str, list[Passage]], list[Passage]]


@dataclass
class RetrievalSearchResult:
    site: str
    metric: str
    trials: list[TrialResult]
    best: TrialResult
    path: Path
    checkpoint: Path
    dataset: DatasetInfo
    reranker_available: bool
    reranker: str
    ran: int = 0
    resumed: int = 0
    notes: list[str] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)
    report_files: dict[str, Path] = field(default_factory=dict)

    def rows(self) -> list[ReportRow]:
        return [
            ReportRow(
                config=("* " if r is self.best else "  ") + r.trial.label,
                metrics={self.metric: r.metrics.get(self.metric), **r.metrics},
            )
            for r in self.trials
        ]

    def table(self) -> str:
        return format_table(self.rows())

    def json_payload(self) -> dict[str, Any]:
        return {
            **self.payload,
            "path": str(self.path),
            "ran": self.ran,
            "resumed": self.resumed,
            "report_files": {k: str(v) for k, v in self.report_files.items()},
        }


# ======================================================================================= the parts


class _QueryCache:
    """Wraps an embedder so each query is embedded once for all the trials."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self._vectors: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)

    def embed_query(self, text: str) -> Any:
        if text not in self._vectors:
            self._vectors[text] = self._embedder.embed_query(text)
        return self._vectors[text]


def _rows(examples: Sequence[EvalExample], site: str, limit: int | None) -> list[EvalExample]:
    rows = [e for e in examples if (e.site or site) == site and e.relevant]
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be at least 1, got {limit}")
        rows = rows[:limit]
    return rows


def _retrievers(
    settings: Settings, site: str, rows: Sequence[EvalExample], *, needs_vectors: bool
) -> dict[str | None, LanceDBRetriever]:
    """One retriever per collection the rows name (``None``: all of the site's), sharing one embedder."""
    from rag_app.models.embeddings import load_embedder

    embedder = _QueryCache(load_embedder(settings)) if needs_vectors else None
    retrievers: dict[str | None, LanceDBRetriever] = {}
    for row in rows:
        if row.collection not in retrievers:
            retrievers[row.collection] = LanceDBRetriever(
                settings,
                site,
                [row.collection] if row.collection else None,
                embedder=embedder,  # type: ignore[arg-type]
                use_saved_config=False,
            )
    return retrievers


def _table_versions(retrievers: Mapping[str | None, LanceDBRetriever], site: str) -> dict[str, Any]:
    versions: dict[str, Any] = {}
    for retriever in retrievers.values():
        for collection in retriever.collections:
            table = retriever.store.open_table(site, collection)
            versions[collection] = None if table is None else int(table.version)
    return versions


def _key(settings: Settings, site: str, parts: Mapping[str, Any]) -> str:
    relevant = {
        "embedder_backend": settings.embedder_backend,
        "embedder": settings.resolved_embedder_model,
        "embedder_revision": settings.embedder_revision,
        "embedder_precision": settings.embedder_precision,
        "rrf_k": settings.rrf_k,
        "reranker_model": settings.reranker_model,
        "reranker_revision": settings.reranker_revision,
        "reranker_backend": settings.reranker_backend,
        "reranker_max_length": settings.reranker_max_length,
        "reranker_query_max_tokens": settings.reranker_query_max_tokens,
        "db_dir": (
            settings.db_location if settings.db_is_remote else str(Path(settings.db_location).resolve())
        ),
    }
    return checkpoint_key({"site": site, **relevant, **parts})


def _reranker(settings: Settings, notes: list[str]) -> tuple[RerankFn, Any]:
    from rag_app.evaluation.retrieval import reranker_fn
    from rag_app.models.rerank import FallbackReranker

    try:
        rerank, reranker = reranker_fn(settings)
    except ModelNotAvailableError as exc:
        reranker = FallbackReranker(str(exc), settings.reranker_model, settings.reranker_revision)

        def rerank(query: str, passages: list[Passage]) -> list[Passage]:
            return reranker.rerank(query, passages, top_n=len(passages))

    if not reranker.available:
        notes.append(
            f"reranker {reranker.describe()}: rerank=on trials keep retrieval order and score like their "
            "rerank=off twins, so rerank=on is never chosen as best unless strictly better"
        )
    return rerank, reranker


def _run_trial(
    trial: Trial,
    rows: Sequence[EvalExample],
    retrievers: Mapping[str | None, LanceDBRetriever],
    rerank: RerankFn | None,
    *,
    reranker_available: bool,
    ks: dict[str, tuple[int, ...]],
    cache: dict[tuple[int, str, str, str], list[list[Passage]]],
) -> TrialResult:
    """Score one trial; ``cache`` keeps the retrieved passages of the last k/mode for its rerank twin."""
    key = (trial.k, trial.mode, trial.docs, trial.rewrite)
    retrieved = cache.get(key)
    if retrieved is None:
        retrieved = [
            list(
                retrievers[row.collection](
                    query=row.query,
                    k=trial.k,
                    mode=trial.mode,
                    filters=row.search_filters,
                    doc_signals=trial.doc_signals,
                    max_chunks_per_doc=trial.max_chunks_per_doc,
                    rewrite=trial.rewrite,
                    title_boost=trial.title_boost,
                ).passages
            )
            for row in rows
        ]
        cache.clear()  # only the retrieval in use: its rerank twin runs next
        cache[key] = retrieved
    per_query = []
    for row, passages in zip(rows, retrieved, strict=True):
        ordered = rerank(row.query, passages) if trial.rerank and rerank and passages else passages
        ranking = doc_ranking([p.doc_id for p in ordered])
        per_query.append(retrieval_metrics(ranking, row.relevant, ks))
    return TrialResult(trial, mean_metrics(per_query), reranked=trial.rerank and reranker_available)


def _payload(
    site: str,
    dev: Path,
    data_hash: str,
    metric: str,
    trials: Sequence[TrialResult],
    best: TrialResult,
    n_queries: int,
    reranker: Any,
    reranker_available: bool,
    notes: list[str],
) -> dict[str, Any]:
    """The content of ``retrieval.json``: the best configuration and every trial behind it."""
    return {
        "best": {
            "k": best.trial.k,
            "mode": best.trial.mode,
            "rerank": best.trial.rerank,
            "doc_signals": best.trial.doc_signals,
            "max_chunks_per_doc": best.trial.max_chunks_per_doc,
            "fts_title_boost": best.trial.title_boost,
            "rewrite": best.trial.rewrite,
            "score": best.score(metric),
            "metric": metric,
        },
        "trials": [r.to_json() for r in trials],
        "dataset_hash": data_hash,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "site": site,
        "dataset": str(dev),
        "n_queries": n_queries,
        "reranker": reranker.describe() if reranker is not None else None,
        "reranker_available": reranker_available,
        "notes": notes,
    }


def _save(path: Path, payload: dict[str, Any]) -> None:
    """Write aside, then rename: a retriever reading the file never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


# ======================================================================================== the search


def search_retrieval_config(
    settings: Settings,
    site: str,
    dev: Path,
    *,
    metric: str = DEFAULT_METRIC,
    ks: Sequence[int] = DEFAULT_TRIAL_KS,
    modes: Sequence[str] = SEARCH_MODES,
    reranks: Sequence[bool] = RERANK_OPTIONS,
    docs: Sequence[str] = tuple(DOC_OPTIONS),
    rewrites: Sequence[str] = REWRITE_OPTIONS,
    lm: Any = None,
    state_dir: Path | None = None,
    limit: int | None = None,
    resume: bool = True,
    progress: bool = True,
    on_trial: TrialCallback | None = None,
    report_dir: Path | None = None,
) -> RetrievalSearchResult:
    """Run (or resume) the grid on the judged rows of ``dev`` and save the best configuration.

    Writes ``<state_dir>/<site>/retrieval.json`` (``state_dir`` defaults to ``settings.programs_dir``,
    where retrievers read it) and, with ``report_dir``, a report.json/.md/.png of every trial.
    Query rewrites other than ``none`` need ``lm`` (they are left out, with a note, without one).
    """
    from tqdm.auto import tqdm

    metric = metric.strip().lower()
    cutoffs = metric_ks(metric)
    notes: list[str] = []
    if lm is None and any(r != "none" for r in rewrites):
        notes.append("query rewriting (multi, hyde) not tried: no LM configured")
        rewrites = [r for r in rewrites if r == "none"] or ["none"]
    grid = trial_grid(ks, modes, reranks, docs, rewrites)
    settings.collections_for(site)
    rows = _rows(load_eval_jsonl(dev), site, limit)
    if not rows:
        raise InputError(f"{dev}: no rows of site {site!r} with relevant_ids to evaluate retrieval on")
    state_dir = Path(state_dir) if state_dir is not None else settings.programs_dir
    out_dir = state_dir / site
    checkpoint = Checkpoint(out_dir / CHECKPOINT_NAME)
    data_hash = dataset_hash(dev)

    retrievers = _retrievers(settings, site, rows, needs_vectors=any(mode != "fts" for mode in modes))
    rerank, reranker = _reranker(settings, notes) if any(reranks) else (None, None)
    available = bool(getattr(reranker, "available", False))
    key = _key(
        settings,
        site,
        {
            "dataset_hash": data_hash,
            "rows": [row.query for row in rows],
            "tables": _table_versions(retrievers, site),
            "ks": cutoffs,
            "reranker_available": available,
            "lm": None if lm is None else str(getattr(lm, "model", type(lm).__name__)),
        },
    )
    if not resume:
        checkpoint.drop(key)
    done = {
        r.trial.as_key(): r
        for r in (TrialResult.from_json(rec, resumed=True) for rec in checkpoint.records(key))
    }

    results = {t.as_key(): done[t.as_key()] for t in grid if t.as_key() in done}
    resumed = len(results)
    best = pick_best(list(results.values()), metric) if results else None
    cache: dict[tuple[int, str, str, str], list[list[Passage]]] = {}
    bar = tqdm(total=len(grid), initial=resumed, desc=f"retrieval trials ({site})", disable=not progress)
    if best is not None:
        bar.set_postfix_str(f"best {metric}={best.score(metric):.3f} ({best.trial.label})")
    ran = 0
    try:
        for trial in grid:
            if trial.as_key() in results:
                continue
            with dspy.context(lm=lm):
                result = _run_trial(
                    trial, rows, retrievers, rerank, reranker_available=available, ks=cutoffs, cache=cache
                )
            checkpoint.add(
                key, **result.to_json(), date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            )
            results[trial.as_key()] = result
            ran += 1
            best = pick_best(list(results.values()), metric)
            bar.update(1)
            bar.set_postfix_str(f"best {metric}={best.score(metric):.3f} ({best.trial.label})")
            if on_trial is not None:
                on_trial(len(results), len(grid), result, best)
    finally:
        bar.close()

    ordered = [results[t.as_key()] for t in grid]
    best = pick_best(ordered, metric)
    payload = _payload(site, dev, data_hash, metric, ordered, best, len(rows), reranker, available, notes)
    path = out_dir / "retrieval.json"
    _save(path, payload)
    dataset = DatasetInfo(name=dev.stem, path=str(dev), hash=data_hash, n_queries=len(rows))
    result = RetrievalSearchResult(
        site=site,
        metric=metric,
        trials=ordered,
        best=best,
        path=path,
        checkpoint=checkpoint.path,
        dataset=dataset,
        reranker_available=available,
        reranker=payload["reranker"] or "",
        ran=ran,
        resumed=resumed,
        notes=notes,
        payload=payload,
    )
    if report_dir is not None:
        report = EvalReport(
            title=f"Retrieval configurations: {site} on {dev.stem} (best {best.trial.label})",
            settings=settings_snapshot(settings),
            models=models_from_settings(settings),
            dataset=dataset,
            rows=result.rows(),
        )
        result.report_files = write_report(report, report_dir)
    return result
