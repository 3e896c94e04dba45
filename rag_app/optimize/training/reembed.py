"""Re-embed a site's collections after its embedder changed, so the embedder guard holds.

Every table records the embedder that built it, and a search or ingest with another one is refused
(:func:`rag_app.store.schema.check_embedder`): vectors from two models are not comparable. Activating a
fine-tuned embedder therefore rewrites each of the site's tables with the new vectors under the new
model id. The stored ``search_text`` (the header line + chunk text the embedder saw at ingest) is
re-embedded, not the source files, so nothing has to be re-read or re-chunked and every other column is
kept as it was.

Each collection is rewritten under its writer lock in one commit (an overwrite), so a concurrent ingest
waits and a reader sees the old table or the new one; the document table beside it (document vectors
are the mean of its chunk vectors) is rebuilt after. A table already recorded under the new model id is
skipped, so an interrupted re-embed is finished by running it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rag_app.core.settings import Settings
from rag_app.models.embeddings import Embedder
from rag_app.store.schema import FTS_COLUMN, stored_embedder
from rag_app.store.vector_store import VectorStore

__all__ = ["ReembedResult", "reembed_site"]


@dataclass(frozen=True)
class ReembedResult:
    collection: str
    rows: int
    old_model: str
    new_model: str
    skipped: bool


def reembed_site(
    settings: Settings,
    site: str,
    embedder: Embedder,
    *,
    store: VectorStore | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[ReembedResult]:
    """Rewrite every table of ``site`` whose recorded embedder is not ``embedder``; one result each."""
    store = store or VectorStore(settings)
    batch = max(1, settings.embed_batch_size)
    results = []
    for collection in settings.collections_for(site):
        with store.writer(site, collection):
            table = store.open_table(site, collection)
            if table is None:
                continue
            old_model, old_dim = stored_embedder(table)
            if (old_model, old_dim) == (embedder.model_id, embedder.dimension):
                results.append(ReembedResult(collection, table.count_rows(), old_model, old_model, True))
                continue
            rows = store.rows_without_vectors(site, collection)
            assert rows is not None  # the table exists and we hold its writer lock
            texts = [t or "" for t in rows.column(FTS_COLUMN).to_pylist()]
            parts = []
            for start in range(0, len(texts), batch):
                parts.append(
                    np.asarray(embedder.embed_documents(texts[start : start + batch]), dtype=np.float32)
                )
                if progress is not None:
                    progress(collection, min(start + batch, len(texts)), len(texts))
            vectors = np.concatenate(parts) if parts else np.zeros((0, embedder.dimension), np.float32)
            store.rewrite_vectors(site, collection, rows, vectors, embedder.model_id)
            results.append(ReembedResult(collection, len(texts), old_model, embedder.model_id, False))
    return results
