"""Reranker latency: every backend of rag_app.models.rerank against CrossEncoder.predict's defaults, same run.

One query x 20 passages (one rerank call, as the service makes per request) at 128, 256 and 512 tokens per
(query, passage) pair. For each backend: median and p95 ms per call, speed-up over the default, and the
achieved GFLOP/s of the encoder forward against this machine's measured matmul peak.

The model
    A bge-reranker-base-architecture model built here: ``XLMRobertaForSequenceClassification`` with
    bge-reranker-base's config (hidden 768, 12 layers, 12 heads, intermediate 3072, vocab 250002,
    max_position_embeddings 514, num_labels 1) and seeded random weights. Latency does not depend on
    the weights' values. The real model's XLM-R sentencepiece tokenizer cannot be built offline, so the
    built model carries the bundled MiniLM WordPiece tokenizer: its ids (< 30522) are valid rows of the
    250002-row embedding table, ``pad_token_id`` is set to MiniLM's 0 so XLM-R's position ids come out
    right, and every pair is built to exactly the stated number of tokens (WordPiece splits words
    independently, so passages are grown word by word to the exact count and then checked). The
    transformer therefore does exactly the work it does for bge-reranker-base on pairs of that length;
    only tokenization (~1-2 ms per call either way) differs from the real tokenizer's.
    ``--model PATH`` adds a real local cross-encoder (e.g. a bge-reranker-base snapshot) to the run,
    tokenized with its own tokenizer (pair lengths then match the target to within a token or two).
    Passages are real text (SciFact abstracts from the shared data when present, else generated words).

What "default" is
    ``CrossEncoder(path).predict(pairs)`` as a user would call it: fp32 torch, ``batch_size=32`` (so all
    20 pairs in one batch), sigmoid activation, its own tokenization. (sentence-transformers 6 also sorts
    by character length inside ``predict``; with 20 equal-length pairs in one batch that changes nothing.)
    The service's backends use their own tokenization with a query budget, length-sorted batches of
    ``reranker_batch_size`` (8), and the score cache off. All engines are loaded first and then called
    round-robin within each length, so load from other processes hits them alike.

FLOPs
    Per pair of L tokens: 2 x (encoder linear weights) x L + 4 x L^2 x hidden per layer (QK^T and AV), plus
    the head on one token. Padding is not counted (every pair here has the same length, so there is none).
    These are the plain model's FLOPs: the torch-bf16 backend's last layer computes position 0 only
    (:mod:`rag_app.models.fused_encoder`), ~7% less work at 256 tokens, which shows as a higher rate.
    The peak is a timed 2048^3 ``torch.matmul`` in fp32 and in bf16 on this machine's torch threads (best
    of 8, at the start and at the end of the run, the higher kept, since other load only lowers it);
    fp32 backends are compared with the fp32 peak, bf16 with the bf16 peak, int8 with the fp32 peak (ONNX
    Runtime's int8 GEMMs have a higher ceiling still, so its percentage is not a utilisation).

Noise
    Numbers move with whatever else runs on the machine (check the load average printed at the start); a
    full run (3 repeats, 3 lengths, default + 4 backends) took 5m23s on 2 cores at load average 1-4, plus
    a one-time model build, ONNX export and int8 quantisation (~1 min, cached under the bench cache dir).

Usage::

    python benchmarks/rerank.py                      # table
    python benchmarks/rerank.py --json               # one JSON line per (tokens, backend)
    python benchmarks/rerank.py --tokens 128,256 --repeats 5 --model ~/models/bge-reranker-base
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import CACHE_DIR, latency_stats, log, machine_line, source_words, unbake_tokenizer

N_PASSAGES = 20
QUERY = "what are the effects of vitamin d supplementation on bone density in older adults"
BGE_BASE_CONFIG = {
    "vocab_size": 250002,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "num_labels": 1,
}
DEFAULT_NAME = "ce-predict-default"


# ------------------------------------------------------------------------------------ the model


def build_bge_base_arch(path: Path) -> Path:
    """bge-reranker-base's architecture, seeded random weights, MiniLM's tokenizer (see module doc)."""
    if (path / "model.safetensors").is_file():
        return path
    import torch
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForSequenceClassification

    from rag_app.models.files import bundled_minilm_dir

    log(f"building a bge-reranker-base-architecture model (random weights) in {path}")
    tokenizer = AutoTokenizer.from_pretrained(bundled_minilm_dir())
    config = XLMRobertaConfig(
        **BGE_BASE_CONFIG,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = XLMRobertaForSequenceClassification(config).eval()
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    # Like XLM-R's tokenizer: no token_type_ids (bge-reranker-base has a single token type), and no
    # padding/truncation to 128 baked into tokenizer.json (MiniLM's file has both).
    unbake_tokenizer(tmp, model_input_names=["input_ids", "attention_mask"])
    tmp.rename(path)
    return path


def encoder_flops(config: Any, model_params: dict[str, int], tokens: list[int]) -> float:
    """FLOPs of one forward over pairs of the given (unpadded) lengths."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    total = 0.0
    for n in tokens:
        total += (
            2.0 * model_params["encoder"] * n + 4.0 * layers * n * n * hidden + 2.0 * model_params["head"]
        )
    return total


def count_params(path: Path) -> tuple[Any, dict[str, int]]:
    """Encoder-layer and head parameter counts from the safetensors header (no weights loaded)."""
    from safetensors import safe_open
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    counts = {"encoder": 0, "head": 0}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                size = int(np.prod(f.get_slice(name).get_shape()))
                if ".encoder.layer." in name or name.startswith("encoder.layer."):
                    counts["encoder"] += size
                elif "embeddings" not in name:
                    counts["head"] += size
    return config, counts


# ------------------------------------------------------------------------------------ text


def build_passages(tokenizer: Any, n_tokens: int, words: list[str], seed: int) -> list[str]:
    """20 passages, each making a (QUERY, passage) pair of ``n_tokens`` tokens with the special tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    tok.no_padding()
    tok.no_truncation()
    room = (
        n_tokens
        - len(tok.encode(QUERY, add_special_tokens=False).ids)
        - tokenizer.num_special_tokens_to_add(True)
    )
    rng = random.Random(seed * 1000 + n_tokens)
    passages = []
    for _ in range(N_PASSAGES):
        start = rng.randrange(0, len(words) - 4 * n_tokens)
        chosen: list[str] = []
        count = 0
        for word in words[start:]:
            n = len(tok.encode(word, add_special_tokens=False).ids)
            if count + n > room:
                continue  # a word too long for the remaining room: try the next one
            chosen.append(word)
            count += n
            if count == room:
                break
        passages.append(" ".join(chosen))
    return passages


def pair_lengths(tokenizer: Any, passages: list[str]) -> list[int]:
    return [len(tokenizer(QUERY, p)["input_ids"]) for p in passages]


# ------------------------------------------------------------------------------------ timing


def matmul_peak(dtype_name: str, n: int = 2048, repeats: int = 8) -> float:
    """GFLOP/s of an n^3 torch.matmul (best of ``repeats``), on torch's own thread count."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def time_calls(fn: Any, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return seconds


# ------------------------------------------------------------------------------------ main


def bench_model(
    label: str, path: Path, tokens_list: list[int], backends: list[str], repeats: int, peaks: dict[str, float]
) -> list[dict[str, Any]]:
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer

    from rag_app.models.rerank.cross_encoder import CrossEncoderReranker

    config, params = count_params(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    words = source_words()
    cases = {}
    for n in tokens_list:
        passages = build_passages(tokenizer, n, words, seed=0)
        lengths = pair_lengths(tokenizer, passages)
        cases[n] = (passages, lengths)
        log(
            f"{label}: {n} tokens -> pair lengths {min(lengths)}-{max(lengths)} (mean {np.mean(lengths):.1f})"
        )

    rows: list[dict[str, Any]] = []

    def record(n: int, backend: str, seconds: list[float], load_s: float) -> dict[str, Any]:
        stats = latency_stats(seconds)
        flops = encoder_flops(config, params, cases[n][1])
        peak_ref = "bf16" if backend == "torch-bf16" else "fp32"
        gflops = flops / (stats["median_ms"] / 1000.0) / 1e9
        row = {
            "model": label,
            "tokens": n,
            "backend": backend,
            **stats,
            "mean_pair_tokens": round(float(np.mean(cases[n][1])), 1),
            "gflops": round(gflops, 1),
            "peak_gflops": round(peaks[peak_ref], 1),
            "peak_ref": peak_ref,
            "pct_of_peak": round(100.0 * gflops / peaks[peak_ref], 1),
            "load_s": round(load_s, 1),
            "repeats": repeats,
        }
        rows.append(row)
        log(
            f"{label} {n:4d} tok {backend:20s} median {stats['median_ms']:9.1f} ms  "
            f"p95 {stats['p95_ms']:9.1f} ms  {row['gflops']:7.1f} GFLOP/s "
            f"({row['pct_of_peak']}% of {peak_ref} peak)"
        )
        return row

    # All engines are loaded first and then called round-robin (default, backend 1, backend 2, ... per
    # repeat), so load from other processes, which comes and goes, hits every engine alike.
    engines: dict[str, Any] = {}
    load_s: dict[str, float] = {}
    t0 = time.perf_counter()
    ce = CrossEncoder(str(path), device="cpu")  # the default: CrossEncoder.predict as shipped
    ce.predict([(QUERY, "warm-up")])
    load_s[DEFAULT_NAME] = time.perf_counter() - t0
    engines[DEFAULT_NAME] = lambda passages: ce.predict([(QUERY, p) for p in passages])
    onnx_dir = CACHE_DIR / "rerank" / "onnx"
    for backend in backends:
        t0 = time.perf_counter()
        reranker = CrossEncoderReranker(
            str(path), revision=None, backend=backend, cache_size=0, onnx_dir=onnx_dir
        )
        load_s[backend] = time.perf_counter() - t0  # includes export/quantisation the first time
        engines[backend] = lambda passages, r=reranker: r.score(QUERY, passages)
        log(f"{label}: {backend} loaded in {load_s[backend]:.1f} s ({reranker.describe()})")

    for n in tokens_list:
        passages = cases[n][0]
        seconds: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(repeats):
            for name, engine in engines.items():
                seconds[name] += time_calls(lambda e=engine, p=passages: e(p), 1)
        for name in engines:
            record(n, name, seconds[name], load_s[name])
    engines.clear()
    gc.collect()

    for row in rows:
        base = next(r for r in rows if r["tokens"] == row["tokens"] and r["backend"] == DEFAULT_NAME)
        row["speedup_vs_default"] = round(base["median_ms"] / row["median_ms"], 2)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="128,256,512", help="pair lengths, comma separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per (tokens, backend)")
    parser.add_argument(
        "--model", type=Path, action="append", default=[], help="a real local cross-encoder dir"
    )
    parser.add_argument("--no-synthetic", action="store_true", help="only the --model paths")
    parser.add_argument(
        "--backends", default="", help="comma separated subset (default: all this machine runs)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    args = parser.parse_args(argv)

    import torch

    from rag_app.models.rerank.backends.selection import available_backends

    tokens_list = [int(t) for t in args.tokens.split(",") if t.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()] or available_backends()
    log(f"machine: {machine_line()}; torch threads {torch.get_num_threads()}; backends {', '.join(backends)}")
    peaks = {"fp32": matmul_peak("fp32"), "bf16": matmul_peak("bf16")}
    log(f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")

    models: list[tuple[str, Path]] = []
    if not args.no_synthetic:
        models.append(
            ("bge-base-arch-random", build_bge_base_arch(CACHE_DIR / "rerank" / "bge-base-arch-random"))
        )
    models += [(str(p), p.expanduser().resolve()) for p in args.model]
    if not models:
        parser.error("nothing to benchmark: drop --no-synthetic or give --model")

    rows: list[dict[str, Any]] = []
    for label, path in models:
        rows += bench_model(label, path, tokens_list, backends, args.repeats, peaks)
    # Other work on the machine can only make a peak measurement low: keep the best of start and end.
    end_peaks = {"fp32": matmul_peak("fp32"), "bf16": matmul_peak("bf16")}
    if any(end_peaks[k] > peaks[k] for k in peaks):
        peaks = {k: max(peaks[k], end_peaks[k]) for k in peaks}
        for row in rows:
            row["peak_gflops"] = round(peaks[row["peak_ref"]], 1)
            row["pct_of_peak"] = round(100.0 * row["gflops"] / peaks[row["peak_ref"]], 1)

    if args.json:
        for row in rows:
            print(json.dumps(row), flush=True)
        return 0
    header = (
        f"{'model':24s} {'tokens':>6s} {'backend':20s} {'median ms':>10s} {'p95 ms':>10s} {'speed-up':>8s} "
        f"{'GFLOP/s':>8s} {'% peak':>7s}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model'][:24]:24s} {r['tokens']:6d} {r['backend']:20s} {r['median_ms']:10.1f} "
            f"{r['p95_ms']:10.1f} {r['speedup_vs_default']:7.2f}x {r['gflops']:8.1f} {r['pct_of_peak']:6.1f}%"
        )
    print(
        f"\npeaks: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s (timed 2048^3 matmul); "
        f"{machine_line()} at the end"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
