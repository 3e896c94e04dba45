"""``rag-app``: a thin Typer layer. Each command parses options, calls one library function, formats.

Errors the user can act on (:class:`rag_app.core.errors.RagError`, bad settings) print one line to
stderr and exit non-zero; nothing here holds logic worth testing apart from the library.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from rag_app.cli.common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    SiteOpt,
    console,
    err_console,
    handle_errors,
    load_settings,
    note,
    print_json,
    print_report_files,
    read_query_file,
)

app = typer.Typer(
    help="Grounded-answer RAG: LanceDB top-20 retrieval, bge rerank to 5, DSPy site programs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="Model weights: download and pin (the only command that downloads).", no_args_is_help=True
)
eval_app = typer.Typer(help="Measure retrieval and answers.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")

# ------------------------------------------------------------------------------------- ingest


@app.command()
@handle_errors
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (Markdown, text, JSONL, CSV, BEIR).")],
    site: SiteOpt,
    collection: Annotated[str, typer.Option("--collection", help="Collection of the site.")],
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
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Load, chunk, embed and upsert documents (idempotent: unchanged documents cost nothing).

    One writer per collection at a time: a concurrent run waits for the first (RAG_INGEST_LOCK_TIMEOUT_S).
    """
    import logging

    from rag_app.core.errors import InputError
    from rag_app.runtime import Runtime

    if on_error not in ("stop", "skip"):
        raise InputError(f"--on-error must be 'stop' or 'skip', got {on_error!r}")
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
    report = Runtime(settings).ingest(
        site,
        collection,
        paths,
        prune=prune,
        force=yes,
        dry_run=dry_run,
        on_error=on_error,  # type: ignore[arg-type]
        csv_columns=columns,
        progress=terminal,
    )
    for skipped in report.skipped:
        note(f"skipped {skipped}")
    if dry_run:
        for doc_id in report.removed_ids:
            console.print(f"would remove {doc_id}", highlight=False, markup=False)
    console.print(report.summary(), highlight=False)


# ------------------------------------------------------------------------------------- search


def _filters(
    date_from: str | None, date_to: str | None, tickers: list[str] | None, tags: list[str] | None
) -> dict[str, Any] | None:
    raw = {"date_from": date_from, "date_to": date_to, "tickers": tickers or [], "tags": tags or []}
    raw = {k: v for k, v in raw.items() if v}
    return raw or None


@app.command()
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
    filters = _filters(date_from, date_to, ticker, tag)
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


# -------------------------------------------------------------------------------------- stats


@app.command()
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
    table = Table(title=f"LanceDB at {settings.db_dir}")
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


@app.command()
@handle_errors
def maintain(
    dedupe: Annotated[
        bool, typer.Option("--dedupe", help="Remove extra rows of chunk ids stored more than once.")
    ] = False,
    site: Annotated[str | None, typer.Option("--site", help="Only this site (default: all).")] = None,
    collection: Annotated[str | None, typer.Option("--collection", help="Only this collection.")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Repair tables: --dedupe keeps one row per chunk id (under the collection's writer lock)."""
    from rag_app.core.errors import InputError
    from rag_app.store.vector_store import VectorStore

    if not dedupe:
        raise InputError("nothing to do: pass --dedupe")
    if collection and not site:
        raise InputError("--collection needs --site")
    settings = load_settings(config, data_dir=data_dir)
    store = VectorStore(settings)
    targets = [
        (s, c) for s in ([site] if site else list(settings.sites)) for c in store.check_site(s, collection)
    ]
    removed = {f"{s}/{c}": store.dedupe(s, c) for s, c in targets}
    if as_json:
        print_json({"removed_rows": removed})
        return
    for name, n in removed.items():
        console.print(f"{name}: {n} duplicate rows removed", highlight=False)


# ------------------------------------------------------------------------------ doctor / models


@app.command()
@handle_errors
def doctor(config: ConfigOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Which backends are reachable (Ollama, hub cache, bundled models) and which settings will use."""
    from rag_app.cli.doctor import run_checks

    settings = load_settings(config, data_dir=data_dir)
    checks = run_checks(settings)
    if as_json:
        print_json(checks)
        return
    table = Table(title="rag-app doctor")
    for col in ("component", "status", "detail"):
        table.add_column(col, overflow="fold")
    for check in checks:
        colour = {"ok": "green", "missing": "yellow", "unreachable": "yellow", "error": "red"}.get(
            check["status"], "white"
        )
        table.add_row(check["component"], f"[{colour}]{check['status']}[/{colour}]", check["detail"])
    console.print(table)


@models_app.command("pull")
@handle_errors
def models_pull(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Download and pin every configured hub model (and `ollama pull` Ollama models). Needs network."""
    from rag_app.cli.doctor import pull_models

    settings = load_settings(config, data_dir=data_dir)
    for line in pull_models(settings):
        console.print(line, highlight=False, soft_wrap=True)


def main() -> None:  # pragma: no cover - console entry point
    app()


# --------------------------------------------------------------------------------------- eval


@eval_app.command("retrieval")
@handle_errors
def eval_retrieval(
    beir: Annotated[
        Path | None, typer.Option("--beir", help="BEIR-layout folder (corpus, queries, qrels).")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="qrels split of the BEIR folder.")] = "test",
    dataset: Annotated[
        Path | None, typer.Option("--dataset", help="Site eval set (JSONL) instead of BEIR.")
    ] = None,
    site: Annotated[
        str | None, typer.Option("--site", help="Site of --dataset (default: the rows' site).")
    ] = None,
    mode: Annotated[
        str | None, typer.Option("--mode", help="vector, fts or hybrid (default: all three).")
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Documents retrieved per query.")] = 20,
    rerank: Annotated[bool, typer.Option("--rerank", help="Also evaluate with the cross-encoder.")] = False,
    reranker: Annotated[
        str | None, typer.Option("--reranker", help="Reranker model id or local path.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate only the first N queries.")] = None,
    report_dir: Annotated[
        Path | None, typer.Option("--report-dir", help="Write report.json/.md/.png here.")
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """recall@5, recall@20, MRR@5, nDCG@10 per retrieval mode, with and without reranking."""
    from rag_app.core.errors import InputError
    from rag_app.evaluation import runs

    if (beir is None) == (dataset is None):
        raise InputError("pass exactly one of --beir DIR or --dataset FILE")
    settings = load_settings(config, data_dir=data_dir)
    if reranker:
        settings = settings.model_copy(update={"reranker_model": reranker, "reranker_revision": None})
    result = runs.retrieval_eval(
        settings,
        beir=beir,
        split=split,
        dataset=dataset,
        site=site,
        mode=mode,
        k=k,
        rerank=rerank,
        limit=limit,
        report_dir=report_dir,
        progress=sys.stderr.isatty(),
    )
    if as_json:
        print_json(result.json_payload())
        return
    console.print(result.table(), highlight=False)
    for text in result.notes:
        note(text)
    print_report_files(result.report_files)


# --------------------------------------------------------------------------------------- demo


@app.command()
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


def _print_answer(question: str, out: Any, skip_notes: tuple[str, ...] = ()) -> None:
    console.print(f"Q: {question}", highlight=False, markup=False)
    console.print(f"A ({out.mode}): {out.answer}", highlight=False, markup=False, soft_wrap=True)
    for c in out.citations:
        console.print(f"  [{c.index}] {c.title} ({c.doc_id})", highlight=False, markup=False)
    for text in out.notes:
        if not text.startswith(skip_notes):
            note(text)


# ---------------------------------------------------------------------------------------- ask


@app.command()
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
    filters = _filters(date_from, date_to, ticker, None)
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


def _read_history(path: Path | None) -> list[dict[str, str]] | None:
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


# -------------------------------------------------------------------------------- serve / keys

keys_app = typer.Typer(
    help="API keys for the HTTP server (stored hashed in the data dir).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")


@app.command()
@handle_errors
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default 8080).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes.")] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run the HTTP API with uvicorn; models load and warm before the server reports ready."""
    from rag_app.server.run import serve as run_server

    run_server(load_settings(config, data_dir=data_dir), host, port, workers, log_level=log_level)


@keys_app.command("add")
@handle_errors
def keys_add(
    name: Annotated[str, typer.Option("--name", help="A name for the key (e.g. the calling site).")],
    sites: Annotated[str, typer.Option("--sites", help="Comma-separated sites the key may use, or '*'.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from rag_app.server.auth import add_key

    key = add_key(
        load_settings(config, data_dir=data_dir), name, [s.strip() for s in sites.split(",") if s.strip()]
    )
    err_console.print(f"created key {name!r}; it is shown once, store it now:")
    sys.stdout.write(key + "\n")


@keys_app.command("list")
@handle_errors
def keys_list(config: ConfigOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Key names, their sites and creation dates (never the keys)."""
    from rag_app.server.auth import list_keys

    keys = list_keys(load_settings(config, data_dir=data_dir))
    if as_json:
        print_json([{"name": k.name, "sites": list(k.sites), "created_at": k.created_at} for k in keys])
        return
    for k in keys:
        console.print(f"{k.name}\tsites={','.join(k.sites)}\tcreated={k.created_at}", highlight=False)
    if not keys:
        console.print("no keys: the server runs without auth and binds to loopback only")


@keys_app.command("revoke")
@handle_errors
def keys_revoke(
    name: Annotated[str, typer.Argument(help="Name of the key to revoke.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke a key by name; requests with it get 401 from then on."""
    from rag_app.server.auth import revoke_key

    revoke_key(load_settings(config, data_dir=data_dir), name)
    console.print(f"revoked {name!r}")


def _register_optimize() -> None:
    from rag_app.cli.quality import register

    register(app, eval_app)


_register_optimize()
