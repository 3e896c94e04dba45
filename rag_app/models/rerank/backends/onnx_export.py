"""The reranker's on-disk ONNX cache: export once, quantise to int8 once, reuse in later processes.

Files live under ``<cache_dir>/onnx/<model-key>/``. The model key names the hub id and revision, or,
for a local directory, hashes the directory's path together with the size and mtime of its config and
weight files, so re-saved weights get a fresh export. Files are written to a temporary folder and
moved into place (side files first, the main file last), so a crash or a concurrent process never
leaves a half-written model that a later load would pick up. ``meta.json`` records the input names the
export takes, so an export made for another tokenizer is detected and redone.
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
from typing import Any

from rag_app.core.errors import RagError
from rag_app.models.rerank.base import LOGGER_NAME

logger = logging.getLogger(LOGGER_NAME)

ONNX_FP32_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
_META_FILE = "meta.json"
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.onnx")


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


def onnx_files_ready(target_dir: Path, name: str) -> bool:
    """True when the export (and, for ``onnx-int8``, the quantised model) is already on disk."""
    wanted = ONNX_INT8_FILE if name == "onnx-int8" else ONNX_FP32_FILE
    return (target_dir / wanted).is_file() and (target_dir / _META_FILE).is_file()


def onnx_input_names(target_dir: Path) -> tuple[str, ...] | None:
    """The input names the cached export takes (from ``meta.json``), or None without a readable one."""
    try:
        return tuple(json.loads((target_dir / _META_FILE).read_text())["input_names"])
    except (OSError, ValueError, KeyError):
        return None


def remove_onnx_cache(target_dir: Path) -> None:
    """Delete one model's cached exports."""
    shutil.rmtree(target_dir, ignore_errors=True)


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
    """Export ``model`` (fp32, CPU) to ``target_dir/model.onnx`` unless a finished export is there.

    Dynamic batch and sequence axes, so one export serves every batch the reranker builds.
    """
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
                # One weight scale per output channel: on real MiniLM activations this ranks clearly
                # closer to fp32 than one scale per tensor, at the same speed (tests/test_rerank_numerics.py).
                per_channel=True,
                # int8 weights are ~1/4 of fp32; past 2 GB protobuf needs external data.
                use_external_data_format=fp32_bytes > 7 * 2**30,
            )
        _move_into(Path(tmp), fp32_path.parent, ONNX_INT8_FILE)
    logger.info("quantised reranker to int8: %s", target)
    return target


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
