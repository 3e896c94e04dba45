"""The answering commands: ``rag-app ask`` (one question to a site program) and ``rag-app demo``
(index the sample data and answer one question per site). Both run programs through
:class:`rag_app.runtime.Runtime`; :mod:`rag_app.cli.demo` holds the demo's data and steps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from rag_app.cli.common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    SiteOpt,
    console,
    handle_errors,
    load_settings,
    note,
    print_json,
    search_filters,
)

__all__ = ["register"]


@handle_errors
def demo(
    data: Annotated[Path, typer.Option("--data", help="Sample data folder.")] = Path("data"),
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Build the sample indexes from data/ and answer one question per site (no servers needed)."""
    from rag_app.cli.demo import answer_demo_questions, build_sample_indexes, demo_settings
    from rag_app.models.rerank import FallbackReranker
    from rag_app.runtime import Runtime

    runtime = Runtime(demo_settings(load_settings(config, data_dir=data_dir)))
    console.rule("indexing sample data")
    for report in build_sample_indexes(runtime, data, progress=sys.stderr.isatty()):
        console.print(report.summary(), highlight=False)
    reranker = runtime.reranker
    console.rule("models")
    console.print(f"reranker: {reranker.describe()}", highlight=False, markup=False, soft_wrap=True)
    if isinstance(reranker, FallbackReranker):
        console.print(
            "[yellow]reranker weights are not on this machine: results keep the hybrid retrieval "
            "order (reranked: false). Fetch them with `rag-app models pull`.[/yellow]"
        )
        reranker.acknowledge()  # said here once; no repeat of it as a log warning
    for question, out in answer_demo_questions(runtime):
        console.rule(f"{question.site} / {question.program}")
        _print_answer(question.question, out, skip_notes=("reranker unavailable",))


@handle_errors
def ask(
    question: Annotated[str, typer.Argument(help="The question (or the querent's question for readings).")],
    site: SiteOpt,
    program: Annotated[str, typer.Option("--program", help="e.g. chat_bridge, resources_search, tickers.")],
    history: Annotated[
        Path | None,
        typer.Option("--history", help="JSON or JSONL file of {role, content} chat turns (chat_bridge)."),
    ] = None,
    card: Annotated[
        list[str] | None, typer.Option("--card", help="Tarot card (reading; repeatable).")
    ] = None,
    transit: Annotated[
        list[str] | None, typer.Option("--transit", help="Transit (reading; repeatable).")
    ] = None,
    date_from: Annotated[str | None, typer.Option("--date-from", help="YYYY-MM-DD")] = None,
    date_to: Annotated[str | None, typer.Option("--date-to", help="YYYY-MM-DD")] = None,
    ticker: Annotated[
        list[str] | None, typer.Option("--ticker", help="Filter by ticker (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Answer a question with a site program: the answer, its citations and the passages."""
    from rag_app.runtime import Runtime

    settings = load_settings(config, data_dir=data_dir)
    extra: dict[str, Any] = {}
    if card:
        extra["cards"] = card
    if transit:
        extra["transits"] = transit
    filters = search_filters(date_from, date_to, ticker, None)
    if filters:
        extra["filters"] = filters
    out = Runtime(settings).ask(site, program, question, history=_read_history(history), **extra)
    if as_json:
        print_json(out.model_dump(mode="json"))
        return
    _print_answer(question, out)
    console.rule("passages")
    for i, p in enumerate(out.passages, start=1):
        score = f"rerank {p.rerank_score:.3f}" if p.rerank_score is not None else f"retrieval {p.score:.4f}"
        console.print(f"[{i}] {p.title} ({p.doc_id}; {score})", highlight=False, markup=False)
        console.print(f"    {p.text[:300]}", highlight=False, markup=False, soft_wrap=True)


def _print_answer(question: str, out: Any, skip_notes: tuple[str, ...] = ()) -> None:
    console.print(f"Q: {question}", highlight=False, markup=False)
    console.print(f"A ({out.mode}): {out.answer}", highlight=False, markup=False, soft_wrap=True)
    for c in out.citations:
        console.print(f"  [{c.index}] {c.title} ({c.doc_id})", highlight=False, markup=False)
    for text in out.notes:
        if not text.startswith(skip_notes):
            note(text)


def _read_history(path: Path | None) -> list[dict[str, str]] | None:
    """``--history``: a JSON list or JSONL of ``{role, content}`` turns; errors name the file."""
    from rag_app.core.errors import InputError
    from rag_app.ingest.loaders import read_text

    if path is None:
        return None
    if not path.is_file():
        raise InputError(f"history file not found: {path}")
    text = read_text(path).strip()
    try:
        turns = (
            json.loads(text) if text.startswith("[") else [json.loads(ln) for ln in text.splitlines() if ln]
        )
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON or JSONL chat turns ({exc.msg} at line {exc.lineno})") from None
    if not all(isinstance(t, dict) and {"role", "content"} <= set(t) for t in turns):
        raise InputError(f"{path}: every turn needs 'role' and 'content'")
    return turns


def register(app: typer.Typer) -> None:
    """Add ``demo`` and ``ask`` to ``app``."""
    for command in (demo, ask):
        app.command()(command)
