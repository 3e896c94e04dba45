"""What one app (one worker) holds: its runtime (models, pipelines, programs), gates, keys, checks,
and the answer log that feedback refers to.

Every model is loaded once per worker by the worker's :class:`~rag_app.runtime.Runtime` and shared by
all requests. The runtime is built with the stage gates' wrappers (:mod:`rag_app.server.gates`), so
the gates sit exactly where each stage runs, also inside program runs. A whole request first takes a
slot of the ``request`` gate (admission), then the stage gates as it reaches each stage.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rag_app.core.settings import Settings
from rag_app.core.tracing import Tracing
from rag_app.models.embeddings.base import Embedder
from rag_app.models.rerank.base import Reranker, unavailable_note
from rag_app.runtime import Runtime
from rag_app.server.auth import KeyChecker
from rag_app.server.feedback_store import FeedbackStore
from rag_app.server.gates import stage_wrappers
from rag_app.server.limits import StageGate, StageRunner
from rag_app.server.metrics import Metrics

log = logging.getLogger("rag_app.server")


class ServerState:
    """Models, gates, pipelines and programs of one app."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        reranker: Reranker | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        limits = {
            "embed": settings.max_concurrency_embed,
            "rerank": settings.max_concurrency_rerank,
            "lm": settings.max_concurrency_lm,
        }
        # Admission: enough concurrent requests to keep every stage busy at once; the rest queue or 503.
        limits["request"] = sum(limits.values())
        self.gates = {
            name: StageGate(
                name,
                limit,
                settings.max_queue,
                on_change=lambda g: self.metrics.gate_changed(g.name, g.active, g.waiting),
                on_reject=lambda g: self.metrics.rejections.labels(g.name).inc(),
            )
            for name, limit in limits.items()
        }
        self.keys = KeyChecker(settings)
        #: Every answer, by request id, for ``POST /v1/feedback`` (SQLite in the data dir, opened on use).
        self.answer_log = FeedbackStore.from_settings(settings)
        self.runner = StageRunner(self.gates, max_threads=limits["request"] + 2)
        self.runtime = Runtime(
            settings,
            embedder=embedder,
            reranker=reranker,
            wrappers=stage_wrappers(self.gates),
            tracing=tracing,
        )
        self.programs_index: dict[str, list[str]] = {}
        self.checks: dict[str, dict[str, Any]] = {}
        self.loaded = False
        self.load_error: str | None = None
        self._lm_checked_at = 0.0

    @property
    def reranker(self) -> Reranker:
        return self.runtime.reranker

    # ------------------------------------------------------------------------------- startup
    def load(self) -> None:
        """Load and warm the embedder, index handles and reranker; build programs; probe the LM. Blocking."""
        from rag_app.store.vector_store import VectorStore

        settings = self.settings
        t0 = time.perf_counter()
        embedder = self.runtime.embedder
        embedder.embed_query("warm-up query")
        self.checks["embedder"] = {
            "ok": True,
            "model": embedder.model_id,
            "load_ms": round((time.perf_counter() - t0) * 1000, 1),
        }

        t0 = time.perf_counter()
        reranker = self.runtime.reranker
        self.checks["reranker"] = {
            "ok": True,
            "available": reranker.available,
            "describe": reranker.describe(),
            "load_ms": round((time.perf_counter() - t0) * 1000, 1),
        }
        note = unavailable_note(reranker)
        if note:
            self.checks["reranker"]["note"] = note
        self.metrics.set_rerank_cache_stats(reranker.cache_stats)

        store = VectorStore(settings)
        indexes: dict[str, Any] = {}
        missing: list[str] = []
        for site, collections in settings.sites.items():
            present = []
            for collection in collections:
                table = store.open_table(site, collection)
                rows = table.count_rows() if table is not None else 0
                indexes[f"{site}/{collection}"] = rows
                if rows:
                    present.append(collection)
            if not present:
                missing.append(site)
                continue
            pipeline = self.pipeline(site, None)
            pipeline(query="warm-up query", k=3, top_n=2)  # opens tables, FTS index, one rerank batch
        self.checks["index"] = {"ok": not missing, "rows": indexes}
        if missing:
            self.checks["index"]["error"] = (
                f"no ingested collection for site(s) {', '.join(missing)}: run "
                "`rag-app ingest` for them, or drop them from `sites`"
            )

        self._load_programs()
        self.check_lm(force=True)
        self.loaded = True

    def _load_programs(self) -> None:
        errors: dict[str, str] = {}
        try:
            self.programs_index = self.runtime.programs()
        except Exception as exc:
            log.exception("cannot load the site programs")
            self.checks["programs"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            return
        for site, names in self.programs_index.items():
            if not any(self.checks["index"]["rows"].get(f"{site}/{c}") for c in self.settings.sites[site]):
                continue
            for name in names:
                try:
                    self.program(site, name)
                except Exception as exc:
                    log.exception("cannot build program %s/%s", site, name)
                    errors[f"{site}/{name}"] = f"{type(exc).__name__}: {exc}"
        self.checks["programs"] = {"ok": not errors, "programs": self.programs_index}
        if errors:
            self.checks["programs"]["errors"] = errors

    def check_lm(self, *, force: bool = False) -> dict[str, Any]:
        """LM reachable, or extractive mode declared (``lm_model`` unset). Re-probed at most every 5 s."""
        now = time.monotonic()
        if not force and "lm" in self.checks and now - self._lm_checked_at < 5.0:
            return self.checks["lm"]
        self._lm_checked_at = now
        if not self.settings.lm_model:
            self.checks["lm"] = {
                "ok": True,
                "mode": "extractive",
                "note": "no LM configured (lm_model unset)",
            }
            return self.checks["lm"]
        reason = self.runtime.lm_unavailable_reason()
        self.checks["lm"] = {"ok": reason is None, "mode": "lm", "model": self.settings.lm_model}
        if reason:
            self.checks["lm"]["error"] = reason
        return self.checks["lm"]

    #: Checks that do not decide readiness: without a reachable LM every program still answers
    #: (extractively, with a note), so the server can serve requests.
    OPTIONAL_CHECKS = frozenset({"lm"})

    @property
    def ready(self) -> bool:
        """Can serve requests: models, indexes and programs loaded (the LM is reported, not required)."""
        return self.loaded and all(
            check.get("ok") for name, check in self.checks.items() if name not in self.OPTIONAL_CHECKS
        )

    @property
    def lm_status(self) -> tuple[str, str]:
        """``(lm, answers)``: ``lm`` is reachable, unreachable or not_configured; ``answers`` is lm or
        extractive (how chat and program answers are written right now)."""
        check = self.checks.get("lm", {})
        if not self.settings.lm_model:
            return "not_configured", "extractive"
        if check.get("ok"):
            return "reachable", "lm"
        return "unreachable", "extractive"

    # ------------------------------------------------------------------------------- pipelines
    def pipeline(self, site: str, collection: str | None) -> Any:
        """The shared retrieve-then-rerank pipeline of ``site`` (one collection, or all), gated per stage."""
        return self.runtime.pipeline(site, collection)

    def program(self, site: str, name: str) -> Any:
        """The program instance for ``site``/``name``, built once on this app's gated runtime."""
        return self.runtime.program(site, name)

    # ------------------------------------------------------------------------------- shutdown
    def close(self) -> None:
        """Stop the stage threads, then release what the runtime built (remote models' connections,
        its trace exporter, flushed first)."""
        self.runner.shutdown()
        self.runtime.close()
