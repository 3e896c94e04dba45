"""A faster, inference-only layer for BERT-family cross-encoders (bge-reranker, MiniLM): same function.

Why it exists: reranking cost is the encoder forward over 20 (query, passage) pairs. In bf16 on a
2-core Zen 5 CPU the GEMMs of Hugging Face's eager layer already ran near the bf16 peak; a
``torch.profiler`` run over one 8 x 256-token batch put most of the remaining time in softmax, GELU,
the score scaling and copies. Those are passes over memory: a batch's heads x L x L attention scores
are ~13 MB per layer and the GELU input is 2048 x 3072. The
:class:`FusedEncoderLayer` computes the same layer with fewer passes:

* Q, K and V are one GEMM (hidden -> 3 x hidden) instead of three.
* The intermediate GEMM applies bias and GELU, and both output GEMMs add bias and the residual, as
  oneDNN post-ops (``torch.ops.mkldnn._linear_pointwise``: the fused kernels that torch.compile's CPU
  backend emits, called directly so there is no compile step). GELU then runs on the fp32 accumulator
  before the result is rounded to bf16, which is slightly more accurate than HF's bf16 GELU.
* On CPU, attention runs one sequence at a time, so a sequence's scores (1.5 MB at 256 tokens) stay in
  cache through scale, mask, softmax and the value product. For CUDA it is one batched SDPA call.
* The last layer computes position 0 only, which is all the classification head reads. Keys and values
  still see every token. This saves about 7% of a 12-layer encoder's matmul work.

Each step (fusing, then prepacking the weights once for oneDNN with :func:`prepack_encoder_layers`)
was kept because it measured faster back to back with ``python benchmarks/rerank.py --tokens 256
--repeats 5 --backends torch-bf16``; the numbers are in the README ("Reranker speed on CPU").

:func:`fuse_encoder_layers` applies it only to encoders whose layer layout it knows (BERT, RoBERTa,
XLM-R; absolute positions; erf or tanh GELU). It applies it only if the fused model gives the same
logits as the original, in fp32 on CPU, on a padded dummy batch. For a CUDA target the layers are built
with the ops they will run there (plain ``F.linear`` + GELU, batched SDPA), so that check covers the
GPU code path too, in fp32; fp16 rounding on the GPU itself is not checked here. Otherwise the model is
left as loaded.
Inference only: no dropout, no gradients, no attention weights returned.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("rag_app.models.rerank")

#: Encoders with BERT's layer layout (their sequence-classification heads read position 0 only).
FUSABLE_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta"})
#: ``config.hidden_act`` -> ``approximate`` argument of GELU (erf, or the tanh approximation).
_GELU_APPROXIMATE = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


def onednn_available() -> bool:
    """True when torch has the oneDNN fused-linear op (every x86/Arm CPU build of torch 2.x ships it)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class FusedEncoderLayer(nn.Module):
    """One BERT-style encoder layer (self-attention, add & norm, GELU MLP, add & norm) with fused ops.

    Takes over the original layer's LayerNorms and output projections as they are, and one new Linear
    that stacks the query, key and value weights. ``first_token_only`` makes the layer return position 0
    only. ``onednn`` switches the CPU post-op kernels on; without it (and on CUDA), the same math runs as
    plain ``F.linear`` + GELU + add. ``batched_attention`` attends with one SDPA call over the batch (the
    GPU choice) instead of one sequence at a time (the CPU choice).
    """

    #: The four weight matrices, as submodule names (what :func:`prepack_encoder_layers` replaces).
    LINEARS = ("qkv", "attention_out", "intermediate", "output")

    def __init__(
        self,
        layer: Any,
        *,
        gelu_approximate: str,
        first_token_only: bool,
        onednn: bool,
        batched_attention: bool = False,
    ) -> None:
        super().__init__()
        att = layer.attention.self
        self.heads = int(att.num_attention_heads)
        self.head_size = int(att.attention_head_size)
        self.scaling = float(getattr(att, "scaling", self.head_size**-0.5))
        self.gelu_approximate = gelu_approximate
        self.first_token_only = first_token_only
        self.onednn = onednn
        self.batched_attention = batched_attention
        weight = torch.cat([att.query.weight, att.key.weight, att.value.weight])
        bias = torch.cat([att.query.bias, att.key.bias, att.value.bias])
        # skip_init: no random initialisation of weights that are overwritten on the next line.
        self.qkv = nn.utils.skip_init(
            nn.Linear, weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            self.qkv.weight.copy_(weight)
            self.qkv.bias.copy_(bias)
        self.attention_out = layer.attention.output.dense
        self.attention_norm = layer.attention.output.LayerNorm
        self.intermediate = layer.intermediate.dense
        self.output = layer.output.dense
        self.output_norm = layer.output.LayerNorm

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        rows = 1 if self.first_token_only else length
        qkv = self._linear(hidden_states, self.qkv).view(batch, length, 3, self.heads, self.head_size)
        query, key, value = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (batch, heads, L, size)
        mask = None if attention_mask is None else _additive(attention_mask[:, :, :rows], qkv.dtype)
        context = self._attend(query[:, :, :rows], key, value, mask)
        residual = hidden_states[:, :rows].contiguous()
        attended = self.attention_norm(self._linear_add(context, residual, self.attention_out))
        inner = self._linear(attended, self.intermediate, gelu=True)
        return self.output_norm(self._linear_add(inner, attended, self.output))

    def packed(self) -> FusedEncoderLayer:
        """A copy of this layer whose four weight matrices are prepacked for oneDNN (see PackedLinear)."""
        clone = copy.copy(self)
        clone._modules = dict(self._modules)  # its own submodule table; the LayerNorms stay shared
        for name in self.LINEARS:
            clone._modules[name] = PackedLinear(self._modules[name])
        return clone

    def _attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        attend = attention_batched if self.batched_attention else attention_per_sequence
        return attend(query, key, value, mask, self.scaling)

    def _linear(self, x: torch.Tensor, layer: nn.Module, gelu: bool = False) -> torch.Tensor:
        if self.onednn and x.device.type == "cpu":
            post, algorithm = ("gelu", self.gelu_approximate) if gelu else ("none", "")
            return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, post, [], algorithm)
        y = F.linear(x, layer.weight, layer.bias)
        return F.gelu(y, approximate=self.gelu_approximate) if gelu else y

    def _linear_add(self, x: torch.Tensor, residual: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        if self.onednn and x.device.type == "cpu":
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, layer.weight, layer.bias, "add")
        return F.linear(x, layer.weight, layer.bias) + residual


def attention_per_sequence(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """Attention for (batch, heads, rows, size) inputs, one sequence at a time (the CPU path).

    ``mask`` is Hugging Face's additive (batch, 1, rows, L) mask or None. A sequence's heads x rows x L
    scores stay in cache from the scaling to the value product. Returns (batch, rows, heads * size).
    """
    batch, heads, rows, size = query.shape
    context = query.new_empty(batch, rows, heads, size)
    for i in range(batch):
        scores = torch.matmul(query[i] * scaling, key[i].transpose(-1, -2))
        if mask is not None:
            scores += mask[i]
        context[i] = torch.matmul(torch.softmax(scores, dim=-1), value[i]).transpose(0, 1)
    return context.view(batch, rows, heads * size)


def attention_batched(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """The same attention as one SDPA call over the batch (the GPU path: fused attention kernels there;
    with a padding mask PyTorch picks the memory-efficient or cuDNN kernel, without one flash)."""
    batch, heads, rows, size = query.shape
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    return context.transpose(1, 2).reshape(batch, rows, heads * size)


def fuse_encoder_layers(model: Any, *, target: str = "cpu", onednn: bool | None = None) -> bool:
    """Swap a loaded encoder's layers for :class:`FusedEncoderLayer`.

    ``model`` is a ``*ForSequenceClassification`` model (a reranker: its last layer then computes
    position 0 only) or a bare encoder such as a sentence-transformers ``BertModel`` (an embedder: every
    position, for pooling). Call it on the fp32 model before casting it to bf16/fp16 or moving it to a
    GPU (the new QKV Linear follows ``model.to`` like any parameter). Returns True if the layers were
    swapped. Returns False, with the model unchanged, if the architecture is not one it knows or if the
    fused model's output (logits, or last hidden states) differs from the original's on a padded dummy
    batch. ``target`` is the device type the model will run on:
    ``"cpu"`` (oneDNN kernels where torch has them, unless ``onednn`` says otherwise; per-sequence
    attention) or ``"cuda"`` (plain ops, batched SDPA).
    """
    config = getattr(model, "config", None)
    layers = _encoder_layers(model)
    approximate = _GELU_APPROXIMATE.get(str(getattr(config, "hidden_act", "")))
    if (
        config is None
        or not layers
        or approximate is None
        or getattr(config, "model_type", None) not in FUSABLE_MODEL_TYPES
        or getattr(config, "position_embedding_type", "absolute") != "absolute"
        or getattr(config, "is_decoder", False)
    ):
        return False
    if target not in ("cpu", "cuda"):
        raise ValueError(f"target must be 'cpu' or 'cuda', not {target!r}")
    on_cpu = target == "cpu"
    use_onednn = on_cpu and (onednn_available() if onednn is None else onednn)
    head_reads_first_token = type(model).__name__.endswith("ForSequenceClassification")
    original = list(layers)
    previous_attention = getattr(config, "_attn_implementation", None)
    with contextlib.suppress(AttributeError, ValueError):
        model.set_attn_implementation("eager")  # the fused layer expects HF's additive float mask
    try:
        with torch.no_grad():
            fused = [
                FusedEncoderLayer(
                    layer,
                    gelu_approximate=approximate,
                    first_token_only=head_reads_first_token and i == len(original) - 1,
                    onednn=use_onednn,
                    batched_attention=not on_cpu,
                )
                for i, layer in enumerate(original)
            ]
    except (AttributeError, RuntimeError, TypeError, ValueError) as exc:  # a layer layout it does not know
        fused, reason = [], str(exc)
    if fused:
        same, reason = _swap_if_same(model, layers, fused, rtol=1e-3, atol=1e-4)  # fp32: reassociation only
        if same:
            return True
    if previous_attention is not None:
        with contextlib.suppress(AttributeError, ValueError):
            model.set_attn_implementation(previous_attention)
    logger.info("fused encoder layers not used for %s (%s); running it as loaded", config.model_type, reason)
    return False


def fuse_and_cast(model: Any, cast: Callable[[], Any], *, target: str = "cpu") -> tuple[str, ...]:
    """Fuse ``model``'s encoder layers (checked in fp32), run ``cast`` (the caller's ``.to(...)``, which may
    cover a larger module holding ``model``), then prepack the weights if the model stayed on CPU.

    The one order that works: the check needs fp32, and packed weights cannot be cast. Returns what was
    applied beyond the cast, as ``describe()`` names it: ``("fused-layers", "prepacked-weights")``, a
    prefix of it, or ``()`` when the model runs as loaded.
    """
    fused = fuse_encoder_layers(model.float(), target=target)
    cast()
    packed = fused and prepack_encoder_layers(model)
    return tuple(label for label, on in (("fused-layers", fused), ("prepacked-weights", packed)) if on)


#: Rows (pairs x tokens) oneDNN picks its weight blocking for: 8 pairs of 256 tokens, the default batch
#: at a typical passage length. Any other row count runs on the same packed weights.
PREPACK_ROWS_HINT = 2048


class PackedLinear(nn.Module):
    """A Linear's weight reordered once into oneDNN's blocked layout, plus its bias (inference only).

    ``_linear_pointwise`` reorders a plain weight on every call. Doing it once is measurably faster
    (README, "Reranker speed on CPU"), with the same logits bit for bit. The packed weight is an opaque
    tensor that only the oneDNN ops read, so a layer holding it can no longer be cast or moved: pack
    after the last ``model.to``.
    """

    def __init__(self, linear: nn.Linear, rows_hint: int = PREPACK_ROWS_HINT) -> None:
        super().__init__()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows_hint)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def _apply(self, fn: Any, recurse: bool = True) -> PackedLinear:
        raise RuntimeError(
            "this reranker model has oneDNN-prepacked weights, which cannot be cast or moved; "
            "load the model again and call prepack_encoder_layers after the last .to()"
        )


def prepack_encoder_layers(model: Any) -> bool:
    """Give every oneDNN :class:`FusedEncoderLayer` of a CPU model prepacked weights (see PackedLinear).

    Returns True if it did. Returns False, with the model unchanged, if there is nothing to pack or if the
    logits on a dummy batch change.
    """
    layers = _encoder_layers(model)
    fused = [layer for layer in layers or () if isinstance(layer, FusedEncoderLayer) and layer.onednn]
    if not fused or len(fused) != len(layers) or next(model.parameters()).device.type != "cpu":
        return False
    try:
        with torch.no_grad():
            packed = [layer.packed() for layer in fused]
    except (AttributeError, RuntimeError, TypeError, ValueError) as exc:  # a torch without the reorder op
        logger.info("prepacked weights not used (%s)", exc)
        return False
    same, reason = _swap_if_same(model, layers, packed, rtol=1e-3, atol=1e-5)  # measured: bit for bit
    if not same:
        logger.info("prepacked weights not used (%s)", reason)
    return same


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """HF's eager layers get an additive float mask; a caller-made 4D bool mask (True = attend) is turned
    into one rather than added as 0/1."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~mask, torch.finfo(dtype).min
    )


def _output(out: Any) -> torch.Tensor:
    """What the caller uses: a classifier's logits, or a bare encoder's last hidden states (all positions;
    the fused layers compute padded ones the same way too)."""
    logits = getattr(out, "logits", None)
    return (logits if logits is not None else out.last_hidden_state).float()


def _encoder_layers(model: Any) -> Any:
    return getattr(getattr(getattr(model, "base_model", None), "encoder", None), "layer", None)


def _swap_if_same(
    model: Any, layers: Any, new_layers: list[nn.Module], *, rtol: float, atol: float
) -> tuple[bool, str]:
    """Put ``new_layers`` in place of ``layers``; keep them only if the dummy-batch output stays the same."""
    original = list(layers)
    ids, mask = _dummy_batch(model)
    try:
        with torch.inference_mode():
            want = _output(model(input_ids=ids, attention_mask=mask))
            for i, layer in enumerate(new_layers):
                layers[i] = layer
            got = _output(model(input_ids=ids, attention_mask=mask))
        same = bool(torch.allclose(want, got, rtol=rtol, atol=atol))
        reason = f"max output difference {(want - got).abs().max().item():.3g}"
    except (AttributeError, RuntimeError, TypeError, ValueError) as exc:
        same, reason = False, str(exc)
    if not same:
        for i, layer in enumerate(original):
            layers[i] = layer
    return same, reason


def _dummy_batch(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Two short pairs, the second padded, on the model's device."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, min(int(model.config.vocab_size), 1000), (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return ids.to(device), mask.to(device)
