"""Ingest throughput of the two engines on this machine: single process vs Ray (``--engine ray``).

Both engines ingest the same corpus (by default the first ``--docs`` documents of the shared FastAPI
docs corpus, written to a temp JSONL) into fresh temp data dirs, back to back, with the bundled
MiniLM; each run is timed end to end (scan/load, chunk, embed, write, commit, index refresh), and
re-run once to time the idempotent re-ingest. The driver's model is loaded before the clock starts;
a local Ray is started once before the Ray runs (its start-up is reported separately), but each Ray
run pays for its actors' start and model load, as every ``rag-app ingest --engine ray`` does.

    python benchmarks/ingest_engines.py                          # 200 FastAPI docs, actors 1 and 2
    python benchmarks/ingest_engines.py --docs 722 --actors 1,2,4 --json
    python benchmarks/ingest_engines.py --path /work/shared/data/scifact/corpus.jsonl --docs 1000

With ``OMP_NUM_THREADS=1`` the single-process engine embeds on one core and each Ray actor on one
core (Ray gives an actor one thread per CPU it reserves, one by default): "Ray, 1 actor" against
"single process" is then the engine's own overhead at equal compute, and more actors show how it
scales with processes on this machine's cores. Without it, the single-process engine uses every
core through torch's threads.

What a cluster changes: the embedding actors run on every node (``RAG_RAY_EMBED_ACTORS`` = the
model copies the cluster holds, on GPUs where the nodes have them), so throughput grows with nodes
until the commits (metadata only, on the driver) or the object store's write bandwidth bound it;
fragments are written by the workers in parallel to the shared database (``RAG_DB_URI`` on object
storage); the fixed costs measured here (Ray start-up, each actor's model load) are paid once per
run and shrink against a corpus that takes hours. On one small machine those fixed costs and the
competition for the same cores make Ray slower than the single process: it pays off only where
there is more hardware than one process can use.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

try:
    from benchmarks._common import DATA_DIR, log, machine_line, temp_dir
except ImportError:  # run as a script: python benchmarks/ingest_engines.py
    from _common import DATA_DIR, log, machine_line, temp_dir  # type: ignore[no-redef]

from rag_app.core.settings import Settings
from rag_app.ingest.engines.ray_ingest import ray_ingest_paths
from rag_app.ingest.engines.ray_session import ray_session
from rag_app.ingest.pipeline import IngestReport, ingest_paths
from rag_app.models.embeddings import load_embedder

SITE, COLLECTION = "builddaily", "resources"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", type=Path, default=DATA_DIR / "fastapi_docs" / "corpus.jsonl")
    p.add_argument("--docs", type=int, default=200, help="first N documents of a JSONL corpus (0: all)")
    p.add_argument("--actors", default="1,2", help="Ray embedding actors to try, comma-separated")
    p.add_argument("--commit-documents", type=int, default=None, help="RAG_RAY_COMMIT_DOCUMENTS")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto")
    p.add_argument("--workdir", default="/tmp/rag_bench")
    p.add_argument("--keep", action="store_true", help="keep the temp data dirs")
    p.add_argument("--json", action="store_true", help="one JSON line per run on stdout")
    args = p.parse_args()
    actors = [int(a) for a in args.actors.split(",") if a.strip()]

    machine = machine_line()
    log(f"machine: {machine}")
    with temp_dir(args.workdir, "ingest_engines", keep=args.keep) as work:
        corpus = corpus_slice(args.path, args.docs, work)
        base: dict[str, Any] = {"embedder_precision": args.precision}
        if args.commit_documents:
            base["ray_commit_documents"] = args.commit_documents
        embedder = load_embedder(Settings(data_dir=work / "model", **base))
        log(f"model {embedder.model_id} loaded ({getattr(embedder, 'precision', '?')}); corpus {corpus}")

        results = [run("single process", work / "local", base, corpus, embedder, ray_run=False)]
        t0 = time.perf_counter()
        with ray_session(Settings(data_dir=work / "ray"), progress=False) as ray:
            ray_start_s = time.perf_counter() - t0
            cpus = int(ray.cluster_resources().get("CPU", 0))
            log(f"local Ray started in {ray_start_s:.1f}s ({cpus} CPUs)")
            for n in actors:
                settings = base | {"ray_embed_actors": n}
                results.append(
                    run(f"Ray, {n} actor(s)", work / f"ray{n}", settings, corpus, embedder, ray_run=True)
                )
    reference = results[0]["chunks_per_s"]
    for r in results:
        r |= {"ratio": round(r["chunks_per_s"] / reference, 2), "ray_start_s": round(ray_start_s, 1)}
        r |= {"machine": machine, "corpus": str(args.path), "docs_slice": args.docs}
    if args.json:
        for r in results:
            print(json.dumps(r))
        return
    print(f"corpus   {args.path} (first {args.docs or 'all'} documents)")
    print(f"machine  {machine}")
    print(f"Ray      started once in {ray_start_s:.1f}s (not in the times below)")
    print(
        f"{'engine':<20} {'chunks':>7} {'seconds':>8} {'chunks/s':>9} {'vs single':>10} {'re-ingest s':>12}"
    )
    for r in results:
        print(
            f"{r['engine']:<20} {r['chunks']:>7} {r['seconds']:>8.1f} {r['chunks_per_s']:>9.1f} "
            f"{r['ratio']:>9.2f}x {r['reingest_s']:>12.2f}"
        )


def corpus_slice(path: Path, docs: int, work: Path) -> Path:
    """The first ``docs`` documents of a JSONL corpus as a file of their own (a folder is used whole)."""
    if not docs or path.is_dir():
        return path
    lines = [line for line in path.read_text().splitlines() if line.strip()][:docs]
    target = work / f"{path.stem}_{len(lines)}.jsonl"
    target.write_text("\n".join(lines) + "\n")
    return target


def run(
    label: str, data_dir: Path, overrides: dict[str, Any], corpus: Path, embedder: Any, *, ray_run: bool
) -> dict:
    settings = Settings(data_dir=data_dir, **overrides)
    ingest = ray_ingest_paths if ray_run else ingest_paths
    timed: list[tuple[IngestReport, float]] = []
    for _ in range(2):  # the first run writes everything, the second finds everything unchanged
        t0 = time.perf_counter()
        report = ingest(settings, SITE, COLLECTION, [corpus], progress=False, embedder=embedder)
        timed.append((report, time.perf_counter() - t0))
    (first, first_s), (second, second_s) = timed
    log(f"{label}: {first.summary()}; re-ingest {second_s:.2f}s")
    assert second.chunks_written == 0 and second.unchanged == first.added, second.summary()
    return {
        "engine": label,
        "docs": first.added,
        "chunks": first.chunks_written,
        "seconds": round(first_s, 2),
        "chunks_per_s": round(first.chunks_written / first_s, 1),
        "reingest_s": round(second_s, 2),
        "actors": settings.ray_embed_actors if ray_run else 0,
        "commit_documents": settings.ray_commit_documents if ray_run else None,
    }


if __name__ == "__main__":
    main()
