"""The one training loop of both fits: batches in a fixed order, dev evaluation every N steps, the best
checkpoint kept, a step/time budget, and resume from the out dir.

The fit modules give it three callables: ``train_step(row indices) -> loss``, ``evaluate() -> dev
metrics`` and ``save_model(dir)`` (their own way of writing loadable weights). Everything a rerun needs
lives in ``<out>/checkpoint`` (:mod:`.fit_common`); ``<out>/best`` is the best dev checkpoint so far, in
the format the service loads; ``<out>/fit.json`` is the outcome of the latest invocation.

Interruption. A kill or Ctrl-C loses at most the steps since the last evaluation: the checkpoint is
written after each evaluation and when the time budget runs out, never mid-step, and the data order of
every epoch is a function of the seed, so a rerun continues exactly where the checkpoint stands.
Imports only stdlib, numpy and torch.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rag_app.optimize.training.dev_metrics import better
from rag_app.optimize.training.fit_common import (
    Budget,
    FitConfig,
    epoch_order,
    load_checkpoint,
    restore_trainer_state,
    run_key,
    save_checkpoint,
    write_json,
)

__all__ = ["FitOutcome", "FitSpec", "config_json", "fit_spec", "run_fit"]

BEST = "best"
Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class FitSpec:
    """The shape of a run: where, how many rows and steps, and when to evaluate and stop."""

    out: Path
    key: str
    n_rows: int
    batch_size: int
    total_steps: int
    seed: int
    eval_every: int
    max_minutes: float | None
    device: str


#: Config fields that change where or how long a run goes, not what it learns: left out of its key, so a
#: resumed run may move machines or get more minutes.
VOLATILE_FIELDS = ("out", "device", "max_minutes", "eval_every")


def fit_spec(
    config: FitConfig, *, kind: str, pairs_hash: str, n_rows: int, total_steps: int, device: str
) -> FitSpec:
    """The run's shape, keyed by every knob that changes what it learns (``kind``, the pairs file's hash,
    the resolved base model and the config's other fields), so a resume never continues another run."""
    knobs = asdict(config) | {"pairs": pairs_hash, "base": str(Path(config.base).resolve()), "kind": kind}
    for volatile in VOLATILE_FIELDS:
        knobs.pop(volatile)
    return FitSpec(
        out=Path(config.out),
        key=run_key(knobs),
        n_rows=n_rows,
        batch_size=config.batch_size,
        total_steps=total_steps,
        seed=config.seed,
        eval_every=config.eval_every,
        max_minutes=config.max_minutes,
        device=device,
    )


def config_json(config: FitConfig) -> dict[str, Any]:
    """The config as JSON-ready values (paths as strings), for a fit's result and its card."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}


@dataclass
class FitOutcome:
    """What a fit reached. ``before`` is what the model replaces (retrieval order, or the base embedder);
    ``base`` the starting weights at step 0; ``best`` the best dev metrics, at ``best_step``."""

    out: str
    best_dir: str
    device: str
    steps: int
    total_steps: int
    complete: bool
    minutes: float
    total_minutes: float
    resumed_from: int | None
    before: dict[str, float]
    base: dict[str, float]
    best: dict[str, float]
    best_step: int
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _save_best(out: Path, save_model: Callable[[Path], None]) -> None:
    staging = out / f".{BEST}.saving"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_model(staging)
    old = out / f".{BEST}.old"
    shutil.rmtree(old, ignore_errors=True)
    if (out / BEST).exists():
        (out / BEST).rename(old)
    staging.rename(out / BEST)
    shutil.rmtree(old, ignore_errors=True)


def run_fit(
    spec: FitSpec,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    train_step: Callable[[Sequence[int]], float],
    evaluate: Callable[[], dict[str, float]],
    save_model: Callable[[Path], None],
    before: dict[str, float] | None,
    progress: Progress | None = None,
) -> FitOutcome:
    """Train until ``spec.total_steps`` (or the time budget); resume from ``spec.out`` when it holds a
    checkpoint of the same run. ``before=None``: what the model replaces is its own starting point (an
    embedder fine-tuned from the one in use). Returns the outcome, also written to ``<out>/fit.json``."""
    out = spec.out
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(spec.total_steps, spec.max_minutes)
    found = load_checkpoint(out, spec.key)
    if found is not None:
        folder, state = found
        model.load_state_dict(torch.load(folder / "model_state.pt", map_location=spec.device))
        restore_trainer_state(folder, optimizer, scheduler, spec.device)
        resumed_from: int | None = int(state["step"])
    else:
        resumed_from = None
        base = evaluate()
        _save_best(out, save_model)
        state = {
            "key": spec.key,
            "step": 0,
            "minutes": 0.0,
            "base": base,
            "best": base,
            "best_step": 0,
            "history": [{"step": 0, "loss": None, **base}],
        }
    step = int(state["step"])
    per_epoch = math.ceil(spec.n_rows / spec.batch_size)
    order: list[int] = []
    order_epoch = -1
    losses: list[float] = []

    minutes_before = float(state["minutes"])

    def checkpoint() -> None:
        state["step"] = step
        state["minutes"] = minutes_before + budget.minutes()
        save_checkpoint(
            out, optimizer, scheduler, state, lambda d: torch.save(model.state_dict(), d / "model_state.pt")
        )

    model.train()
    while step < spec.total_steps:
        epoch, position = divmod(step, per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(spec.n_rows, spec.seed, epoch), epoch
        rows = order[position * spec.batch_size : (position + 1) * spec.batch_size]
        losses.append(train_step(rows))
        step += 1
        if progress is not None:
            progress(step, spec.total_steps, losses[-1])
        timed_out = budget.out_of_time()
        if step % spec.eval_every == 0 or step == spec.total_steps or timed_out:
            metrics = evaluate()
            model.train()
            state["history"].append({"step": step, "loss": sum(losses) / len(losses), **metrics})
            losses = []
            if better(metrics, state["best"]):
                state["best"], state["best_step"] = metrics, step
                _save_best(out, save_model)
            checkpoint()
        if timed_out:
            break
    outcome = FitOutcome(
        out=str(out),
        best_dir=str(out / BEST),
        device=spec.device,
        steps=step,
        total_steps=spec.total_steps,
        complete=step >= spec.total_steps,
        minutes=budget.minutes(),
        total_minutes=float(state["minutes"]),
        resumed_from=resumed_from,
        before=state["base"] if before is None else before,
        base=state["base"],
        best=state["best"],
        best_step=int(state["best_step"]),
        history=list(state["history"]),
    )
    write_json(out / "fit.json", outcome.to_json())
    return outcome
