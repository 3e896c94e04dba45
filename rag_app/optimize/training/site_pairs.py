"""Mine a site's training pairs through its :class:`~rag_app.runtime.Runtime` and write the pairs file.

The glue between the labelled queries (:mod:`.labelled`), the site's own retrieval (the runtime's
retriever, with each query's collection and filters, exactly as ``rag-app eval`` retrieves) and the
miner (:mod:`.hard_negatives`). Kept apart so the miner itself runs on any ``retrieve`` callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from rag_app.core.errors import InputError
from rag_app.core.types import Passage
from rag_app.optimize.training.hard_negatives import MiningReport, mine_pairs, store_positives
from rag_app.optimize.training.labelled import LabelledQuery
from rag_app.optimize.training.pairs import write_pairs
from rag_app.runtime import Runtime
from rag_app.store.connection import display_location

__all__ = ["RETRIEVE_K", "mine_site_pairs"]

#: Candidates per query: the retriever's top 20, what the reranker re-orders in the pipeline.
RETRIEVE_K = 20


def site_retrieve(
    runtime: Runtime, site: str, k: int = RETRIEVE_K
) -> Callable[[LabelledQuery], Sequence[Passage]]:
    """``retrieve(query)`` over ``site`` (the query's collection when it names one), its top ``k``."""

    def retrieve(query: LabelledQuery) -> Sequence[Passage]:
        retriever = runtime.retriever(site, query.collection)
        return retriever(query=query.query, k=k, filters=query.filters).passages

    return retrieve


def mine_site_pairs(
    runtime: Runtime,
    site: str,
    queries: Sequence[LabelledQuery],
    out: Path,
    *,
    k: int = RETRIEVE_K,
    progress: Callable[[int, int], None] | None = None,
) -> MiningReport:
    """Mine ``queries`` against ``site``'s index and write the pairs to ``out``; the report.

    An index without the judged documents (not ingested, or ingested elsewhere) is an error naming the
    fix, rather than a file of negatives only.
    """
    collections = runtime.settings.collections_for(site)
    positives = store_positives(runtime.retriever(site).store, site, collections)
    report = mine_pairs(queries, site_retrieve(runtime, site, k), positives, progress=progress)
    splits = {r.split for r in report.rows}
    if report.queries == 0 or splits != {"train", "dev"}:
        raise InputError(
            f"site {site!r}: {report.queries} of {len(queries)} labelled queries have their judged "
            f"documents in the index at {display_location(runtime.settings.db_location)} "
            f"(splits mined: {sorted(splits) or 'none'});"
            f" ingest the site's data first (`rag-app ingest --site {site} ...`) and check that "
            "relevant_ids name its doc ids"
        )
    write_pairs(out, report.rows)
    return report
