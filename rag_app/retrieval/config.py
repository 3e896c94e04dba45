"""A site's tuned retrieval configuration: ``programs/<site>/retrieval.json``.

``rag-app optimize --retrieval-only`` writes the best (k, mode, rerank) it measured on a site's dev
set; the retriever and the pipeline read it, so a site runs with what was measured for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rag_app.core.errors import InputError
from rag_app.core.settings import Settings


def retrieval_config_path(settings: Settings, site: str) -> Path:
    return settings.programs_dir / site / "retrieval.json"


def load_retrieval_config(settings: Settings, site: str) -> dict[str, Any]:
    """The saved best retrieval configuration of a site (``{"k", "mode", "rerank", "doc_signals",
    "max_chunks_per_doc", "rewrite", "fts_title_boost"}``, each only if saved), or ``{}``."""
    path = retrieval_config_path(settings, site)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable retrieval config ({exc}); fix or delete it") from exc
    best = data.get("best", data)
    keys = ("k", "mode", "rerank", "doc_signals", "max_chunks_per_doc", "rewrite", "fts_title_boost")
    return {key: best[key] for key in keys if key in best}
