"""What both fit loops share: device and precision, the step/time budget, the learning-rate schedule,
and the resumable checkpoint in the run's out dir.

Imports only stdlib, numpy and torch (the fit modules run on machines without the rest of rag_app).

Resuming. The run's out dir holds ``checkpoint/`` (weights, optimizer and scheduler state, RNG states
and ``state.json``: step, best dev score so far, elapsed minutes, and the run key). A rerun with the
same key (:func:`run_key`: data hash, base model and every knob that changes the result) loads it and
continues at the next step, in the same data order; a rerun with other knobs refuses rather than mixing
two runs. ``--max-minutes`` and ``--device`` are not part of the key: a run stopped by its time budget
on a CPU continues with the next invocation, or on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rag_app.models.fp32_head import Fp32Head, keep_head_fp32, plain_heads

__all__ = [
    "Budget",
    "Fp32Head",
    "add_common_flags",
    "autocast",
    "epoch_order",
    "keep_head_fp32",
    "linear_schedule",
    "load_checkpoint",
    "plain_heads",
    "print_progress",
    "resolve_device",
    "restore_trainer_state",
    "run_key",
    "save_checkpoint",
    "seed_all",
    "total_steps",
    "write_json",
]

CHECKPOINT = "checkpoint"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is an error."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to torch here; use --device cpu or auto")
    return device


def autocast(device: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on a GPU that supports it (the head stays fp32: :class:`Fp32Head`); fp32 on CPU."""
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def linear_schedule(optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float) -> Any:
    """Linear warm-up over ``warmup_ratio`` of ``total`` steps, then linear decay to 0."""
    warmup = max(1, int(total * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled row order of one epoch: the same on every machine for the same seed and epoch."""
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def run_key(parts: dict[str, Any]) -> str:
    """sha256 of the knobs that change a run's result (sorted JSON)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Budget:
    """Stop after ``max_steps`` total steps or ``max_minutes`` of this invocation, whichever comes first."""

    total_steps: int
    max_minutes: float | None
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    def minutes(self) -> float:
        return (time.monotonic() - self.started) / 60.0

    def out_of_time(self) -> bool:
        return self.max_minutes is not None and self.minutes() >= self.max_minutes


def write_json(path: Path, data: Any) -> None:
    """Write JSON aside and rename it over ``path``: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_checkpoint(
    out: Path, optimizer: Any, scheduler: Any, state: dict[str, Any], save_model: Any
) -> None:
    """Write ``out/checkpoint`` atomically: a new folder, then renamed over the old one.

    ``save_model(dir)`` writes the weights (each fit loop saves its own way). A kill mid-save leaves the
    previous checkpoint in place.
    """
    target = out / CHECKPOINT
    staging = out / f".{CHECKPOINT}.saving"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_model(staging)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        staging / "trainer_state.pt",
    )
    write_json(staging / "state.json", state)
    old = out / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, key: str) -> tuple[Path, dict[str, Any]] | None:
    """``(checkpoint dir, state)`` of a resumable run with ``key`` in ``out``, or None to start fresh.

    A checkpoint of another run (other data or knobs) is an error: resuming it would mix two runs.
    """
    folder = out / CHECKPOINT
    state_file = folder / "state.json"
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text(encoding="utf-8"))
    if state.get("key") != key:
        raise ValueError(
            f"{out} holds a checkpoint of another run (other pairs, base model or settings); use another "
            "--out, or delete that folder to start over"
        )
    return folder, state


def restore_trainer_state(folder: Path, optimizer: Any, scheduler: Any, device: str) -> None:
    """Load the optimizer, scheduler and RNG states saved by :func:`save_checkpoint`."""
    saved = torch.load(folder / "trainer_state.pt", map_location=device, weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"].cpu())
    if saved.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in saved["cuda_rng"]])


def total_steps(n_rows: int, batch_size: int, epochs: float, max_steps: int | None) -> int:
    """Steps of the whole run: ``epochs`` passes of ``n_rows`` in batches, capped by ``max_steps``."""
    steps = max(1, math.ceil(epochs * math.ceil(n_rows / batch_size)))
    return min(steps, max_steps) if max_steps else steps


@dataclass(frozen=True)
class FitConfig:
    """Every knob of a fit (the CLI flags of the fit modules' ``main``)."""

    pairs: Path
    base: Path
    out: Path
    device: str = "auto"
    epochs: float = 1.0
    batch_size: int = 16
    max_length: int = 256
    max_steps: int | None = None
    max_minutes: float | None = None
    lr: float = 2e-5
    eval_every: int = 50
    seed: int = 0
    warmup_ratio: float = 0.1


#: What a fit entry point prints (the keys of the fit's result it has).
SUMMARY_KEYS = (
    "best_dir",
    "device",
    "steps",
    "total_steps",
    "complete",
    "minutes",
    "before",
    "base",
    "best",
    "best_step",
)


def run_main(
    prog: str,
    doc: str,
    config_class: type[FitConfig],
    fit: Any,
    argv: Sequence[str] | None,
) -> int:
    """The ``python -m`` entry point of a fit module: flags -> config -> fit -> JSON summary (exit 2 on
    bad input, with the reason)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    defaults = config_class.__dataclass_fields__
    add_common_flags(parser, lr=defaults["lr"].default, batch_size=defaults["batch_size"].default)
    config = config_class(**vars(parser.parse_args(argv)))
    try:
        result = fit(config, progress=print_progress)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: result[k] for k in SUMMARY_KEYS if k in result}, indent=2))
    return 0


def add_common_flags(parser: argparse.ArgumentParser, *, lr: float, batch_size: int) -> None:
    """The flags both fit entry points take."""
    parser.add_argument(
        "--pairs", type=Path, required=True, help="pairs JSONL (qid, query, passage, label, doc_id, split)"
    )
    parser.add_argument("--base", type=Path, required=True, help="local model folder to start from")
    parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoint/, best/, fit.json")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)


def print_progress(step: int, total: int, loss: float) -> None:
    """One stderr line per 10 steps (and the last): what a long GPU or CPU run shows."""
    if step % 10 == 0 or step == total:
        print(f"step {step}/{total} loss {loss:.4f}", file=sys.stderr, flush=True)
