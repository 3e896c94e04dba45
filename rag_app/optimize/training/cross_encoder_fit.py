"""Fine-tune a cross-encoder reranker on a pairs file: ``python -m ...training.cross_encoder_fit``.

Starts from a local cross-encoder checkpoint (a ``*ForSequenceClassification`` model with one label,
e.g. a cached bge-reranker-base) or from a bi-encoder such as the bundled MiniLM, which gets a new
1-logit head. The loss is binary cross-entropy on the logit, what sentence-transformers'
``BinaryCrossEntropyLoss`` computes, written as a plain loop over the Hugging Face model: the same code
then runs under sentence-transformers 6.0.1 and 6.2 and any transformers 5.x, and the saved folder is a
plain Hugging Face sequence-classification model that ``sentence_transformers.CrossEncoder`` and the
service's reranker load. On a GPU the encoder runs under bf16 autocast while the pooler and
classifier stay fp32 (:class:`~.fit_common.Fp32Head`), so scores do not tie.

The dev rows pick the checkpoint: every ``--eval-every`` steps each dev query's candidate list is
re-ordered by the model and scored (nDCG@10, MRR@5, recall@5, documents counted once); ``<out>/best`` is
the best so far. ``before`` is the retrieval order of those same lists (what the reranker replaces).

Imports only stdlib, numpy, torch and transformers: it runs on a machine without the rest of rag_app.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rag_app.optimize.training.dev_metrics import doc_order, mean_metrics, query_metrics
from rag_app.optimize.training.fit_common import (
    FitConfig,
    autocast,
    keep_head_fp32,
    linear_schedule,
    plain_heads,
    resolve_device,
    run_main,
    seed_all,
    total_steps,
)
from rag_app.optimize.training.fit_loop import FitOutcome, Progress, config_json, fit_spec, run_fit
from rag_app.optimize.training.pairs import PairRow, by_query, file_sha256, read_pairs

__all__ = ["CrossEncoderFitConfig", "dev_lists", "fit_cross_encoder", "load_cross_encoder", "main"]


@dataclass(frozen=True)
class CrossEncoderFitConfig(FitConfig):
    """Every knob of a cross-encoder fit (:class:`FitConfig`)."""


def load_cross_encoder(base: Path) -> tuple[Any, Any, bool]:
    """``(model, tokenizer, new_head)`` from ``base``: a 1-label cross-encoder as it is, or any other
    encoder (a bi-encoder) with a newly initialised 1-logit head."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    base = Path(base)
    if not (base / "config.json").is_file():
        raise FileNotFoundError(
            f"base model {base} has no config.json: pass --base a local model folder (a cross-encoder "
            "such as a cached bge-reranker-base snapshot, or the bundled MiniLM folder)"
        )
    config = AutoConfig.from_pretrained(base)
    architectures = getattr(config, "architectures", None) or []
    is_cross = any(a.endswith("ForSequenceClassification") for a in architectures)
    if is_cross and config.num_labels != 1:
        raise ValueError(f"{base} is a classifier with {config.num_labels} labels; a reranker needs 1")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier" is the point for a bi-encoder
    try:
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, AutoTokenizer.from_pretrained(base), not is_cross


def dev_lists(rows: Sequence[PairRow]) -> list[list[PairRow]]:
    """Each dev query's candidate list: its retrieved rows in retrieval order (all its rows, in file
    order, when the file has no ranks). Queries without a retrieved row are kept: they score 0 for any
    reranker, as they do in the pipeline."""
    lists = []
    for group in by_query(rows, "dev").values():
        ranked = [r for r in group if r.rank is not None]
        lists.append(sorted(ranked, key=lambda r: r.rank or 0) if ranked else group)
    return lists


def _relevant(rows: Sequence[PairRow]) -> set[str]:
    return {r.doc_id for r in rows if r.label == 1}


def order_metrics(lists: Sequence[Sequence[PairRow]], scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """Mean dev metrics of the lists re-ordered by ``scores`` (one score per row)."""
    return mean_metrics(
        [
            query_metrics(doc_order([r.doc_id for r in rows], list(s)), _relevant(rows))
            for rows, s in zip(lists, scores, strict=True)
        ]
    )


def _encode(tokenizer: Any, rows: Sequence[PairRow], max_length: int, device: str) -> dict[str, Any]:
    batch = tokenizer(
        [r.query for r in rows],
        [r.passage for r in rows],
        padding=True,
        truncation="longest_first",
        max_length=max_length,
        return_tensors="pt",
    )
    return {k: v.to(device) for k, v in batch.items()}


def _logits(model: Any, batch: dict[str, Any], device: str) -> torch.Tensor:
    with autocast(device):
        logits = model(**batch).logits
    return logits.float().view(-1)


def fit_cross_encoder(config: CrossEncoderFitConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Train per ``config``; the outcome (also ``<out>/fit.json``) plus ``base_model``, ``new_head``,
    ``pairs_sha256`` and the config."""
    device = resolve_device(config.device)
    rows = read_pairs(config.pairs)
    train = [r for r in rows if r.split == "train"]
    lists = dev_lists(rows)
    if not train or not lists:
        raise ValueError(
            f"{config.pairs}: needs train and dev rows ({len(train)} train, {len(lists)} dev queries); "
            "mine more labelled queries or lower the dev fraction"
        )
    if config.eval_every < 1 or config.batch_size < 1:
        raise ValueError("--eval-every and --batch-size must be at least 1")
    pairs_hash = file_sha256(config.pairs)
    seed_all(config.seed)
    model, tokenizer, new_head = load_cross_encoder(config.base)
    model.to(device)
    wrapped = keep_head_fp32(model)
    steps = total_steps(len(train), config.batch_size, config.epochs, config.max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    scheduler = linear_schedule(optimizer, steps, config.warmup_ratio)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    dev_rows = [r for rows_ in lists for r in rows_]

    def train_step(indices: Sequence[int]) -> float:
        batch = [train[i] for i in indices]
        logits = _logits(model, _encode(tokenizer, batch, config.max_length, device), device)
        labels = torch.tensor([float(r.label) for r in batch], device=device)
        loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        return float(loss.detach())

    def evaluate() -> dict[str, float]:
        model.eval()
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(dev_rows), 64):
                chunk = dev_rows[start : start + 64]
                scores.extend(
                    _logits(model, _encode(tokenizer, chunk, config.max_length, device), device).tolist()
                )
        it = iter(scores)
        return order_metrics(lists, [[next(it) for _ in rows_] for rows_ in lists])

    def save_model(folder: Path) -> None:
        with plain_heads(wrapped):
            model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    before = order_metrics(lists, [[-float(i) for i in range(len(rows_))] for rows_ in lists])
    spec = fit_spec(
        config,
        kind="cross-encoder",
        pairs_hash=pairs_hash,
        n_rows=len(train),
        total_steps=steps,
        device=device,
    )
    outcome: FitOutcome = run_fit(
        spec,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_step=train_step,
        evaluate=evaluate,
        save_model=save_model,
        before=before,
        progress=progress,
    )
    return outcome.to_json() | {
        "kind": "reranker",
        "base_model": str(config.base),
        "new_head": new_head,
        "pairs_sha256": pairs_hash,
        "train_rows": len(train),
        "dev_queries": len(lists),
        "config": config_json(config),
    }


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(
        "python -m rag_app.optimize.training.cross_encoder_fit",
        __doc__ or "",
        CrossEncoderFitConfig,
        fit_cross_encoder,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
