"""Ingest throughput with the bundled MiniLM: load -> chunk -> embed -> upsert into a temp data dir.

Runs ``rag_app.ingest.pipeline.ingest_paths`` (site ``builddaily``, collection ``resources``) twice on a real
corpus: the first run embeds and writes every chunk (reported as chunks/s, end to end, index refresh
included), the second is the idempotent re-ingest (every document unchanged, nothing to embed). The
model is loaded before the clock starts, so chunks/s is steady-state throughput, not model start-up.

    python benchmarks/ingest.py                       # fastapi_docs corpus, precision auto (bf16 here)
    python benchmarks/ingest.py --precision float32 --json
    python benchmarks/ingest.py --large-mb 50 --json   # one N-MB text file: peak RSS and time
    python benchmarks/ingest.py --format html --json   # FastAPI docs pages as HTML: pages/s, extraction
    python benchmarks/ingest.py --format pdf --json    # FinanceBench filings as PDFs: pages/s

``--large-mb N`` writes one plain-text file of N MB made of real text from ``../shared/data`` corpora
(into the temp dir, never the repo) and ingests it alone: it measures that a huge document streams
(chunked and embedded in ``embed_batch_size`` batches) in bounded memory. Peak RSS is sampled during
the ingest (model already loaded) and compared with the RSS before it.

``--format html`` renders the shared FastAPI docs pages (``--pages``, default all 152) into HTML pages
wrapped in a site's boilerplate (``tests/format_samples.py``: navigation, sidebar, cookie banner,
footer, scripts) and reports the loader's pages/s (parse only) and ingest pages/s (parse, chunk,
embed, write), with the extraction quality: the share of the body's words kept (text blocks found
whole in the extracted text) and the share of boilerplate words that leaked in. ``--format pdf``
writes the FinanceBench filings to PDFs with fpdf2 (one corpus page per PDF page; 168 pages in 84
files) and reports the same two rates.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
    p.add_argument(
        "--token-only-embedder",
        action="store_true",
        help="--large-mb: a STAND-IN embedder (MiniLM's real tokenizer, no model forward) to measure the "
        "pipeline's own memory at sizes whose embedding takes hours on 2 cores",
    )
    p.add_argument("--format", choices=["html", "pdf"], default=None, help="pages/s of HTML or PDF files")
    p.add_argument("--pages", type=int, default=None, help="with --format html: how many docs pages")
    args = p.parse_args()
    if args.large_mb:
        large_document(args)
        return
    if args.format:
        format_throughput(args)
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


STAND_IN = "token-only STAND-IN (no model forward)"


class TokenOnlyEmbedder:
    """A STAND-IN for memory measurements only: the real embedder's tokenizer and identity, but
    ``embed_documents`` returns seeded unit vectors instead of running the model. Chunking, staging,
    commit, indexes and the document table run exactly as with the model; what it leaves out is the
    model's per-batch activations, which do not grow with the document (measure them with a small
    ``--large-mb`` run of the real model)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.model_id = real.model_id
        self.max_tokens = real.max_tokens
        self._rng = np.random.default_rng(0)

    @property
    def dimension(self) -> int:
        return self.real.dimension

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.real.token_spans(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        rows = self._rng.standard_normal((len(texts), self.dimension)).astype(np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


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
        if args.token_only_embedder:
            embedder = TokenOnlyEmbedder(embedder)
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
        report = ingest_paths(settings, SITE, COLLECTION, [src], progress=False, embedder=embedder)
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
        "precision": getattr(embedder, "precision", None),
        "embedder": STAND_IN if args.token_only_embedder else embedder.model_id,
        "embed_batch_size": settings.embed_batch_size,
        "machine": machine_line(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:20s} {value}")


def write_html_pages(folder: Path, limit: int | None) -> tuple[int, dict[str, float]]:
    """FastAPI docs pages as HTML files in ``folder``; returns (pages, extraction quality by words)."""
    from rag_app.ingest.loaders import load_file
    from tests.format_samples import fastapi_pages, render_html_page, squash

    pages = fastapi_pages(DATA_DIR, limit)
    titles = [t for t, _ in pages]
    kept = body = leaked = boiler = 0
    for i, (title, markdown) in enumerate(pages):
        page = render_html_page(markdown, title=title, siblings=titles[max(0, i - 10) : i + 10])
        path = folder / f"page{i:03d}.html"
        path.write_text(page.html, encoding="utf-8")
        text = squash(" ".join(d.text for d in load_file(path)))
        body += sum(len(b.split()) for b in page.body_blocks)
        kept += sum(len(b.split()) for b in page.body_blocks if b in text)
        boiler += sum(len(b.split()) for b in page.boilerplate_blocks)
        leaked += sum(
            len(b.split())
            for b in page.boilerplate_blocks
            if b in text and not any(b in x for x in page.body_blocks)
        )
    return len(pages), {
        "body_words_kept": round(kept / body, 4),
        "boilerplate_words_leaked": round(leaked / boiler, 4),
    }


def write_pdfs(folder: Path) -> int:
    """Every FinanceBench filing as a PDF in ``folder`` (one corpus page per PDF page); returns pages."""
    from tests.format_samples import financebench_filings, text_pdf

    pages = 0
    for name, filing in financebench_filings(DATA_DIR).items():
        (folder / f"{name}.pdf").write_bytes(text_pdf([p.text for p in filing], title=name))
        pages += len(filing)
    return pages


def format_throughput(args: argparse.Namespace) -> None:
    """``--format html|pdf``: loader pages/s (parse only) and ingest pages/s (parse+chunk+embed+write)."""
    from rag_app.ingest.loaders import load_paths

    with temp_dir(args.workdir, f"ingest_{args.format}", keep=args.keep) as work:
        folder = Path(work) / "files"
        folder.mkdir()
        quality: dict[str, float] = {}
        if args.format == "html":
            pages, quality = write_html_pages(folder, args.pages)
        else:
            pages = write_pdfs(folder)
        t0 = time.perf_counter()
        loaded = load_paths([folder])
        parse_s = time.perf_counter() - t0
        overrides = {"data_dir": Path(work) / "rag", "embedder_precision": args.precision}
        if args.batch_size:
            overrides["embed_batch_size"] = args.batch_size
        settings = Settings(**overrides)
        embedder = load_embedder(settings)
        log(f"{pages} {args.format} pages in {loaded.files} files parsed in {parse_s:.1f}s; ingesting")
        t0 = time.perf_counter()
        report = ingest_paths(settings, SITE, COLLECTION, [folder], progress=False)
        ingest_s = time.perf_counter() - t0
    result = {
        "format": args.format,
        "files": loaded.files,
        "pages": pages,
        "parse_s": round(parse_s, 2),
        "parse_pages_per_s": round(pages / parse_s, 1),
        "chunks": report.chunks_written,
        "ingest_s": round(ingest_s, 1),
        "ingest_pages_per_s": round(pages / ingest_s, 2),
        "chunks_per_s": round(report.chunks_written / ingest_s, 1),
        **quality,
        "precision": embedder.precision,
        "machine": machine_line(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:26s} {value}")


if __name__ == "__main__":
    main()
