"""Shared helpers of the benchmarks: real text, cached real embeddings, timing statistics.

Nothing here is imported by the service. The embeddings of real text are the slow part of a search
benchmark run (MiniLM on 2 CPU cores embeds a few thousand short passages a minute), so they are
cached as ``.npz`` under ``/tmp/rag_bench_cache`` and grown incrementally: a later run that asks for
more rows only embeds the missing ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(REPO))

DATA_DIR = Path(os.environ.get("RAG_BENCH_DATA", REPO.parent / "shared" / "data"))
CACHE_DIR = Path(os.environ.get("RAG_BENCH_CACHE", "/tmp/rag_bench_cache"))
#: Corpora whose text becomes the real vectors (all of them: product docs, science, finance, canon).
CORPORA = (
    "scifact/corpus.jsonl",
    "fastapi_docs/corpus.jsonl",
    "tarot_astrology/corpus.jsonl",
    "financebench/corpus.jsonl",
)
SCIFACT_QUERIES = "scifact/queries.jsonl"
#: Held-out passages and SciFact queries embedded once; a run uses the first ``--queries`` of them.
QUERY_POOL = 256
_SENTENCE = re.compile(r"(?<=[.!?;:])\s+|\n+")


def log(msg: str) -> None:
    """Progress to stderr, so ``--json`` stdout stays machine-readable."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine_line() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from rag_app.core.hardware import cpu_has_bf16

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    bf16 = ", bf16" if cpu_has_bf16() else ""
    return f"{cpu}{bf16}, {os.cpu_count()} cores, 1-min load avg {load:.2f} (other processes included)"


# ------------------------------------------------------------------------------------ statistics


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q)) if seconds else float("nan")


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    return {"median_ms": round(percentile_ms(seconds, 50), 2), "p95_ms": round(percentile_ms(seconds, 95), 2)}


def recall_at_k(found: Sequence[Sequence[int]], exact: np.ndarray, k: int) -> float:
    """Mean over queries of |found_k ∩ exact_k| / k (the exact top-k of every query given)."""
    hits = [len(set(f[:k]) & set(e[:k].tolist())) / k for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits))


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int, block: int = 200_000) -> np.ndarray:
    """Row ids of the exact top-k by cosine (rows are unit length, so a dot product), blockwise."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(base), block):
        scores = queries @ base[start : start + block].T
        take = min(k, scores.shape[1])
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        best_s = np.concatenate([best_s, np.take_along_axis(scores, part, axis=1)], axis=1)
        best_i = np.concatenate([best_i, part + start], axis=1)
        keep = np.argsort(-best_s, axis=1)[:, :k]
        best_s = np.take_along_axis(best_s, keep, axis=1)
        best_i = np.take_along_axis(best_i, keep, axis=1)
    return best_i


def normalise(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------ real text


def sentence_windows(text: str, max_words: int) -> list[str]:
    """Consecutive sentences packed into windows of at most ``max_words`` words (no overlap)."""
    windows: list[str] = []
    current: list[str] = []
    words = 0
    for sentence in _SENTENCE.split(text):
        sentence = " ".join(sentence.split())
        if not sentence:
            continue
        n = len(sentence.split())
        if current and words + n > max_words:
            windows.append(" ".join(current))
            current, words = [], 0
        current.append(sentence)
        words += n
    if current:
        windows.append(" ".join(current))
    # a single run-on "sentence" longer than the window (tables, code) is cut at the word limit
    out: list[str] = []
    for w in windows:
        parts = w.split()
        out += [" ".join(parts[i : i + max_words]) for i in range(0, len(parts), max_words)]
    return [w for w in out if len(w.split()) >= 5]


def real_texts(max_words: int, seed: int = 0) -> list[str]:
    """Sentence windows of every bundled corpus, in a seeded random (but stable) order."""
    from rag_app.ingest.loaders import load_paths

    texts: list[str] = []
    for name in CORPORA:
        for doc in load_paths([DATA_DIR / name]).documents:
            texts += sentence_windows(doc.text, max_words)
    random.Random(seed).shuffle(texts)
    return texts


def scifact_queries() -> list[str]:
    lines = (DATA_DIR / SCIFACT_QUERIES).read_text().splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


def get_bench_embedder(backend: str, precision: str = "auto"):
    """The service's own embedder: bundled MiniLM (``minilm``) or nomic-embed-text via Ollama."""
    from rag_app.core.settings import Settings
    from rag_app.models.embeddings import load_embedder

    if backend == "ollama":
        return load_embedder(Settings(embedder_backend="ollama"))
    return load_embedder(Settings(embedder_precision=precision))


def real_vectors(
    n_base: int, n_queries: int, *, backend: str = "minilm", max_words: int = 40, seed: int = 0
) -> dict[str, np.ndarray]:
    """Real embeddings: ``base`` (n_base passages), ``queries`` (n_queries, alternating real SciFact
    queries and held-out passages never in ``base``). Cached; grown incrementally."""
    texts = real_texts(max_words, seed)
    claims = scifact_queries()
    random.Random(seed + 1).shuffle(claims)
    if n_queries > 2 * QUERY_POOL:
        raise SystemExit(f"at most {2 * QUERY_POOL} queries")
    n_held = n_claims = QUERY_POOL
    if n_base + n_held > len(texts) or n_claims > len(claims):
        raise SystemExit(f"only {len(texts)} passages / {len(claims)} SciFact queries available")
    held, pool = texts[:n_held], texts[n_held:]
    tag = hashlib.sha1(f"{backend}|{max_words}|{seed}|{n_held}".encode()).hexdigest()[:10]
    path = CACHE_DIR / f"real_{backend}_w{max_words}_s{seed}_{tag}.npz"
    cached: dict[str, np.ndarray] = dict(np.load(path)) if path.is_file() else {}
    base = cached.get("base")
    have = 0 if base is None else len(base)
    need_claims = cached.get("claims") is None or len(cached["claims"]) < n_claims
    if have >= n_base and not need_claims and cached.get("held") is not None:
        base, held_v, claim_v = cached["base"], cached["held"], cached["claims"]
    else:
        embedder = get_bench_embedder(backend)
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        held_v = cached.get("held")
        if held_v is None:
            held_v = embedder.embed_documents(held)
        claim_v = cached.get("claims")
        if need_claims:
            claim_v = np.stack([embedder.embed_query(q) for q in claims[:n_claims]])
        parts = [] if base is None else [base]
        start, step = have, 2048
        t0 = time.perf_counter()
        while start < n_base:
            stop = min(start + step, n_base)
            parts.append(embedder.embed_documents(pool[start:stop]))
            start = stop
            done = start - have
            rate = done / (time.perf_counter() - t0)
            log(f"embedded {start}/{n_base} real passages ({rate:.0f}/s, model {embedder.model_id})")
            base = np.concatenate(parts)
            parts = [base]
            np.savez(path, base=base, held=held_v, claims=claim_v)  # resumable
        np.savez(path, base=base, held=held_v, claims=claim_v)
    queries = np.empty((2 * QUERY_POOL, base.shape[1]), dtype=np.float32)
    queries[0::2] = held_v  # even: held-out passages
    queries[1::2] = claim_v  # odd: real SciFact queries
    return {"base": base[:n_base].astype(np.float32), "queries": queries[:n_queries]}


# ------------------------------------------------------------------------------------ temp dirs


@contextmanager
def temp_dir(root: str | Path, name: str, keep: bool = False) -> Iterator[Path]:
    """A fresh directory under ``root`` (never the repo), removed afterwards unless ``keep``."""
    root = Path(root)
    path = root / name
    if REPO in path.resolve().parents:
        raise SystemExit(f"refusing to write benchmark data inside the repository: {path}")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def source_words(seed: int = 0) -> list[str]:
    """Real words (SciFact abstracts) when the shared data is there, else a generated vocabulary."""
    corpus = DATA_DIR / "scifact" / "corpus.jsonl"
    words: list[str] = []
    if corpus.is_file():
        with corpus.open() as f:
            for line in f:
                words += json.loads(line).get("text", "").split()
                if len(words) > 60_000:
                    break
    if len(words) < 10_000:
        rng = random.Random(seed)
        vocab = ["".join(rng.choices("abcdefghijklmnoprstuvw", k=rng.randint(3, 9))) for _ in range(3000)]
        words = [rng.choice(vocab) for _ in range(60_000)]
    return words


def unbake_tokenizer(model_dir: Path, **config: Any) -> None:
    """Drop the padding/truncation baked into a saved ``tokenizer.json`` (MiniLM's file has both) and
    its ``max_length``, and set ``config`` keys in ``tokenizer_config.json``: the reranker decides
    lengths itself, so a copied tokenizer must not cut or pad first."""
    from tokenizers import Tokenizer

    config_file = model_dir / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text())
    tok_config.pop("max_length", None)
    tok_config.update(config)
    config_file.write_text(json.dumps(tok_config, indent=2))
    backend = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    backend.no_padding()
    backend.no_truncation()
    backend.save(str(model_dir / "tokenizer.json"))
