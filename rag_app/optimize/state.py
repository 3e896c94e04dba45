"""The saved optimized state of a program: its sidecar, the guard against replacing a better one, and
the atomic save.

The optimized program is saved with ``program.save`` (JSON) to ``<state-dir>/<site>/<program>.json``,
next to a ``<program>.meta.json`` sidecar (optimizer, budget, LM, dev scores before and after,
train/dev hashes, date, git commit). A saved state whose recorded dev score is strictly better (or
that has no readable recorded score) is not overwritten without ``force``: an optimizer run that went
worse must not silently replace what the server answers with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rag_app.core.errors import RagError

__all__ = ["StateNotOverwrittenError", "check_overwrite", "meta_path", "save_state"]


class StateNotOverwrittenError(RagError):
    """A better optimized state is already saved; pass ``--force`` to replace it anyway."""

    exit_code = 7


def meta_path(state_file: Path) -> Path:
    """The sidecar of a saved state: ``<program>.meta.json`` next to ``<program>.json``."""
    return state_file.with_name(state_file.stem + ".meta.json")


def _recorded_score(state_file: Path) -> float | None:
    sidecar = meta_path(state_file)
    if not sidecar.is_file():
        return None
    try:
        value = json.loads(sidecar.read_text(encoding="utf-8")).get("score_after")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def check_overwrite(target: Path, score: float, *, force: bool) -> None:
    """Raise :class:`StateNotOverwrittenError` unless a state scoring ``score`` may replace ``target``."""
    if not target.is_file() or force:
        return
    recorded = _recorded_score(target)
    if recorded is not None and not recorded > score:
        return
    what = (
        f"its recorded dev score {recorded:.3f} is better than this run's {score:.3f}"
        if recorded is not None
        else f"it has no readable sidecar {meta_path(target).name} with a recorded dev score "
        f"(this run's: {score:.3f})"
    )
    raise StateNotOverwrittenError(
        f"kept the saved state {target}: {what}. Pass --force to overwrite it (the optimized "
        "program is checkpointed: the rerun will not optimize again)"
    )


def save_state(program: Any, target: Path, meta: dict[str, Any]) -> Path:
    """Save ``program`` to ``target`` and ``meta`` to its sidecar; the sidecar's path.

    Each file is written aside, then renamed: a server loading the state never sees half a file.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    saving = target.with_name(f".{target.stem}.saving.json")
    program.save(str(saving))
    saving.replace(target)
    sidecar = meta_path(target)
    saving_meta = sidecar.with_name(f".{sidecar.name}.saving")
    saving_meta.write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    saving_meta.replace(sidecar)
    return sidecar
