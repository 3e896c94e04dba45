"""Would a new embedder retrieve better on this site? Dev scores of two embedders over the real index.

The bi-encoder fit scores its checkpoints on the passages of the pairs file (fast, picks the step);
activating an embedder is a bigger decision (every table is re-embedded), so it is decided on the
site's whole index: each dev query is searched over every stored chunk with the current embedder (the
stored vectors, which it built) and with the new one (the stored ``search_text`` embedded in memory),
in the site's search mode: dense alone for ``vector``, fused by reciprocal rank with the same
full-text list for ``hybrid`` (as :func:`rag_app.store.search.rrf_fuse` fuses). Document-level signals
of the retriever are left out of both sides. Scores use the evaluation package's metrics (documents
counted once; ``page#section`` credited to ``page``), so they read like ``rag-app eval retrieval``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rag_app.core.settings import Settings
from rag_app.evaluation.metrics import doc_ranking, mean_metrics, retrieval_metrics
from rag_app.models.embeddings import Embedder
from rag_app.optimize.training.labelled import LabelledQuery
from rag_app.retrieval.retriever import LanceDBRetriever
from rag_app.store.schema import FTS_COLUMN, stored_embedder
from rag_app.store.search import rrf_fuse
from rag_app.store.vector_store import VectorStore, read_columns

__all__ = ["KS", "compare_embedders"]

KS = {"mrr": [5], "ndcg": [10], "recall": [5]}
#: Chunks taken from each list before fusing (what hybrid search fetches for a top 20).
DEPTH = 50


def _index(
    store: VectorStore, site: str, collections: Sequence[str]
) -> tuple[list[str], list[str], list[str], Any]:
    ids: list[str] = []
    docs: list[str] = []
    texts: list[str] = []
    vectors: list[np.ndarray] = []
    models = set()
    for collection in collections:
        table = store.open_table(site, collection)
        if table is None or table.count_rows() == 0:
            continue
        models.add(stored_embedder(table)[0])
        data = read_columns(table, ["id", "doc_id", FTS_COLUMN, "vector"])
        ids += data["id"].to_pylist()
        docs += data["doc_id"].to_pylist()
        texts += [t or "" for t in data[FTS_COLUMN].to_pylist()]
        flat = np.asarray(data["vector"].combine_chunks().flatten(), dtype=np.float32)
        vectors.append(flat.reshape(data.num_rows, -1))
    stacked = np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32)
    return ids, docs, texts, (stacked, models)


def _normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def compare_embedders(
    settings: Settings,
    site: str,
    queries: Sequence[LabelledQuery],
    current: Embedder,
    candidate: Embedder,
    *,
    store: VectorStore | None = None,
) -> dict[str, Any]:
    """``{"mode", "current": metrics, "candidate": metrics, "queries", "chunks"}`` over ``queries``."""
    store = store or VectorStore(settings)
    collections = settings.collections_for(site)
    mode = LanceDBRetriever(settings, site, store=store, embedder=current).default_mode
    ids, docs, texts, (stored, models) = _index(store, site, collections)
    if not ids:
        raise ValueError(f"site {site!r} has no indexed chunks to compare embedders on; ingest it first")
    current_vectors = stored if models == {current.model_id} else current.embed_documents(texts)
    spaces = {
        "current": (current, _normalise(np.asarray(current_vectors, np.float32))),
        "candidate": (candidate, _normalise(np.asarray(candidate.embed_documents(texts), np.float32))),
    }
    position = {chunk_id: i for i, chunk_id in enumerate(ids)}
    fts_lists: list[list[dict[str, str]]] = []
    for query in queries:
        found = (
            store.search(
                site,
                collections,
                mode="fts",
                k=DEPTH,
                query_text=query.query,
                query_vector=None,
                model_id=None,
            )
            if mode != "vector"
            else []
        )
        fts_lists.append([{"id": p.id} for p in found if p.id in position])
    out: dict[str, Any] = {"mode": mode, "queries": len(queries), "chunks": len(ids)}
    for name, (embedder, matrix) in spaces.items():
        per_query = []
        for query, fts in zip(queries, fts_lists, strict=True):
            q = _normalise(np.asarray(embedder.embed_query(query.query), np.float32).reshape(1, -1))[0]
            dense = [{"id": ids[i]} for i in np.argsort(-(matrix @ q), kind="stable")[:DEPTH]]
            if mode == "hybrid":
                ranked = rrf_fuse([dense, fts], rrf_k=settings.rrf_k)
            else:
                ranked = fts if mode == "fts" else dense
            top = [docs[position[r["id"]]] for r in ranked[: settings.retrieve_k]]
            per_query.append(retrieval_metrics(doc_ranking(top), query.relevant, KS))
        out[name] = mean_metrics(per_query)
    return out
