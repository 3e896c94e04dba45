"""What every embedder shares: the :class:`Embedder` protocol, task prefixes, normalisation, and the
query check every search runs before a model sees the text.

Every embedder returns L2-normalised float32 rows, so cosine similarity is a dot product everywhere
downstream. nomic-embed-text is asymmetric: documents and queries get the task prefixes it was trained
with (``search_document: `` / ``search_query: ``); forgetting them costs several points of recall.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rag_app.core.errors import InputError
from rag_app.core.settings import Settings

NOMIC_PREFIXES = ("search_query: ", "search_document: ")


@runtime_checkable
class Embedder(Protocol):
    """What ingest and retrieval need from an embedding model."""

    model_id: str
    max_tokens: int

    @property
    def dimension(self) -> int: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...


def task_prefixes(model: str) -> tuple[str, str]:
    """(query prefix, document prefix) for models trained with task prefixes; empty otherwise."""
    return NOMIC_PREFIXES if "nomic-embed-text" in model.lower() else ("", "")


def normalise_rows(rows: Any) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (all-zero rows stay zero)."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


class HFTokenizerSpans:
    """Token character spans from a Hugging Face fast tokenizer (no special tokens); chunking counts
    tokens with the embedder's own tokenizer through this."""

    tokenizer: Any

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(span) for span in enc["offset_mapping"]]


def check_query(query: str, settings: Settings) -> str:
    """Reject empty and oversized queries before they reach a model (message says which limit)."""
    if not isinstance(query, str) or not query.strip():
        raise InputError("query is empty: pass some text to search for")
    if len(query) > settings.max_query_chars:
        raise InputError(
            f"query is {len(query)} characters, over the limit of {settings.max_query_chars} "
            "(RAG_MAX_QUERY_CHARS); shorten it"
        )
    return query.strip()
