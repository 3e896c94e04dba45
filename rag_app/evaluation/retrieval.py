"""Run retrieval evaluations: each (mode, rerank on/off) configuration over one set of judged queries.

Metrics count documents, not chunks: a document is ranked by its best chunk and duplicates are
removed, so numbers compare with published BEIR figures. The reranked configuration reorders the
best chunk of each of the top ``k`` documents (the same window a program reranks), so the lift it
shows is the reranker's alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rag_app.core.settings import Settings
from rag_app.core.types import Passage
from rag_app.evaluation.datasets import EvalExample
from rag_app.evaluation.metrics import mean_metrics, retrieval_metrics
from rag_app.evaluation.report import ReportRow
from rag_app.ingest.pipeline import IngestReport, ingest_paths
from rag_app.retrieval.retriever import LanceDBRetriever

EVAL_SITE = "eval"
#: Chunks fetched per query so that ``k`` distinct documents remain after de-duplication.
CHUNKS_PER_DOC = 3
RERANK_KEYS = ("recall@5", "mrr@5", "ndcg@10")


@dataclass
class EvalConfig:
    mode: str
    rerank: bool

    @property
    def name(self) -> str:
        return f"{self.mode}+rerank" if self.rerank else self.mode


def beir_collection(beir_dir: Path) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", beir_dir.resolve().name.lower()).strip("_") or "beir"


def with_eval_site(settings: Settings, collection: str) -> Settings:
    """Settings that also know the evaluation site, so BEIR corpora get their own tables."""
    sites = {**settings.sites, EVAL_SITE: sorted({*settings.sites.get(EVAL_SITE, []), collection})}
    return settings.model_copy(update={"sites": sites})


def index_beir(
    settings: Settings, beir_dir: Path, *, progress: bool = True
) -> tuple[Settings, str, IngestReport]:
    """Index a BEIR corpus into the ``eval`` site (idempotent: a second run only hashes)."""
    collection = beir_collection(beir_dir)
    settings = with_eval_site(settings, collection)
    report = ingest_paths(settings, EVAL_SITE, collection, [beir_dir], progress=progress)
    return settings, collection, report


def doc_level(passages: Sequence[Passage]) -> list[Passage]:
    """Each document once, at the rank of its best chunk."""
    seen: set[str] = set()
    best: list[Passage] = []
    for passage in passages:
        if passage.doc_id not in seen:
            seen.add(passage.doc_id)
            best.append(passage)
    return best


def evaluate_retrieval(
    settings: Settings,
    site: str,
    collections: Sequence[str] | None,
    examples: Sequence[EvalExample],
    *,
    modes: Sequence[str] = ("vector", "fts", "hybrid"),
    k: int = 20,
    rerank_fn: Callable[[str, list[Passage]], list[Passage]] | None = None,
    progress: bool = True,
) -> list[ReportRow]:
    """One row per configuration: every mode, and every mode reranked when ``rerank_fn`` is given.

    ``rerank_fn(query, passages) -> passages`` reorders a candidate window (see
    :func:`reranker_fn`). Examples with filters are evaluated with them.
    """
    retriever = LanceDBRetriever(settings, site, collections, use_saved_config=False)
    configs = [EvalConfig(m, False) for m in modes] + (
        [EvalConfig(m, True) for m in modes] if rerank_fn else []
    )
    per_config: dict[str, list[dict[str, float]]] = {c.name: [] for c in configs}
    bar = tqdm(total=len(examples) * len(modes), desc="eval retrieval", disable=not progress, leave=False)
    for mode in modes:
        for example in examples:
            relevant = example.relevant
            if not relevant:
                continue
            pred = retriever(
                query=example.query, k=k * CHUNKS_PER_DOC, mode=mode, filters=example.search_filters
            )
            docs = doc_level(pred.passages)[:k]
            per_config[mode].append(retrieval_metrics([p.doc_id for p in docs], relevant))
            if rerank_fn:
                reranked = rerank_fn(example.query, docs)
                per_config[f"{mode}+rerank"].append(retrieval_metrics([p.doc_id for p in reranked], relevant))
            bar.update(1)
    bar.close()
    return [
        ReportRow(config=c.name, metrics=mean_metrics(per_config[c.name]))
        for c in configs
        if per_config[c.name]
    ]


def reranker_fn(settings: Settings) -> tuple[Callable[[str, list[Passage]], list[Passage]], Any]:
    """A rerank function over the whole window (top_n = window size), and the reranker behind it."""
    from rag_app.models.rerank import load_reranker

    reranker = load_reranker(settings)

    def rerank(query: str, passages: list[Passage]) -> list[Passage]:
        return reranker.rerank(query, passages, top_n=len(passages))

    return rerank, reranker
