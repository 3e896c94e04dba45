"""Adapters that put this project's pieces into other frameworks (a top layer, like ``cli`` and
``server``: it imports the runtime and the models, nothing imports it).

* :mod:`rag_app.integrations.llamaindex` (extra ``rag-app[llamaindex]``): :class:`RagAppRerank`, a
  LlamaIndex node postprocessor running this project's fast reranker (a drop-in for
  ``SentenceTransformerRerank``), and :class:`RagAppRetriever`, a LlamaIndex retriever over this
  project's LanceDB tables.

Each adapter module imports its framework when it is imported, never before: importing this package
costs nothing, and a missing framework is an ImportError that names the extra to install.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RagAppRerank", "RagAppRetriever"]


def __getattr__(name: str) -> Any:
    """``from rag_app.integrations import RagAppRerank`` imports the LlamaIndex adapter on first use."""
    if name in __all__:
        from rag_app.integrations import llamaindex

        return getattr(llamaindex, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
