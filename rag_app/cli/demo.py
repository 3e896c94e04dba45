"""`rag-app demo`: index the bundled sample corpora and answer one question per site, no servers needed.

The demo runs on a fresh machine with nothing but this repository installed: the bundled MiniLM
embeds, the reranker falls back to retrieval order when its weights are not cached (and says so),
and with no reachable LM the programs answer extractively (and say so).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_app.core.settings import Settings
from rag_app.ingest.pipeline import IngestReport
from rag_app.runtime import Runtime


@dataclass
class DemoQuestion:
    site: str
    program: str
    question: str
    extra: dict[str, Any] = field(default_factory=dict)


DEMO_QUESTIONS = [
    DemoQuestion("builddaily", "chat_bridge", "How much does Sage Daily cost per month?"),
    DemoQuestion(
        "paiddaily",
        "tickers",
        "Which semiconductor tickers have a strong pre-earnings setup?",
        {"sector": "Information Technology"},
    ),
    DemoQuestion(
        "sagedaily",
        "reading",
        "What does this mean for my career this year?",
        {"cards": ["The Tower"], "transits": ["Saturn return"]},
    ),
]


def sample_collections(settings: Settings, data_root: Path) -> list[tuple[str, str, Path]]:
    """(site, collection, folder) for every ``data/<site>/<collection>/`` that settings know."""
    return [
        (site, collection, data_root / site / collection)
        for site, collections in settings.sites.items()
        for collection in collections
        if (data_root / site / collection).is_dir()
    ]


def build_sample_indexes(
    runtime: Runtime, data_root: Path, *, progress: bool = False
) -> Iterator[IngestReport]:
    for site, collection, folder in sample_collections(runtime.settings, data_root):
        yield runtime.ingest(site, collection, [folder], progress=progress)


def demo_settings(settings: Settings) -> Settings:
    """The demo never stops for missing reranker weights: it degrades and reports it."""
    return settings.model_copy(update={"reranker_on_missing": "fallback"})


def answer_demo_questions(runtime: Runtime) -> Iterator[tuple[DemoQuestion, Any]]:
    for q in DEMO_QUESTIONS:
        yield q, runtime.ask(q.site, q.program, q.question, **q.extra)
