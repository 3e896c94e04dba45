"""The quality commands: ``rag-app eval retrieval``, ``eval answers`` (measure) and ``optimize``
(improve: DSPy program optimization, the retrieval-configuration search with ``--retrieval-only``, or
fine-tuning the site's reranker or embedder with ``--reranker``/``--embedder``).

They call :mod:`rag_app.evaluation` and :mod:`rag_app.optimize`; ``register(app, eval_app)`` adds them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rag_app.cli.common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    console,
    err_console,
    handle_errors,
    load_settings,
    note,
    print_json,
    print_report_files,
)
from rag_app.core.settings import Settings

__all__ = ["register"]

AllRowsOpt = Annotated[
    bool,
    typer.Option("--all-rows", help="Use every row of the site, also rows that name another program."),
]


# --------------------------------------------------------------------------------- eval retrieval


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


# ------------------------------------------------------------------------------------ eval answers


@handle_errors
def eval_answers(
    site: Annotated[str, typer.Option("--site", help="builddaily, paiddaily or sagedaily.")],
    program: Annotated[str, typer.Option("--program", help="The site's program, e.g. chat_bridge.")],
    dataset: Annotated[Path, typer.Option("--dataset", help="Eval set (JSONL) with gold answers.")],
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate only the first N rows.")] = None,
    report_dir: Annotated[
        Path | None, typer.Option("--report-dir", help="Write report.json/.md/.png and answers.jsonl here.")
    ] = None,
    all_rows: AllRowsOpt = False,
    no_judge: Annotated[
        bool, typer.Option("--no-judge", help="Skip the LM-judged SemanticF1 and CompleteAndGrounded.")
    ] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Exact match, token F1, citation precision and not-found rate of a program's answers (+ DSPy's
    SemanticF1 and CompleteAndGrounded when an LM is configured and reachable)."""
    from rag_app.evaluation.answers import answers_eval

    settings = load_settings(config, data_dir=data_dir)
    result = answers_eval(
        settings,
        site,
        program,
        dataset,
        limit=limit,
        report_dir=report_dir,
        all_rows=all_rows,
        judge=not no_judge,
        progress=sys.stderr.isatty(),
    )
    if as_json:
        print_json(result.json_payload())
        return
    console.print(result.table(), highlight=False, markup=False, soft_wrap=True)
    counts = ", ".join(f"{n} {mode}" for mode, n in sorted(result.mode_counts.items()))
    console.print(f"{len(result.rows)} row(s); answers: {counts}", highlight=False, markup=False)
    for text in result.notes:
        note(text)
    print_report_files(result.report_files)


# ---------------------------------------------------------------------------------------- optimize


@handle_errors
def optimize(
    site: Annotated[str, typer.Option("--site", help="builddaily, paiddaily or sagedaily.")],
    program: Annotated[
        str | None, typer.Option("--program", help="The program to optimize (not with --retrieval-only).")
    ] = None,
    train: Annotated[Path | None, typer.Option("--train", help="Training rows (JSONL).")] = None,
    dev: Annotated[
        Path | None, typer.Option("--dev", help="Dev rows (JSONL), scored before and after.")
    ] = None,
    optimizer: Annotated[str, typer.Option("--optimizer", help="bootstrap, mipro or gepa.")] = "bootstrap",
    budget: Annotated[str, typer.Option("--budget", help="light, medium or heavy.")] = "light",
    force: Annotated[
        bool,
        typer.Option("--force", help="Overwrite a saved state even if its recorded dev score is better."),
    ] = False,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="Where <site>/<program>.json goes (default: the programs dir)."),
    ] = None,
    retrieval_only: Annotated[
        bool,
        typer.Option(
            "--retrieval-only",
            help="Search k x mode x documents x rerank (x query rewrites with an LM) instead; needs --dev.",
        ),
    ] = False,
    metric: Annotated[
        str, typer.Option("--metric", help="Retrieval metric to maximise with --retrieval-only.")
    ] = "ndcg@10",
    limit: Annotated[
        int | None, typer.Option("--limit", help="Use only the first N train and N dev rows.")
    ] = None,
    all_rows: AllRowsOpt = False,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Parallel program runs.")] = 1,
    no_resume: Annotated[
        bool, typer.Option("--no-resume", help="Ignore checkpoints of earlier interrupted runs.")
    ] = False,
    report_dir: Annotated[
        Path | None, typer.Option("--report-dir", help="--retrieval-only: also write a report here.")
    ] = None,
    reranker: Annotated[bool, typer.Option("--reranker", help="Fine-tune the site's reranker.")] = False,
    embedder: Annotated[bool, typer.Option("--embedder", help="Fine-tune the site's embedder.")] = False,
    qrels: Annotated[
        str, typer.Option("--qrels", help="qrels split when --train is a BEIR folder.")
    ] = "train",
    base: Annotated[
        Path | None, typer.Option("--base", help="Fine-tune: model folder to start from.")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="Fine-tune: auto, cpu or cuda.")] = None,
    epochs: Annotated[
        float, typer.Option("--epochs", min=0.01, help="Fine-tune: passes over the pairs.")
    ] = 1.0,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Fine-tune: step cap.")] = None,
    max_minutes: Annotated[
        float | None, typer.Option("--max-minutes", min=0, help="Fine-tune: stop after this many minutes.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Fine-tune: batch.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Fine-tune: learning rate.")] = None,
    eval_every: Annotated[
        int, typer.Option("--eval-every", min=1, help="Fine-tune: dev check every N.")
    ] = 50,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Optimize a program offline with DSPy (saves programs/<site>/<program>.json + .meta.json), with
    --retrieval-only search the site's best k, mode and rerank (saves programs/<site>/retrieval.json), or
    with --reranker/--embedder fine-tune that model on --train (eval JSONL, feedback export, or a BEIR
    folder with --qrels) and activate it for the site only if it beats what it replaces on the dev split.

    Interrupted runs resume: finished retrieval trials, evaluations and fit checkpoints are kept."""
    from rag_app.core.errors import InputError

    settings = load_settings(config, data_dir=data_dir)
    progress = sys.stderr.isatty() and not as_json
    try:
        if reranker or embedder:
            if reranker and embedder:
                raise InputError("fine-tune one model at a time: --reranker or --embedder")
            if train is None or program or retrieval_only:
                raise InputError(
                    "--reranker/--embedder need --train FILE, without --program or --retrieval-only"
                )
            from rag_app.optimize.training.finetune import FinetuneRequest

            request = FinetuneRequest(
                site,
                "reranker" if reranker else "embedder",
                train,
                dev,
                qrels,
                base,
                device,
                epochs,
                max_steps,
                max_minutes,
                batch_size,
                lr,
                eval_every,
                force,
            )
            from rag_app.cli.finetune import run_finetune

            run_finetune(settings, request, progress, as_json)
            return
        if retrieval_only:
            if dev is None:
                raise InputError("--retrieval-only needs --dev FILE (judged rows of the site)")
            if program or train:
                raise InputError("--retrieval-only tunes the site's retrieval: drop --program and --train")
            _retrieval(
                settings, site, dev, metric, state_dir, limit, not no_resume, progress, report_dir, as_json
            )
            return
        missing = [
            name for name, value in (("--program", program), ("--train", train), ("--dev", dev)) if not value
        ]
        if missing:
            raise InputError(f"optimizing a program needs {', '.join(missing)} (or use --retrieval-only)")
        _program(
            settings,
            site,
            program,  # type: ignore[arg-type]
            train,  # type: ignore[arg-type]
            dev,  # type: ignore[arg-type]
            optimizer=optimizer,
            budget=budget,
            force=force,
            state_dir=state_dir,
            limit=limit,
            all_rows=all_rows,
            threads=threads,
            resume=not no_resume,
            progress=progress,
            as_json=as_json,
        )
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]interrupted:[/yellow] finished work is checkpointed; run the same command again to "
            "resume (--no-resume starts over)",
            soft_wrap=True,
        )
        raise typer.Exit(130) from None


def _retrieval(
    settings: Settings,
    site: str,
    dev: Path,
    metric: str,
    state_dir: Path | None,
    limit: int | None,
    resume: bool,
    progress: bool,
    report_dir: Path | None,
    as_json: bool,
) -> None:
    from rag_app.optimize.retrieval import search_retrieval_config
    from rag_app.runtime import Runtime

    lm, _ = Runtime(settings).lm()  # query rewrites are tried only with an LM
    result = search_retrieval_config(
        settings,
        site,
        dev,
        lm=lm,
        metric=metric,
        state_dir=state_dir,
        limit=limit,
        resume=resume,
        progress=progress,
        report_dir=report_dir,
    )
    if as_json:
        print_json(result.json_payload())
        return
    console.print(result.table(), highlight=False, markup=False, soft_wrap=True)
    best = result.best
    console.print(
        f"best: {best.trial.label} ({result.metric} {best.score(result.metric):.3f}) -> saved {result.path}"
        + (f" ({result.resumed} trial(s) resumed from {result.checkpoint})" if result.resumed else ""),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for text in result.notes:
        note(text)
    print_report_files(result.report_files)


def _program(
    settings: Settings,
    site: str,
    program: str,
    train: Path,
    dev: Path,
    *,
    optimizer: str,
    budget: str,
    force: bool,
    state_dir: Path | None,
    limit: int | None,
    all_rows: bool,
    threads: int,
    resume: bool,
    progress: bool,
    as_json: bool,
) -> None:
    from rag_app.optimize.program import optimize_program

    result = optimize_program(
        settings,
        site,
        program,
        train,
        dev,
        optimizer=optimizer,
        budget=budget,
        force=force,
        state_dir=state_dir,
        all_rows=all_rows,
        train_limit=limit,
        dev_limit=limit,
        num_threads=threads,
        resume=resume,
        progress=progress,
        on_step=None
        if as_json
        else (lambda message: err_console.print(message, highlight=False, markup=False)),
    )
    if as_json:
        print_json(result.json_payload())
        return
    console.print(
        f"{site}/{program} {optimizer} ({budget}): dev score {result.score_before:.3f} -> "
        f"{result.score_after:.3f}; saved {result.state_path} and {result.meta_path}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for text in result.notes:
        note(text)


# ---------------------------------------------------------------------------------------- register


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``optimize`` to ``app``, and ``retrieval`` and ``answers`` to ``eval_app``."""
    app.command("optimize")(optimize)
    eval_app.command("retrieval")(eval_retrieval)
    eval_app.command("answers")(eval_answers)
