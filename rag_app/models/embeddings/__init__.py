"""Text -> vectors. One protocol, three real backends: sentence-transformers (in process), Ollama, and
an OpenAI-compatible embeddings server (TEI, vLLM, Infinity).

Modules: :mod:`.base` (the :class:`Embedder` protocol, task prefixes, normalisation, the query check),
:mod:`.sentence_transformers` (in-process models, bf16 with fused layers where the CPU allows),
:mod:`.ollama` (an Ollama server) and :mod:`.remote` (``POST /v1/embeddings``). :func:`load_embedder`
picks one from the settings.
"""

from __future__ import annotations

from rag_app.core.settings import Settings
from rag_app.models.embeddings.base import NOMIC_PREFIXES, Embedder, check_query, task_prefixes
from rag_app.models.embeddings.ollama import OllamaEmbedder
from rag_app.models.embeddings.remote import RemoteEmbedder
from rag_app.models.embeddings.sentence_transformers import SentenceTransformerEmbedder


def load_embedder(settings: Settings) -> Embedder:
    """Build the embedder these settings name (a new instance: :class:`rag_app.runtime.Runtime` owns
    and shares it; loading is the expensive part)."""
    if settings.embedder_backend == "remote":
        return RemoteEmbedder.from_settings(settings)
    model = settings.resolved_embedder_model
    if settings.embedder_backend == "ollama":
        return OllamaEmbedder(
            model,
            host=settings.ollama_host,
            timeout_s=settings.ollama_timeout_s,
            retries=settings.ollama_retries,
            context_tokens=settings.ollama_context_tokens,
            batch_size=settings.embed_batch_size,
        )
    return SentenceTransformerEmbedder(
        model,
        revision=settings.embedder_revision,
        precision=settings.embedder_precision,
        cache_dir=settings.hf_cache_dir,
        batch_size=settings.embed_batch_size,
    )


__all__ = [
    "NOMIC_PREFIXES",
    "Embedder",
    "OllamaEmbedder",
    "RemoteEmbedder",
    "SentenceTransformerEmbedder",
    "check_query",
    "load_embedder",
    "task_prefixes",
]
