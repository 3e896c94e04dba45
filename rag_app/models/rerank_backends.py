"""Inference backends for the cross-encoder reranker: torch fp32/bf16, CUDA fp16, ONNX Runtime fp32/int8.

A backend turns one padded batch of token ids into one raw logit per pair (float32). Everything else
(tokenization, truncation, batching, caching, ranking) lives in :mod:`rag_app.models.rerank`.

* ``torch-fp32``: the Hugging Face model that :class:`sentence_transformers.CrossEncoder` loaded, as is.
* ``torch-bf16``: the same model with its encoder layers swapped for fused ones
  (:mod:`rag_app.models.fused_encoder`, checked against the original in fp32), cast to bfloat16. Only offered
  where the CPU has bf16 dot-product units (x86 ``avx512_bf16``/``amx_bf16``, Arm ``bf16``): elsewhere
  bf16 matmuls are emulated and slower than fp32.
* ``onnx-fp32``: exported once with :func:`torch.onnx.export` (dynamic batch and sequence axes), run by
  ONNX Runtime with all graph optimisations on.
* ``onnx-int8``: that export, quantised with :func:`onnxruntime.quantization.quantize_dynamic` (int8
  weights with per-channel scales; activations quantised at run time with one scale per tensor, i.e.
  per batch, so an int8 score can move slightly with the other pairs of its batch; VNNI/AVX-512 or
  AVX2 integer kernels). It ranks measurably less like fp32 than bf16 does: see the numerics test.
* ``cuda-fp16``: the fused model in float16 on the GPU (attention through SDPA there), only when
  ``torch.cuda.is_available()``.

ONNX files are cached on disk under ``<cache_dir>/onnx/<model-key>/`` and reused by later processes. The
model key names the hub id and revision, or, for a local directory, hashes the directory's path together
with the size and mtime of its config and weight files, so re-saved weights get a fresh export.
Files are written to a temporary folder and moved into place, so a crash or a concurrent process never
leaves a half-written model that a later load would pick up.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rag_app.core.errors import RagError
from rag_app.core.hardware import cpu_has_bf16, cuda_available, release_freed_memory

logger = logging.getLogger("rag_app.models.rerank")

#: Every concrete backend name, in the order ``doctor`` lists them.
BACKENDS: tuple[str, ...] = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8", "cuda-fp16")
ONNX_FP32_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
_META_FILE = "meta.json"
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.onnx")


class Backend(Protocol):
    """One way of running the model: padded int64 arrays in, one float32 logit per row out."""

    name: str
    input_names: tuple[str, ...]
    #: What was done to the model beyond the backend's precision (shown by ``describe``/``doctor``).
    optimizations: tuple[str, ...]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


# --- hardware ------------------------------------------------------------------------------


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
    ``onnx-int8``. The measurements behind this order are in the README and ``benchmarks/README.md``.
    """
    if requested == "auto":
        if cuda_available():
            return "cuda-fp16"
        if cpu_has_bf16():
            return "torch-bf16"
        return "onnx-int8"
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


# --- torch -------------------------------------------------------------------------------------


class TorchBackend:
    """Runs a Hugging Face ``*ForSequenceClassification`` model under :func:`torch.inference_mode`.

    Concurrent :meth:`run` calls are safe: inference does not mutate the module. torch's intra-op
    thread count is process-global and left as the process configured it.
    """

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
        import torch

        from rag_app.models.fused_encoder import fuse_and_cast

        done: tuple[str, ...] = ()
        if name == "torch-fp32":  # the model as loaded: the reference the others are tested on
            model = model.float()
        elif name == "torch-bf16":
            done = fuse_and_cast(model, lambda: model.to(torch.bfloat16))
            if not done:
                # HF's own layers: eager attention in bf16 measured ~13% faster than SDPA on this CPU
                # (20 pairs x 256 tokens, bge-reranker-base architecture): SDPA's CPU kernel upcasts.
                with contextlib.suppress(AttributeError, ValueError):
                    model.set_attn_implementation("eager")
        elif name == "cuda-fp16":
            done = fuse_and_cast(model, lambda: model.to(device="cuda", dtype=torch.float16), target="cuda")
        else:  # pragma: no cover - guarded by resolve_backend
            raise ValueError(f"not a torch backend: {name}")
        release_freed_memory()  # the fp32 weights that the cast replaced
        return cls(model, name, input_names, done)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        feed = {k: torch.from_numpy(v).to(self.device) for k, v in inputs.items() if k in self.input_names}
        with torch.inference_mode():
            logits = self.model(**feed).logits
        return logits[:, 0].float().cpu().numpy()


# --- ONNX --------------------------------------------------------------------------------------


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


def model_key(spec: str, revision: str | None, path: Path, origin: str) -> str:
    """Folder name for a model's ONNX exports: hub id + revision, or a fingerprint of a local dir."""
    if origin == "hub-cache":
        rev = revision or path.name  # an unpinned hub snapshot folder is named after its commit
        return _safe_name(f"{spec.replace('/', '--')}@{rev}")
    digest = hashlib.sha1(str(path.resolve()).encode())
    files = [path / "config.json"]
    for pattern in _WEIGHT_PATTERNS:
        files += sorted(path.rglob(pattern))
    for file in files:
        with contextlib.suppress(OSError):
            stat = file.stat()
            digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return _safe_name(f"{origin}-{path.name}-{digest.hexdigest()[:16]}")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", name)[:200]


class _LogitsOnly:
    """Factory for a wrapper module whose forward takes the tokenizer's inputs positionally."""

    @staticmethod
    def wrap(model: Any, input_names: Sequence[str]) -> Any:
        import torch

        names = tuple(input_names)

        class LogitsOnly(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *args: Any) -> Any:
                return self.model(**dict(zip(names, args, strict=True))).logits

        return LogitsOnly().eval()


def export_onnx(model: Any, input_names: Sequence[str], target_dir: Path) -> Path:
    """Export ``model`` (fp32, CPU) to ``target_dir/model.onnx`` unless a finished export is there."""
    target = target_dir / ONNX_FP32_FILE
    if target.is_file() and (target_dir / _META_FILE).is_file():
        return target
    import torch

    target_dir.mkdir(parents=True, exist_ok=True)
    names = tuple(input_names)
    wrapper = _LogitsOnly.wrap(model.float().cpu().eval(), names)
    example = torch.randint(1000, 2000, (2, 16), dtype=torch.long)
    args = tuple(
        torch.ones_like(example)
        if n == "attention_mask"
        else torch.zeros_like(example)
        if n != "input_ids"
        else example
        for n in names
    )
    dynamic_axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
    dynamic_axes["logits"] = {0: "batch"}
    with tempfile.TemporaryDirectory(dir=target_dir, prefix=".export-") as tmp:
        tmp_file = Path(tmp) / ONNX_FP32_FILE
        last_error: Exception | None = None
        # The dynamo exporter is torch's supported path; the TorchScript one is kept as a fallback for
        # architectures that torch.export cannot trace.
        for dynamo in (True, False):
            try:
                with _quiet():
                    torch.onnx.export(
                        wrapper,
                        args,
                        str(tmp_file),
                        input_names=list(names),
                        output_names=["logits"],
                        dynamic_axes=dynamic_axes,
                        dynamo=dynamo,
                        **({} if dynamo else {"opset_version": 17}),
                    )
                last_error = None
                break
            except Exception as exc:
                last_error = exc
                for leftover in Path(tmp).iterdir():
                    leftover.unlink()
        if last_error is not None:
            raise RagError(f"ONNX export of the reranker failed: {last_error}") from last_error
        _move_into(Path(tmp), target_dir, ONNX_FP32_FILE)
    _write_meta(target_dir, names)
    logger.info("exported reranker to ONNX: %s", target)
    return target


def quantize_int8(fp32_path: Path) -> Path:
    """Dynamic int8 quantisation of an fp32 export, next to it as ``model.int8.onnx`` (reused if there)."""
    target = fp32_path.parent / ONNX_INT8_FILE
    if target.is_file():
        return target
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_bytes = sum(f.stat().st_size for f in fp32_path.parent.glob(ONNX_FP32_FILE + "*"))
    with tempfile.TemporaryDirectory(dir=fp32_path.parent, prefix=".quant-") as tmp:
        tmp_file = Path(tmp) / ONNX_INT8_FILE
        with _quiet():
            quantize_dynamic(
                str(fp32_path),
                str(tmp_file),
                weight_type=QuantType.QInt8,
                # One weight scale per output channel: on real MiniLM activations this raised the
                # Spearman correlation with fp32 from 0.94 to 0.97 (mean of 10 queries) at the same speed.
                per_channel=True,
                # int8 weights are ~1/4 of fp32; past 2 GB protobuf needs external data.
                use_external_data_format=fp32_bytes > 7 * 2**30,
            )
        _move_into(Path(tmp), fp32_path.parent, ONNX_INT8_FILE)
    logger.info("quantised reranker to int8: %s", target)
    return target


def onnx_files_ready(target_dir: Path, name: str) -> bool:
    """True when the export (and, for ``onnx-int8``, the quantised model) is already on disk."""
    wanted = ONNX_INT8_FILE if name == "onnx-int8" else ONNX_FP32_FILE
    return (target_dir / wanted).is_file() and (target_dir / _META_FILE).is_file()


def onnx_input_names(target_dir: Path) -> tuple[str, ...] | None:
    try:
        return tuple(json.loads((target_dir / _META_FILE).read_text())["input_names"])
    except (OSError, ValueError, KeyError):
        return None


def _write_meta(target_dir: Path, input_names: Sequence[str]) -> None:
    import onnxruntime
    import torch

    meta = {
        "input_names": list(input_names),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    tmp = target_dir / f".{_META_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, target_dir / _META_FILE)


def _move_into(src_dir: Path, target_dir: Path, main_file: str) -> None:
    """Move the export's side files (external weights) first and the main file last, atomically each."""
    files = sorted(src_dir.iterdir(), key=lambda f: f.name == main_file)
    for file in files:
        os.replace(file, target_dir / file.name)


class _DropQuantizerChatter(logging.Filter):
    """Drops the records onnxruntime's quantiser sends straight to the root logger (one per node)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "/onnxruntime/quantization/" not in record.pathname.replace("\\", "/")


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence the exporters' progress prints and deprecation chatter (errors still raise).

    ``quantize_dynamic`` logs through the root logger (``logging.info``/``logging.warning``, one line
    per node), which would also call ``logging.basicConfig()`` when the root logger has no handler; a
    temporary NullHandler and a filter keep the process's logging configuration untouched.
    """
    sink = io.StringIO()
    root = logging.getLogger()
    null, advice = logging.NullHandler(), _DropQuantizerChatter()
    noisy = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in noisy]
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        root.addHandler(null)
        root.addFilter(advice)
        for lg in noisy:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(noisy, levels, strict=True):
                lg.setLevel(level)
            root.removeFilter(advice)
            root.removeHandler(null)


def remove_onnx_cache(target_dir: Path) -> None:
    """Delete one model's cached exports (used by tests and by `doctor --fix`)."""
    shutil.rmtree(target_dir, ignore_errors=True)
