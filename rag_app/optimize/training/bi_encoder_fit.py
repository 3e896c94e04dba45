"""Fine-tune a bi-encoder embedder on a pairs file: ``python -m rag_app.optimize.training.bi_encoder_fit``.

Starts from a sentence-transformers folder with mean pooling and normalisation (the bundled MiniLM).
The loss is sentence-transformers' ``MultipleNegativesRankingLoss`` (in-batch negatives, scale 20,
cosine), computed in a plain loop over the Hugging Face encoder so the same code runs under any
sentence-transformers 6.x: each training example is (query, a positive chunk, a hard negative mined
from the site's own top 20), and every other example's passages in the batch are negatives too,
except the chunks of the query's own positive documents (masked: they are not negatives).

The saved ``<out>/best`` is the base folder's sentence-transformers files with the new encoder
weights, so the service's sentence-transformers embedder loads it by path (its model id is the path).

Dev metric: each dev query ranks every distinct passage of the dev split (its own candidates, every
other dev query's candidates and positives) by cosine; documents counted once, nDCG@10 picks the
checkpoint. Only dev passages, not the whole pairs file: on 2 CPU cores embedding SciFact's 6,393
distinct passages took longer than the training between two evaluations, and the dev split's own
~2,000 already hold every dev query's hard negatives. ``before`` is the base model on the same task.
Imports only stdlib, numpy, torch and transformers.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rag_app.optimize.training.dev_metrics import doc_order, mean_metrics, query_metrics
from rag_app.optimize.training.fit_common import (
    FitConfig,
    autocast,
    linear_schedule,
    resolve_device,
    run_main,
    seed_all,
    total_steps,
)
from rag_app.optimize.training.fit_loop import Progress, config_json, fit_spec, run_fit
from rag_app.optimize.training.pairs import PairRow, by_query, file_sha256, read_pairs

__all__ = ["BiEncoderFitConfig", "fit_bi_encoder", "main", "triplets"]

#: MultipleNegativesRankingLoss's default scale (cosine similarities times 20 as logits).
SCALE = 20.0
#: Files of the base folder that describe the sentence-transformers pipeline (copied to the output).
PIPELINE_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


@dataclass(frozen=True)
class BiEncoderFitConfig(FitConfig):
    """Every knob of a bi-encoder fit: :class:`FitConfig` with in-batch negatives' larger batch."""

    batch_size: int = 32


@dataclass(frozen=True)
class Triplet:
    qid: str
    query: str
    positive: str
    negative: str | None


def check_base(base: Path) -> None:
    """``base`` must be a sentence-transformers folder with mean pooling (what the loop reproduces)."""
    pooling = base / "1_Pooling" / "config.json"
    if not (base / "modules.json").is_file() or not pooling.is_file():
        raise FileNotFoundError(
            f"base embedder {base} is not a sentence-transformers folder (modules.json, 1_Pooling/): pass "
            "--base the bundled MiniLM folder or another mean-pooling sentence-transformers model"
        )
    config = json.loads(pooling.read_text(encoding="utf-8"))
    if not config.get("pooling_mode_mean_tokens"):
        raise ValueError(f"{pooling}: only mean-pooling embedders are supported, got {config}")


def triplets(rows: Sequence[PairRow]) -> list[Triplet]:
    """One example per (train query, positive chunk), each with the query's hardest negatives in turn."""
    out = []
    for qid, group in by_query(rows, "train").items():
        positives = [r for r in group if r.label == 1]
        negatives = [r for r in group if r.label == 0]
        for i, pos in enumerate(positives):
            neg = negatives[i % len(negatives)].passage if negatives else None
            out.append(Triplet(qid, pos.query, pos.passage, neg))
    return out


def _positive_texts(rows: Sequence[PairRow]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for r in rows:
        if r.label == 1:
            found.setdefault(r.qid, set()).add(r.passage)
    return found


def fit_bi_encoder(config: BiEncoderFitConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Train per ``config``; the outcome (also ``<out>/fit.json``) plus the run's facts."""
    from transformers import AutoModel, AutoTokenizer

    device = resolve_device(config.device)
    base = Path(config.base)
    check_base(base)
    rows = read_pairs(config.pairs)
    examples = triplets(rows)
    dev = by_query(rows, "dev")
    if not examples or not dev:
        raise ValueError(
            f"{config.pairs}: needs train positives and dev rows ({len(examples)} train examples, "
            f"{len(dev)} dev queries)"
        )
    if config.batch_size < 2:
        raise ValueError("--batch-size must be at least 2: the other examples of a batch are the negatives")
    pairs_hash = file_sha256(config.pairs)
    seed_all(config.seed)
    model = AutoModel.from_pretrained(base).to(device)
    tokenizer = AutoTokenizer.from_pretrained(base)
    positives_of = _positive_texts(rows)
    corpus: dict[str, str] = {}  # passage text -> doc id (a text is one passage however often it occurs)
    for group in dev.values():
        for r in group:
            corpus.setdefault(r.passage, r.doc_id)
    corpus_texts = list(corpus)

    def embed(texts: Sequence[str]) -> torch.Tensor:
        batch = tokenizer(
            list(texts), padding=True, truncation=True, max_length=config.max_length, return_tensors="pt"
        ).to(device)
        with autocast(device):
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    def train_step(indices: Sequence[int]) -> float:
        batch = [examples[i] for i in indices]
        anchors = embed([t.query for t in batch])
        passages = [t.positive for t in batch] + [t.negative for t in batch if t.negative is not None]
        scores = SCALE * anchors @ embed(passages).T
        mask = torch.zeros_like(scores, dtype=torch.bool)
        for i, t in enumerate(batch):
            for j, text in enumerate(passages):
                mask[i, j] = j != i and text in positives_of.get(t.qid, ())
        scores = scores.masked_fill(mask, float("-inf"))
        loss = F.cross_entropy(scores, torch.arange(len(batch), device=device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        return float(loss.detach())

    def evaluate() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            docs = torch.cat([embed(corpus_texts[i : i + 64]) for i in range(0, len(corpus_texts), 64)])
            queries = [group[0].query for group in dev.values()]
            sims = (embed(queries) @ docs.T).cpu().numpy()
        doc_ids = [corpus[t] for t in corpus_texts]
        return mean_metrics(
            [
                query_metrics(doc_order(doc_ids, sims[i].tolist()), {r.doc_id for r in group if r.label == 1})
                for i, group in enumerate(dev.values())
            ]
        )

    def save_model(folder: Path) -> None:
        for name in PIPELINE_FILES:
            if (base / name).is_file():
                shutil.copy2(base / name, folder / name)
        shutil.copytree(base / "1_Pooling", folder / "1_Pooling")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    steps = total_steps(len(examples), config.batch_size, config.epochs, config.max_steps)
    scheduler = linear_schedule(optimizer, steps, config.warmup_ratio)
    spec = fit_spec(
        config,
        kind="bi-encoder",
        pairs_hash=pairs_hash,
        n_rows=len(examples),
        total_steps=steps,
        device=device,
    )
    outcome = run_fit(
        spec,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_step=train_step,
        evaluate=evaluate,
        save_model=save_model,
        before=None,
        progress=progress,
    )
    return outcome.to_json() | {
        "kind": "embedder",
        "base_model": str(base),
        "pairs_sha256": pairs_hash,
        "train_examples": len(examples),
        "dev_queries": len(dev),
        "dev_corpus": len(corpus_texts),
        "config": config_json(config),
    }


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(
        "python -m rag_app.optimize.training.bi_encoder_fit",
        __doc__ or "",
        BiEncoderFitConfig,
        fit_bi_encoder,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
