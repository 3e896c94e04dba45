"""The index commands: ``rag-app ingest``, ``search``, ``stats`` and ``maintain``.

They build, query and repair the LanceDB tables; models come from :class:`rag_app.runtime.Runtime`,
the tables from :class:`rag_app.store.vector_store.VectorStore`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
    read_query_file,
    search_filters,
)

if TYPE_CHECKING:
    from rag_app.ingest.sources.report import SyncReport

__all__ = ["register"]


@handle_errors
def ingest(
    site: SiteOpt,
    collection: Annotated[str, typer.Option("--collection", help="Collection of the site.")],
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Files or folders (Markdown, text, HTML, PDF, DOCX, JSONL, CSV, BEIR)."),
    ] = None,
    url: Annotated[list[str] | None, typer.Option("--url", help="A page to fetch (repeatable).")] = None,
    sitemap: Annotated[
        list[str] | None, typer.Option("--sitemap", help="Every page a sitemap lists.")
    ] = None,
    s3: Annotated[list[str] | None, typer.Option("--s3", help="s3://bucket/prefix: its objects.")] = None,
    include: Annotated[list[str] | None, typer.Option("--include", help="Only what matches a glob.")] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Leave out a glob's matches.")
    ] = None,
    prune: Annotated[bool, typer.Option("--prune", help="Remove documents no longer in PATHS.")] = False,
    yes: Annotated[
        bool,
        typer.Option("--yes", "--force", help="Let --prune remove more than RAG_PRUNE_MAX_FRACTION."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be added, updated and removed; write nothing.")
    ] = False,
    on_error: Annotated[str, typer.Option("--on-error", help="stop (default) or skip bad records.")] = "stop",
    csv_map: Annotated[
        str | None,
        typer.Option("--csv-map", help="CSV column mapping, e.g. 'id=ref,text=body,date=published'."),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local (default: this process) or ray (a Ray Data pipeline on RAG_RAY_ADDRESS, or on a "
            "Ray started here; needs the 'ray' extra).",
        ),
    ] = "local",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Load, chunk, embed and upsert documents (idempotent: unchanged documents cost nothing).

    Sources besides PATHS: --url, --sitemap, --s3 (pages answering 304 and objects with the same ETag
    are not downloaded again). One writer per collection at a time: a concurrent run waits for the
    first (RAG_INGEST_LOCK_TIMEOUT_S). --engine ray runs the same ingest (same rows, same report) with
    parsing and embedding spread over Ray workers (RAG_RAY_EMBED_ACTORS model copies), for PATHS only.
    """
    import logging

    from rag_app.core.errors import InputError
    from rag_app.runtime import Runtime

    if on_error not in ("stop", "skip"):
        raise InputError(f"--on-error must be 'stop' or 'skip', got {on_error!r}")
    if engine not in ("local", "ray"):
        raise InputError(f"--engine must be 'local' or 'ray', got {engine!r}")
    if engine == "ray" and (url or sitemap or s3 or include or exclude):
        raise InputError(
            "--engine ray ingests PATHS only: leave out --url/--sitemap/--s3/--include/--exclude, or drop "
            "--engine ray to fetch those sources in this process"
        )
    columns = None
    if csv_map:
        pairs = [p.split("=", 1) for p in csv_map.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise InputError(f"--csv-map must look like 'id=col,text=col', got {csv_map!r}")
        columns = {k.strip(): v.strip() for k, v in pairs}
    settings = load_settings(config, data_dir=data_dir)
    terminal = sys.stderr.isatty()
    if not terminal:  # no progress bar: progress lines every RAG_INGEST_LOG_EVERY_CHUNKS chunks instead
        logging.getLogger("rag_app.ingest.pipeline").setLevel(logging.INFO)
    if url or sitemap or s3 or include or exclude:
        from rag_app.ingest.sources import specs_from_options
        from rag_app.ingest.sources.report import SyncReport
        from rag_app.ingest.sync import sync_collection

        specs = specs_from_options(
            site,
            collection,
            paths=paths or [],
            urls=url or [],
            sitemaps=sitemap or [],
            s3=s3 or [],
            include=include or [],
            exclude=exclude or [],
            prune=prune,
        )
        runtime = Runtime(settings)
        done = sync_collection(
            settings,
            site,
            collection,
            specs,
            embedder=runtime.embedder_for(site),
            force=yes,
            dry_run=dry_run,
            on_error=on_error,  # type: ignore[arg-type]
            csv_columns=columns,
            progress=terminal,
        )
        _finish_sync(SyncReport([done], dry_run=dry_run), as_json=False)
        return
    if not paths:
        raise InputError("nothing to ingest: pass files or folders, or --url, --sitemap or --s3")
    runtime = Runtime(settings)
    options: dict[str, Any] = {
        "prune": prune,
        "force": yes,
        "dry_run": dry_run,
        "on_error": on_error,
        "csv_columns": columns,
        "progress": terminal,
    }
    if engine == "ray":
        from rag_app.ingest.engines.ray_ingest import ray_ingest_paths

        report = ray_ingest_paths(
            settings, site, collection, paths, embedder=runtime.embedder_for(site), **options
        )
    else:
        report = runtime.ingest(site, collection, paths, **options)
    for skipped in report.skipped:
        note(f"skipped {skipped}")
    if dry_run:
        for doc_id in report.removed_ids:
            console.print(f"would remove {doc_id}", highlight=False, markup=False)
    console.print(report.summary(), highlight=False)


@handle_errors
def search(
    site: SiteOpt,
    query: Annotated[str | None, typer.Argument(help="The query (or use --queries).")] = None,
    collection: Annotated[str | None, typer.Option("--collection")] = None,
    k: Annotated[int | None, typer.Option("--k", help="Candidates to retrieve (default 20).")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="vector, fts or hybrid.")] = None,
    rerank: Annotated[
        bool, typer.Option("--rerank", help="Rerank the candidates with the cross-encoder.")
    ] = False,
    top_n: Annotated[
        int | None, typer.Option("--top-n", help="Passages kept after reranking (default 5).")
    ] = None,
    queries: Annotated[
        Path | None, typer.Option("--queries", help="JSONL file, one {'query': ...} per line.")
    ] = None,
    date_from: Annotated[str | None, typer.Option("--date-from", help="YYYY-MM-DD")] = None,
    date_to: Annotated[str | None, typer.Option("--date-to", help="YYYY-MM-DD")] = None,
    ticker: Annotated[
        list[str] | None, typer.Option("--ticker", help="Filter by ticker (repeatable).")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Filter by tag (repeatable).")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Retrieve (and optionally rerank) passages. Batch form: --queries FILE.jsonl --json."""
    from rag_app.core.errors import InputError
    from rag_app.runtime import Runtime

    settings = load_settings(config, data_dir=data_dir)
    runtime = Runtime(settings)
    filters = search_filters(date_from, date_to, ticker, tag)
    if queries is not None:
        if query:
            raise InputError("pass either a query argument or --queries FILE, not both")
        batch = read_query_file(queries)
    elif query is None:
        raise InputError("no query: pass one as an argument, or --queries FILE.jsonl")
    else:
        batch = [query]
    for text in batch:
        result = runtime.search(
            site,
            text,
            collection=collection,
            k=k,
            mode=mode,
            rerank=rerank,
            top_n=top_n,
            filters=filters,
        )
        if as_json or queries is not None:
            print_json(result)
        else:
            _print_passages(result)


def _print_passages(result: dict[str, Any]) -> None:
    table = Table(
        title=f"{result['query']}  ({result['mode']}{', reranked' if result.get('reranked') else ''})",
        show_lines=True,
        title_justify="left",
    )
    table.add_column("#", justify="right")
    table.add_column("scores")
    table.add_column("document")
    table.add_column("text", overflow="fold")
    for i, p in enumerate(result["passages"], start=1):
        scores = f"retrieval {p['retrieval_score']:.4f} (#{p['retrieval_rank']})"
        if p.get("rerank_score") is not None:
            scores = f"rerank {p['rerank_score']:.3f} (rel {p['relevance']:.3f})\n" + scores
        table.add_row(str(i), scores, f"{p['doc_id']}\n{p['title']}", p["text"][:400])
    console.print(table)
    for text in result.get("notes", []):
        note(text)


@handle_errors
def stats(config: ConfigOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Tables, rows, documents, embedder and indexes per site/collection."""
    from dataclasses import asdict

    from rag_app.store.vector_store import VectorStore

    settings = load_settings(config, data_dir=data_dir)
    store = VectorStore(settings)
    infos = [info for site, cols in settings.sites.items() for c in cols if (info := store.info(site, c))]
    if as_json:
        print_json([asdict(i) for i in infos])
        return
    table = Table(title=f"LanceDB at {store.db.shown}")
    columns = ("site", "collection", "rows", "documents", "embedder", "dim", "version", "indexes", "dup ids")
    for col in columns:
        table.add_column(col)
    for i in infos:
        table.add_row(
            i.site,
            i.collection,
            str(i.rows),
            str(i.documents),
            i.embedder_model,
            str(i.dimension),
            str(i.version),
            ", ".join(i.indices) or "none (flat scan)",
            f"[red]{i.duplicate_ids}[/red]" if i.duplicate_ids else "0",
        )
    console.print(table if infos else "no tables yet: run `rag-app ingest` or `rag-app demo`")
    for i in infos:
        if i.duplicate_ids:
            note(
                f"{i.site}/{i.collection}: {i.duplicate_ids} chunk ids stored more than once "
                f"({i.duplicate_rows} extra rows); repair with "
                f"`rag-app maintain --dedupe --site {i.site} --collection {i.collection}`"
            )


@handle_errors
def maintain(
    dedupe: Annotated[
        bool,
        typer.Option("--dedupe", help="Only remove extra rows of chunk ids stored more than once."),
    ] = False,
    site: Annotated[str | None, typer.Option("--site", help="Only this site (default: all).")] = None,
    collection: Annotated[str | None, typer.Option("--collection", help="Only this collection.")] = None,
    retention_s: Annotated[
        float | None,
        typer.Option(
            "--retention-s",
            help="Keep versions superseded less than this long ago (default RAG_MAINTAIN_RETENTION_S).",
        ),
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Compact every table, fold new rows into its indexes, remove old versions (cron, CronJob).

    Each collection's chunk and document tables are done under its writer lock, so an ingest waits
    (or maintain waits for it); searches go on meanwhile. --dedupe instead keeps one row per chunk id.
    """
    from dataclasses import asdict

    from rag_app.store.maintenance import maintain as run_maintain
    from rag_app.store.maintenance import maintenance_targets
    from rag_app.store.vector_store import VectorStore

    settings = load_settings(config, data_dir=data_dir)
    targets = maintenance_targets(settings, site, collection)
    store = VectorStore(settings)
    if dedupe:
        removed = {f"{s}/{c}": store.dedupe(s, c) for s, c in targets}
        if as_json:
            print_json({"removed_rows": removed})
            return
        for name, n in removed.items():
            console.print(f"{name}: {n} duplicate rows removed", highlight=False)
        return
    done = run_maintain(store, targets, retention_s=retention_s)
    retention = settings.maintain_retention_s if retention_s is None else retention_s
    if as_json:
        print_json(
            {"database": store.db.shown, "retention_s": retention, "tables": [asdict(t) for t in done]}
        )
        return
    for t in done:
        folded = ", ".join(t.indexes_folded) or "none"
        console.print(
            f"{t.table}: {t.rows} rows, fragments {t.fragments_before} -> {t.fragments_after}, "
            f"{t.versions_removed} of {t.versions_before} versions removed, indexes folded: {folded}",
            highlight=False,
            markup=False,
        )
    if not done:
        console.print("no tables yet: run `rag-app ingest` first", highlight=False)


@handle_errors
def sync(
    site: Annotated[str | None, typer.Option("--site", help="Only this site's sources.")] = None,
    collection: Annotated[str | None, typer.Option("--collection", help="Only this collection.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Fetch and compare; write nothing, remember nothing.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "--force", help="Let a prune remove more than RAG_PRUNE_MAX_FRACTION.")
    ] = False,
    on_error: Annotated[
        str, typer.Option("--on-error", help="skip (default: report bad items, go on) or stop.")
    ] = "skip",
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Bring every collection up to date from the sources declared in rag.toml (cron, CronJob).

    Exits 1 when any source, item or prune failed; the summary (--json: one JSON object) says which.
    """
    from rag_app.core.errors import InputError
    from rag_app.ingest.sync import sync as run_sync
    from rag_app.runtime import Runtime

    if on_error not in ("stop", "skip"):
        raise InputError(f"--on-error must be 'stop' or 'skip', got {on_error!r}")
    settings = load_settings(config, data_dir=data_dir)
    runtime = Runtime(settings)
    report = run_sync(
        settings,
        site=site,
        collection=collection,
        embedder_for=runtime.embedder_for,
        force=yes,
        dry_run=dry_run,
        on_error=on_error,  # type: ignore[arg-type]
    )
    _finish_sync(report, as_json=as_json)


def _finish_sync(report: SyncReport, *, as_json: bool) -> None:
    """Print a sync's summary (JSON or lines); exit 1 when anything failed."""
    if as_json:
        print_json(report.as_dict())
    else:
        for line in report.lines():
            console.print(line, highlight=False, markup=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``ingest``, ``sync``, ``search``, ``stats`` and ``maintain`` to ``app``."""
    for command in (ingest, sync, search, stats, maintain):
        app.command()(command)
