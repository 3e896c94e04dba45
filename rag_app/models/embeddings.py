"""Text -> vectors. One protocol, two real backends: sentence-transformers (in process) and Ollama.

Both return L2-normalised float32 rows, so cosine similarity is a dot product everywhere downstream.
nomic-embed-text is asymmetric: documents and queries get the task prefixes it was trained with
(``search_document: `` / ``search_query: ``); forgetting them costs several points of recall.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rag_app.core.errors import InputError, ModelNotAvailableError, ServiceUnavailableError
from rag_app.core.hardware import cpu_has_bf16, cuda_available
from rag_app.core.settings import Settings
from rag_app.models.files import bundled_minilm_dir, resolve_model

log = logging.getLogger("rag_app.models.embeddings")

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


def _normalise(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


class _HFTokenizerSpans:
    """Token character spans from a Hugging Face fast tokenizer (no special tokens)."""

    tokenizer: Any

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(span) for span in enc["offset_mapping"]]


# ------------------------------------------------------------------------------ sentence-transformers


class SentenceTransformerEmbedder(_HFTokenizerSpans):
    """Any sentence-transformers model: hub id at a pinned revision (from the cache), or a directory.

    Precision ``auto`` runs bf16 where the CPU has bf16 units (MiniLM: ~25 -> ~65 passages/s on the
    2-core baseline); vectors stay within cosine 0.99 of fp32 (checked in tests), and the table
    records the model id, not the precision, because the vector space is the same. In bf16 on CPU a
    BERT-family encoder (MiniLM) also gets the reranker's fused layers (:mod:`rag_app.models.fused_encoder`,
    checked against the original in fp32): ingest of the FastAPI docs went from 69.6 to 85.0 chunks/s
    (``benchmarks/ingest.py``, back to back), and SciFact retrieval metrics stayed within 0.003 of
    fp32's (README). Other architectures (nomic-bert) run as loaded.
    """

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        precision: str = "auto",
        cache_dir: Any = None,
        batch_size: int = 32,
    ) -> None:
        resolved = resolve_model(model, revision, cache_dir, kind="embedder")
        from sentence_transformers import SentenceTransformer

        device = "cuda" if cuda_available() else "cpu"
        use_bf16 = precision == "bfloat16" or (precision == "auto" and device == "cpu" and cpu_has_bf16())
        try:
            self.model = SentenceTransformer(
                str(resolved.path),
                device=device,
                trust_remote_code="nomic" in model.lower(),
                local_files_only=True,
            )
        except OSError as exc:
            raise ModelNotAvailableError(
                f"embedder model {model}: could not load from {resolved.path}: {exc}"
            ) from exc
        self.optimizations: tuple[str, ...] = ()
        if use_bf16:
            self.optimizations = _fuse_for_bf16_cpu(self.model) if device == "cpu" else ()
        elif device == "cuda":
            self.model.half()
        self.precision = "bfloat16" if use_bf16 else ("float16" if device == "cuda" else "float32")
        self.tokenizer = self.model.tokenizer
        self.model_id = model if resolved.origin != "local" else str(resolved.path)
        self.revision = resolved.revision
        self.max_tokens = int(self.model.max_seq_length or 512)
        self.batch_size = batch_size
        self.query_prefix, self.doc_prefix = task_prefixes(model)
        self._dimension = int(self.model.get_embedding_dimension())
        self._lock = threading.Lock()  # tokenizers are not safe to share across threads
        self._encode(["warm up"])  # first call pays kernel set-up (bf16: ~0.5 s); not the first user

    @property
    def dimension(self) -> int:
        return self._dimension

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            out = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
        return _normalise(out.float().cpu().numpy())

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode([self.doc_prefix + t for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self._encode([self.query_prefix + text])[0]


def _fuse_for_bf16_cpu(model: Any) -> tuple[str, ...]:
    """Cast a sentence-transformers model to bf16, with fused, prepacked encoder layers where they apply.

    Returns what was done beyond the cast, as the reranker's backends name it.
    """
    import torch

    from rag_app.models.fused_encoder import fuse_and_cast

    encoder = getattr(model[0], "auto_model", None) if len(model) else None
    if encoder is None:
        model.to(torch.bfloat16)
        return ()
    return fuse_and_cast(encoder, lambda: model.to(torch.bfloat16))


# ------------------------------------------------------------------------------------------ ollama


class OllamaEmbedder(_HFTokenizerSpans):
    """nomic-embed-text (or any embedding model) served by Ollama, through the ``ollama`` client.

    Inputs longer than the model's context (2048 tokens for nomic-embed-text) are clipped here with
    a BERT-uncased tokenizer (nomic's own vocabulary; the bundled MiniLM ships the same one), so a
    long chunk is embedded from its start instead of failing the batch. Connection errors and 5xx
    answers are retried with exponential backoff; then a :class:`ServiceUnavailableError` says how
    to start or point at the server.
    """

    def __init__(
        self,
        model: str,
        *,
        host: str,
        timeout_s: float = 30.0,
        retries: int = 3,
        context_tokens: int = 2048,
        batch_size: int = 32,
    ) -> None:
        import ollama
        from transformers import AutoTokenizer

        self._ollama = ollama
        self.client = ollama.Client(host=host, timeout=timeout_s)
        self.host = host
        self.model = model
        self.model_id = f"ollama:{model.removesuffix(':latest')}"
        self.retries = retries
        self.batch_size = batch_size
        self.max_tokens = context_tokens
        self.query_prefix, self.doc_prefix = task_prefixes(model)
        self.tokenizer = AutoTokenizer.from_pretrained(str(bundled_minilm_dir()))
        self._lock = threading.Lock()
        self._dimension: int | None = None

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self._dimension = int(self._embed_batch(["dimension probe"]).shape[1])
        return self._dimension

    def clip(self, text: str) -> str:
        """Cut ``text`` to the context window (minus special tokens), at a token boundary."""
        limit = self.max_tokens - 2
        with self._lock:
            spans = self.token_spans(text)
        return text if len(spans) <= limit else text[: spans[limit - 1][1]]

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                response = self.client.embed(model=self.model, input=texts, truncate=True)
                return _normalise(np.asarray(response["embeddings"], dtype=np.float32))
            except self._ollama.ResponseError as exc:
                if exc.status_code == 404:
                    raise ModelNotAvailableError(
                        f"Ollama at {self.host} has no model {self.model!r}: run `ollama pull {self.model}` "
                        "there, or `rag-app models pull`"
                    ) from exc
                if exc.status_code < 500 or attempt == self.retries:
                    raise ServiceUnavailableError(
                        f"Ollama at {self.host} refused the embed call for {self.model!r}: "
                        f"HTTP {exc.status_code} {exc.error}"
                    ) from exc
            except (ConnectionError, OSError, TimeoutError) as exc:
                if attempt == self.retries:
                    raise ServiceUnavailableError(
                        f"cannot reach Ollama at {self.host} ({type(exc).__name__}: {exc}) after "
                        f"{self.retries + 1} attempts; start it with `ollama serve`, or set RAG_OLLAMA_HOST "
                        "(or OLLAMA_HOST) to where it runs"
                    ) from exc
            except Exception as exc:  # httpx timeouts and transport errors
                if "httpx" not in type(exc).__module__ or attempt == self.retries:
                    raise ServiceUnavailableError(
                        f"Ollama at {self.host} did not answer the embed call ({type(exc).__name__}: {exc}); "
                        "check that `ollama serve` runs there and RAG_OLLAMA_TIMEOUT_S"
                    ) from exc
            log.warning(
                "Ollama embed attempt %d/%d failed; retrying in %.1fs", attempt + 1, self.retries + 1, delay
            )
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = [
            self._embed_batch([self.clip(t) for t in texts[i : i + self.batch_size]])
            for i in range(0, len(texts), self.batch_size)
        ]
        if not rows:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out = np.concatenate(rows)
        self._dimension = out.shape[1]
        return out

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed([self.doc_prefix + t for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self._embed([self.query_prefix + text])[0]


# ----------------------------------------------------------------------------------------- factory

def load_embedder(settings: Settings) -> Embedder:
    """Build the embedder these settings name (a new instance: :class:`rag_app.runtime.Runtime` owns
    and shares it; loading is the expensive part)."""
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
