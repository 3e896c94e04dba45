"""What one app (one worker) holds: the shared model set, per-stage gates, pipelines and programs.

Every model is loaded once per worker and shared by all requests. Stage gates sit exactly where each
stage runs, also inside program runs: the embedder, the reranker and the LM that programs and the
search pipeline use are thin wrappers that take the stage's gate for the duration of the call. A whole
request first takes a slot of the ``request`` gate (admission), then the stage gates as it reaches each
stage.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rag_app.server.auth import KeyChecker
from rag_app.server.limits import DeadlineExceeded, Overloaded, StageGate, StageRunner
from rag_app.server.metrics import Metrics
from rag_app.settings import Settings

log = logging.getLogger("rag_app.server")

STAGE_GATES = ("embed", "rerank", "lm")


@dataclass
class RequestScope:
    """Per-request data visible to the worker threads of the request (through a context variable)."""

    deadline: float | None = None  # time.monotonic() value
    deadline_s: float = 0.0
    overloaded: list[Overloaded] = field(default_factory=list)
    stage_ms: dict[str, float] = field(default_factory=dict)
    #: Set when the client is gone (an SSE stream it left): its threads start no further stage, so work
    #: queued behind other requests (an LM call above all) is dropped instead of run for nobody.
    gone: threading.Event = field(default_factory=threading.Event)


request_scope_var: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
    "rag_request_scope", default=None
)


@contextlib.contextmanager
def in_stage(gate: StageGate) -> Iterator[None]:
    """Hold ``gate`` in a worker thread, waiting at most until the request's deadline, and not at all
    once the request's client is gone (:class:`~rag_app.server.limits.ClientGone`)."""
    scope = request_scope_var.get()
    timeout = None if scope is None or scope.deadline is None else max(0.0, scope.deadline - time.monotonic())
    try:
        gate.acquire_blocking(timeout, None if scope is None else scope.gone)
    except Overloaded as exc:
        if scope is not None:
            scope.overloaded.append(exc)
        raise
    except TimeoutError:
        raise DeadlineExceeded(scope.deadline_s if scope else 0.0, gate.name) from None
    start = time.perf_counter()
    try:
        yield
    finally:
        held = time.perf_counter() - start
        gate.record_hold(held)
        gate.release()
        if scope is not None:
            key = f"{gate.name}_ms"
            scope.stage_ms[key] = scope.stage_ms.get(key, 0.0) + held * 1000


class GatedEmbedder:
    """An :class:`~rag_app.embeddings.Embedder` whose embed calls hold the ``embed`` gate."""

    def __init__(self, inner: Any, gate: StageGate) -> None:
        self._inner = inner
        self._gate = gate
        self.model_id = inner.model_id
        self.max_tokens = inner.max_tokens

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    def embed_query(self, text: str) -> Any:
        with in_stage(self._gate):
            return self._inner.embed_query(text)

    def embed_documents(self, texts: Any) -> Any:
        with in_stage(self._gate):
            return self._inner.embed_documents(texts)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self._inner.token_spans(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class GatedReranker:
    """The reranker with its scoring calls (``GATED_METHODS``) holding the ``rerank`` gate."""

    GATED_METHODS = frozenset({"rerank", "score", "predict", "rerank_passages", "score_pairs"})

    def __init__(self, inner: Any, gate: StageGate) -> None:
        self._inner = inner
        self._gate = gate

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name in self.GATED_METHODS and callable(value):

            def gated(*args: Any, **kwargs: Any) -> Any:
                with in_stage(self._gate):
                    return value(*args, **kwargs)

            return gated
        return value


class _GatedLMMixin:
    """Mixed into a copy of a ``dspy.LM``: every call holds the ``lm`` gate."""

    _rag_gate: StageGate

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with in_stage(self._rag_gate):
            return super().__call__(*args, **kwargs)  # type: ignore[misc]


def gate_lm(lm: Any, gate: StageGate) -> Any:
    """A shallow copy of ``lm`` whose calls hold ``gate`` (``lm`` itself when it cannot be wrapped)."""
    try:
        cls = type(f"Gated{type(lm).__name__}", (_GatedLMMixin, type(lm)), {})
        gated = copy.copy(lm)
        gated.__class__ = cls
        gated._rag_gate = gate
        return gated
    except Exception as exc:  # pragma: no cover - exotic LM objects
        log.warning("cannot put the LM stage limit around %r (%s); LM calls are not limited", lm, exc)
        return lm


class ServerState:
    """Models, gates, pipelines and programs of one app."""

    def __init__(self, settings: Settings, *, embedder: Any = None, reranker: Any = None) -> None:
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
        self.runner = StageRunner(self.gates, max_threads=limits["request"] + 2)
        self._embedder_override = embedder
        self._reranker_override = reranker
        self.embedder: Any = None
        self.reranker: Any = None
        self.gated_embedder: Any = None
        self.gated_reranker: Any = None
        self._lock = threading.RLock()
        self._pipelines: dict[tuple[str, str | None], Any] = {}
        self._programs: dict[tuple[str, str], Any] = {}
        self._lm_cache: dict[int, Any] = {}
        self.programs_index: dict[str, list[str]] = {}
        self.checks: dict[str, dict[str, Any]] = {}
        self.loaded = False
        self.load_error: str | None = None
        self._lm_checked_at = 0.0

    # ------------------------------------------------------------------------------- startup
    def load(self) -> None:
        """Load and warm the embedder, index handles and reranker; build programs; probe the LM. Blocking."""
        from rag_app.embeddings import get_embedder
        from rag_app.store import VectorStore

        settings = self.settings
        t0 = time.perf_counter()
        self.embedder = self._embedder_override or get_embedder(settings)
        self.embedder.embed_query("warm-up query")
        self.gated_embedder = GatedEmbedder(self.embedder, self.gates["embed"])
        self.checks["embedder"] = {
            "ok": True,
            "model": self.embedder.model_id,
            "load_ms": round((time.perf_counter() - t0) * 1000, 1),
        }

        t0 = time.perf_counter()
        self.reranker = self._reranker_override or self._load_reranker()
        self.gated_reranker = GatedReranker(self.reranker, self.gates["rerank"])
        available = bool(getattr(self.reranker, "available", True))
        describe = (
            self.reranker.describe() if hasattr(self.reranker, "describe") else type(self.reranker).__name__
        )
        self.checks["reranker"] = {
            "ok": True,
            "available": available,
            "describe": str(describe),
            "load_ms": round((time.perf_counter() - t0) * 1000, 1),
        }
        if not available:
            self.checks["reranker"]["note"] = "reranker unavailable: passages keep retrieval order (fallback)"
        if hasattr(self.reranker, "cache_stats"):
            self.metrics.set_rerank_cache_stats(self.reranker.cache_stats)

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

    def _load_reranker(self) -> Any:
        from rag_app.rerank import get_reranker

        return get_reranker(self.settings)

    def _load_programs(self) -> None:
        from rag_app.programs import list_programs

        errors: dict[str, str] = {}
        try:
            self.programs_index = list_programs(self.settings)
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
        from rag_app.lm import lm_unavailable_reason

        reason = lm_unavailable_reason(self.settings)
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
        from rag_app.rerank import RetrieveThenRerank
        from rag_app.retrieve import LanceDBRetriever

        key = (site, collection)
        with self._lock:
            if key not in self._pipelines:
                retriever = LanceDBRetriever(
                    self.settings, site, [collection] if collection else None, embedder=self.gated_embedder
                )
                self._pipelines[key] = RetrieveThenRerank(retriever, self.gated_reranker, self.settings)
            return self._pipelines[key]

    # ------------------------------------------------------------------------------- programs
    def gated_lm(self, lm: Any) -> Any:
        with self._lock:
            gated = self._lm_cache.get(id(lm))
            if gated is None or gated[0] is not lm:
                gated = (lm, gate_lm(lm, self.gates["lm"]))
                self._lm_cache[id(lm)] = gated
            return gated[1]

    def program(self, site: str, name: str) -> Any:
        """The program instance for ``site``/``name``, built once on this app's pipelines and gates."""
        from rag_app.programs import program_class

        key = (site, name)
        with self._lock:
            if key in self._programs:
                return self._programs[key]
            cls = program_class(self.settings, site, name)
            if hasattr(cls, "make_pipeline") and hasattr(cls, "lm"):
                instance = self._served_class(cls)(self.settings)
            else:
                instance = cls(self.settings)
            self._programs[key] = instance
            return instance

    def _served_class(self, cls: type) -> type:
        """``cls`` using this app's gated pipelines and LM (a subclass; everything else unchanged)."""
        state = self
        base_lm: Callable[[Any], tuple[Any, str | None]] = cls.lm  # type: ignore[attr-defined]

        def make_pipeline(self: Any, collection: str | None) -> Any:
            return state.pipeline(self.site, collection)

        def lm(self: Any) -> tuple[Any, str | None]:
            resolved, note = base_lm(self)
            return (state.gated_lm(resolved) if resolved is not None else None), note

        namespace = {
            "make_pipeline": make_pipeline,
            "lm": lm,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
        }
        return types.new_class(cls.__name__, (cls,), {}, lambda ns: ns.update(namespace))

    # ------------------------------------------------------------------------------- shutdown
    def close(self) -> None:
        self.runner.shutdown()
