"""Whether a fine-tuned model goes live for a site, and the record that says which one does.

Two rules, both checked on the dev split before anything changes:

1. It must beat what it replaces: the retrieval order for a reranker (the dev lists as retrieved),
   the current embedder for an embedder (:mod:`.embedder_eval`). Otherwise
   :class:`ModelNotActivatedError` names both scores; the model stays on disk with its card, inactive.
   No flag overrides this: a model that measured worse is never activated, silently or not.
2. It must not replace an active model whose card records a better dev score, unless ``force``: the
   program optimizer's guard (:class:`rag_app.optimize.state.StateNotOverwrittenError`, same exit code
   and wording), so a worse rerun cannot quietly take over.

The record is ``<models dir>/<site>/active.json`` (:func:`rag_app.runtime.active_file`):
``{"reranker": {"path", "model_id", "card"}, "embedder": {...}}``, written aside and renamed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rag_app.core.errors import RagError
from rag_app.core.settings import Settings
from rag_app.optimize.state import StateNotOverwrittenError
from rag_app.optimize.training.card import card_score, read_card
from rag_app.optimize.training.dev_metrics import PRIMARY, better
from rag_app.runtime import active_file, active_models

__all__ = ["ModelNotActivatedError", "activate", "check_activation"]


class ModelNotActivatedError(RagError):
    """The fine-tuned model did not beat what it replaces on the dev split; it was kept, not activated."""

    exit_code = 8


def _score(metrics: dict[str, Any]) -> str:
    return f"{PRIMARY} {metrics[PRIMARY]:.3f} (MRR@5 {metrics['mrr@5']:.3f})"


def check_activation(
    settings: Settings,
    site: str,
    kind: str,
    *,
    new: dict[str, float],
    replaced: dict[str, float],
    replaced_is: str,
    model_dir: Path,
    force: bool,
) -> str:
    """Raise unless the model in ``model_dir`` may be activated; else a one-line reason it may.

    It must beat what it replaces on the dev split by more than ``settings.finetune_min_gain``: a small
    dev gain picked from many checkpoints is mostly selection noise (README, "Fine-tuned reranker")."""
    margin = settings.finetune_min_gain
    if not better(new, replaced, margin=margin):
        raise ModelNotActivatedError(
            f"not activated: the fine-tuned {kind} for {site} scores dev {_score(new)}, {replaced_is} scores "
            f"{_score(replaced)}; it must beat that by more than {margin:g} (RAG_FINETUNE_MIN_GAIN). The "
            f"model and its card stay in {model_dir}. Train longer (--max-steps/--max-minutes, or --device "
            "cuda on a GPU) or on more labelled queries"
        )
    entry = active_models(settings, site).get(kind)
    if entry is not None and not force and Path(entry["path"]).resolve() != model_dir.resolve():
        recorded = card_score(read_card(Path(entry["path"])))
        if recorded is None or recorded > new[PRIMARY]:
            what = (
                f"its recorded dev {PRIMARY} {recorded:.3f} is better than this run's {new[PRIMARY]:.3f}"
                if recorded is not None
                else f"it has no readable card with a recorded dev score (this run's: {new[PRIMARY]:.3f})"
            )
            raise StateNotOverwrittenError(
                f"kept the active {kind} {entry['path']} of {site}: {what}. Pass --force to replace it (the "
                "trained model is saved: the rerun will not train again)"
            )
    return f"beats {replaced_is}: dev {_score(new)} against {_score(replaced)}"


def activate(settings: Settings, site: str, kind: str, model_dir: Path, model_id: str) -> Path:
    """Record ``model_dir`` as ``site``'s ``kind`` in ``active.json`` (other kinds kept); its path."""
    path = active_file(settings, site)
    path.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {}
    if path.is_file():
        record = json.loads(path.read_text(encoding="utf-8"))
    record[kind] = {
        "path": str(model_dir.resolve()),
        "model_id": model_id,
        "card": str(model_dir / "card.json"),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
