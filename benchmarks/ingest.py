"""Ingest throughput with the bundled MiniLM: load -> chunk -> embed -> upsert into a temp data dir.

Runs ``rag_app.ingest.pipeline.ingest_paths`` (site ``builddaily``, collection ``resources``) twice on a real
corpus: the first run embeds and writes every chunk (reported as chunks/s, end to end, index refresh
included), the second is the idempotent re-ingest (every document unchanged, nothing to embed). The
model is loaded before the clock starts, so chunks/s is steady-state throughput, not model start-up.

    python benchmarks/ingest.py                       # fastapi_docs corpus, precision auto (bf16 here)
    python benchmarks/ingest.py --precision float32 --json
    python benchmarks/ingest.py --large-mb 50 --json   # one N-MB text file: peak RSS and time

``--large-mb N`` writes one plain-text file of N MB made of real text from ``../shared/data`` corpora
(into the temp dir, never the repo) and ingests it alone: it measures that a huge document streams
(chunked and embedded in ``embed_batch_size`` batches) in bounded memory. Peak RSS is sampled during
the ingest (model already loaded) and compared with the RSS before it.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

try:
    from benchmarks._common import DATA_DIR, log, machine_line, temp_dir
except ImportError:  # run as a script: python benchmarks/ingest.py
    from _common import DATA_DIR, log, machine_line, temp_dir  # type: ignore[no-redef]

try:
    from benchmarks._common import CORPORA
except ImportError:
    from _common import CORPORA  # type: ignore[no-redef]

from rag_app.core.settings import Settings
from rag_app.ingest.pipeline import ingest_paths
from rag_app.models.embeddings import load_embedder

SITE, COLLECTION = "builddaily", "resources"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", type=Path, default=DATA_DIR / "fastapi_docs" / "corpus.jsonl")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="embed batch size (default: settings)")
    p.add_argument("--workdir", default="/tmp/rag_bench")
    p.add_argument("--keep", action="store_true", help="keep the temp data dir")
    p.add_argument("--json", action="store_true", help="one JSON line on stdout")
    p.add_argument("--large-mb", type=float, default=None, help="ingest one text file of this many MB")
    args = p.parse_args()
    if args.large_mb:
        large_document(args)
        return

    machine = machine_line()
    log(f"machine: {machine}")
    with temp_dir(args.workdir, f"ingest_{args.precision}", keep=args.keep) as data_dir:
        overrides = {"data_dir": data_dir, "embedder_precision": args.precision}
        if args.batch_size:
            overrides["embed_batch_size"] = args.batch_size
        settings = Settings(**overrides)
        t0 = time.perf_counter()
        embedder = load_embedder(settings)  # cached per settings: ingest_paths reuses this instance
        load_s = time.perf_counter() - t0
        log(f"model {embedder.model_id} loaded in {load_s:.1f}s, precision {embedder.precision}")

        t0 = time.perf_counter()
        first = ingest_paths(settings, SITE, COLLECTION, [args.path], progress=False)
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = ingest_paths(settings, SITE, COLLECTION, [args.path], progress=False)
        second_s = time.perf_counter() - t0

    docs = first.added + first.updated + first.unchanged
    result = {
        "corpus": str(args.path),
        "precision": embedder.precision,
        "embed_batch_size": settings.embed_batch_size,
        "docs": docs,
        "chunks": first.chunks_written,
        "seconds": round(first_s, 2),
        "chunks_per_s": round(first.chunks_written / first_s, 1),
        "docs_per_s": round(docs / first_s, 1),
        "reingest_s": round(second_s, 2),
        "reingest_chunks_written": second.chunks_written,
        "reingest_unchanged": second.unchanged,
        "model_load_s": round(load_s, 1),
        "indexes": first.indexes,
        "machine": machine,
        "machine_end": machine_line(),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"corpus     {result['corpus']}")
    print(f"machine    {machine}")
    print(f"model      {embedder.model_id} ({result['precision']}, batch {result['embed_batch_size']})")
    print(f"docs       {docs}")
    print(f"chunks     {result['chunks']}")
    print(f"seconds    {result['seconds']:.1f}  (load+chunk+embed+write+index, model preloaded)")
    print(f"chunks/s   {result['chunks_per_s']:.1f}")
    print(
        f"re-ingest  {result['reingest_s']:.2f}s ({second.unchanged} unchanged, "
        f"{second.chunks_written} chunks written)"
    )


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def write_large_text(path: Path, mb: float) -> int:
    """Real prose from the shared corpora, repeated until ``mb`` MB; returns the bytes written."""
    texts: list[str] = []
    for name in CORPORA:
        corpus = DATA_DIR / name
        if corpus.is_file():
            with corpus.open() as f:
                texts += [json.loads(line).get("text", "") for line in f if line.strip()]
    texts = [t for t in texts if t.strip()]
    target, written = int(mb * 1_000_000), 0
    with path.open("w") as out:
        while written < target:
            for t in texts:
                block = t.strip() + "\n\n"
                out.write(block)
                written += len(block.encode())
                if written >= target:
                    break
    return written


def large_document(args: argparse.Namespace) -> None:
    """Ingest one ``--large-mb`` text file; report time, chunks and peak RSS over the ingest."""
    with temp_dir(args.workdir, "ingest_large", keep=args.keep) as data_dir:
        src = Path(data_dir) / "large.txt"
        size = write_large_text(src, args.large_mb)
        overrides = {"data_dir": Path(data_dir) / "rag", "embedder_precision": args.precision}
        if args.batch_size:
            overrides["embed_batch_size"] = args.batch_size
        settings = Settings(**overrides)
        embedder = load_embedder(settings)
        base = _rss_mb()
        peak = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                peak[0] = max(peak[0], _rss_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        log(f"ingesting {size / 1e6:.1f} MB ({src}); RSS before {base:.0f} MB")
        t0 = time.perf_counter()
        report = ingest_paths(settings, SITE, COLLECTION, [src], progress=False)
        seconds = time.perf_counter() - t0
        stop.set()
        sampler.join()
    result = {
        "large_mb": round(size / 1e6, 2),
        "chunks": report.chunks_written,
        "seconds": round(seconds, 1),
        "chunks_per_s": round(report.chunks_written / seconds, 1),
        "rss_before_mb": round(base),
        "peak_rss_mb": round(peak[0]),
        "peak_rss_growth_mb": round(peak[0] - base),
        "precision": embedder.precision,
        "embed_batch_size": settings.embed_batch_size,
        "machine": machine_line(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:20s} {value}")


if __name__ == "__main__":
    main()
