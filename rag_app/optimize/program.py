"""Offline DSPy optimization of a site program: ``rag-app optimize --site S --program P ...``.

A run scores the program on the dev rows ("before"), compiles it with the chosen optimizer
(:mod:`rag_app.optimize.optimizers`) on the train rows, scores the result ("after") with
:func:`rag_app.optimize.metric.answer_metric`, and saves it (:mod:`rag_app.optimize.state`). The LM is
set with ``dspy.context`` for the whole run.

Optimization starts from the program as its code defines it: a saved state is not loaded into the
student, so "before" is the code's zero-shot program and a rerun does not compound earlier runs.

Resuming. DSPy's BootstrapFewShot, random search and MIPROv2 runs are not resumable: an interrupted
compile starts over. GEPA is: its ``log_dir`` (``<state-dir>/<site>/.gepa-<program>-<key>``) holds its
state and a rerun continues from it (the folder is removed once the state is saved). Around the
compile, every stage is checkpointed (:class:`rag_app.optimize.checkpoint.Checkpoint`) in
``<state-dir>/<site>/.<program>.optimize.jsonl``: the "before" evaluation (keyed by the program
source, dev set, LM and the settings that change answers; reused by any later run with the same key,
whatever the optimizer), the compiled program (a pending state file) and the "after" evaluation (keyed
also by optimizer, budget and train set). A rerun skips the stages whose checkpoint matches; a
completed save clears the compiled/after checkpoints, a refused one keeps them so that ``--force``
does not optimize again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from rag_app.core.settings import Settings
from rag_app.evaluation.datasets import dataset_hash
from rag_app.evaluation.report import git_commit
from rag_app.optimize.checkpoint import Checkpoint, checkpoint_key
from rag_app.optimize.examples import load_rows, to_examples
from rag_app.optimize.metric import F1_WEIGHT, METRIC_VERSION, evaluate_program
from rag_app.optimize.optimizers import check_optimizer, lm_fingerprint, make_optimizer, require_lm
from rag_app.optimize.state import check_overwrite, save_state

__all__ = ["OptimizeResult", "optimize_program"]


@dataclass
class OptimizeResult:
    site: str
    program: str
    optimizer: str
    budget: str
    score_before: float
    score_after: float
    state_path: Path
    meta_path: Path
    meta: dict[str, Any]
    saved: bool = True
    resumed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def json_payload(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "program": self.program,
            "optimizer": self.optimizer,
            "budget": self.budget,
            "score_before": self.score_before,
            "score_after": self.score_after,
            "saved": self.saved,
            "state": str(self.state_path),
            "meta": str(self.meta_path),
            "resumed": self.resumed,
            "notes": self.notes,
        }


# ===================================================================================== run keys


def _settings_fingerprint(settings: Settings, site: str) -> dict[str, Any]:
    """Settings that change what a program answers (retrieval, reranking, the tuned retrieval file)."""
    from rag_app.retrieval.config import retrieval_config_path

    keys = (
        "data_dir",
        "sites",
        "embedder_backend",
        "resolved_embedder_model",
        "embedder_revision",
        "chunk_tokens",
        "chunk_overlap",
        "retrieve_k",
        "search_mode",
        "rrf_k",
        "reranker_model",
        "reranker_revision",
        "reranker_backend",
        "reranker_on_missing",
        "reranker_max_length",
        "rerank_top_n",
    )
    values = {key: getattr(settings, key) for key in keys}
    retrieval = retrieval_config_path(settings, site)
    values["retrieval_json"] = (
        hashlib.sha256(retrieval.read_bytes()).hexdigest() if retrieval.is_file() else None
    )
    return values


def _site_source_hash(settings: Settings, site: str) -> str | None:
    path = settings.programs_dir / f"{site}.py"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


# ===================================================================================== the steps


@dataclass
class _Run:
    """What the steps of one optimization run share: its inputs, keys, checkpoint and progress."""

    site: str
    program: str
    optimizer: str
    budget: str
    lm: Any
    cls: Any
    target: Path
    train: Path
    dev: Path
    trainset: list[dspy.Example]
    devset: list[dspy.Example]
    train_hash: str
    dev_hash: str
    before_key: str
    run_key: str
    checkpoint: Checkpoint
    num_threads: int
    progress: bool
    say: Callable[[str], None]
    resumed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def pending(self) -> Path:
        """The compiled program, saved before its "after" evaluation so that a rerun can reuse it."""
        return self.target.parent / f".{self.program}.{self.run_key[:12]}.pending.json"

    @property
    def gepa_dir(self) -> Path:
        return self.target.parent / f".gepa-{self.program}-{self.run_key[:12]}"


def _start(
    settings: Settings,
    site: str,
    program: str,
    train: Path,
    dev: Path,
    *,
    optimizer: str,
    budget: str,
    state_dir: Path | None,
    lm: Any,
    all_rows: bool,
    train_limit: int | None,
    dev_limit: int | None,
    num_threads: int,
    resume: bool,
    progress: bool,
    on_step: Callable[[str], None] | None,
) -> _Run:
    """Check the inputs, load the rows, and key the run's checkpoint (cleared without ``resume``)."""
    from rag_app.answering.program import state_path
    from rag_app.answering.registry import program_class

    check_optimizer(optimizer, budget)
    cls = program_class(settings, site, program)
    if lm is None:
        lm = require_lm(settings)
    state_dir = Path(state_dir) if state_dir is not None else settings.programs_dir
    target = state_path(settings.model_copy(update={"programs_dir": state_dir}), site, program)

    train_rows = load_rows(train, site, program, all_rows=all_rows, limit=train_limit, what="train")
    dev_rows = load_rows(dev, site, program, all_rows=all_rows, limit=dev_limit, what="dev")
    trainset, devset = to_examples(cls, train_rows), to_examples(cls, dev_rows)
    train_hash, dev_hash = dataset_hash(train), dataset_hash(dev)
    base = {
        "metric": METRIC_VERSION,
        "site": site,
        "program": program,
        "source": _site_source_hash(settings, site),
        "dev": dev_hash,
        "dev_rows": [e.row_id for e in devset],
        "lm": lm_fingerprint(lm),
        "settings": _settings_fingerprint(settings, site),
    }
    run_parts = {
        "optimizer": optimizer,
        "budget": budget,
        "train": train_hash,
        "train_rows": [e.row_id for e in trainset],
    }
    run = _Run(
        site=site,
        program=program,
        optimizer=optimizer,
        budget=budget,
        lm=lm,
        cls=cls,
        target=target,
        train=train,
        dev=dev,
        trainset=trainset,
        devset=devset,
        train_hash=train_hash,
        dev_hash=dev_hash,
        before_key=checkpoint_key(base),
        run_key=checkpoint_key({**base, **run_parts}),
        checkpoint=Checkpoint(target.parent / f".{program}.optimize.jsonl"),
        num_threads=num_threads,
        progress=progress,
        say=on_step or (lambda message: None),
    )
    if not resume:
        run.checkpoint.drop(run.before_key, ["before"])
        run.checkpoint.drop(run.run_key, ["compiled", "after"])
    return run


def _fresh_program(cls: Any, settings: Settings) -> Any:
    """The program without any saved state loaded: optimization starts from the code's prompts."""
    from rag_app.runtime import Runtime

    program = cls(settings, services=Runtime(settings))
    if getattr(program, "state", None):
        program.build()  # fresh predictors: no demos, the signatures' own instructions
        program.state = None
    return program


def _evaluate(
    run: _Run, step: str, key: str, module: dspy.Module, what: str, *, reuse: bool
) -> dict[str, Any]:
    """The dev evaluation of one step, from the checkpoint when ``reuse`` allows it."""
    record = run.checkpoint.find(key, step)
    if record is not None and reuse:
        run.resumed.append(step)
        run.say(f"dev score {step} (from the checkpoint): {record['evaluation']['score']:.3f}")
        return record["evaluation"]
    run.say(f"evaluating the {what} program on {len(run.devset)} dev row(s)")
    result = evaluate_program(module, run.devset, run.lm, num_threads=run.num_threads, progress=run.progress)
    run.checkpoint.add(key, stage=step, evaluation=result)
    run.say(f"dev score {step}: {result['score']:.3f}")
    return result


def _compile(
    run: _Run, student: Any, optimizer: Any, compile_kwargs: dict[str, Any], config: dict[str, Any]
) -> Any:
    """The optimized program: the checkpointed one when there is one, else compiled now (and kept)."""
    pending = run.pending
    if run.checkpoint.find(run.run_key, "compiled") is not None and pending.is_file():
        optimized = student.deepcopy()
        optimized.load(str(pending))
        run.resumed.append("compiled")
        run.say(f"optimized program loaded from the checkpoint {pending}")
        return optimized
    run.say(f"optimizing with {config['class']} ({run.budget}) on {len(run.trainset)} train row(s)")
    if compile_kwargs.get("valset") == "dev":
        compile_kwargs["valset"] = list(run.devset)
    # DSPy's optimizers print their chatter; keep stdout for results (``--json``).
    with dspy.context(lm=run.lm), contextlib.redirect_stdout(sys.stderr):
        optimized = optimizer.compile(student, trainset=list(run.trainset), **compile_kwargs)
    pending.parent.mkdir(parents=True, exist_ok=True)
    optimized.save(str(pending))
    run.checkpoint.add(run.run_key, stage="compiled", pending=str(pending))
    return optimized


def _meta(run: _Run, config: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The sidecar: how the state was made and how it scored."""
    train_hash, dev_hash = run.train_hash, run.dev_hash
    return {
        "site": run.site,
        "program": run.program,
        "optimizer": run.optimizer,
        "budget": run.budget,
        "optimizer_config": config,
        "lm_model": lm_fingerprint(run.lm)["model"],
        "lm": lm_fingerprint(run.lm),
        "metric": f"{METRIC_VERSION}: {F1_WEIGHT} * token F1 + {1 - F1_WEIGHT} * grounding",
        "score_before": before["score"],
        "score_after": after["score"],
        "dev_scores": {"before": before, "after": after},
        "train": {"path": str(run.train), "hash": train_hash, "rows": len(run.trainset)},
        "dev": {"path": str(run.dev), "hash": dev_hash, "rows": len(run.devset)},
        "train_hash": train_hash,
        "dev_hash": dev_hash,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "dspy_version": getattr(dspy, "__version__", None),
        "resumed": run.resumed,
    }


# ======================================================================================== the run


def optimize_program(
    settings: Settings,
    site: str,
    program: str,
    train: Path,
    dev: Path,
    *,
    optimizer: str = "bootstrap",
    budget: str = "light",
    force: bool = False,
    state_dir: Path | None = None,
    lm: Any = None,
    all_rows: bool = False,
    train_limit: int | None = None,
    dev_limit: int | None = None,
    num_threads: int = 1,
    resume: bool = True,
    progress: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> OptimizeResult:
    """Optimize ``site``/``program`` on ``train``, score it on ``dev`` before and after, save it.

    ``lm``: the LM to optimize with (default :func:`require_lm`). ``state_dir``: where
    ``<site>/<program>.json`` and its sidecar go (default ``settings.programs_dir``, where programs
    load their state from). Raises :class:`rag_app.optimize.state.StateNotOverwrittenError` when a
    saved state with a strictly better recorded dev score exists and ``force`` is false (the optimized
    program is then kept in the checkpoint, so a ``force`` rerun does not optimize again).
    """
    run = _start(
        settings,
        site,
        program,
        train,
        dev,
        optimizer=optimizer,
        budget=budget,
        state_dir=state_dir,
        lm=lm,
        all_rows=all_rows,
        train_limit=train_limit,
        dev_limit=dev_limit,
        num_threads=num_threads,
        resume=resume,
        progress=progress,
        on_step=on_step,
    )
    student = _fresh_program(run.cls, settings)
    with contextlib.redirect_stdout(sys.stderr):  # some optimizers print from their constructor
        opt, compile_kwargs, opt_config = make_optimizer(
            optimizer, budget, run.lm, num_threads=num_threads, log_dir=run.gepa_dir, n_dev=len(run.devset)
        )
    before = _evaluate(run, "before", run.before_key, student, "unoptimized", reuse=True)
    optimized = _compile(run, student, opt, compile_kwargs, opt_config)
    # "after" is reused only together with the compiled program it measured
    after = _evaluate(run, "after", run.run_key, optimized, "optimized", reuse="compiled" in run.resumed)
    if not after["modes"].get("lm"):
        run.notes.append(
            "no dev answer came from the LM (every LM call failed, so the program answered extractively): "
            "check the LM before trusting these scores"
        )
    check_overwrite(run.target, after["score"], force=force)
    meta = _meta(run, opt_config, before, after)
    sidecar = save_state(optimized, run.target, meta)
    run.checkpoint.drop(run.run_key, ["compiled", "after"])
    run.pending.unlink(missing_ok=True)
    shutil.rmtree(run.gepa_dir, ignore_errors=True)
    run.say(f"saved {run.target} and {sidecar}")
    return OptimizeResult(
        site=site,
        program=program,
        optimizer=optimizer,
        budget=budget,
        score_before=before["score"],
        score_after=after["score"],
        state_path=run.target,
        meta_path=sidecar,
        meta=meta,
        saved=True,
        resumed=run.resumed,
        notes=run.notes,
    )
