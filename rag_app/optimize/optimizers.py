"""Which DSPy optimizer a ``--optimizer``/``--budget`` pair means, and the LM they all run with.

Optimizers (``--budget`` light/medium/heavy):

* ``bootstrap``: :class:`dspy.BootstrapFewShot` (light) or
  :class:`dspy.BootstrapFewShotWithRandomSearch` with 8/16 candidate programs (medium/heavy);
* ``mipro``: :class:`dspy.MIPROv2` ``(auto=budget)``, the program LM as prompt and task model;
* ``gepa``: :class:`dspy.GEPA` ``(auto=budget)``, the program LM as reflection LM.

Demos are bootstrapped traces only (``max_labeled_demos=0``): eval rows hold the programs' inputs
(``message``, ``query``...) and gold answers, never the inputs of their inner predictors, so raw rows
would only be dead weight in the saved state. Random search, MIPROv2 and GEPA use the dev set as their
validation set (as DSPy's tutorials do), so the "after" dev score is optimistic: measure a held-out
file with ``rag-app eval answers``.

The LM is the program LM from settings (:func:`rag_app.models.lm.build_lm`; tests pass one); without
one configured and reachable, :func:`require_lm` stops the run with an error naming ``RAG_LM_MODEL``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dspy

from rag_app.core.errors import InputError, ServiceUnavailableError
from rag_app.core.settings import Settings
from rag_app.optimize.metric import answer_metric, feedback_metric

OPTIMIZERS = ("bootstrap", "mipro", "gepa")
BUDGETS = ("light", "medium", "heavy")
#: Candidate programs of BootstrapFewShotWithRandomSearch per budget.
RANDOM_SEARCH_CANDIDATES = {"medium": 8, "heavy": 16}
MAX_BOOTSTRAPPED_DEMOS = 4

__all__ = [
    "BUDGETS",
    "OPTIMIZERS",
    "check_optimizer",
    "lm_fingerprint",
    "make_optimizer",
    "require_lm",
]


def check_optimizer(name: str, budget: str) -> None:
    """A clear error for an optimizer or budget that does not exist."""
    if name not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    if budget not in BUDGETS:
        raise InputError(f"unknown budget {budget!r}; use one of {', '.join(BUDGETS)}")


def make_optimizer(
    name: str,
    budget: str,
    lm: Any,
    *,
    num_threads: int = 1,
    log_dir: Path | None = None,
    n_dev: int = 1,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``(optimizer, extra compile kwargs, config for the sidecar)`` for ``name``/``budget``.

    A ``"valset": "dev"`` in the compile kwargs asks the caller to pass its dev set there.
    """
    check_optimizer(name, budget)
    if name == "bootstrap" and budget == "light":
        optimizer = dspy.BootstrapFewShot(
            metric=answer_metric,
            max_bootstrapped_demos=MAX_BOOTSTRAPPED_DEMOS,
            max_labeled_demos=0,
            max_rounds=1,
        )
        return optimizer, {}, {"class": "BootstrapFewShot", "max_bootstrapped_demos": MAX_BOOTSTRAPPED_DEMOS}
    if name == "bootstrap":
        candidates = RANDOM_SEARCH_CANDIDATES[budget]
        optimizer = dspy.BootstrapFewShotWithRandomSearch(
            metric=answer_metric,
            max_bootstrapped_demos=MAX_BOOTSTRAPPED_DEMOS,
            max_labeled_demos=0,
            num_candidate_programs=candidates,
            num_threads=num_threads,
        )
        config = {"class": "BootstrapFewShotWithRandomSearch", "num_candidate_programs": candidates}
        return optimizer, {"valset": "dev"}, config
    if name == "mipro":
        try:
            import optuna  # noqa: F401  (MIPROv2's search; imported late by DSPy, so check up front)
        except ImportError:
            raise InputError(
                "--optimizer mipro needs the optuna package (MIPROv2's Bayesian search): pip install optuna"
            ) from None
        optimizer = dspy.MIPROv2(
            metric=answer_metric,
            prompt_model=lm,
            task_model=lm,
            auto=budget,  # type: ignore[arg-type]
            max_bootstrapped_demos=MAX_BOOTSTRAPPED_DEMOS,
            max_labeled_demos=0,
            num_threads=num_threads,
        )
        return optimizer, {"valset": "dev", "minibatch_size": max(1, min(35, n_dev))}, {"class": "MIPROv2"}
    optimizer = dspy.GEPA(
        metric=feedback_metric,
        auto=budget,  # type: ignore[arg-type]
        reflection_lm=lm,
        num_threads=num_threads,
        log_dir=str(log_dir) if log_dir else None,
        track_stats=False,
    )
    return optimizer, {"valset": "dev"}, {"class": "GEPA", "log_dir": str(log_dir) if log_dir else None}


def require_lm(settings: Settings) -> Any:
    """The program LM from settings, or an error naming ``RAG_LM_MODEL`` when none is usable."""
    from rag_app.models.lm import LMResolver, build_lm

    if not settings.lm_model:
        raise InputError(
            "optimizing a program needs an LM, and none is configured: set RAG_LM_MODEL (or lm_model in "
            "rag.toml) to a LiteLLM model string, e.g. RAG_LM_MODEL=ollama_chat/llama3.2"
        )
    reason = LMResolver(settings).unavailable_reason()
    if reason:
        raise ServiceUnavailableError(
            f"optimizing a program needs a reachable LM (RAG_LM_MODEL={settings.lm_model}): "
            f"{re.sub(r'[:;] extractive answer$', '', reason)}"
        )
    return build_lm(settings)


def lm_fingerprint(lm: Any) -> dict[str, Any]:
    """What identifies an LM's behaviour (model and sampling kwargs; never keys)."""
    kwargs = getattr(lm, "kwargs", {}) or {}
    keep = {
        k: v
        for k, v in kwargs.items()
        if k in ("temperature", "max_tokens", "max_completion_tokens", "top_p", "api_base", "n")
    }
    return {"model": str(getattr(lm, "model", type(lm).__name__)), "type": type(lm).__name__, **keep}
