"""The CUDA reranker check (run on a lent GPU): a cross-encoder on ``cuda-fp16`` against ``torch-fp32``.

    python benchmarks/cuda_rerank_check.py MODEL_DIR PAIRS.jsonl

Scores the dev candidate lists of a pairs file (``rag_app.optimize.training.pairs``; the first 100
queries) with both backends and prints, as JSON: Spearman rank correlation per query (min, mean), how
many queries keep an identical top 5, the largest logit difference, each backend's tie rate, and ms per
query of 20 pairs (50 queries timed after a warm pass). Needs a CUDA GPU."""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict

import numpy as np
import torch
from scipy.stats import spearmanr

from rag_app.models.rerank.cross_encoder import CrossEncoderReranker
from rag_app.optimize.training.pairs import read_pairs


def main() -> None:
    path, pairs = sys.argv[1], sys.argv[2]
    lists: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in read_pairs(pairs):
        if row.split == "dev" and row.rank is not None:
            lists[(row.qid, row.query)].append(row.passage)
    queries = list(lists.items())[:100]
    out: dict[str, object] = {"queries": len(queries), "device": torch.cuda.get_device_name(0)}
    scores: dict[str, list[np.ndarray]] = {}
    for backend in ("torch-fp32", "cuda-fp16"):
        reranker = CrossEncoderReranker(path, revision=None, backend=backend, cache_size=0, batch_size=32)
        out[f"{backend}_describe"] = reranker.describe()
        scores[backend] = [reranker.score(q, ps) for (_, q), ps in queries]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for (_, q), ps in queries[:50]:
            reranker.score(q, ps)
        torch.cuda.synchronize()
        out[f"{backend}_ms_per_query"] = (time.perf_counter() - t0) * 1000 / 50
        got = scores[backend]
        out[f"{backend}_tie_rate"] = sum(len(s) - len(np.unique(s)) for s in got) / sum(len(s) for s in got)
    pairs_of = list(zip(scores["torch-fp32"], scores["cuda-fp16"], strict=True))
    rhos = [spearmanr(a, b).statistic for a, b in pairs_of]
    top5 = [len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) for a, b in pairs_of]
    out.update(
        spearman_min=float(np.nanmin(rhos)),
        spearman_mean=float(np.nanmean(rhos)),
        top5_identical=sum(t == 5 for t in top5),
        max_abs_diff=float(max(np.abs(a - b).max() for a, b in pairs_of)),
    )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
