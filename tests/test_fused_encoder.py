"""The fused encoder layers behind torch-bf16, cuda-fp16 and the bf16 embedder compute the original function.

Every test compares against the unmodified Hugging Face model on a padded batch, in fp32 (bf16 only
where it says so). The tiny cross-encoder (``tiny_path``, conftest) has random weights and a real
tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def _logits(model: Any, ids: Any, mask: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).logits.float()


def _padded_batch() -> tuple[Any, Any]:
    import torch

    ids = torch.randint(5, 1000, (6, 40), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[2, 25:] = 0  # padding must be respected by the fused attention and the shortened last layer
    mask[4, 9:] = 0
    return ids, mask


@pytest.mark.parametrize(
    ("target", "onednn"),
    [("cpu", True), ("cpu", False), ("cuda", None)],
    ids=["cpu-onednn-post-ops", "cpu-plain-ops", "cuda-code-path-run-on-cpu"],
)
def test_fused_encoder_layers_compute_the_same_logits(
    tiny_path: Path, target: str, onednn: bool | None
) -> None:
    """Fused QKV, fused GELU/residual, per-sequence or batched attention, first-token last layer: same
    function. The ``cuda`` target builds the layers cuda-fp16 runs (plain ops, batched SDPA); no GPU here,
    so they run on CPU in fp32 against the original model."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rag_app.models.fused_encoder import FusedEncoderLayer, fuse_encoder_layers

    full = AutoModelForSequenceClassification.from_pretrained(str(tiny_path)).eval()
    fast = AutoModelForSequenceClassification.from_pretrained(str(tiny_path)).eval()
    assert fuse_encoder_layers(fast, target=target, onednn=onednn) is True
    layers = fast.base_model.encoder.layer
    assert all(isinstance(layer, FusedEncoderLayer) for layer in layers)
    assert all(layer.batched_attention is (target == "cuda") for layer in layers)
    assert all(layer.onednn is (target == "cpu" and onednn is not False) for layer in layers)
    assert [layer.first_token_only for layer in layers] == [False] * (len(layers) - 1) + [True]
    ids, mask = _padded_batch()
    want, got = _logits(full, ids, mask), _logits(fast, ids, mask)
    assert torch.allclose(want, got, atol=1e-5), (want - got).abs().max()
    # The fused Linear follows a dtype cast like every other parameter; bf16 stays close to fp32.
    got_bf16 = _logits(fast.to(torch.bfloat16), ids, mask)
    assert torch.allclose(want, got_bf16, atol=0.05), (want - got_bf16).abs().max()


def test_fused_encoder_layers_with_tanh_gelu(tiny_path: Path) -> None:
    """Encoders trained with the tanh GELU approximation get that approximation in the fused kernel."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rag_app.models.fused_encoder import fuse_encoder_layers

    load = AutoModelForSequenceClassification.from_pretrained
    full = load(str(tiny_path), hidden_act="gelu_new").eval()
    fast = load(str(tiny_path), hidden_act="gelu_new").eval()
    assert fuse_encoder_layers(fast) is True
    assert fast.base_model.encoder.layer[0].gelu_approximate == "tanh"
    ids, mask = _padded_batch()
    assert torch.allclose(_logits(full, ids, mask), _logits(fast, ids, mask), atol=1e-5)


def test_gpu_attention_path_matches_the_cpu_one() -> None:
    """cuda-fp16 attends with one batched SDPA call; no GPU here, so its math is checked on CPU."""
    import torch

    from rag_app.models.fused_encoder import attention_batched, attention_per_sequence

    gen = torch.Generator().manual_seed(2)
    query, key, value = (torch.randn(3, 4, 7, 8, generator=gen) for _ in range(3))
    mask = torch.zeros(3, 1, 7, 7)
    mask[1, :, :, 5:] = torch.finfo(torch.float32).min  # HF's additive padding mask
    for rows in (7, 1):  # every position, and the first-token last layer
        args = (query[:, :, :rows], key, value, mask[:, :, :rows], 8**-0.5)
        want = attention_per_sequence(*args)
        assert want.shape == (3, rows, 32)
        assert torch.allclose(attention_batched(*args), want, atol=1e-5)
    # The padded keys of sequence 1 get no weight: changing them changes nothing.
    key2, value2 = key.clone(), value.clone()
    key2[1, :, 5:] += 3.0
    value2[1, :, 5:] -= 3.0
    assert torch.allclose(
        attention_per_sequence(query, key2, value2, mask, 0.3),
        attention_per_sequence(query, key, value, mask, 0.3),
    )


def test_fused_encoder_layers_only_where_they_reproduce_the_model(
    tiny_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from rag_app.models import fused_encoder
    from rag_app.models.fused_encoder import fuse_encoder_layers

    class NotAnEncoder(torch.nn.Module):
        config = type("Config", (), {"model_type": "gpt2", "hidden_act": "gelu"})()

    assert fuse_encoder_layers(NotAnEncoder()) is False
    relu = AutoModelForSequenceClassification.from_pretrained(str(tiny_path), hidden_act="relu").eval()
    assert fuse_encoder_layers(relu) is False  # no fused kernel for this activation: left as loaded
    # A fused layer that computes something else is caught by the check and the originals come back.
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_path)).eval()
    originals = list(model.base_model.encoder.layer)
    ids, mask = _padded_batch()
    want = _logits(model, ids, mask)
    monkeypatch.setattr(
        fused_encoder.FusedEncoderLayer,
        "_attend",
        lambda self, query, key, value, mask: query.new_zeros(
            query.shape[0], query.shape[2], query.shape[1] * query.shape[3]
        ),
    )
    assert fuse_encoder_layers(model) is False
    assert list(model.base_model.encoder.layer) == originals
    assert torch.equal(_logits(model, ids, mask), want)


def test_prepacked_weights_give_the_same_logits(tiny_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from rag_app.models import fused_encoder
    from rag_app.models.fused_encoder import PackedLinear, fuse_encoder_layers, prepack_encoder_layers

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_path)).eval()
    assert prepack_encoder_layers(model) is False  # nothing fused yet: nothing to pack
    assert fuse_encoder_layers(model) is True
    ids, mask = _padded_batch()
    want = _logits(model, ids, mask)
    with monkeypatch.context() as patch:  # a torch build without the private reorder op
        patch.setattr(fused_encoder.torch.ops.mkldnn, "_reorder_linear_weight", None, raising=False)
        unpacked = list(model.base_model.encoder.layer)
        assert prepack_encoder_layers(model) is False
        assert list(model.base_model.encoder.layer) == unpacked
    assert prepack_encoder_layers(model) is True
    layer = model.base_model.encoder.layer[0]
    assert all(isinstance(getattr(layer, name), PackedLinear) for name in layer.LINEARS)
    assert torch.allclose(_logits(model, ids, mask), want, atol=1e-6)
    # A caller-made 4D bool mask (True = attend) masks like the 2D one instead of being added as 0/1.
    bool_mask = (mask[:, None, None, :] > 0).expand(-1, 1, ids.shape[1], -1)
    assert torch.allclose(_logits(model, ids, bool_mask), want, atol=1e-6)
    with pytest.raises(RuntimeError, match="cannot be cast or moved"):
        model.to(torch.bfloat16)
    plain = AutoModelForSequenceClassification.from_pretrained(str(tiny_path)).eval()
    assert fuse_encoder_layers(plain, onednn=False) is True
    assert prepack_encoder_layers(plain) is False  # packed weights are for the oneDNN kernels only


def test_bare_encoders_keep_every_position(tiny_path: Path) -> None:
    """An embedder's encoder (no classification head) pools over all positions: no first-token layer."""
    import torch
    from transformers import AutoModel

    from rag_app.models.fused_encoder import fuse_encoder_layers

    full = AutoModel.from_pretrained(str(tiny_path)).eval()
    fast = AutoModel.from_pretrained(str(tiny_path)).eval()
    assert fuse_encoder_layers(fast) is True
    assert not any(layer.first_token_only for layer in fast.base_model.encoder.layer)
    ids, mask = _padded_batch()
    with torch.inference_mode():
        want = full(input_ids=ids, attention_mask=mask).last_hidden_state
        got = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    assert got.shape == want.shape
    assert torch.allclose(want, got, atol=1e-5), (want - got).abs().max()
