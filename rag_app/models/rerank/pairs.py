"""Turning (query, passage) pairs into the token ids a cross-encoder reads: truncation and padding.

Truncation
    ``max_length`` is 512 for bge-reranker-base/large and 1024 for v2-m3 unless ``reranker_max_length``
    says otherwise (clamped to the model's position table). A pair is built explicitly: the query is cut
    to ``reranker_query_max_tokens`` (and never more than half the window), then the passage gets the
    rest, ``max_length - len(query_ids) - special tokens``. A long query therefore cannot push the
    passage out.

Padding
    A batch is padded only to its own longest pair (the reranker sorts pairs by length first), as int64
    arrays that both torch and ONNX Runtime take.

Thread safety
    The Rust fast tokenizer is not safe against concurrent *mutation*: Hugging Face's ``tokenizer(...)``
    re-sets truncation/padding on the shared Rust object on every call, which is known to race across
    threads ("Already borrowed"). :class:`PairEncoder` therefore tokenizes with a private copy of the
    Rust tokenizer whose truncation/padding are switched off once (MiniLM's tokenizer.json even ships
    padding to 128), guarded by a lock. The lock costs little next to inference; one copy per thread
    would cost a tokenizer's memory per thread (large for XLM-R's 250k-piece vocabulary, which the bge
    rerankers use) for no speed gain. Measurements: ``benchmarks/README.md`` ("rerank.py").
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag_app.core.errors import RagError

#: Default ``max_length`` by model name (matched anywhere in the id or path, case-insensitively).
MODEL_MAX_LENGTH: dict[str, int] = {
    "bge-reranker-v2-m3": 1024,
    "bge-reranker-large": 512,
    "bge-reranker-base": 512,
}
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_ROBERTA_LIKE = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert"}


def default_max_length(model_id: str, config: Any, tokenizer_max: int | None) -> int:
    """512 for bge-reranker-base/large, 1024 for v2-m3, else the tokenizer's limit; within positions."""
    limit = position_limit(config)
    name = model_id.lower()
    for key, length in MODEL_MAX_LENGTH.items():
        if key in name:
            return min(length, limit)
    if tokenizer_max and 0 < tokenizer_max < 100_000:
        return min(int(tokenizer_max), limit)
    return min(512, limit)


def position_limit(config: Any) -> int:
    """Longest input the position table allows (RoBERTa-style models offset positions by pad+1)."""
    n = int(getattr(config, "max_position_embeddings", 0) or 512)
    if getattr(config, "model_type", "") in _ROBERTA_LIKE:
        n -= int(getattr(config, "pad_token_id", 1) or 1) + 1
    return n


@dataclass(frozen=True)
class EncodedPair:
    """One (query, passage) pair as the model sees it, with how much of each side survived."""

    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...]
    query_tokens: int
    passage_tokens: int
    passage_truncated: bool


class PairEncoder:
    """Builds model inputs with an explicit query budget, from a private copy of the fast tokenizer."""

    def __init__(self, hf_tokenizer: Any, max_length: int, query_max_tokens: int) -> None:
        from tokenizers import Tokenizer

        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise RagError(
                f"the reranker needs a fast tokenizer (tokenizer.json); got {type(hf_tokenizer).__name__}"
            )
        self._tok = Tokenizer.from_str(backend.to_str())
        self._tok.no_truncation()
        self._tok.no_padding()
        self._lock = threading.Lock()
        self._post = self._tok.post_processor
        self.pad_id = int(hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0)
        self._cls = hf_tokenizer.cls_token_id
        self._sep = hf_tokenizer.sep_token_id
        self.n_special = int(self._post.num_special_tokens_to_add(True)) if self._post is not None else 3
        self.max_length = int(max_length)
        room = self.max_length - self.n_special
        # The query never takes more than half of the window: the passage is what is being judged.
        self.query_budget = max(1, min(int(query_max_tokens), room // 2))
        self.input_names = tuple(n for n in _INPUT_NAMES if n in set(hf_tokenizer.model_input_names))
        if "input_ids" not in self.input_names or "attention_mask" not in self.input_names:
            self.input_names = tuple(dict.fromkeys(("input_ids", "attention_mask", *self.input_names)))

    def encode(self, query: str, passages: Sequence[str]) -> list[EncodedPair]:
        """The exact token ids the model will see for each (query, passage) pair, in input order."""
        with self._lock:
            q = self._tok.encode(query, add_special_tokens=False)
            encs = self._tok.encode_batch(list(passages), add_special_tokens=False)
            if len(q.ids) > self.query_budget:
                q.truncate(self.query_budget)
            n_query = len(q.ids)
            room = self.max_length - n_query - self.n_special
            pairs = []
            for p in encs:
                n_passage = len(p.ids)
                if n_passage > room:
                    p.truncate(room)
                pairs.append(self._merge(q, p, n_query, n_passage > room))
            return pairs

    def _merge(self, q: Any, p: Any, n_query: int, truncated: bool) -> EncodedPair:
        if self._post is not None:
            merged = self._post.process(q, p, add_special_tokens=True)
            ids, types = tuple(merged.ids), tuple(merged.type_ids)
        else:  # no post-processor in tokenizer.json: BERT layout [CLS] q [SEP] p [SEP]
            ids = (self._cls, *q.ids, self._sep, *p.ids, self._sep)
            types = (0,) * (len(q.ids) + 2) + (1,) * (len(p.ids) + 1)
        return EncodedPair(ids, types, n_query, len(p.ids), truncated)

    def batch(self, pairs: Sequence[EncodedPair]) -> dict[str, np.ndarray]:
        """Pad to the longest pair of this batch only; int64 arrays for torch and ONNX Runtime."""
        width = max(len(p.input_ids) for p in pairs)
        ids = np.full((len(pairs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(pairs), width), dtype=np.int64)
        types = np.zeros((len(pairs), width), dtype=np.int64)
        for row, pair in enumerate(pairs):
            n = len(pair.input_ids)
            ids[row, :n] = pair.input_ids
            mask[row, :n] = 1
            types[row, :n] = pair.token_type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: feed[name] for name in self.input_names}
