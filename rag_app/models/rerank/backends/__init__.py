"""Inference backends for the cross-encoder reranker: one padded batch of token ids in, one raw
float32 logit per pair out. Tokenization, truncation, batching, caching and ranking live in
:mod:`rag_app.models.rerank`.

* ``torch-fp32``: the Hugging Face model that :class:`sentence_transformers.CrossEncoder` loaded, as is:
  the reference the others are tested against.
* ``torch-bf16``: the same model with its encoder layers swapped for fused ones
  (:mod:`rag_app.models.fused_encoder`, checked against the original in fp32), cast to bfloat16. Only
  offered where the CPU has bf16 dot-product units (x86 ``avx512_bf16``/``amx_bf16``, Arm ``bf16``):
  elsewhere bf16 matmuls are emulated and slower than fp32.
* ``onnx-fp32``: exported once with :func:`torch.onnx.export`, run by ONNX Runtime with all graph
  optimisations on. Exact scores.
* ``onnx-int8``: that export, dynamically quantised (int8 weights with per-channel scales; activations
  quantised at run time per batch, so an int8 score can move slightly with the other pairs of its
  batch). It ranks measurably less like fp32 than bf16 does: see ``tests/test_rerank_numerics.py``.
* ``cuda-fp16``: the fused model in float16 on the GPU, only when ``torch.cuda.is_available()``.

What ``auto`` picks, and why
    ``cuda-fp16`` on a GPU; else ``torch-bf16`` where the CPU has bf16 units: it is the fastest CPU
    backend there at typical passage lengths, ranks like fp32 and needs no export or quantisation at
    first start; else ``onnx-int8``, the only large speed-up on CPUs without bf16 units (it runs on
    VNNI/AVX2 integer kernels, while emulated bf16 is slower than fp32). If ``rag-app eval retrieval
    --rerank`` shows a quality drop with int8, set ``reranker_backend=onnx-fp32`` (exact scores).
    The measurements: README ("Reranker speed on CPU") and ``benchmarks/README.md``.

Modules: :mod:`.selection` (the backend protocol, which backends exist and which one runs here),
:mod:`.torch` (the torch backends), :mod:`.onnx` (the ONNX Runtime backends) and :mod:`.onnx_export`
(the on-disk export and int8 cache they load).
"""

from rag_app.models.rerank.backends.onnx import OnnxBackend
from rag_app.models.rerank.backends.selection import BACKENDS, Backend, available_backends, resolve_backend
from rag_app.models.rerank.backends.torch import TorchBackend

__all__ = ["BACKENDS", "Backend", "OnnxBackend", "TorchBackend", "available_backends", "resolve_backend"]
