"""Which language model a program call uses, built from settings once and checked before use.

Kept apart from the programs so that the CLI, the server's health check, the optimizer and the
evaluators resolve the LM exactly as programs do. Which LM a call uses, first match wins
(:func:`resolve_lm`): the LM passed to the program's constructor (tests pass ``dspy.utils.DummyLM``),
an LM in the active DSPy context (what optimizers and evaluators set), the LM built from settings
(:func:`build_lm`, through LiteLLM, DSPy's response cache under ``<data_dir>/cache/dspy``).

For Ollama models a ``GET /api/version`` probe (1.5 s timeout, result kept 30 s per host) runs first,
so a stopped Ollama gives an extractive answer at once instead of after the LM call's timeouts and
retries. Built LMs and probe results are cached per process (:func:`clear_lm_caches` forgets them).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import dspy

from rag_app.settings import Settings

__all__ = [
    "PROBE_TIMEOUT_S",
    "PROBE_TTL_S",
    "build_lm",
    "clear_lm_caches",
    "is_ollama_model",
    "lm_unavailable_reason",
    "probe_ollama",
    "resolve_lm",
]

# LiteLLM fetches a model price list from the internet when it is first imported, retrying for
# seconds when offline. This service runs offline by default, so use LiteLLM's bundled copy unless the
# operator asked otherwise. (Only sets a default; nothing here reads the environment.)
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

#: Seconds an Ollama reachability probe result is reused for one host.
PROBE_TTL_S = 30.0
#: Timeout of the reachability probe (``GET /api/version``), capped by ``lm_timeout_s``.
PROBE_TIMEOUT_S = 1.5
_OLLAMA_PROVIDERS = {"ollama", "ollama_chat"}

_LM_LOCK = threading.Lock()
_LMS: dict[str, dspy.LM] = {}
_CACHE_DIR: list[str] = []
_PROBES: dict[str, tuple[float, str | None]] = {}


def _lm_key(settings: Settings) -> str:
    fields = (
        "lm_model",
        "lm_api_base",
        "lm_api_key",
        "lm_timeout_s",
        "lm_retries",
        "lm_temperature",
        "lm_max_tokens",
        "lm_cache",
        "ollama_host",
        "data_dir",
    )
    return repr([getattr(settings, f) for f in fields])


def is_ollama_model(model: str | None) -> bool:
    return bool(model) and model.split("/", 1)[0] in _OLLAMA_PROVIDERS  # type: ignore[union-attr]


def build_lm(settings: Settings) -> dspy.LM | None:
    """The ``dspy.LM`` described by settings (cached per LM configuration); ``None`` when no LM is set.

    Always through LiteLLM (``engine="litellm"``): ``lm_model`` is documented as a LiteLLM model string,
    and for ``ollama_chat/...`` that means Ollama's own ``/api/chat``. DSPy's response cache lives
    under ``<data_dir>/cache/dspy`` when ``lm_cache`` is on (``dspy.configure_cache`` is process-wide;
    the last data dir configured wins).
    """
    if not settings.lm_model:
        return None
    key = _lm_key(settings)
    with _LM_LOCK:
        lm = _LMS.get(key)
        if lm is not None:
            return lm
        if settings.lm_cache:
            cache_dir = str(settings.cache_dir / "dspy")
            if [cache_dir] != _CACHE_DIR:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                dspy.configure_cache(disk_cache_dir=cache_dir)
                _CACHE_DIR[:] = [cache_dir]
        kwargs: dict[str, Any] = {}
        if settings.resolved_lm_api_base:
            kwargs["api_base"] = settings.resolved_lm_api_base
        if settings.lm_api_key:
            kwargs["api_key"] = settings.lm_api_key
        lm = dspy.LM(
            settings.lm_model,
            temperature=settings.lm_temperature,
            max_tokens=settings.lm_max_tokens,
            cache=settings.lm_cache,
            num_retries=settings.lm_retries,
            timeout=settings.lm_timeout_s,
            engine="litellm",
            **kwargs,
        )
        _LMS[key] = lm
        return lm


def probe_ollama(api_base: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` when ``GET {api_base}/api/version`` answers, else why not. Cached per host for 30 s."""
    import httpx

    base = api_base.rstrip("/")
    now = time.monotonic()
    with _LM_LOCK:
        cached = _PROBES.get(base)
        if cached and now - cached[0] < PROBE_TTL_S:
            return cached[1]
    try:
        response = httpx.get(f"{base}/api/version", timeout=timeout_s)
        error = (
            None if response.status_code == 200 else f"HTTP {response.status_code} from {base}/api/version"
        )
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    with _LM_LOCK:
        _PROBES[base] = (time.monotonic(), error)
    return error


def clear_lm_caches() -> None:
    """Forget built LMs and probe results (tests; after changing an Ollama host)."""
    with _LM_LOCK:
        _LMS.clear()
        _PROBES.clear()


def lm_unavailable_reason(settings: Settings) -> str | None:
    """Why the configured LM cannot be used right now (a note for ``Output.notes``), or ``None``."""
    if not settings.lm_model:
        return "no LM configured (lm_model is unset): extractive answer"
    if is_ollama_model(settings.lm_model) and settings.resolved_lm_api_base:
        error = probe_ollama(settings.resolved_lm_api_base, min(PROBE_TIMEOUT_S, settings.lm_timeout_s))
        if error:
            return (
                f"LM unreachable: Ollama at {settings.resolved_lm_api_base} did not answer ({error}); "
                "extractive answer"
            )
    return None


def resolve_lm(settings: Settings, explicit: Any = None) -> tuple[Any, str | None]:
    """``(lm, None)`` for the LM a call should use, or ``(None, note)`` saying why there is none."""
    if explicit is not None:
        return explicit, None
    if dspy.settings.lm is not None:
        return dspy.settings.lm, None
    reason = lm_unavailable_reason(settings)
    if reason:
        return None, reason
    return build_lm(settings), None
