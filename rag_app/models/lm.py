"""Which language model a program call uses, built from settings once and checked before use.

Kept apart from the programs so that the CLI, the server's health check, the optimizer and the
evaluators resolve the LM exactly as programs do. Which LM a call uses, first match wins
(:meth:`LMResolver.resolve`): the LM passed to the program's constructor (tests pass ``dspy.utils.DummyLM``),
an LM in the active DSPy context (what optimizers and evaluators set), the LM built from settings
(:func:`build_lm`, through LiteLLM, DSPy's response cache under ``<data_dir>/cache/dspy``).

For Ollama models a ``GET /api/version`` probe (1.5 s timeout, result kept 30 s per host) runs first,
so a stopped Ollama gives an extractive answer at once instead of after the LM call's timeouts and
retries. An :class:`LMResolver` keeps its built LM and its probe results (the runtime owns one).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import dspy

from rag_app.core.settings import Settings

__all__ = [
    "PROBE_TIMEOUT_S",
    "PROBE_TTL_S",
    "LMResolver",
    "build_lm",
    "is_ollama_model",
    "probe_ollama",
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

_CACHE_DIR_LOCK = threading.Lock()
_configured_cache_dir: list[str] = []  # dspy.configure_cache is process-wide configuration


def is_ollama_model(model: str | None) -> bool:
    return bool(model) and model.split("/", 1)[0] in _OLLAMA_PROVIDERS  # type: ignore[union-attr]


def _configure_dspy_cache(settings: Settings) -> None:
    cache_dir = str(settings.cache_dir / "dspy")
    with _CACHE_DIR_LOCK:
        if [cache_dir] != _configured_cache_dir:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            dspy.configure_cache(disk_cache_dir=cache_dir)
            _configured_cache_dir[:] = [cache_dir]


def build_lm(settings: Settings) -> dspy.LM | None:
    """The ``dspy.LM`` described by settings (a new one); ``None`` when no LM is set.

    Always through LiteLLM (``engine="litellm"``): ``lm_model`` is documented as a LiteLLM model string,
    and for ``ollama_chat/...`` that means Ollama's own ``/api/chat``. DSPy's response cache lives
    under ``<data_dir>/cache/dspy`` when ``lm_cache`` is on (``dspy.configure_cache`` is process-wide;
    the last data dir configured wins).
    """
    if not settings.lm_model:
        return None
    if settings.lm_cache:
        _configure_dspy_cache(settings)
    kwargs: dict[str, Any] = {}
    if settings.resolved_lm_api_base:
        kwargs["api_base"] = settings.resolved_lm_api_base
    if settings.lm_api_key:
        kwargs["api_key"] = settings.lm_api_key
    return dspy.LM(
        settings.lm_model,
        temperature=settings.lm_temperature,
        max_tokens=settings.lm_max_tokens,
        cache=settings.lm_cache,
        num_retries=settings.lm_retries,
        timeout=settings.lm_timeout_s,
        engine="litellm",
        **kwargs,
    )


def probe_ollama(api_base: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` when ``GET {api_base}/api/version`` answers, else why not."""
    import httpx

    base = api_base.rstrip("/")
    try:
        response = httpx.get(f"{base}/api/version", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None if response.status_code == 200 else f"HTTP {response.status_code} from {base}/api/version"


class LMResolver:
    """Which LM a call uses, and why there is none: built once, probed at most every ``PROBE_TTL_S``.

    First match wins: an explicit LM (tests pass ``DummyLM``), the LM of the active DSPy context
    (optimizers and evaluators set one), the LM built from settings when it is reachable.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._lm: dspy.LM | None = None
        self._probe: tuple[float, str | None] | None = None

    def unavailable_reason(self) -> str | None:
        """Why the configured LM cannot be used right now (a note for ``Output.notes``), or ``None``."""
        settings = self.settings
        if not settings.lm_model:
            return "no LM configured (lm_model is unset): extractive answer"
        if not (is_ollama_model(settings.lm_model) and settings.resolved_lm_api_base):
            return None
        with self._lock:
            cached = self._probe
        if cached is None or time.monotonic() - cached[0] >= PROBE_TTL_S:
            error = probe_ollama(settings.resolved_lm_api_base, min(PROBE_TIMEOUT_S, settings.lm_timeout_s))
            cached = (time.monotonic(), error)
            with self._lock:
                self._probe = cached
        if cached[1]:
            return (
                f"LM unreachable: Ollama at {settings.resolved_lm_api_base} did not answer ({cached[1]}); "
                "extractive answer"
            )
        return None

    def resolve(self, explicit: Any = None) -> tuple[Any, str | None]:
        """``(lm, None)`` for the LM a call should use, or ``(None, note)`` saying why there is none."""
        if explicit is not None:
            return explicit, None
        if dspy.settings.lm is not None:
            return dspy.settings.lm, None
        reason = self.unavailable_reason()
        if reason:
            return None, reason
        with self._lock:
            if self._lm is None:
                self._lm = build_lm(self.settings)
            return self._lm, None
