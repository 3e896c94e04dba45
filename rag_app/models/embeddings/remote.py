"""Embeddings from an OpenAI-compatible server (``embedder_backend="remote"``): Hugging Face TEI, vLLM,
Infinity, or any ``POST /v1/embeddings {model, input: [...]} -> {data: [{index, embedding}], model}``.

Which vector space (the model-id guard)
    A table records its embedder's ``model_id`` and dimension, and a search or ingest with another is
    refused. Here ``model_id`` is the served model's name (``embedder_model``, e.g.
    ``BAAI/bge-small-en-v1.5``), with no ``remote:`` prefix: a server that runs the same checkpoint with
    its own pooling and normalisation gives the same vectors as sentence-transformers in process (cosine
    > 0.999 in the tests; fp16 on a GPU stays within the 0.99 that bf16 already needs), and the same
    task prefixes are added here, so moving embedding to a server, or back, needs no re-index. A server
    started with another pooling or prompt is a different space: serve it under another name. Every answer
    is checked: a server that reports another ``model`` than ``embedder_model``, or whose dimension
    changes between calls, raises :class:`~rag_app.core.errors.EmbedderMismatchError` instead of writing
    or searching with vectors of another space.

Tokens
    Chunking counts tokens with the embedder's tokenizer: the model's own when its files are on this
    machine (a local directory, the bundled MiniLM, the Hugging Face cache), else the bundled MiniLM's
    BERT-uncased vocabulary, an approximation. Inputs are clipped to ``max_tokens`` (the model's
    ``max_seq_length`` when known, else 512) so a long text is embedded from its start instead of failing
    the batch; a server with a shorter context needs TEI's ``--auto-truncate`` (or its equivalent).

Failures
    Timeouts, connection errors, 5xx and 429 are retried with backoff, then fail fast behind the circuit
    breaker (:mod:`rag_app.models.remote_http`); there is no fallback for embeddings, so the error (a
    :class:`~rag_app.core.errors.ServiceUnavailableError`: CLI exit 6, HTTP 503) names the server and
    the setting to fix.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag_app.core.errors import EmbedderMismatchError, InputError, ModelNotAvailableError
from rag_app.core.settings import Settings
from rag_app.models.embeddings.base import HFTokenizerSpans, normalise_rows, task_prefixes
from rag_app.models.files import bundled_minilm_dir, resolve_model
from rag_app.models.remote_http import RemoteHttpClient, values_by_index

log = logging.getLogger("rag_app.models.embeddings")

PATH = "/v1/embeddings"
#: Context assumed when the model's files are not here to say (BERT-family embedders).
DEFAULT_MAX_TOKENS = 512


def parse_embeddings(n: int) -> Callable[[Any], tuple[np.ndarray, str | None]]:
    """Parser of an OpenAI embeddings answer for ``n`` inputs: (float32 rows in input order, the
    ``model`` it reports or None); ``ValueError`` saying what is wrong otherwise."""

    def parse(data: Any) -> tuple[np.ndarray, str | None]:
        rows = values_by_index(data["data"], n, "embedding", _number_list, counted=("embeddings", "inputs"))
        width = {len(row) for row in rows}
        if len(width) != 1:
            raise ValueError(f"embeddings of different lengths in one answer: {sorted(width)}")
        out = np.asarray(rows, dtype=np.float32)
        if not np.isfinite(out).all():
            raise ValueError("an embedding holds a non-finite number")
        model = data.get("model")
        return out, model if isinstance(model, str) and model else None

    return parse


def _number_list(vector: Any, index: int) -> list[float]:
    """The check of one vector of an embeddings answer (:func:`values_by_index`): a non-empty list."""
    if not isinstance(vector, list) or not vector:
        raise ValueError(f"embedding of index {index} is not a list of numbers (base64 is not asked)")
    return vector


def _local_tokenizer(model: str, revision: str | None, cache_dir: Path | None) -> tuple[Any, int, str]:
    """(tokenizer, max tokens, where from): the model's own files when they are here, else the bundled
    MiniLM's tokenizer with :data:`DEFAULT_MAX_TOKENS`."""
    from transformers import AutoTokenizer

    try:
        path = resolve_model(model, revision, cache_dir, kind="embedder").path
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (ModelNotAvailableError, OSError, ValueError):
        path = bundled_minilm_dir()
        return AutoTokenizer.from_pretrained(str(path)), DEFAULT_MAX_TOKENS, "bundled MiniLM (approximate)"
    limit = DEFAULT_MAX_TOKENS
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        limit = int(json.loads(st_config.read_text()).get("max_seq_length") or limit)
    elif 0 < int(getattr(tokenizer, "model_max_length", 0) or 0) < 1_000_000:
        limit = int(tokenizer.model_max_length)
    return tokenizer, limit, str(path)


class RemoteEmbedder(HFTokenizerSpans):
    """An :class:`~rag_app.models.embeddings.base.Embedder` whose model runs on an OpenAI-compatible
    embeddings server; batches, clips, adds task prefixes, normalises and checks every answer."""

    def __init__(
        self,
        model: str,
        client: RemoteHttpClient,
        *,
        batch_size: int = 64,
        revision: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.model = model
        self.model_id = model
        self.batch_size = max(1, int(batch_size))
        self.query_prefix, self.doc_prefix = task_prefixes(model)
        self.client = client
        self.url = self.client.shown_url
        self.tokenizer, self.max_tokens, self.tokenizer_source = _local_tokenizer(model, revision, cache_dir)
        log.info("remote embedder %s at %s; tokens counted with %s", model, self.url, self.tokenizer_source)
        self._lock = threading.Lock()  # tokenizers are not safe to share across threads
        self._dimension: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteEmbedder:
        if not settings.embedder_url:
            raise InputError(
                "embedder_backend=remote needs the server's base URL: set RAG_EMBEDDER_URL "
                "(e.g. http://127.0.0.1:8081 for TEI, vLLM or Infinity)"
            )
        if not settings.embedder_model:
            raise InputError(
                "embedder_backend=remote needs the served model's name in RAG_EMBEDDER_MODEL (e.g. "
                "BAAI/bge-small-en-v1.5): it is sent with every request, checked against the server's "
                "answer, and recorded in each table so vectors of another model are never mixed in"
            )
        client = RemoteHttpClient.from_settings(
            settings,
            settings.embedder_url,
            api_key=settings.embedder_api_key,
            what="embedding server",
            url_setting="RAG_EMBEDDER_URL",
            key_setting="RAG_EMBEDDER_API_KEY",
        )
        return cls(
            settings.embedder_model,
            client,
            batch_size=settings.remote_batch_size,
            revision=settings.embedder_revision,
            cache_dir=settings.hf_cache_dir,
        )

    @property
    def dimension(self) -> int:
        """The served model's dimension (one request the first time it is asked, before any embedding)."""
        if self._dimension is None:
            self._embed_batch(["dimension probe"])
        assert self._dimension is not None
        return self._dimension

    def clip(self, text: str) -> str:
        """Cut ``text`` to the context window (minus special tokens), at a token boundary."""
        limit = max(1, self.max_tokens - 2)
        with self._lock:
            spans = self.token_spans(text)
        return text if len(spans) <= limit else text[: spans[limit - 1][1]]

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        body = {"model": self.model, "input": texts}
        rows, served = self.client.post_json(PATH, body, parse_embeddings(len(texts)))
        if served is not None and served != self.model:
            raise EmbedderMismatchError(
                f"embedding server {self.url} answered with model {served!r}, but embedder_model is "
                f"{self.model!r}: its vectors are another space than the index expects. Point "
                f"RAG_EMBEDDER_URL at a server of {self.model!r}, or set RAG_EMBEDDER_MODEL={served} and "
                "re-index the tables built with the other model"
            )
        dimension = int(rows.shape[1])
        with self._lock:
            known, self._dimension = self._dimension, self._dimension or dimension
        if known is not None and known != dimension:
            raise EmbedderMismatchError(
                f"embedding server {self.url} answered {dimension}-d vectors for {self.model!r}, but earlier "
                f"answers were {known}-d: another model (or a truncating option) is being served under the "
                "same name; check the server, and restart this process once it serves one model"
            )
        return normalise_rows(rows)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        clipped = [self.clip(t) for t in texts]
        rows = [
            self._embed_batch(clipped[i : i + self.batch_size])
            for i in range(0, len(clipped), self.batch_size)
        ]
        return np.concatenate(rows) if rows else np.zeros((0, self.dimension), dtype=np.float32)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed([self.doc_prefix + t for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self._embed([self.query_prefix + text])[0]

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"RemoteEmbedder({self.model_id} at {self.url}, max_tokens={self.max_tokens})"
