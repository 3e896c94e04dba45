"""Prometheus metrics of one app, in its own ``CollectorRegistry`` (several apps can share a process)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Stages whose latency is recorded; ``total`` is the whole request.
STAGES = ("embed", "search", "rerank", "lm", "total")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _RerankCacheCollector(Collector):
    """Reads the reranker's score-cache counters at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, Any] | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats() or {}
        hits = float(stats.get("hits", 0) or 0)
        misses = float(stats.get("misses", 0) or 0)
        c_hits = CounterMetricFamily("rag_rerank_cache_hits", "Rerank score-cache hits.")
        c_hits.add_metric([], hits)
        c_miss = CounterMetricFamily("rag_rerank_cache_misses", "Rerank score-cache misses.")
        c_miss.add_metric([], misses)
        ratio = GaugeMetricFamily(
            "rag_rerank_cache_hit_ratio", "Rerank score-cache hits / lookups (0 if none)."
        )
        ratio.add_metric([], hits / (hits + misses) if hits + misses else 0.0)
        return [c_hits, c_miss, ratio]


class Metrics:
    """All series the server exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "rag_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "rag_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            "rag_stage_duration_seconds",
            "Latency per pipeline stage (embed, search, rerank, lm, total).",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("rag_errors", "Error responses by error code.", ["code"], registry=r)
        self.rejections = Counter(
            "rag_overload_rejections",
            "Requests turned away with 503 by a full stage queue.",
            ["stage"],
            registry=r,
        )
        self.inflight = Gauge("rag_stage_inflight", "Requests running in a stage.", ["stage"], registry=r)
        self.waiting = Gauge("rag_stage_waiting", "Requests waiting for a stage.", ["stage"], registry=r)
        self.ready = Gauge("rag_ready", "1 when the server is ready to answer.", registry=r)
        for stage in STAGES:
            self.stage_latency.labels(stage)
        self._cache_stats: Callable[[], dict[str, Any] | None] | None = None
        r.register(_RerankCacheCollector(self._read_cache_stats))

    def set_rerank_cache_stats(self, fn: Callable[[], dict[str, Any] | None]) -> None:
        """Read the reranker's score-cache counters from ``fn`` at scrape time (set once it is loaded)."""
        self._cache_stats = fn

    def _read_cache_stats(self) -> dict[str, Any] | None:
        if self._cache_stats is None:
            return None
        try:
            return self._cache_stats()
        except Exception:  # a scrape must never fail because of a stats hook
            return None

    def observe_timings(self, timings: dict[str, float]) -> None:
        """Record a program's or pipeline's per-stage timings (``{"embed_ms": 12.3, ...}``)."""
        for key, value in timings.items():
            stage = key.removesuffix("_ms")
            if stage in STAGES and stage != "total" and isinstance(value, int | float):
                self.stage_latency.labels(stage).observe(float(value) / 1000.0)

    def gate_changed(self, name: str, active: int, waiting: int) -> None:
        self.inflight.labels(name).set(active)
        self.waiting.labels(name).set(waiting)

    def render(self) -> bytes:
        return generate_latest(self.registry)
