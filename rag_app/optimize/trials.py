"""The grid of the retrieval-configuration search: what one trial is, its scores, and which one wins.

A trial is one ``k`` x search mode x rerank (off/on) x document handling x query rewriting
combination. Document handling (:data:`DOC_OPTIONS`): ``chunks`` (plain chunk ranking), ``cap2`` (at
most 2 chunks of a document in the top k), ``title`` (that cap, and a title/heading match weighted 2
in full-text search), ``doc`` (document-level fusion plus the cap; see
:mod:`rag_app.retrieval.doc_aware`). Query rewriting (:data:`REWRITE_OPTIONS`, only tried when an LM is
configured): ``none``, ``multi`` (multi-query fusion), ``hyde`` (a hypothetical passage).

The best trial has the highest score on the chosen metric (default ``ndcg@10``); ties go to rerank
off, no rewriting, plain chunks, then the smaller ``k``, then the mode order vector, fts, hybrid: the
cheaper configuration wins unless the dearer one is strictly better, because every query served pays
for the configuration chosen here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rag_app.core.errors import InputError
from rag_app.core.settings import SEARCH_MODES, check_search_mode
from rag_app.evaluation.metrics import DEFAULT_KS
from rag_app.retrieval.retriever import REWRITES

DEFAULT_TRIAL_KS: tuple[int, ...] = (10, 20, 30)
RERANK_OPTIONS: tuple[bool, ...] = (False, True)
#: Document handling -> (doc_signals, max_chunks_per_doc, fts_title_boost), cheapest first.
DOC_OPTIONS: dict[str, tuple[bool, int, float]] = {
    "chunks": (False, 0, 0.0),
    "cap2": (False, 2, 0.0),
    "title": (False, 2, 2.0),
    "doc": (True, 2, 0.0),
}
#: Query rewriting, cheapest first (the LM ones only run when an LM is configured).
REWRITE_OPTIONS: tuple[str, ...] = REWRITES
DEFAULT_METRIC = "ndcg@10"
_METRIC_NAMES = ("recall", "precision", "mrr", "ndcg")

__all__ = [
    "DEFAULT_METRIC",
    "DEFAULT_TRIAL_KS",
    "DOC_OPTIONS",
    "RERANK_OPTIONS",
    "REWRITE_OPTIONS",
    "Trial",
    "TrialResult",
    "metric_ks",
    "parse_metric",
    "pick_best",
    "trial_grid",
]


@dataclass(frozen=True)
class Trial:
    k: int
    mode: str
    rerank: bool
    docs: str = "chunks"
    rewrite: str = "none"

    @property
    def label(self) -> str:
        extra = "".join(f" {v}" for v, d in ((self.docs, "chunks"), (self.rewrite, "none")) if v != d)
        return f"k={self.k} {self.mode}{'+rerank' if self.rerank else ''}{extra}"

    def as_key(self) -> tuple[int, str, bool, str, str]:
        return (self.k, self.mode, self.rerank, self.docs, self.rewrite)

    @property
    def doc_signals(self) -> bool:
        return DOC_OPTIONS[self.docs][0]

    @property
    def max_chunks_per_doc(self) -> int:
        return DOC_OPTIONS[self.docs][1]

    @property
    def title_boost(self) -> float:
        return DOC_OPTIONS[self.docs][2]


@dataclass
class TrialResult:
    trial: Trial
    metrics: dict[str, float | None]
    reranked: bool = False
    resumed: bool = False

    def score(self, metric: str) -> float:
        value = self.metrics.get(metric)
        return float(value) if value is not None else float("-inf")

    def to_json(self) -> dict[str, Any]:
        return {
            "k": self.trial.k,
            "mode": self.trial.mode,
            "rerank": self.trial.rerank,
            "docs": self.trial.docs,
            "rewrite": self.trial.rewrite,
            "reranked": self.reranked,
            "metrics": self.metrics,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any], *, resumed: bool = False) -> TrialResult:
        """The inverse of :meth:`to_json` (extra fields, such as a checkpoint's key, are ignored)."""
        trial = Trial(
            int(record["k"]),
            str(record["mode"]),
            bool(record["rerank"]),
            str(record.get("docs", "chunks")),
            str(record.get("rewrite", "none")),
        )
        return cls(trial, dict(record["metrics"]), bool(record.get("reranked")), resumed=resumed)


def trial_grid(
    ks: Sequence[int] = DEFAULT_TRIAL_KS,
    modes: Sequence[str] = SEARCH_MODES,
    reranks: Sequence[bool] = RERANK_OPTIONS,
    docs: Sequence[str] = tuple(DOC_OPTIONS),
    rewrites: Sequence[str] = ("none",),
) -> list[Trial]:
    """Every combination, in the order they run: k, mode, rewriting, document handling, rerank off/on."""
    for mode in modes:
        check_search_mode(mode)
    for option in docs:
        if option not in DOC_OPTIONS:
            raise InputError(f"unknown document option {option!r}; known: {', '.join(DOC_OPTIONS)}")
    for option in rewrites:
        if option not in REWRITE_OPTIONS:
            raise InputError(f"unknown rewrite option {option!r}; known: {', '.join(REWRITE_OPTIONS)}")
    for k in ks:
        if not 1 <= int(k) <= 1000:
            raise InputError(f"k must be between 1 and 1000, got {k}")
    return [
        Trial(int(k), mode, bool(rerank), doc, rewrite)
        for k in ks
        for mode in modes
        for rewrite in rewrites
        for doc in docs
        for rerank in reranks
    ]


def parse_metric(metric: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ``("ndcg", 10)``; a clear error for anything else."""
    name, _, cutoff = metric.strip().lower().partition("@")
    if name not in _METRIC_NAMES or not cutoff.isdigit() or int(cutoff) < 1:
        raise InputError(
            f"unknown metric {metric!r}: use <name>@<k> with name one of {', '.join(_METRIC_NAMES)}, "
            "e.g. ndcg@10 or recall@20"
        )
    return name, int(cutoff)


def metric_ks(metric: str) -> dict[str, tuple[int, ...]]:
    """The cut-offs every trial is scored at: the reports' defaults plus the chosen metric's."""
    name, cutoff = parse_metric(metric)
    ks = {key: tuple(values) for key, values in DEFAULT_KS.items()}
    ks[name] = tuple(sorted({*ks.get(name, ()), cutoff}))
    return ks


def pick_best(results: Sequence[TrialResult], metric: str) -> TrialResult:
    """Highest ``metric``; ties go to rerank off, no rewriting, plain chunks, smaller k, then mode
    order (cheapest first)."""
    if not results:
        raise ValueError("no trials to choose from")
    order = {mode: index for index, mode in enumerate(SEARCH_MODES)}
    docs = list(DOC_OPTIONS)
    return min(
        results,
        key=lambda r: (
            -r.score(metric),
            r.trial.rerank,
            REWRITE_OPTIONS.index(r.trial.rewrite),
            docs.index(r.trial.docs),
            r.trial.k,
            order.get(r.trial.mode, len(order)),
        ),
    )
