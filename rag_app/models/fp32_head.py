"""Keep a cross-encoder's head in fp32 when its encoder runs in bf16/fp16, at inference and in training.

Why: the score is one logit. Computed in bf16 (8 significant bits) it takes only a few hundred
distinct values over a typical range, so candidates tie: in a bf16-autocast run of a fine-tuned MiniLM
cross-encoder, 4,709 of 6,000 SciFact test scores were exact ties, and a tie makes the top 5 depend on
sort stability instead of the model. The head (BERT's pooler + classifier, XLM-R's classification
head) is a few hundred thousand multiply-adds per pair against the encoder's hundreds of millions, so
running it in fp32 costs nothing measurable while the logit keeps fp32 resolution.

The head is wrapped by an explicit module (:class:`Fp32Head`) that upcasts its input, never patched.
One module serves the reranker's backends (after their cast) and the fine-tuning loop (under bf16
autocast); it imports only torch, so the trainers still run on a machine without the service stack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class Fp32Head(nn.Module):
    """Runs ``head`` in float32, autocast off, on the (upcast) hidden states it is given."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head.float()

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            return self.head(hidden_states.float(), *args, **kwargs)


def keep_head_fp32(model: Any) -> list[tuple[nn.Module, str]]:
    """Wrap ``model``'s pooler and classifier (where it has them) in :class:`Fp32Head`, after any cast.

    Returns the (parent, attribute) pairs wrapped; a model with neither is left as it is.
    """
    wrapped: list[tuple[nn.Module, str]] = []
    base = getattr(model, "base_model", None)
    for parent, name in ((base, "pooler"), (model, "classifier")):
        if parent is None or (name == "pooler" and parent is model):
            continue
        module = getattr(parent, name, None)
        if isinstance(module, nn.Module) and not isinstance(module, Fp32Head):
            setattr(parent, name, Fp32Head(module))
            wrapped.append((parent, name))
    return wrapped


@contextlib.contextmanager
def plain_heads(wrapped: list[tuple[nn.Module, str]]) -> Iterator[None]:
    """Temporarily put the original head modules back (to save weights under their usual names)."""
    for parent, name in wrapped:
        setattr(parent, name, getattr(parent, name).head)
    try:
        yield
    finally:
        for parent, name in wrapped:
            setattr(parent, name, Fp32Head(getattr(parent, name)))
