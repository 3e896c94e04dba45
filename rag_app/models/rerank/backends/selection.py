"""What a reranker backend is, which ones exist, and which one runs on this machine (``auto``)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from rag_app.core.errors import RagError
from rag_app.core.hardware import cpu_has_bf16, cuda_available

#: Every concrete backend name, in the order ``doctor`` lists them.
BACKENDS: tuple[str, ...] = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8", "cuda-fp16")


class Backend(Protocol):
    """One way of running the model: padded int64 arrays in, one float32 logit per row out."""

    name: str
    input_names: tuple[str, ...]
    #: What was done to the model beyond the backend's precision (shown by ``describe``/``doctor``).
    optimizations: tuple[str, ...]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


def available_backends() -> list[str]:
    """The backends this machine can run, in :data:`BACKENDS` order."""
    names = ["torch-fp32"]
    if cpu_has_bf16():
        names.append("torch-bf16")
    names += ["onnx-fp32", "onnx-int8"]
    if cuda_available():
        names.append("cuda-fp16")
    return names


def resolve_backend(requested: str) -> str:
    """Turn ``auto`` into a concrete backend and check that an explicit one can run here.

    ``auto``: ``cuda-fp16`` on a GPU; otherwise ``torch-bf16`` where the CPU has bf16 units; otherwise
    ``onnx-int8`` (why: :mod:`rag_app.models.rerank.backends`).
    """
    if requested == "auto":
        if cuda_available():
            return "cuda-fp16"
        if cpu_has_bf16():
            return "torch-bf16"
        return "onnx-int8"
    if requested == "remote":  # a server runs the model: nothing local to pick
        raise RagError(
            "reranker_backend=remote runs no local model: build the reranker with "
            "rag_app.models.rerank.load_reranker(settings) (a RemoteReranker), not CrossEncoderReranker"
        )
    if requested not in BACKENDS:
        raise RagError(f"unknown reranker_backend {requested!r}; choose one of auto, {', '.join(BACKENDS)}")
    if requested == "cuda-fp16" and not cuda_available():
        raise RagError(
            "reranker_backend=cuda-fp16 but torch sees no CUDA device on this machine; "
            "set RAG_RERANKER_BACKEND=auto (or onnx-int8 / torch-fp32)"
        )
    if requested == "torch-bf16" and not cpu_has_bf16():
        raise RagError(
            "reranker_backend=torch-bf16 but this CPU has no bf16 units (avx512_bf16/amx_bf16), so bf16 "
            "would be emulated and slower than fp32; set RAG_RERANKER_BACKEND=auto (or onnx-int8, torch-fp32)"
        )
    return requested
