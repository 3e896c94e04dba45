"""What moving the reranker to a rerank server costs per request: the HTTP hop, measured.

Starts ``rag-app``'s own server (the Cohere-shape ``POST /v1/rerank``) in a subprocess on loopback
with a MiniLM-L6-architecture cross-encoder (``tests/tiny_models.py``: real MiniLM encoder weights, a
seeded head), and reranks the same 20 retrieved candidates per query two ways, alternating query by
query so the machine's drift hits both alike:

* in process: ``CrossEncoderReranker`` on the configured backend (``auto``), score cache off;
* remote: ``RemoteReranker`` (``reranker_backend="remote"``) against that server, which runs the same
  model on the same backend, score cache off.

The difference of the medians is the hop: JSON encoding, loopback HTTP, the server's routing, auth
and limits. Server and client share this machine's cores, so it is the hop's cost, not a scaling
figure; on separate machines the network's round trip adds to it.

    python benchmarks/remote_rerank.py --queries 60
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

try:
    from benchmarks._common import log, machine_line, temp_dir
    from benchmarks.load import SAMPLE, pick_reranker, sample_queries, start_server
except ImportError:  # run as a script: python benchmarks/remote_rerank.py
    from _common import log, machine_line, temp_dir  # type: ignore[no-redef]
    from load import SAMPLE, pick_reranker, sample_queries, start_server  # type: ignore[no-redef]

from rag_app.core.settings import Settings
from rag_app.ingest.pipeline import ingest_paths
from rag_app.models.rerank import load_reranker
from rag_app.runtime import Runtime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=60, help="queries timed (after 5 warm-up queries)")
    p.add_argument("--k", type=int, default=20, help="candidates reranked per query")
    p.add_argument("--workdir", default="/tmp/rag_bench")
    args = p.parse_args()
    log(f"machine: {machine_line()}")
    with temp_dir(args.workdir, "remote-rerank", keep=False) as data_dir:
        base = Settings(data_dir=data_dir, lm_model=None, sites={"builddaily": ["resources"]})
        settings = base.model_copy(update={**pick_reranker(base, "minilm"), "rerank_cache_size": 0})
        ingest_paths(settings, "builddaily", "resources", [SAMPLE], progress=False)
        runtime = Runtime(settings)
        queries = sample_queries()[: args.queries + 5]
        candidates = [
            [p["text"] for p in runtime.search("builddaily", q, k=args.k, rerank=False)["passages"]]
            for q in queries
        ]
        proc, url = start_server(settings, workers=1)
        try:
            local = load_reranker(settings)
            remote = load_reranker(
                settings.model_copy(
                    update={"reranker_backend": "remote", "reranker_url": url, "reranker_api": "cohere"}
                )
            )
            times: dict[str, list[float]] = {"in_process": [], "remote": []}
            for i, (query, texts) in enumerate(zip(queries, candidates, strict=True)):
                order = [("in_process", local), ("remote", remote)]
                for name, reranker in order if i % 2 else order[::-1]:
                    t0 = time.perf_counter()
                    reranker.score(query, texts)
                    if i >= 5:
                        times[name].append((time.perf_counter() - t0) * 1000)
            result: dict[str, Any] = {
                "queries": len(times["remote"]),
                "candidates": args.k,
                "backend": local.backend,
                **{f"{n}_median_ms": round(statistics.median(t), 1) for n, t in times.items()},
                **{f"{n}_p95_ms": round(sorted(t)[int(0.95 * (len(t) - 1))], 1) for n, t in times.items()},
            }
            result["hop_ms"] = round(result["remote_median_ms"] - result["in_process_median_ms"], 1)
            print(json.dumps(result))
        finally:
            proc.terminate()
            proc.wait(15)


if __name__ == "__main__":
    main()
