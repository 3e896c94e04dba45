"""The torch backends: ``torch-fp32`` (the model as loaded), ``torch-bf16`` and ``cuda-fp16`` (fused
encoder layers from :mod:`rag_app.models.fused_encoder`, then cast; the head stays fp32:
:mod:`rag_app.models.fp32_head`).

Concurrent :meth:`TorchBackend.run` calls are safe: inference under :func:`torch.inference_mode` does
not mutate the module. torch's intra-op thread count is process-global and left as the process
configured it (this package never calls ``torch.set_num_threads``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from rag_app.core.hardware import release_freed_memory


class TorchBackend:
    """Runs a Hugging Face ``*ForSequenceClassification`` model under :func:`torch.inference_mode`."""

    def __init__(
        self, model: Any, name: str, input_names: Sequence[str], optimizations: Sequence[str] = ()
    ) -> None:
        import torch

        self.name = name
        self.input_names = tuple(input_names)
        self.optimizations = tuple(optimizations)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self._torch = torch

    @classmethod
    def create(cls, model: Any, name: str, input_names: Sequence[str]) -> TorchBackend:
        """Prepare ``model`` for backend ``name`` (fuse and cast where it applies) and wrap it."""
        import torch

        from rag_app.models.fp32_head import keep_head_fp32
        from rag_app.models.fused_encoder import fuse_and_cast

        done: tuple[str, ...] = ()
        if name == "torch-fp32":  # the model as loaded: the reference the others are tested on
            model = model.float()
        elif name == "torch-bf16":
            done = fuse_and_cast(model, lambda: model.to(torch.bfloat16))
            if not done:
                # HF's own layers: eager attention in bf16 measured faster than SDPA on a bf16 CPU
                # (SDPA's CPU kernel upcasts; benchmarks/README.md).
                with contextlib.suppress(AttributeError, ValueError):
                    model.set_attn_implementation("eager")
        elif name == "cuda-fp16":
            done = fuse_and_cast(model, lambda: model.to(device="cuda", dtype=torch.float16), target="cuda")
        else:  # pragma: no cover - guarded by resolve_backend
            raise ValueError(f"not a torch backend: {name}")
        if name != "torch-fp32" and keep_head_fp32(model):
            done = (*done, "fp32-head")
        release_freed_memory()  # the fp32 weights that the cast replaced
        return cls(model, name, input_names, done)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        feed = {k: torch.from_numpy(v).to(self.device) for k, v in inputs.items() if k in self.input_names}
        with torch.inference_mode():
            logits = self.model(**feed).logits
        return logits[:, 0].float().cpu().numpy()
