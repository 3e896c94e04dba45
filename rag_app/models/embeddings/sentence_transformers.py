"""In-process embeddings: any sentence-transformers model, from the local cache or a directory.

Precision ``auto`` runs bf16 where the CPU has bf16 units (several times fp32's throughput there);
vectors stay within cosine 0.99 of fp32 (checked in tests), and the table records the model id, not the
precision, because the vector space is the same. In bf16 on CPU a BERT-family encoder (MiniLM) also gets
the reranker's fused layers (:mod:`rag_app.models.fused_encoder`, checked against the original in
fp32), with retrieval metrics unchanged within noise. Other architectures (nomic-bert) run as loaded.
Measurements: README and ``benchmarks/README.md`` ("ingest.py").
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from rag_app.core.errors import ModelNotAvailableError
from rag_app.core.hardware import cpu_has_bf16, cuda_available
from rag_app.models.embeddings.base import HFTokenizerSpans, normalise_rows, task_prefixes
from rag_app.models.files import resolve_model


class SentenceTransformerEmbedder(HFTokenizerSpans):
    """Any sentence-transformers model: hub id at a pinned revision (from the cache), or a directory."""

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
        self._encode(["warm up"])  # the first call pays kernel set-up; not the first user

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
        return normalise_rows(out.float().cpu().numpy())

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
