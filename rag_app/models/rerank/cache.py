"""The reranker's score cache: repeated (query, passage) pairs are answered without running the model.

An in-memory, thread-safe LRU of ``rerank_cache_size`` entries. The reranker keys it by (model +
revision, backend, max_length, query budget, query, sha1(passage text)), so a different backend or
truncation never reuses another's scores. The hit/miss counters feed the server's /metrics through
``CrossEncoderReranker.cache_stats``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable


class ScoreCache:
    """A bounded, thread-safe LRU of pair scores with hit/miss counters (``maxsize=0`` = off)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = max(0, int(maxsize))
        self._data: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> float | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: float) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "size": len(self._data),
                "maxsize": self.maxsize,
            }
