"""HTTP load on ``POST /v1/search`` (retrieve + rerank, no LM) at several concurrency levels.

Starts the real server (``rag_app.server.run.serve``, uvicorn) in a subprocess on a free loopback port,
or targets ``--url``; an async httpx client on loopback then keeps ``c`` requests in flight (closed
loop) until ``--requests`` have completed, for each ``c`` in ``--concurrency``. Reported per level:
throughput (completed requests/s), client-side latency p50/p95/p99, errors by status, the median of
the server's own stage timings, and the rerank score-cache hit ratio over the level (from /metrics).

Every request carries a different query ("<section heading>" variants over the BuildDaily sample
pages), so the rerank score cache does not turn the run into a cache benchmark; the hit ratio printed
says how far that held.

Without ``--url`` the index is built from ``data/builddaily/resources`` into a temp dir with the bundled
MiniLM embedder. The reranker is the configured one when its weights are on this machine; otherwise
(``--reranker auto``) a MiniLM-L6-architecture cross-encoder (real MiniLM encoder weights + a seeded
head, from ``tests/tiny_models.py``): the same shape as ms-marco-MiniLM-L-6-v2, about 1/8 of the
compute of bge-reranker-base, so absolute numbers are NOT those of the default model.

The client shares the machine (and here the 2 CPU cores) with the server, and other jobs may be
running: treat the numbers as noisy, and compare runs from the same machine only.

    python benchmarks/load.py                                  # 200 requests at concurrency 1, 4, 16
    python benchmarks/load.py --requests 100 --json            # one JSON line per level on stdout
    python benchmarks/load.py --url http://127.0.0.1:8080 --api-key "$KEY" --site builddaily
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:
    from benchmarks._common import REPO, log, machine_line, percentile_ms, temp_dir
except ImportError:  # run as a script: python benchmarks/load.py
    from _common import REPO, log, machine_line, percentile_ms, temp_dir  # type: ignore[no-redef]

import httpx

from rag_app.core.settings import Settings

SAMPLE = REPO / "data" / "builddaily" / "resources"
MODEL_CACHE = Path(os.environ.get("RAG_BENCH_CACHE", "/tmp/rag_bench_cache"))
_TEMPLATES = ("{h}", "{t}: {h}", "{h} in {t}", "how does {h} work?", "what should I know about {h}?")
_SERVER = (
    "import json, sys\n"
    "from rag_app.core.settings import Settings\n"
    "from rag_app.server.run import serve\n"
    "serve(Settings(**json.loads(sys.argv[1])), '127.0.0.1', int(sys.argv[2]), int(sys.argv[3]),"
    " log_level='warning')\n"
)


def sample_queries() -> list[str]:
    """Distinct questions built from the sample pages' titles and section headings."""
    pairs = []
    for path in sorted(SAMPLE.rglob("*.md")):
        text = path.read_text()
        title = re.search(r"^title:\s*(.+)$", text, re.M)
        for heading in re.findall(r"^##+ (.+)$", text, re.M):
            pairs.append(((title.group(1).strip() if title else path.stem), heading.strip()))
    queries = list(dict.fromkeys(t.format(t=title, h=h) for t in _TEMPLATES for title, h in pairs))
    return queries


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_reranker(settings: Settings, choice: str) -> dict[str, Any]:
    """Settings overrides for the reranker: the configured model if present, else MiniLM-arch CE."""
    if choice in ("auto", "settings"):
        from rag_app.models.files import resolve_model

        try:
            resolve_model(
                settings.reranker_model, settings.reranker_revision, settings.hf_cache_dir, kind="reranker"
            )
            return {}
        except Exception as exc:
            if choice == "settings":
                raise SystemExit(f"the configured reranker is not available: {exc}") from None
            log(
                f"configured reranker {settings.reranker_model} not on this machine; using a MiniLM-L6 "
                "architecture cross-encoder instead (about 1/8 of bge-reranker-base's compute)"
            )
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import build_minilm_cross_encoder, build_tiny_cross_encoder

    build = build_tiny_cross_encoder if choice == "tiny" else build_minilm_cross_encoder
    path = build(MODEL_CACHE / ("tiny-ce" if choice == "tiny" else "minilm-ce"))
    return {"reranker_model": str(path), "reranker_revision": None}


def start_server(settings: Settings, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, settings.model_dump_json(), str(port), str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=str(REPO),
    )
    url = f"http://127.0.0.1:{port}"
    limit = time.monotonic() + 300
    while time.monotonic() < limit:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise SystemExit(f"the server exited with {proc.returncode}:\n{err[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit("the server did not become ready within 300 s")


def cache_counters(client: httpx.Client) -> tuple[float, float] | None:
    try:
        text = client.get("/metrics").text
    except httpx.HTTPError:
        return None
    values = {}
    for name in ("rag_rerank_cache_hits_total", "rag_rerank_cache_misses_total"):
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        if not match:
            return None
        values[name] = float(match.group(1))
    return values["rag_rerank_cache_hits_total"], values["rag_rerank_cache_misses_total"]


async def run_level(
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    queries: list[str],
    start: int,
    concurrency: int,
    total: int,
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stage: dict[str, list[float]] = {}
    counter = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal counter
        while counter < total:
            i = counter
            counter += 1
            payload = {**body, "query": queries[(start + i) % len(queries)]}
            t0 = time.perf_counter()
            try:
                response = await client.post("/v1/search", json=payload, headers=headers)
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            elapsed = time.perf_counter() - t0
            if response.status_code != 200:
                errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                continue
            latencies.append(elapsed)
            for key, value in response.json().get("timings", {}).items():
                stage.setdefault(key, []).append(value)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": total,
        "ok": len(latencies),
        "errors": errors,
        "seconds": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 2) if wall else 0.0,
        "p50_ms": round(percentile_ms(latencies, 50), 1),
        "p95_ms": round(percentile_ms(latencies, 95), 1),
        "p99_ms": round(percentile_ms(latencies, 99), 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else float("nan"),
        "server_median_ms": {
            k.removesuffix("_ms"): round(statistics.median(v), 1) for k, v in sorted(stage.items())
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="target a running server instead of starting one")
    p.add_argument("--api-key", default=os.environ.get("RAG_API_KEY"), help="bearer key (or $RAG_API_KEY)")
    p.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    p.add_argument("--warmup", type=int, default=8, help="unmeasured requests before the first level")
    p.add_argument("--site", default="builddaily")
    p.add_argument("--k", type=int, default=None, help="candidates retrieved (server default 20)")
    p.add_argument("--top-n", type=int, default=None, help="passages kept after rerank (server default 5)")
    p.add_argument("--config", type=Path, default=None, help="rag.toml for a started server")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers of a started server")
    p.add_argument(
        "--reranker",
        choices=["auto", "settings", "minilm", "tiny"],
        default="auto",
        help="started server: configured model if present (auto), else a MiniLM-arch cross-encoder",
    )
    p.add_argument("--workdir", default="/tmp/rag_bench")
    p.add_argument("--json", action="store_true", help="one JSON line per level on stdout")
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.requests < 1 or not levels or min(levels) < 1:
        raise SystemExit("--requests and every --concurrency level must be at least 1")

    log(f"machine: {machine_line()}")
    queries = sample_queries()
    body: dict[str, Any] = {"site": args.site}
    if args.k:
        body["k"] = args.k
    if args.top_n:
        body["top_n"] = args.top_n
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    if args.url:
        run(args, args.url.rstrip("/"), headers, body, queries, levels)
        return
    with temp_dir(args.workdir, "load", keep=False) as data_dir:
        base = Settings.load(args.config) if args.config else Settings()
        overrides: dict[str, Any] = {
            "data_dir": data_dir,
            "lm_model": None,
            "sites": {"builddaily": ["resources"]},
        }
        overrides.update(pick_reranker(base, args.reranker))
        # enough queue for the highest level: this measures latency under load, not 503s
        overrides["max_queue"] = max(base.max_queue, max(levels) * 2)
        settings = base.model_copy(update=overrides)
        from rag_app.ingest.pipeline import ingest_paths

        t0 = time.perf_counter()
        report = ingest_paths(settings, "builddaily", "resources", [SAMPLE], progress=False)
        log(f"sample index: {report.chunks_written} chunks in {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        proc, url = start_server(settings, args.workers)
        log(
            f"server ready at {url} in {time.perf_counter() - t0:.1f}s ({args.workers} worker(s), "
            f"reranker {settings.reranker_model})"
        )
        try:
            run(args, url, headers, body, queries, levels)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def run(
    args: argparse.Namespace,
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    queries: list[str],
    levels: list[int],
) -> None:
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        ready = client.get("/readyz")
        if ready.status_code != 200:
            log(f"warning: {url}/readyz answers {ready.status_code}: {ready.text[:300]}")
        for i in range(args.warmup):
            client.post("/v1/search", json={**body, "query": f"warm-up {queries[-1 - i]}"})
        offset = 0
        for level in levels:
            before = cache_counters(client)
            result = asyncio.run(run_level(url, headers, body, queries, offset, level, args.requests))
            offset += args.requests
            after = cache_counters(client)
            if before and after:
                hits, misses = after[0] - before[0], after[1] - before[1]
                result["rerank_cache_hit_ratio"] = round(hits / (hits + misses), 3) if hits + misses else 0.0
            if args.json:
                print(json.dumps(result), flush=True)
            else:
                stages = " ".join(
                    f"{k}={v}"
                    for k, v in result["server_median_ms"].items()
                    if k in ("embed", "search", "rerank", "total")
                )
                print(
                    f"concurrency {level:>3}: {result['ok']}/{result['requests']} ok, "
                    f"{result['throughput_rps']:.1f} req/s, p50 {result['p50_ms']:.0f} ms, "
                    f"p95 {result['p95_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms; server medians (ms): "
                    f"{stages}; rerank cache hit ratio {result.get('rerank_cache_hit_ratio', 'n/a')}"
                    + (f"; errors {result['errors']}" if result["errors"] else ""),
                    flush=True,
                )
        if offset > len(queries):
            log(
                f"note: {offset} requests over {len(queries)} distinct queries; later ones repeat "
                "(rerank cache hits)"
            )


if __name__ == "__main__":
    main()
