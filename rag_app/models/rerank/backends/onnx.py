"""The ONNX Runtime backends, ``onnx-fp32`` and ``onnx-int8``: a CPU session over the cached export.

:func:`load_onnx_backend` makes sure the files exist first (export from the torch model, then int8
quantisation from that export; see :mod:`.onnx_export`), so only the first start pays for them.
``InferenceSession.run`` is safe to call from several threads. Sessions get the same number of
intra-op threads as torch, so switching backend does not change the process's CPU budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag_app.core.errors import RagError
from rag_app.models.rerank.backends.onnx_export import (
    ONNX_FP32_FILE,
    export_onnx,
    onnx_files_ready,
    onnx_input_names,
    quantize_int8,
    remove_onnx_cache,
)


class OnnxBackend:
    """An ONNX Runtime CPU session; ``InferenceSession.run`` is safe to call from several threads."""

    def __init__(self, path: Path, name: str, input_names: Sequence[str]) -> None:
        import onnxruntime as ort
        import torch

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Same thread budget as torch (which respects the CPU count / affinity / OMP_NUM_THREADS).
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.name = name
        self.optimizations: tuple[str, ...] = ()
        self.path = path
        session_inputs = [i.name for i in self.session.get_inputs()]
        missing = [n for n in session_inputs if n not in input_names]
        if missing:
            raise RagError(f"ONNX model {path} wants inputs {missing} that the tokenizer does not produce")
        self.input_names = tuple(session_inputs)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: inputs[k] for k in self.input_names}
        (logits,) = self.session.run(["logits"], feed)
        return np.asarray(logits, dtype=np.float32)[:, 0]


def load_onnx_backend(
    name: str,
    onnx_dir: Path,
    input_names: tuple[str, ...],
    hf_model: Any | None,
    load_hf_model: Callable[[], Any],
) -> OnnxBackend:
    """The ``onnx-fp32``/``onnx-int8`` backend over ``onnx_dir``, exporting/quantising what is missing.

    ``hf_model`` may be None when the caller skipped loading torch weights because an export was
    cached; ``load_hf_model`` loads them if the export turns out to be unusable after all.
    """
    if onnx_files_ready(onnx_dir, "onnx-fp32") and onnx_input_names(onnx_dir) != input_names:
        remove_onnx_cache(onnx_dir)  # exported for other inputs (e.g. a changed tokenizer)
    if not onnx_files_ready(onnx_dir, "onnx-fp32"):
        if hf_model is None:
            hf_model = load_hf_model()
        export_onnx(hf_model, input_names, onnx_dir)
    path = onnx_dir / ONNX_FP32_FILE
    if name == "onnx-int8":
        path = quantize_int8(path)
    return OnnxBackend(path, name, input_names)
