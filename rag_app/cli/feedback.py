"""``rag-app feedback export`` and ``rag-app feedback stats``: the ratings callers sent to
``POST /v1/feedback``, as eval rows for ``rag-app eval`` / ``rag-app optimize``, and as counts.

Both read ``<data_dir>/feedback.sqlite`` (:mod:`rag_app.server.feedback_store`), also while servers
write to it. ``register(app)`` adds the ``feedback`` group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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
)
from rag_app.core.errors import InputError
from rag_app.core.settings import Settings
from rag_app.server.feedback_store import STORE_FILE, FeedbackStore

__all__ = ["feedback_app", "register"]

feedback_app = typer.Typer(
    help="Ratings of answers (POST /v1/feedback): export them as eval rows, count them.",
    no_args_is_help=True,
)


def _store(settings: Settings, site: str | None) -> FeedbackStore:
    if site is not None:
        settings.check_sites([site])
    path = settings.data_dir / STORE_FILE
    if not path.is_file():
        raise InputError(
            f"no answer log at {path}: the server writes it when it answers (check --data-dir / RAG_DATA_DIR)"
        )
    return FeedbackStore.from_settings(settings)


@feedback_app.command("export")
@handle_errors
def export(
    site: SiteOpt,
    out: Annotated[Path, typer.Option("--out", help="The eval JSONL file to write (replaced atomically).")],
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only feedback given on or after this day (YYYY-MM-DD, UTC)."),
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Write the site's gold feedback as eval rows (read by `rag-app eval` and `optimize --train/--dev`).

    A +1 gives its answer and cited documents as gold; a correction (corrected_answer,
    correct_passage_ids) gives those. Thumbs-down without a correction are counted, not exported."""
    from rag_app.server.feedback_export import export_feedback, parse_since

    settings = load_settings(config, data_dir=data_dir)
    start = parse_since(since)
    summary = export_feedback(_store(settings, site), site, out, since=start)
    if as_json:
        print_json(summary.to_json())
        return
    console.print(summary.text(), highlight=False, markup=False, soft_wrap=True)
    if summary.skipped_thumbs_down:
        note("add corrected_answer or correct_passage_ids to a thumbs-down to make it exportable")


@feedback_app.command("stats")
@handle_errors
def stats(
    site: Annotated[str | None, typer.Option("--site", help="Only this site (default: all).")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Answers logged, ratings, thumbs-down rate and exportable (gold) rows per site program."""
    settings = load_settings(config, data_dir=data_dir)
    rows = _store(settings, site).stats(site=site)
    if as_json:
        print_json({"programs": [row.to_json() for row in rows]})
        return
    if not rows:
        console.print("no answers or feedback logged yet", highlight=False)
        return
    table = Table("site", "program", "answers", "feedback", "+1", "-1", "thumbs-down rate", "gold")
    for row in rows:
        rate = "-" if row.thumbs_down_rate is None else f"{row.thumbs_down_rate:.1%}"
        table.add_row(
            row.site,
            row.program,
            str(row.answers),
            str(row.feedback),
            str(row.thumbs_up),
            str(row.thumbs_down),
            rate,
            str(row.gold),
        )
    console.print(table)
    note(
        f"answers: logged answers still taking feedback (feedback_ttl_days={settings.feedback_ttl_days:g}); "
        "gold: rows `rag-app feedback export` writes"
    )


def register(app: typer.Typer) -> None:
    """Add the ``feedback`` group (``export``, ``stats``) to ``app``."""
    app.add_typer(feedback_app, name="feedback")
