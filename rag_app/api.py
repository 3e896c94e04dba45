"""One-call entry points for scripts and notebooks: ingest_files, search, ask.

Each call builds a :class:`~rag_app.runtime.Runtime` (loading the models it needs). A service or a
loop over many queries should build one ``Runtime`` and call its methods instead, so models load once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag_app.core.settings import Settings
from rag_app.ingest.pipeline import IngestReport
from rag_app.runtime import Runtime


def ingest_files(
    settings: Settings, site: str, collection: str, paths: Sequence[Path | str], **options: Any
) -> IngestReport:
    """Load ``paths`` into ``site``/``collection`` (idempotent: unchanged documents cost nothing)."""
    return Runtime(settings).ingest(site, collection, paths, **options)


def search(settings: Settings, site: str, query: str, **options: Any) -> dict[str, Any]:
    """Retrieve (and with ``rerank=True`` rerank) passages for one query (see :meth:`Runtime.search`)."""
    return Runtime(settings).search(site, query, **options)


def ask(settings: Settings, site: str, program: str, question: str, **fields: Any) -> Any:
    """Answer a free-text question with a site program (see :meth:`Runtime.ask`)."""
    return Runtime(settings).ask(site, program, question, **fields)
