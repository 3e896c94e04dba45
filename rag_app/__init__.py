"""rag_app: grounded answers from LanceDB retrieval, cross-encoder reranking and DSPy site programs.

The public API, imported lazily so that ``import rag_app`` stays cheap (models load only when used):

- :class:`Settings`: the one configuration object (``RAG_*`` env vars, ``rag.toml``).
- :class:`Runtime`: owns the models, pipelines and programs of a process; ``ingest``, ``search``, ``ask``.
- :func:`ingest_files`, :func:`search`, :func:`ask`: one-call versions that build a runtime each time
  (the function is not called ``ingest``: that name is the ingest stage's package).
- :class:`Embedder`, :class:`Reranker`: the model protocols a backend implements.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Settings": "rag_app.core.settings",
    "Runtime": "rag_app.runtime",
    "ingest_files": "rag_app.api",
    "search": "rag_app.api",
    "ask": "rag_app.api",
    "Embedder": "rag_app.models.embeddings",
    "Reranker": "rag_app.models.rerank",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rag_app' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
