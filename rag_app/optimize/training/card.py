"""The model card saved beside fine-tuned weights: ``card.json`` and a short ``README.md``.

Why: a folder of weights says nothing about where it came from. The card records what reproduces and
judges it: base model, data hashes, fit settings, dev metrics before and after, date, device, steps,
minutes, and the one command that rebuilds it. Weights are artifacts under the models dir, never in
the repository; the card (a few KB) is what a report or a reviewer reads. Stdlib only.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

__all__ = ["CARD_FILE", "card_score", "read_card", "write_card"]

CARD_FILE = "card.json"


def _metrics_line(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "-"
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, int | float))


def _readme(card: dict[str, Any]) -> str:
    dev = card.get("dev", {})
    lines = [
        f"# {card['site']} {card['kind']} (fine-tuned, run {card['run_id']})",
        "",
        f"- base model: `{card['base_model']}`" + (" (new 1-logit head)" if card.get("new_head") else ""),
        f"- trained: {card['date']} on {card['device']}, {card['steps']} of {card['total_steps']} steps, "
        f"{card['minutes']:.1f} min" + ("" if card.get("complete") else " (stopped by its budget)"),
        f"- data: pairs sha256 `{card['data']['pairs_sha256'][:16]}`, labels from `{card['data']['train']}`",
        f"- dev ({dev.get('queries', '?')} queries) before ({dev.get('before_is', 'baseline')}): "
        f"{_metrics_line(dev.get('before'))}",
        f"- dev after: {_metrics_line(dev.get('after'))}",
        f"- activated: {card.get('activated', False)}"
        + (f" ({card['decision']})" if card.get("decision") else ""),
        "",
        "Reproduce:",
        "",
        "```bash",
        card["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def write_card(folder: Path, card: dict[str, Any]) -> Path:
    """Write ``card`` (``date`` filled in when missing) as ``card.json`` + ``README.md`` in ``folder``."""
    card.setdefault("date", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CARD_FILE
    tmp = folder / f".{CARD_FILE}.tmp"
    tmp.write_text(json.dumps(card, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    (folder / "README.md").write_text(_readme(card), encoding="utf-8")
    return path


def read_card(folder: Path) -> dict[str, Any] | None:
    """The card in ``folder``, or None when there is none or it cannot be read."""
    try:
        data = json.loads((Path(folder) / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def card_score(card: dict[str, Any] | None, metric: str = "ndcg@10") -> float | None:
    """The dev score a card records for its model (``dev.after[metric]``), or None."""
    value = ((card or {}).get("dev") or {}).get("after", {}).get(metric)
    return float(value) if isinstance(value, int | float) else None
