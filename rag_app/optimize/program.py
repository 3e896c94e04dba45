"""Offline DSPy optimization of a site program: ``rag-app optimize --site S --program P ...``.

The program's ``forward`` is what the optimizers run and :func:`answer_metric` is what they maximise:
``0.5 * token F1`` of the answer (citation markers removed) against the gold answer, plus ``0.5 *
grounding``, where grounding is

* 1/0 for answering (not) with the not-found phrase when the gold answer is the not-found phrase;
* 0 for a not-found answer to a question that has a gold answer;
* otherwise the mean of the share of citations that named a passage the program was given (dropped
  markers count against it) and, when the row has ``relevant_ids``, the citation precision.

Rows without a gold answer are scored on grounding alone. During bootstrapping (a ``trace`` is
given) the metric answers "good enough to keep as a demo": score >= :data:`BOOTSTRAP_THRESHOLD`.
GEPA gets :func:`feedback_metric`: the same score with the reasons as text feedback.

Optimizers (``--budget`` light/medium/heavy):

* ``bootstrap``: :class:`dspy.BootstrapFewShot` (light) or
  :class:`dspy.BootstrapFewShotWithRandomSearch` with 8/16 candidate programs (medium/heavy);
* ``mipro``: :class:`dspy.MIPROv2` ``(auto=budget)``, the program LM as prompt and task model;
* ``gepa``: :class:`dspy.GEPA` ``(auto=budget)``, the program LM as reflection LM.

Demos are bootstrapped traces only (``max_labeled_demos=0``): eval rows hold the programs' inputs
(``message``, ``query``...) and gold answers, never the inputs of their inner predictors, so raw rows
would only be dead weight in the saved state. Random search, MIPROv2 and GEPA use the dev set as their
validation set (as DSPy's tutorials do), so the "after" dev score is optimistic: measure a held-out
file with ``rag-app eval answers``.

Optimization starts from the program as its code defines it: a saved state is not loaded into the
student, so "before" is the code's zero-shot program and a rerun does not compound earlier runs.

The LM is the program LM from settings (:func:`rag_app.models.lm.build_lm`; tests pass one), set with
``dspy.context`` for the whole run; without one configured and reachable the run stops with an error
naming ``RAG_LM_MODEL``. The optimized program is saved with ``program.save`` (JSON) to
``<state-dir>/<site>/<program>.json``, next to a ``<program>.meta.json`` sidecar (optimizer, budget,
LM, dev scores before and after, train/dev hashes, date, git commit). A saved state whose recorded dev
score is strictly better is not overwritten without ``force``.

Resuming. DSPy's BootstrapFewShot, random search and MIPROv2 runs are not resumable: an interrupted
compile starts over. GEPA is: its ``log_dir`` (``<state-dir>/<site>/.gepa-<program>-<key>``) holds its
state and a rerun continues from it (the folder is removed once the state is saved). Around the
compile, every stage is checkpointed in ``<state-dir>/<site>/.<program>.optimize.jsonl``: the "before"
evaluation (keyed by the program source, dev set, LM and the settings that change answers; reused by
any later run with the same key, whatever the optimizer), the compiled program (a pending state file)
and the "after" evaluation (keyed also by optimizer, budget and train set). A rerun skips the stages
whose checkpoint matches; a completed save clears the compiled/after checkpoints, a refused one keeps
them so that ``--force`` does not optimize again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import re
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from rag_app.answering.not_found import is_not_found
from rag_app.core.errors import InputError, RagError, ServiceUnavailableError
from rag_app.core.settings import Settings
from rag_app.evaluation.answers import program_input, select_rows, strip_citations
from rag_app.evaluation.datasets import EvalExample, dataset_hash, load_eval_jsonl
from rag_app.evaluation.metrics import citation_precision, token_f1
from rag_app.evaluation.report import git_commit

OPTIMIZERS = ("bootstrap", "mipro", "gepa")
BUDGETS = ("light", "medium", "heavy")
#: Weight of token F1 in :func:`answer_score`; grounding gets the rest.
F1_WEIGHT = 0.5
#: A bootstrapped trace becomes a demo when its score reaches this.
BOOTSTRAP_THRESHOLD = 0.5
#: Candidate programs of BootstrapFewShotWithRandomSearch per budget.
RANDOM_SEARCH_CANDIDATES = {"medium": 8, "heavy": 16}
MAX_BOOTSTRAPPED_DEMOS = 4
#: Bumped whenever the metric changes, so old checkpoints stop matching.
METRIC_VERSION = "answer_score/1"

__all__ = [
    "BOOTSTRAP_THRESHOLD",
    "BUDGETS",
    "OPTIMIZERS",
    "OptimizeResult",
    "StateNotOverwrittenError",
    "answer_metric",
    "answer_score",
    "feedback_metric",
    "grounding_score",
    "make_optimizer",
    "meta_path",
    "optimize_program",
    "require_lm",
    "to_examples",
]


class StateNotOverwrittenError(RagError):
    """A better optimized state is already saved; pass ``--force`` to replace it anyway."""

    exit_code = 7


# ========================================================================================== metric


def _field(obj: Any, name: str, default: Any = None) -> Any:
    try:
        value = obj.get(name, default) if hasattr(obj, "get") else getattr(obj, name, default)
    except Exception:
        value = getattr(obj, name, default)
    return default if value is None else value


def grounding_score(example: Any, pred: Any) -> tuple[float, list[str]]:
    """How well the answer is grounded (see the module docstring), with the reasons in words."""
    gold = _field(example, "answer")
    answer = str(_field(pred, "answer", ""))
    pred_nf = is_not_found(strip_citations(answer))
    if gold is not None and is_not_found(str(gold)):
        if pred_nf:
            return 1.0, ["Correctly answered that the sources do not contain the answer."]
        return 0.0, ["The sources do not contain the answer: the reply should be 'Not found in the sources.'"]
    if pred_nf:
        return 0.0, [
            "Answered 'Not found in the sources.' although the passages should contain the answer"
            + (f" ({gold!r})." if gold else ".")
        ]
    citations = list(_field(pred, "citations", []))
    dropped = int(_field(pred, "dropped_citations", 0) or 0)
    if not citations:
        return 0.0, ["The answer cites no passage: cite the passage of every claim as [n]."]
    valid = len(citations) / (len(citations) + dropped)
    notes = []
    if dropped:
        notes.append(f"{dropped} citation marker(s) named passages that were not provided and were removed.")
    relevant = _field(example, "relevant_ids", [])
    if not relevant:
        return valid, notes
    cited = [str(_field(c, "doc_id", "")) for c in citations]
    precision = citation_precision(cited, relevant) or 0.0
    good = round(precision * len(cited))
    notes.append(
        f"{good} of {len(cited)} cited passage(s) come from a relevant document "
        f"(cited: {', '.join(cited)}; relevant: {', '.join(relevant)})."
    )
    return (valid + precision) / 2, notes


def answer_score(example: Any, pred: Any) -> tuple[float, list[str]]:
    """``F1_WEIGHT * token F1 + (1 - F1_WEIGHT) * grounding`` (grounding alone without a gold answer)."""
    grounding, notes = grounding_score(example, pred)
    gold = _field(example, "answer")
    if gold is None or not str(gold).strip():
        return grounding, notes
    text = strip_citations(str(_field(pred, "answer", "")))
    f1 = token_f1(text, str(gold))
    notes.insert(0, f"Token F1 against the gold answer {str(gold)!r} is {f1:.2f}.")
    return F1_WEIGHT * f1 + (1 - F1_WEIGHT) * grounding, notes


def answer_metric(example: Any, pred: Any, trace: Any = None) -> float | bool:
    """The optimization metric: a float in [0, 1]; with a ``trace`` (bootstrapping) whether the trace
    is good enough to become a demo."""
    score, _ = answer_score(example, pred)
    return score >= BOOTSTRAP_THRESHOLD if trace is not None else score


def feedback_metric(
    gold: Any,
    pred: Any,
    trace: Any = None,
    pred_name: str | None = None,
    pred_trace: Any = None,
) -> dspy.Prediction:
    """GEPA's metric: ``dspy.Prediction(score=..., feedback=...)`` (the score of :func:`answer_score`)."""
    score, notes = answer_score(gold, pred)
    mode = _field(pred, "mode")
    if mode == "extractive":
        notes.append("The LM call failed or was skipped, so the program answered extractively.")
    return dspy.Prediction(score=score, feedback=" ".join(notes) or f"Score {score:.2f}.")


# ======================================================================================== examples


def to_examples(cls: Any, rows: Sequence[EvalExample]) -> list[dspy.Example]:
    """``dspy.Example`` per row: the program's ``Input`` fields as inputs; ``answer`` (gold),
    ``relevant_ids`` and ``row_id`` as labels."""
    examples = []
    for index, row in enumerate(rows):
        inputs = program_input(cls, row, index).model_dump(mode="json", exclude_defaults=True)
        labels = {"answer": row.answer, "relevant_ids": sorted(row.relevant), "row_id": row.id or str(index)}
        clash = sorted(set(inputs) & set(labels))
        if clash:
            raise InputError(f"{cls.site}/{cls.name}: input field(s) {clash} clash with the eval labels")
        examples.append(dspy.Example(**inputs, **labels).with_inputs(*inputs))
    return examples


def _load_rows(
    path: Path, site: str, program: str, *, all_rows: bool, limit: int | None, what: str
) -> list[EvalExample]:
    rows, skipped = select_rows(load_eval_jsonl(path), site, program, all_rows=all_rows)
    if limit is not None:
        if limit < 1:
            raise InputError(f"the {what} limit must be at least 1, got {limit}")
        rows = rows[:limit]
    if not rows:
        raise InputError(
            f"{path}: no {what} rows for {site}/{program} ({skipped} name another site or program; "
            "--all-rows uses every row of the site)"
        )
    return rows


# ============================================================================================== LM


def require_lm(settings: Settings) -> Any:
    """The program LM from settings, or an error naming ``RAG_LM_MODEL`` when none is usable."""
    from rag_app.models.lm import LMResolver, build_lm

    if not settings.lm_model:
        raise InputError(
            "optimizing a program needs an LM, and none is configured: set RAG_LM_MODEL (or lm_model in "
            "rag.toml) to a LiteLLM model string, e.g. RAG_LM_MODEL=ollama_chat/llama3.2"
        )
    reason = LMResolver(settings).unavailable_reason()
    if reason:
        raise ServiceUnavailableError(
            f"optimizing a program needs a reachable LM (RAG_LM_MODEL={settings.lm_model}): "
            f"{re.sub(r'[:;] extractive answer$', '', reason)}"
        )
    return build_lm(settings)


def lm_fingerprint(lm: Any) -> dict[str, Any]:
    """What identifies an LM's behaviour (model and sampling kwargs; never keys)."""
    kwargs = getattr(lm, "kwargs", {}) or {}
    keep = {
        k: v
        for k, v in kwargs.items()
        if k in ("temperature", "max_tokens", "max_completion_tokens", "top_p", "api_base", "n")
    }
    return {"model": str(getattr(lm, "model", type(lm).__name__)), "type": type(lm).__name__, **keep}


# ====================================================================================== checkpoint


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


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


class _Checkpoint:
    """Append-only JSONL of finished stages; unreadable lines (a run killed mid-write) are ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def find(self, stage: str, key: str) -> dict[str, Any] | None:
        found = None
        for record in self.records():
            if record.get("stage") == stage and record.get("key") == key:
                found = record
        return found

    def add(self, stage: str, key: str, **values: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"stage": stage, "key": key, **values}, default=str) + "\n")
            handle.flush()

    def drop(self, key: str, stages: Sequence[str]) -> None:
        kept = [r for r in self.records() if not (r.get("key") == key and r.get("stage") in stages)]
        if not kept:
            self.path.unlink(missing_ok=True)
            return
        self.path.write_text("".join(json.dumps(r, default=str) + "\n" for r in kept), encoding="utf-8")


# ====================================================================================== evaluation


def evaluate_program(
    module: Any, devset: Sequence[dspy.Example], lm: Any, *, num_threads: int = 1, progress: bool = False
) -> dict[str, Any]:
    """``dspy.Evaluate`` with :func:`answer_metric` under ``lm``: mean score in [0, 1], per-row scores,
    how many answers came from the LM and how many rows failed."""
    evaluator = dspy.Evaluate(
        devset=list(devset),
        metric=answer_metric,
        num_threads=num_threads,
        display_progress=progress,
        display_table=False,
        max_errors=len(devset) + 1,
        failure_score=0.0,
    )
    with dspy.context(lm=lm):
        result = evaluator(module)
    scores = [float(score) for _, _, score in result.results]
    modes = Counter(str(getattr(pred, "mode", None) or "failed") for _, pred, _ in result.results)
    return {
        "score": math.fsum(scores) / len(scores) if scores else 0.0,
        "scores": scores,
        "n": len(scores),
        "modes": dict(modes),
    }


# ======================================================================================= optimizers


def make_optimizer(
    name: str,
    budget: str,
    lm: Any,
    *,
    num_threads: int = 1,
    log_dir: Path | None = None,
    n_dev: int = 1,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``(optimizer, extra compile kwargs, config for the sidecar)`` for ``name``/``budget``."""
    if name not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    if budget not in BUDGETS:
        raise InputError(f"unknown budget {budget!r}; use one of {', '.join(BUDGETS)}")
    if name == "bootstrap" and budget == "light":
        optimizer = dspy.BootstrapFewShot(
            metric=answer_metric,
            max_bootstrapped_demos=MAX_BOOTSTRAPPED_DEMOS,
            max_labeled_demos=0,
            max_rounds=1,
        )
        return optimizer, {}, {"class": "BootstrapFewShot", "max_bootstrapped_demos": MAX_BOOTSTRAPPED_DEMOS}
    if name == "bootstrap":
        candidates = RANDOM_SEARCH_CANDIDATES[budget]
        optimizer = dspy.BootstrapFewShotWithRandomSearch(
            metric=answer_metric,
            max_bootstrapped_demos=MAX_BOOTSTRAPPED_DEMOS,
            max_labeled_demos=0,
            num_candidate_programs=candidates,
            num_threads=num_threads,
        )
        config = {"class": "BootstrapFewShotWithRandomSearch", "num_candidate_programs": candidates}
        return optimizer, {"valset": "dev"}, config
    if name == "mipro":
        try:
            import optuna  # noqa: F401  (MIPROv2's search; imported late by DSPy, so check up front)
        except ImportError:
            raise InputError(
                "--optimizer mipro needs the optuna package (MIPROv2's Bayesian search): pip install optuna"
            ) from None
        optimizer = dspy.MIPROv2(
            metric=answer_metric,
            prompt_model=lm,
            task_model=lm,
            auto=budget,  # type: ignore[arg-type]
            max_bootstrapped_demos=MAX_BOOTSTRAPPED_DEMOS,
            max_labeled_demos=0,
            num_threads=num_threads,
        )
        return optimizer, {"valset": "dev", "minibatch_size": max(1, min(35, n_dev))}, {"class": "MIPROv2"}
    optimizer = dspy.GEPA(
        metric=feedback_metric,
        auto=budget,  # type: ignore[arg-type]
        reflection_lm=lm,
        num_threads=num_threads,
        log_dir=str(log_dir) if log_dir else None,
        track_stats=False,
    )
    return optimizer, {"valset": "dev"}, {"class": "GEPA", "log_dir": str(log_dir) if log_dir else None}


# ========================================================================================== result


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


def meta_path(state_file: Path) -> Path:
    """The sidecar of a saved state: ``<program>.meta.json`` next to ``<program>.json``."""
    return state_file.with_name(state_file.stem + ".meta.json")


def _recorded_score(state_file: Path) -> float | None:
    sidecar = meta_path(state_file)
    if not sidecar.is_file():
        return None
    try:
        value = json.loads(sidecar.read_text(encoding="utf-8")).get("score_after")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _fresh_program(cls: Any, settings: Settings) -> Any:
    """The program without any saved state loaded: optimization starts from the code's prompts."""
    from rag_app.runtime import Runtime

    program = cls(settings, services=Runtime(settings))
    if getattr(program, "state", None):
        program.build()  # fresh predictors: no demos, the signatures' own instructions
        program.state = None
    return program


def _site_source_hash(settings: Settings, site: str) -> str | None:
    path = settings.programs_dir / f"{site}.py"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


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
    load their state from). Raises :class:`StateNotOverwrittenError` when a saved state with a strictly
    better recorded dev score exists and ``force`` is false (the optimized program is then kept in the
    checkpoint, so a ``force`` rerun does not optimize again).
    """
    from rag_app.answering.program import state_path
    from rag_app.answering.registry import program_class

    say = on_step or (lambda message: None)
    if optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if budget not in BUDGETS:
        raise InputError(f"unknown budget {budget!r}; use one of {', '.join(BUDGETS)}")
    cls = program_class(settings, site, program)
    if lm is None:
        lm = require_lm(settings)
    state_dir = Path(state_dir) if state_dir is not None else settings.programs_dir
    target = state_path(settings.model_copy(update={"programs_dir": state_dir}), site, program)
    sidecar = meta_path(target)

    train_rows = _load_rows(train, site, program, all_rows=all_rows, limit=train_limit, what="train")
    dev_rows = _load_rows(dev, site, program, all_rows=all_rows, limit=dev_limit, what="dev")
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
    before_key = _sha(base)
    run_key = _sha(
        {
            **base,
            "optimizer": optimizer,
            "budget": budget,
            "train": train_hash,
            "train_rows": [e.row_id for e in trainset],
        }
    )
    checkpoint = _Checkpoint(target.parent / f".{program}.optimize.jsonl")
    if not resume:
        checkpoint.drop(before_key, ["before"])
        checkpoint.drop(run_key, ["compiled", "after"])
    resumed: list[str] = []
    notes: list[str] = []

    student = _fresh_program(cls, settings)
    gepa_dir = target.parent / f".gepa-{program}-{run_key[:12]}"
    with contextlib.redirect_stdout(sys.stderr):  # some optimizers print from their constructor
        opt, compile_kwargs, opt_config = make_optimizer(
            optimizer, budget, lm, num_threads=num_threads, log_dir=gepa_dir, n_dev=len(devset)
        )

    def evaluate(step: str, key: str, program_: dspy.Module, what: str, *, reuse: bool) -> dict[str, Any]:
        """The dev evaluation of one step, from the checkpoint when ``reuse`` allows it."""
        record = checkpoint.find(step, key)
        if record is not None and reuse:
            resumed.append(step)
            say(f"dev score {step} (from the checkpoint): {record['evaluation']['score']:.3f}")
            return record["evaluation"]
        say(f"evaluating the {what} program on {len(devset)} dev row(s)")
        result = evaluate_program(program_, devset, lm, num_threads=num_threads, progress=progress)
        checkpoint.add(step, key, evaluation=result)
        say(f"dev score {step}: {result['score']:.3f}")
        return result

    # 1. before
    before = evaluate("before", before_key, student, "unoptimized", reuse=True)

    # 2. compile
    pending = target.parent / f".{program}.{run_key[:12]}.pending.json"
    record = checkpoint.find("compiled", run_key)
    if record is not None and pending.is_file():
        optimized = student.deepcopy()
        optimized.load(str(pending))
        resumed.append("compiled")
        say(f"optimized program loaded from the checkpoint {pending}")
    else:
        say(f"optimizing with {opt_config['class']} ({budget}) on {len(trainset)} train row(s)")
        if compile_kwargs.get("valset") == "dev":
            compile_kwargs["valset"] = list(devset)
        # DSPy's optimizers print their chatter; keep stdout for results (``--json``).
        with dspy.context(lm=lm), contextlib.redirect_stdout(sys.stderr):
            optimized = opt.compile(student, trainset=list(trainset), **compile_kwargs)
        pending.parent.mkdir(parents=True, exist_ok=True)
        optimized.save(str(pending))
        checkpoint.add("compiled", run_key, pending=str(pending))

    # 3. after: reused only together with the compiled program it measured
    after = evaluate("after", run_key, optimized, "optimized", reuse="compiled" in resumed)
    if not after["modes"].get("lm"):
        notes.append(
            "no dev answer came from the LM (every LM call failed, so the program answered extractively): "
            "check the LM before trusting these scores"
        )

    # 4. save, unless a better state is there
    if target.is_file() and not force:
        recorded = _recorded_score(target)
        if recorded is None or recorded > after["score"]:
            what = (
                f"its recorded dev score {recorded:.3f} is better than this run's {after['score']:.3f}"
                if recorded is not None
                else f"it has no readable sidecar {sidecar.name} with a recorded dev score "
                f"(this run's: {after['score']:.3f})"
            )
            raise StateNotOverwrittenError(
                f"kept the saved state {target}: {what}. Pass --force to overwrite it (the optimized "
                "program is checkpointed: the rerun will not optimize again)"
            )
    meta = {
        "site": site,
        "program": program,
        "optimizer": optimizer,
        "budget": budget,
        "optimizer_config": opt_config,
        "lm_model": lm_fingerprint(lm)["model"],
        "lm": lm_fingerprint(lm),
        "metric": f"{METRIC_VERSION}: {F1_WEIGHT} * token F1 + {1 - F1_WEIGHT} * grounding",
        "score_before": before["score"],
        "score_after": after["score"],
        "dev_scores": {"before": before, "after": after},
        "train": {"path": str(train), "hash": train_hash, "rows": len(trainset)},
        "dev": {"path": str(dev), "hash": dev_hash, "rows": len(devset)},
        "train_hash": train_hash,
        "dev_hash": dev_hash,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "dspy_version": getattr(dspy, "__version__", None),
        "resumed": resumed,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write aside, then rename: a server loading the state never sees half a file.
    saving = target.with_name(f".{target.stem}.saving.json")
    optimized.save(str(saving))
    saving.replace(target)
    saving_meta = sidecar.with_name(f".{sidecar.name}.saving")
    saving_meta.write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    saving_meta.replace(sidecar)
    checkpoint.drop(run_key, ["compiled", "after"])
    pending.unlink(missing_ok=True)
    shutil.rmtree(gepa_dir, ignore_errors=True)
    say(f"saved {target} and {sidecar}")
    return OptimizeResult(
        site=site,
        program=program,
        optimizer=optimizer,
        budget=budget,
        score_before=before["score"],
        score_after=after["score"],
        state_path=target,
        meta_path=sidecar,
        meta=meta,
        saved=True,
        resumed=resumed,
        notes=notes,
    )
