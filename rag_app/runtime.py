"""The one owner of models, pipelines and programs in a process.

Loading a cross-encoder or an embedder costs seconds and hundreds of MB, so each is built once and
shared by every request, query and program of a process. Before this module that sharing lived in six
module-level caches plus a second set inside the HTTP server; now the CLI builds one :class:`Runtime`
per command, the server one per worker, evaluation and tests one per run, and all of them go through
the same code path.

The server's concurrency limits are not patched into anything: it passes :class:`StageWrappers` that
wrap the explicit protocols (:class:`~rag_app.models.embeddings.Embedder`,
:class:`~rag_app.models.rerank.Reranker`, the LM) once, at the moment the runtime builds them.

Per-site models. ``rag-app optimize --reranker/--embedder`` fine-tunes a model on a site's labels and,
when it beats what it replaces, records it in ``<models dir>/<site>/active.json``
(:func:`active_models`). :meth:`Runtime.reranker_for` and :meth:`Runtime.embedder_for` return that
site's activated model (loaded once, wrapped like the global ones) or the global one, and the site's
retrievers, pipelines, programs and ingests use them. Without an ``active.json`` nothing changes.

Traces. :meth:`Runtime.search` and :meth:`Runtime.ask` are root spans (``rag.search``, ``rag.ask``) of
the runtime's :class:`~rag_app.core.tracing.Tracing` (built from settings on first use: off unless
``otel_exporter_otlp_endpoint`` is set), so CLI and library runs are traced like server requests; the
stages open their own child spans. Every LM the runtime hands out is wrapped in a
:class:`~rag_app.answering.traced_lm.TracedLM` (inside the host's wrapper) for its ``lm`` spans.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag_app.answering.program import SiteProgram
from rag_app.answering.registry import list_programs, program_class
from rag_app.answering.traced_lm import TracedLM
from rag_app.core.errors import InputError, ModelNotAvailableError, validation_message
from rag_app.core.settings import Settings
from rag_app.core.tracing import Tracing
from rag_app.ingest.pipeline import IngestReport, ingest_paths
from rag_app.models.embeddings import Embedder, load_embedder
from rag_app.models.lm import LMResolver
from rag_app.models.rerank import Reranker, load_reranker, unavailable_note
from rag_app.retrieval.pipeline import RetrieveThenRerank
from rag_app.retrieval.retriever import LanceDBRetriever


def _same(value: Any) -> Any:
    return value


#: The stages a site can have its own fine-tuned model for (the keys of ``active.json``).
SITE_MODEL_KINDS = ("reranker", "embedder")


def active_file(settings: Settings, site: str) -> Path:
    """``<models dir>/<site>/active.json``: which fine-tuned models a site uses."""
    return settings.resolved_models_dir / site / "active.json"


def active_models(settings: Settings, site: str) -> dict[str, dict[str, Any]]:
    """``{"reranker": {"path", "model_id", "card"}, "embedder": {...}}`` for ``site`` (either may be
    absent; ``{}`` without a file). An unreadable file is an error naming it, never silently ignored:
    serving the global model instead would quietly change what the site answers with."""
    path = active_file(settings, site)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotAvailableError(
            f"{path}: unreadable activation record ({exc}); fix it, or delete it to use the global models"
        ) from exc
    if not isinstance(data, dict):
        raise ModelNotAvailableError(f"{path}: expected a JSON object; delete it to use the global models")
    return {k: v for k, v in data.items() if k in SITE_MODEL_KINDS and isinstance(v, dict) and v.get("path")}


def _site_model_path(settings: Settings, site: str, kind: str) -> str | None:
    entry = active_models(settings, site).get(kind)
    if entry is None:
        return None
    path = Path(entry["path"])
    if not path.is_dir():
        raise ModelNotAvailableError(
            f"{active_file(settings, site)} activates the {kind} {path} for site {site!r}, but that folder"
            f" is gone; retrain it (`rag-app optimize --site {site} --{kind} ...`) or remove the {kind!r}"
            " entry to use the global model"
        )
    return str(path)


@dataclass(frozen=True)
class StageWrappers:
    """How a host wraps each model the runtime builds (the server: its per-stage concurrency gates).

    Each function takes the model and returns an object that implements the same protocol.
    """

    embedder: Callable[[Embedder], Embedder] = _same
    reranker: Callable[[Reranker], Reranker] = _same
    lm: Callable[[Any], Any] = _same


class Runtime:
    """Models, retrieval pipelines and site programs for one :class:`Settings`, each built once.

    ``embedder``, ``reranker`` and ``lm`` replace the configured ones (tests, benchmarks, a server that
    shares one loaded model between apps); ``tracing`` replaces the one built from settings (a host that
    owns its own, a test's in-memory exporter). Thread-safe: concurrent first uses load a model once.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        reranker: Reranker | None = None,
        lm: Any = None,
        wrappers: StageWrappers | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self._tracing = tracing
        self.wrappers = wrappers or StageWrappers()
        self._embedder = None if embedder is None else self.wrappers.embedder(embedder)
        self._reranker = None if reranker is None else self.wrappers.reranker(reranker)
        self._explicit_lm = lm
        self._lms = LMResolver(settings)
        self._wrapped_lms: dict[int, tuple[Any, Any]] = {}
        self._lock = threading.RLock()
        self._retrievers: dict[tuple[str, str | None], LanceDBRetriever] = {}
        self._pipelines: dict[tuple[str, str | None], RetrieveThenRerank] = {}
        self._programs: dict[tuple[str, str], SiteProgram] = {}
        #: (kind, site) -> the site's activated model path, or None for the global one (read once).
        self._site_paths: dict[tuple[str, str], str | None] = {}
        #: model path -> the loaded (wrapped) fine-tuned model, shared by every site that activates it.
        self._site_models: dict[str, Any] = {}
        #: What this runtime built itself (not what it was handed), released by :meth:`close`.
        self._owned: list[Any] = []
        self._owns_tracing = tracing is None

    def _own(self, model: Any) -> Any:
        """Remember a model this runtime built, so :meth:`close` can release it (a remote model's HTTP
        connection pool); returns it."""
        self._owned.append(model)
        return model

    def close(self) -> None:
        """Release what this runtime built: remote models' connections and, when built from settings,
        the trace exporter (flushed first). Models and tracing handed in are the caller's to close."""
        with self._lock:
            owned, self._owned = self._owned, []
            tracing = self._tracing if self._owns_tracing else None
        for model in owned:
            close = getattr(model, "close", None)
            if callable(close):
                close()
        if tracing is not None:
            tracing.shutdown()

    @property
    def tracing(self) -> Tracing:
        """Where this runtime's traces go (built from settings on first use; off without an endpoint)."""
        with self._lock:
            if self._tracing is None:
                self._tracing = Tracing.from_settings(self.settings)
            return self._tracing

    # ------------------------------------------------------------------------------------ models
    @property
    def embedder(self) -> Embedder:
        """The embedder (loaded on first use)."""
        with self._lock:
            if self._embedder is None:
                self._embedder = self.wrappers.embedder(self._own(load_embedder(self.settings)))
            return self._embedder

    @property
    def reranker(self) -> Reranker:
        """The reranker (loaded and warmed on first use; a fallback when weights are missing and
        ``reranker_on_missing="fallback"``)."""
        with self._lock:
            if self._reranker is None:
                self._reranker = self.wrappers.reranker(self._own(load_reranker(self.settings)))
            return self._reranker

    @property
    def reranker_loaded(self) -> bool:
        return self._reranker is not None

    def _site_model(self, kind: str, site: str) -> Any | None:
        """The site's activated ``kind`` model (loaded once per path), or None to use the global one."""
        with self._lock:
            key = (kind, site)
            if key not in self._site_paths:
                self._site_paths[key] = _site_model_path(self.settings, site, kind)
            path = self._site_paths[key]
            if path is None:
                return None
            if path not in self._site_models:
                if kind == "reranker":
                    settings = self.settings.model_copy(
                        update={
                            "reranker_model": path,
                            "reranker_revision": None,
                            "reranker_on_missing": "fail",
                            # A site's fine-tuned weights run here, even when the global one is remote.
                            "reranker_backend": "auto"
                            if self.settings.reranker_backend == "remote"
                            else self.settings.reranker_backend,
                        }
                    )
                    self._site_models[path] = self.wrappers.reranker(self._own(load_reranker(settings)))
                else:
                    settings = self.settings.model_copy(
                        update={
                            "embedder_backend": "sentence-transformers",
                            "embedder_model": path,
                            "embedder_revision": None,
                        }
                    )
                    self._site_models[path] = self.wrappers.embedder(self._own(load_embedder(settings)))
            return self._site_models[path]

    def reranker_for(self, site: str) -> Reranker:
        """``site``'s activated fine-tuned reranker, else :attr:`reranker`."""
        model = self._site_model("reranker", site)
        return self.reranker if model is None else model

    def embedder_for(self, site: str) -> Embedder:
        """``site``'s activated fine-tuned embedder, else :attr:`embedder`. Its tables are embedded with
        it (the activation re-embeds them), so searching or ingesting with another one is refused."""
        model = self._site_model("embedder", site)
        return self.embedder if model is None else model

    def forget_site_models(self, site: str) -> None:
        """Drop what this runtime built for ``site`` so the next use reads ``active.json`` again (after an
        activation in the same process)."""
        with self._lock:
            for kind in SITE_MODEL_KINDS:
                self._site_paths.pop((kind, site), None)
            for cache in (self._retrievers, self._pipelines, self._programs):
                for key in [k for k in cache if k[0] == site]:
                    del cache[key]

    def lm_unavailable_reason(self) -> str | None:
        """Why the configured LM cannot be used right now (probed at most every 30 s), or ``None``."""
        return self._lms.unavailable_reason()

    def lm(self) -> tuple[Any, str | None]:
        """``(lm, None)`` for the LM a call should use, or ``(None, why not)``; wrapped once per LM."""
        lm, note = self._lms.resolve(self._explicit_lm)
        if lm is None:
            return None, note
        with self._lock:
            cached = self._wrapped_lms.get(id(lm))
            if cached is None or cached[0] is not lm:
                cached = (lm, self.wrappers.lm(TracedLM(lm)))
                self._wrapped_lms[id(lm)] = cached
            return cached[1], None

    # ------------------------------------------------------------------------------- retrieval
    def retriever(self, site: str, collection: str | None = None) -> LanceDBRetriever:
        """The retriever of ``site`` (one collection, or all of them); no reranker is loaded."""
        key = (site, collection)
        with self._lock:
            if key not in self._retrievers:
                self._retrievers[key] = LanceDBRetriever(
                    self.settings,
                    site,
                    [collection] if collection else None,
                    embedder_factory=lambda: self.embedder_for(site),
                )
            return self._retrievers[key]

    def pipeline(self, site: str, collection: str | None = None) -> RetrieveThenRerank:
        """Retrieve-then-rerank over :meth:`retriever` (this is what programs compose)."""
        key = (site, collection)
        with self._lock:
            if key not in self._pipelines:
                self._pipelines[key] = RetrieveThenRerank(
                    self.retriever(site, collection), self.reranker_for(site), self.settings
                )
            return self._pipelines[key]

    def search(
        self,
        site: str,
        query: str,
        *,
        collection: str | None = None,
        k: int | None = None,
        mode: str | None = None,
        rerank: bool = False,
        top_n: int | None = None,
        filters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One query as a JSON-ready dict: ``query``, ``mode``, ``reranked``, ``passages``, ``timings``,
        ``notes``. The plain (``rerank=False``) path never loads the reranker."""
        notes: list[str] = []
        attributes = {"rag.site": site, "rag.search.rerank": rerank}
        with self.tracing.span("rag.search", attributes=attributes):
            if rerank:
                pipeline = self.pipeline(site, collection)
                pred = pipeline(query=query, k=k, top_n=top_n, filters=filters, mode=mode)
                note = None if pred.reranked else unavailable_note(pipeline.reranker)
                if note:
                    notes.append(note)
            else:
                pred = self.retriever(site, collection)(query=query, k=k, filters=filters, mode=mode)
        return {
            "query": query,
            "mode": pred.mode,
            "reranked": bool(getattr(pred, "reranked", False)),
            "passages": [p.model_dump(mode="json") for p in pred.passages],
            "timings": dict(pred.timings),
            "notes": notes,
        }

    # -------------------------------------------------------------------------------- programs
    def programs(self) -> dict[str, list[str]]:
        """site -> program names that ``programs_dir`` serves."""
        return list_programs(self.settings)

    def program(self, site: str, name: str) -> SiteProgram:
        """The program ``site``/``name``, built once on this runtime's pipelines and LM."""
        key = (site, name)
        with self._lock:
            if key not in self._programs:
                self._programs[key] = program_class(self.settings, site, name)(self.settings, services=self)
            return self._programs[key]

    def ask(
        self,
        site: str,
        program: str,
        question: str,
        *,
        history: list[dict[str, str]] | None = None,
        **fields: Any,
    ) -> Any:
        """Run ``site``/``program`` on a free-text question (the CLI's ``ask``); its typed output.

        Each program maps the question to its ``Input`` (``input_from_question``): builddaily
        ``chat_bridge`` takes it as ``message`` with ``history``; ``resources_search`` as ``query``;
        paiddaily ``tickers`` as ``setup`` and ``catalysts`` as ``description``; sagedaily ``reading`` as
        the querent's ``question``. ``fields`` hold further ``Input`` fields (``sector``, ``cards`` ...)
        or ``filters`` as a :class:`~rag_app.core.types.SearchFilters` dict.
        """
        if not question or not question.strip():
            raise InputError("the question is empty")
        with self.tracing.span("rag.ask", attributes={"rag.site": site, "rag.program": program}):
            instance = self.program(site, program)
            if not hasattr(instance, "input_from_question"):
                raise InputError(f"program {site}/{program} does not take a free-text question")
            try:
                inputs = instance.input_from_question(question, history, **fields)
            except ValueError as exc:
                raise InputError(f"invalid input for {site}/{program}: {validation_message(exc)}") from exc
            return instance.run(inputs)

    # ---------------------------------------------------------------------------------- ingest
    def ingest(
        self,
        site: str,
        collection: str,
        paths: Sequence[Path | str],
        **options: Any,
    ) -> IngestReport:
        """Load ``paths`` into ``site``/``collection`` with the site's embedder (:meth:`embedder_for`)."""
        return ingest_paths(
            self.settings, site, collection, paths, embedder=self.embedder_for(site), **options
        )


__all__ = ["SITE_MODEL_KINDS", "Runtime", "StageWrappers", "active_file", "active_models"]
