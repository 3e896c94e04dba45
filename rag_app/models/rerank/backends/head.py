"""Keep a cross-encoder's head in fp32 when its encoder runs in bf16/fp16.

Why: the score is one logit. Computed in bf16 (8 significant bits) it takes only a few hundred
distinct values over a typical range, so candidates tie: in a bf16-autocast run of a fine-tuned MiniLM
cross-encoder, 4,709 of 6,000 SciFact test scores were exact ties, and a tie makes the top 5 depend on
sort stability instead of the model. The head (BERT's pooler + classifier, XLM-R's classification
head) is a few hundred thousand multiply-adds per pair against the encoder's hundreds of millions, so
running it in fp32 costs nothing measurable while the logit keeps fp32 resolution.

The head is wrapped by an explicit module (:class:`Fp32Head`) that upcasts its input, never patched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Fp32Head(nn.Module):
    """Runs ``head`` in float32 on the (upcast) hidden states it is given; returns float32."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head.float()

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.head(hidden_states.float(), *args, **kwargs)


def keep_head_fp32(model: Any) -> tuple[str, ...]:
    """Wrap ``model``'s pooler and classifier (where it has them) in :class:`Fp32Head`, after its cast.

    Returns the names wrapped (for the backend's description); a model with neither is left as is.
    """
    wrapped: list[str] = []
    base = getattr(model, "base_model", None)
    pooler = getattr(base, "pooler", None) if base is not model else None
    if isinstance(pooler, nn.Module) and not isinstance(pooler, Fp32Head):
        base.pooler = Fp32Head(pooler)
        wrapped.append("pooler")
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Module) and not isinstance(classifier, Fp32Head):
        model.classifier = Fp32Head(classifier)
        wrapped.append("classifier")
    return tuple(wrapped)
