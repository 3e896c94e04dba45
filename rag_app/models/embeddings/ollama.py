"""Embeddings served by Ollama (nomic-embed-text by default), through the ``ollama`` client.

Inputs longer than the model's context (2048 tokens for nomic-embed-text) are clipped here with a
BERT-uncased tokenizer (nomic's own vocabulary; the bundled MiniLM ships the same one), so a long chunk
is embedded from its start instead of failing the batch. Connection errors and 5xx answers are retried
with exponential backoff; then a :class:`ServiceUnavailableError` says how to start or point at the
server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np

from rag_app.core.errors import ModelNotAvailableError, ServiceUnavailableError
from rag_app.models.embeddings.base import HFTokenizerSpans, normalise_rows, task_prefixes
from rag_app.models.files import bundled_minilm_dir

log = logging.getLogger("rag_app.models.embeddings")


class OllamaEmbedder(HFTokenizerSpans):
    """nomic-embed-text (or any embedding model) served by Ollama; clips, batches and retries."""

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
                return normalise_rows(np.asarray(response["embeddings"], dtype=np.float32))
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
