"""LlamaIndex adapters: this project's reranker as a node postprocessor, its LanceDB tables as a retriever.

Install with ``pip install 'rag-app[llamaindex]'`` (``llama-index-core``).

:class:`RagAppRerank` is a drop-in for LlamaIndex's ``SentenceTransformerRerank(model=..., top_n=5)``:
the same constructor arguments, the same scores (``sigmoid(logit)``, what ``CrossEncoder.predict``
returns for a one-logit model) and order, the same text per node (``MetadataMode.EMBED``), but run by
:mod:`rag_app.models.rerank`: its fast backends (bf16 / ONNX, picked for the machine), its score
cache, its query token budget and truncation, and its fallback policy (``reranker_on_missing``).
``benchmarks/llamaindex_rerank.py`` measures the speed-up on the same model.

:class:`RagAppRetriever` retrieves from one site's tables through the
:class:`~rag_app.runtime.Runtime`'s retriever: the same vector / fts / hybrid modes, prefilters and
per-site saved configuration as ``rag-app search`` and ``POST /v1/search``. Its nodes carry the passage
text only for embedding and reranking (``MetadataMode.EMBED``), and title and source for the LLM.

Both take a ``runtime`` (share the models of one process), or ``settings`` (a new runtime), or
nothing (``Settings()``: ``RAG_*`` variables and ``rag.toml``).
"""

from __future__ import annotations

import asyncio
from typing import Any

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import (
        MetadataMode,
        NodeRelationship,
        NodeWithScore,
        QueryBundle,
        RelatedNodeInfo,
        TextNode,
    )
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "rag_app.integrations.llamaindex needs LlamaIndex: install the extra with "
        f"`pip install 'rag-app[llamaindex]'` (llama-index-core). ({exc})"
    ) from exc

from rag_app.core.settings import SearchMode, Settings
from rag_app.core.types import Passage, SearchFilters
from rag_app.models.rerank import Reranker, load_reranker
from rag_app.runtime import Runtime

__all__ = ["RagAppRerank", "RagAppRetriever", "passage_to_node"]

#: Node metadata keys; none is shown to the embedder or the reranker (they see the passage text, as
#: this project's own pipeline does); the LLM sees title and source.
_METADATA_KEYS = ("site", "collection", "doc_id", "title", "source", "heading_path", "retrieval_rank")
_LLM_KEYS = ("title", "source")


def _reranker_for(
    model: str | None, settings: Settings | None, runtime: Runtime | None, reranker: Reranker | None
) -> Reranker:
    """The reranker to run: the one given, the runtime's (when no other model is asked for), or one
    loaded from ``settings`` with ``model`` as ``reranker_model``."""
    if reranker is not None:
        return reranker
    if runtime is not None and (model is None or model == runtime.settings.reranker_model):
        return runtime.reranker
    settings = settings or (runtime.settings if runtime is not None else Settings())
    if model is not None and model != settings.reranker_model:
        # A model other than the configured one: its own revision pin does not apply.
        settings = settings.model_copy(update={"reranker_model": model, "reranker_revision": None})
    return load_reranker(settings)


class RagAppRerank(BaseNodePostprocessor):
    """Rerank nodes with this project's cross-encoder reranker and keep the best ``top_n``.

    ``RagAppRerank(model="BAAI/bge-reranker-base", top_n=5)`` replaces
    ``SentenceTransformerRerank(model="BAAI/bge-reranker-base", top_n=5)``; ``model`` is a hub id
    (from the local cache: ``rag-app models pull``) or a local directory, and defaults to the configured
    ``reranker_model``. Pass ``runtime=`` to share a loaded reranker, or ``reranker=`` for any
    :class:`~rag_app.models.rerank.Reranker`.
    """

    model: str = Field(description="Cross-encoder: hub id (local cache) or directory.")
    top_n: int = Field(description="Number of nodes to return sorted by score.")
    keep_retrieval_score: bool = Field(
        default=False, description="Whether to keep the retrieval score in metadata."
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED, description="Which node text the cross-encoder scores."
    )
    _reranker: Reranker = PrivateAttr()

    def __init__(
        self,
        top_n: int = 5,
        model: str | None = None,
        *,
        settings: Settings | None = None,
        runtime: Runtime | None = None,
        reranker: Reranker | None = None,
        keep_retrieval_score: bool = False,
        metadata_mode: MetadataMode = MetadataMode.EMBED,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        chosen = _reranker_for(model, settings, runtime, reranker)
        super().__init__(
            model=model or chosen.model_id,
            top_n=top_n,
            keep_retrieval_score=keep_retrieval_score,
            metadata_mode=metadata_mode,
            callback_manager=callback_manager or CallbackManager(),
        )
        self._reranker = chosen

    @classmethod
    def class_name(cls) -> str:
        return "RagAppRerank"

    @property
    def reranker(self) -> Reranker:
        """The reranker this postprocessor runs (``describe()`` says which backend)."""
        return self._reranker

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("RagAppRerank needs the query: pass query_bundle or query_str")
        if not nodes:
            return []
        # Ids are input positions, so nodes sharing an id stay distinct; ties keep the input order.
        passages = [
            Passage(
                id=str(i),
                doc_id=n.node.node_id,
                text=n.node.get_content(metadata_mode=self.metadata_mode),
                score=n.score or 0.0,
                retrieval_rank=i + 1,
                retrieval_score=n.score or 0.0,
            )
            for i, n in enumerate(nodes)
        ]
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: self.model,
                EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.TOP_K: self.top_n,
            },
        ) as event:
            ranked = self._reranker.rerank(query_bundle.query_str, passages, top_n=self.top_n)
            out = []
            for p in ranked:
                original = nodes[int(p.id)]
                if self.keep_retrieval_score:
                    original.node.metadata["retrieval_score"] = original.score
                # Reranked: sigmoid(logit) like CrossEncoder.predict; fallback: the retrieval score.
                score = p.relevance if p.reranked and p.relevance is not None else original.score
                out.append(NodeWithScore(node=original.node, score=score))
            event.on_end(payload={EventPayload.NODES: out})
        return out


def passage_to_node(passage: Passage) -> NodeWithScore:
    """A retrieved passage as a LlamaIndex node (its source relationship names the document)."""
    values = passage.model_dump(mode="json")
    metadata: dict[str, Any] = {**passage.metadata}
    metadata.update({key: values[key] for key in _METADATA_KEYS if key != "heading_path"})
    metadata["heading_path"] = " > ".join(passage.heading_path)
    node = TextNode(
        id_=passage.id,
        text=passage.text,
        metadata=metadata,
        excluded_embed_metadata_keys=list(metadata),
        excluded_llm_metadata_keys=[k for k in metadata if k not in _LLM_KEYS],
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=passage.doc_id)},
    )
    return NodeWithScore(node=node, score=passage.score)


class RagAppRetriever(BaseRetriever):
    """The top ``k`` passages of ``site`` (one ``collection``, or all) from this project's LanceDB tables.

    ``mode`` (vector, fts, hybrid), ``k`` and ``filters`` default to the site's saved configuration and
    settings, as in ``Runtime.search``; bad input raises :class:`~rag_app.core.errors.InputError`.
    """

    def __init__(
        self,
        site: str,
        *,
        collection: str | None = None,
        k: int | None = None,
        mode: SearchMode | None = None,
        filters: SearchFilters | dict[str, Any] | None = None,
        settings: Settings | None = None,
        runtime: Runtime | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        self.runtime = runtime or Runtime(settings or Settings())
        self.site = site
        self.collection = collection
        self.k = k
        self.mode = mode
        self.filters = filters
        self._retriever = self.runtime.retriever(site, collection)  # checks site and collection now
        super().__init__(callback_manager=callback_manager)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        pred = self._retriever(query=query_bundle.query_str, k=self.k, filters=self.filters, mode=self.mode)
        return [passage_to_node(p) for p in pred.passages]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Off the event loop: embedding and search are blocking work."""
        return await asyncio.to_thread(self._retrieve, query_bundle)
