"""Top-20 vector search: LanceDB flat scan vs the ANN index the store builds, by table size.

For each row count this writes a table in the store's own schema under a temp dir, then measures

* ``flat``: the exact scan the store runs below ``ann_threshold_rows`` (the query is built exactly as
  ``VectorStore._vector`` builds it: cosine, the result columns, limit 20);
* the index (``hnsw_sq`` = the store's ``ann_index_config("IVF_HNSW_SQ")``, ``ivf_pq`` = the store's
  IVF_PQ; ``hnsw_sq_fast`` / ``ivf_pq_fast`` = the same with cheaper builds, for 1M rows on 2 cores,
  see :func:`index_config`), its build time, and its latency and recall@20 under several search
  knobs (``ef`` / ``nprobes`` / ``refine_factor``);
* ``*-store``: the same search through ``VectorStore.search(mode="vector")``, i.e. what the service
  pays per table (open table, row count, embedder check, query);

with median and p95 latency over ``--queries`` queries and recall@20 against the exact top-20
(numpy, on the same vectors).

Vectors (see README "Which vectors"): recall is measured on real text embedded with the bundled
MiniLM (384-d sentence windows of the bundled corpora, queries = held-out windows and real SciFact
queries, cached under /tmp/rag_bench_cache), and on 768-d vectors built from those real embeddings
(``concat``: two real embeddings of different texts side by side, renormalised) for the row counts
real text cannot reach here. ``--embedder ollama`` uses nomic-embed-text (768-d) instead.

    python benchmarks/search.py --rows 10000,30000,100000 --queries 50   # ~5 min on 2 cores
    python benchmarks/search.py --rows 100000,1000000 --index hnsw_sq_fast --no-real-bench --json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

try:
    from benchmarks._common import (
        exact_top_k,
        latency_stats,
        log,
        machine_line,
        normalise,
        real_vectors,
        recall_at_k,
        temp_dir,
    )
except ImportError:  # run as a script: python benchmarks/search.py
    from _common import (  # type: ignore[no-redef]
        exact_top_k,
        latency_stats,
        log,
        machine_line,
        normalise,
        real_vectors,
        recall_at_k,
        temp_dir,
    )

from rag_app.core.settings import Settings
from rag_app.store.schema import chunk_schema
from rag_app.store.search import RESULT_COLUMNS
from rag_app.store.vector_store import VectorStore, ann_index_config

K = 20
SITE, COLLECTION = "builddaily", "resources"

#: Search knob sets tried per index family ("default" = what the store sends today: nothing).
DEFAULT_KNOBS = {
    "hnsw": "default;ef=64;ef=128;ef=256;ef=64+refine=2",
    "pq": "default;refine=5;refine=10;nprobes=64+refine=10",
}


def index_config(name: str, rows: int) -> Any:
    """The LanceDB index config of a named variant (the first two are exactly the store's)."""
    from lancedb.index import HnswSq, IvfPq

    if name == "hnsw_sq":
        return ann_index_config("IVF_HNSW_SQ")
    if name == "ivf_pq":
        return ann_index_config("IVF_PQ")
    if name == "hnsw_sq_fast":  # the store's IVF_HNSW_SQ with a 3x cheaper graph build (ef_construction 300)
        return HnswSq(distance_type="cosine", ef_construction=100)
    if name == "ivf_pq_fast":  # cheaper k-means training: 1M rows on 2 cores in minutes, not an hour
        return IvfPq(
            distance_type="cosine",
            num_partitions=max(16, int(math.sqrt(rows) / 4)),
            sample_rate=64,
            max_iterations=10,
        )
    raise SystemExit(f"unknown index {name!r}; use hnsw_sq, hnsw_sq_fast, ivf_pq or ivf_pq_fast")


def describe_index(name: str, rows: int) -> str:
    cfg = index_config(name, rows)
    return repr(cfg)


def parse_knobs(spec: str) -> list[dict[str, int]]:
    """``"default;ef=64;nprobes=64+refine=10"`` -> [{}, {"ef": 64}, {"nprobes": 64, "refine": 10}]."""
    out: list[dict[str, int]] = []
    for item in spec.split(";"):
        item = item.strip()
        if not item:
            continue
        knobs: dict[str, int] = {}
        if item != "default":
            for part in item.split("+"):
                key, _, value = part.partition("=")
                if key not in {"ef", "nprobes", "refine"}:
                    raise SystemExit(f"unknown knob {key!r} in {spec!r} (ef, nprobes, refine)")
                knobs[key] = int(value)
        out.append(knobs)
    return out


def knob_label(knobs: dict[str, int]) -> str:
    return "+".join(f"{k}={v}" for k, v in knobs.items()) or "default"


# ------------------------------------------------------------------------------------ vectors


def synthesize(
    real: dict[str, np.ndarray], rows: int, dim: int, method: str, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """``rows`` x ``dim`` base vectors and matching queries, from real embeddings (see module doc)."""
    rng = np.random.default_rng(seed)
    base, queries = real["base"], real["queries"]
    n, d = base.shape
    if method == "real":
        if rows > n or dim != d:
            raise SystemExit(f"only {n} real {d}-d vectors: cannot serve {rows} x {dim}")
        return base[:rows], queries, f"real-{d}"
    if method == "gaussian":  # for contrast only: what not to benchmark ANN recall on
        return (
            normalise(rng.standard_normal((rows, dim), dtype=np.float32)),
            normalise(rng.standard_normal((len(queries), dim), dtype=np.float32)),
            f"gaussian-{dim}",
        )
    if method == "concat":
        if dim != 2 * d:
            raise SystemExit(f"concat makes {2 * d}-d vectors from {d}-d ones; use --synth mix for {dim}-d")
        # distinct (a, b) pairs, a != b: row = [x_a ; x_b] / sqrt(2), cos = mean of the halves' cosines
        pairs = rng.choice(n * n, size=min(n * n, int(rows * 1.01) + 16), replace=False)
        a, b = pairs // n, pairs % n
        keep = a != b
        a, b = a[keep][:rows], b[keep][:rows]
        if len(a) < rows:
            raise SystemExit(f"{n} real vectors give too few distinct pairs for {rows} rows")
        out = np.empty((rows, dim), dtype=np.float32)
        out[:, :d] = base[a]
        out[:, d:] = base[b]
        out *= np.float32(1 / math.sqrt(2))
        partner = rng.permutation(len(queries))
        q = np.concatenate([queries, queries[partner]], axis=1) / np.float32(math.sqrt(2))
        return out, q.astype(np.float32), f"concat-2x{d}"
    if method == "mix":
        # row = x_a + w * x_b (w ~ U(0, 0.5)): a real passage pulled toward another real one; then a
        # random orthonormal map to dim (if dim != d) plus 5% isotropic noise to fill the new dims.
        a = rng.integers(0, n, rows)
        b = rng.integers(0, n, rows)
        w = rng.uniform(0, 0.5, (rows, 1)).astype(np.float32)
        out = normalise(base[a] + w * base[b])
        q = queries
        if dim != d:
            proj, _ = np.linalg.qr(rng.standard_normal((dim, d)).astype(np.float32))
            sigma = np.float32(0.05 / math.sqrt(dim))
            out = normalise(out @ proj.T + sigma * rng.standard_normal((rows, dim), dtype=np.float32))
            q = normalise(q @ proj.T + sigma * rng.standard_normal((len(q), dim), dtype=np.float32))
        return out, q, f"mix-{d}to{dim}"
    raise SystemExit(f"unknown --synth {method!r}")


def arrow_rows(vectors: np.ndarray, schema: pa.Schema) -> pa.Table:
    """Rows in the store's schema: ``chunk_index`` = row number (how results map back to ids)."""
    n, dim = vectors.shape
    idx = np.arange(n)
    ids = pa.array([f"{i:024x}" for i in range(n)])
    null_str = pa.nulls(n, pa.string())
    null_list = pa.nulls(n, pa.list_(pa.string()))
    cols = {
        "id": ids,
        "doc_id": pa.array([f"doc-{i // 4}" for i in range(n)]),
        "doc_hash": null_str,
        "site": pa.array([SITE] * n),
        "collection": pa.array([COLLECTION] * n),
        "chunk_index": pa.array(idx.astype(np.int32)),
        "title": null_str,
        "text": pa.array([f"synthetic passage {i}" for i in range(n)]),
        "search_text": null_str,
        "source": null_str,
        "heading_path": null_list,
        "date": pa.nulls(n, pa.date32()),
        "tickers": null_list,
        "tags": null_list,
        "metadata_json": null_str,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
    }
    return pa.table([cols[f.name] for f in schema], schema=schema)


# ------------------------------------------------------------------------------------ measuring


@dataclass
class Result:
    rows: int
    dim: int
    method: str
    median_ms: float
    p95_ms: float
    recall_at_20: float
    build_s: float | None
    knobs: str = "default"
    queries: int = 0
    vectors: str = ""
    index: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def run_queries(
    table: Any,
    queries: np.ndarray,
    knobs: dict[str, int],
    *,
    flat: bool,
    budget_s: float,
    min_queries: int = 5,
    warmup: int = 3,
) -> tuple[list[float], list[list[int]]]:
    """Time each query as the store builds it; stop early past ``budget_s`` (flat scans at 1M)."""

    def one(q: np.ndarray) -> list[int]:
        query = table.search(np.asarray(q, dtype=np.float32), vector_column_name="vector")
        query = query.distance_type("cosine").select([*RESULT_COLUMNS, "_distance"]).limit(K)
        if flat:
            query = query.bypass_vector_index()
        if "ef" in knobs:
            query = query.ef(knobs["ef"])
        if "nprobes" in knobs:
            query = query.nprobes(knobs["nprobes"])
        if "refine" in knobs:
            query = query.refine_factor(knobs["refine"])
        return query.to_arrow()["chunk_index"].to_pylist()

    for q in queries[: min(warmup, len(queries))]:
        one(q)
    return time_queries(one, queries, budget_s=budget_s, min_queries=min_queries)


def run_store(
    settings: Settings, model_id: str, queries: np.ndarray, *, budget_s: float, min_queries: int = 5
) -> tuple[list[float], list[list[int]]]:
    """The service path: ``VectorStore.search`` (opens the table, checks the embedder, queries)."""
    store = VectorStore(settings)

    def one(q: np.ndarray) -> list[int]:
        passages = store.search(
            SITE, [COLLECTION], mode="vector", k=K, query_text="", query_vector=q, model_id=model_id
        )
        return [int(p.metadata["chunk_index"]) for p in passages]

    one(queries[0])
    return time_queries(one, queries, budget_s=budget_s, min_queries=min_queries)


def time_queries(
    one: Any, queries: np.ndarray, *, budget_s: float, min_queries: int
) -> tuple[list[float], list[list[int]]]:
    """Per-query latency and results; stops once ``min_queries`` ran and ``budget_s`` is spent."""
    times: list[float] = []
    found: list[list[int]] = []
    start = time.perf_counter()
    for q in queries:
        t0 = time.perf_counter()
        found.append(one(q))
        times.append(time.perf_counter() - t0)
        if len(times) >= min_queries and time.perf_counter() - start > budget_s:
            break
    return times, found


def bench_rows(
    rows: int, vectors: np.ndarray, queries: np.ndarray, source: str, args: argparse.Namespace
) -> list[Result]:
    dim = vectors.shape[1]
    results: list[Result] = []
    model_id = f"bench:{source}"
    exact = exact_top_k(vectors, queries, K)

    def emit(r: Result) -> None:
        results.append(r)
        if args.json:
            print(json.dumps(asdict(r)), flush=True)
        log(
            f"rows={r.rows} dim={r.dim} {r.method:<16} {r.knobs:<22} median {r.median_ms:8.1f} ms  "
            f"p95 {r.p95_ms:8.1f} ms  recall@20 {r.recall_at_20:.3f}  (n={r.queries})"
            + (f"  build {r.build_s:.0f}s" if r.build_s is not None else "")
        )

    indexes = args.large_index if rows >= args.large_rows else args.index
    with temp_dir(args.workdir, f"search_{source}_{rows}", keep=args.keep) as data_dir:
        settings = Settings(data_dir=data_dir, ann_threshold_rows=10**12)
        store = VectorStore(settings)
        t0 = time.perf_counter()
        table = store.db.create_table(
            f"{SITE}__{COLLECTION}", data=arrow_rows(vectors, chunk_schema(dim, model_id))
        )
        write_s = time.perf_counter() - t0
        log(f"rows={rows}: wrote {source} table in {write_s:.1f}s")
        base = {"rows": rows, "dim": dim, "vectors": source}

        times, found = run_queries(table, queries, {}, flat=True, budget_s=args.flat_budget_s)
        emit(
            Result(
                **base,
                method="flat",
                **latency_stats(times),
                recall_at_20=recall_at_k(found, exact[: len(found)], K),
                build_s=None,
                queries=len(times),
                notes=f"table write {write_s:.1f}s",
            )
        )
        if args.store_path:
            times, found = run_store(settings, model_id, queries, budget_s=args.flat_budget_s)
            emit(
                Result(
                    **base,
                    method="flat-store",
                    **latency_stats(times),
                    recall_at_20=recall_at_k(found, exact[: len(found)], K),
                    build_s=None,
                    queries=len(times),
                )
            )
        for name in [i for i in indexes.split(",") if i]:
            family = "hnsw" if name.startswith("hnsw") else "pq"
            t0 = time.perf_counter()
            table.create_index("vector", config=index_config(name, rows), replace=True)
            build_s = time.perf_counter() - t0
            desc = describe_index(name, rows)
            for knobs in parse_knobs(args.hnsw_knobs if family == "hnsw" else args.pq_knobs):
                times, found = run_queries(table, queries, knobs, flat=False, budget_s=args.flat_budget_s)
                emit(
                    Result(
                        **base,
                        method=name,
                        knobs=knob_label(knobs),
                        **latency_stats(times),
                        recall_at_20=recall_at_k(found, exact[: len(found)], K),
                        build_s=round(build_s, 1),
                        queries=len(times),
                        index=desc,
                    )
                )
            if args.store_path:
                times, found = run_store(settings, model_id, queries, budget_s=args.flat_budget_s)
                emit(
                    Result(
                        **base,
                        method=f"{name}-store",
                        **latency_stats(times),
                        recall_at_20=recall_at_k(found, exact[: len(found)], K),
                        build_s=round(build_s, 1),
                        queries=len(times),
                        index=desc,
                    )
                )
    return results


# ------------------------------------------------------------------------------------ report


def crossing(points: list[tuple[int, float]], budget_ms: float) -> tuple[float | None, str]:
    """Rows where latency crosses ``budget_ms``, on log-log axes between the neighbouring sizes."""
    below = [f for f in points if f[1] <= budget_ms]
    above = [f for f in points if f[1] > budget_ms]
    if not above:
        return None, f"meets the budget at every measured size (up to {points[-1][0]:,} rows)"
    if not below or below[-1][0] > above[0][0]:
        below = [f for f in below if f[0] < above[0][0]]
    if not below:
        return None, f"misses the budget already at {points[0][0]:,} rows: measure smaller tables"
    (r0, m0), (r1, m1) = below[-1], above[0]
    exponent = math.log(m1 / m0) / math.log(r1 / r0) if m1 > m0 and r1 > r0 else 1.0
    cross = r0 * (budget_ms / m0) ** (1 / exponent)
    return cross, f"~{cross:,.0f} rows (between {r0:,} and {r1:,}, latency ~ rows^{exponent:.2f} there)"


def recommend(results: list[Result], budget_ms: float, min_recall: float, dim: int) -> list[str]:
    """Threshold = the row count where the flat scan's median or p95 crosses the latency budget.

    Flat-scan latency is not linear in rows here (it steps up once the vectors outgrow ~32 MB), so
    the crossing is interpolated between the two measured sizes around it (a power law between
    neighbours). Sizes measured more than once (several runs) count with their worst value: the
    machine is shared, and the budget must hold under load too.
    """
    lines = [f"Recommendation (budget {budget_ms:.0f} ms for the vector query, {dim}-d vectors):"]
    worst: dict[int, tuple[float, float]] = {}
    for r in results:
        if r.method == "flat" and r.dim == dim:
            old = worst.get(r.rows, (0.0, 0.0))
            worst[r.rows] = (max(old[0], r.median_ms), max(old[1], r.p95_ms))
    if not worst:
        return [*lines, "  no flat-scan measurements"]
    lines.append(
        "  flat scan median / p95 (worst run): "
        + ", ".join(f"{r:,}: {m:.0f}/{p:.0f} ms" for r, (m, p) in sorted(worst.items()))
    )
    cross_m, text_m = crossing(sorted((r, v[0]) for r, v in worst.items()), budget_ms)
    cross_p, text_p = crossing(sorted((r, v[1]) for r, v in worst.items()), budget_ms)
    lines.append(f"  median reaches {budget_ms:.0f} ms: {text_m}")
    lines.append(f"  p95 reaches {budget_ms:.0f} ms:    {text_p}")
    crosses = [c for c in (cross_m, cross_p) if c is not None]
    nice = round_down(min(crosses)) if crosses else None
    indexed = {r.rows for r in results if r.dim == dim and not r.method.startswith("flat")}
    for rows in sorted(indexed):
        ok = [
            r
            for r in results
            if r.rows == rows
            and r.dim == dim
            and not r.method.startswith("flat")
            and not r.method.endswith("-store")
            and r.recall_at_20 >= min_recall
        ]
        if ok:
            best = min(ok, key=lambda r: r.median_ms)
            lines.append(
                f"  {rows:,} rows: fastest index setting with recall@20 >= {min_recall}: {best.method} "
                f"{best.knobs} ({best.median_ms:.1f} ms median, recall {best.recall_at_20:.3f}, "
                f"built in {best.build_s:.0f}s)"
            )
        else:
            lines.append(f"  {rows:,} rows: no index setting reached recall@20 >= {min_recall}")
    index_rows = [r for r in results if r.dim == dim and not r.method.startswith("flat")]
    index_rows = [r for r in index_rows if not r.method.endswith("-store")]
    settings: dict[tuple[str, str], list[Result]] = {}
    for r in index_rows:
        settings.setdefault((r.method.removesuffix("_fast"), r.knobs), []).append(r)
    sizes = {r.rows for r in index_rows}
    everywhere = [
        (max(r.median_ms for r in rs), key, min(r.recall_at_20 for r in rs))
        for key, rs in settings.items()
        if {r.rows for r in rs} == sizes and min(r.recall_at_20 for r in rs) >= min_recall
    ]
    if everywhere:
        worst_ms, (method, knobs), worst_recall = min(everywhere)
        lines.append(
            f"  setting that keeps recall@20 >= {min_recall} at every indexed size: {method}(_fast) {knobs} "
            f"(worst recall {worst_recall:.3f}, worst median {worst_ms:.1f} ms)"
        )
    if nice is not None:
        lines.append(f"  => ann_threshold_rows = {nice:,} (exact scan within budget below it)")
    return lines


def round_down(rows: float) -> int:
    """Down to a round number: 23,400 -> 20,000; 67,000 -> 65,000; 140,000 -> 100,000."""
    if rows < 1000:
        return 1000
    step = 10 ** math.floor(math.log10(rows)) / 2
    return int(max(step * 2 if rows >= step * 2 else step, (rows // step) * step))


def print_table(results: list[Result]) -> None:
    head = (
        f"{'vectors':<14} {'rows':>9} {'dim':>4} {'method':<18} {'knobs':<20} {'median ms':>10} "
        f"{'p95 ms':>9} {'recall@20':>9} {'build s':>8} {'n':>4}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        build = f"{r.build_s:.0f}" if r.build_s is not None else "-"
        print(
            f"{r.vectors:<14} {r.rows:>9,} {r.dim:>4} {r.method:<18} {r.knobs:<20} {r.median_ms:>10.1f} "
            f"{r.p95_ms:>9.1f} {r.recall_at_20:>9.3f} {build:>8} {r.queries:>4}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="10000,30000,100000,1000000", help="comma-separated row counts")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--embedder", choices=["minilm", "ollama"], default="minilm")
    p.add_argument("--real-rows", type=int, default=24000, help="real passages to embed (cached)")
    p.add_argument(
        "--real-bench",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also benchmark the real vectors themselves at --real-rows (native dim)",
    )
    p.add_argument("--synth", choices=["concat", "mix", "gaussian"], default="concat")
    p.add_argument("--index", default="hnsw_sq", help="below --large-rows (comma-separated)")
    p.add_argument("--large-rows", type=int, default=500_000)
    p.add_argument("--large-index", default="hnsw_sq_fast", help="indexes at/above --large-rows ('' = none)")
    p.add_argument("--hnsw-knobs", default=DEFAULT_KNOBS["hnsw"])
    p.add_argument("--pq-knobs", default=DEFAULT_KNOBS["pq"])
    p.add_argument("--flat-budget-s", type=float, default=60.0, help="stop timing a method after this")
    p.add_argument("--store-path", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--budget-ms", type=float, default=50.0, help="latency budget for the recommendation")
    p.add_argument("--min-recall", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="/tmp/rag_bench")
    p.add_argument("--keep", action="store_true", help="keep the temp LanceDB tables")
    p.add_argument("--json", action="store_true", help="one JSON line per (rows, method, knobs) on stdout")
    p.add_argument(
        "--report",
        nargs="+",
        type=Path,
        help="print the table and recommendation from saved --json output files (benchmarks nothing)",
    )
    args = p.parse_args()

    if args.report:
        saved = [
            Result(**json.loads(line))
            for path in args.report
            for line in path.read_text().splitlines()
            if line.startswith("{")
        ]
        print_table(saved)
        print()
        print("\n".join(recommend(saved, args.budget_ms, args.min_recall, args.dim)))
        return

    log(f"machine: {machine_line()}")
    started = time.perf_counter()
    rows_list = [int(r) for r in args.rows.split(",") if r.strip()]
    n_real = max(args.real_rows, 1000)
    real = real_vectors(n_real, args.queries, backend=args.embedder)
    d = real["base"].shape[1]
    log(f"real vectors: {real['base'].shape[0]} x {d} ({args.embedder}), {len(real['queries'])} queries")

    results: list[Result] = []
    if args.real_bench and args.real_rows:
        results += bench_rows(args.real_rows, real["base"], real["queries"], f"real-{d}", args)
    synth = args.synth
    if synth == "concat" and args.dim == d:
        synth = "mix"  # e.g. nomic-embed-text is 768-d already: mix real vectors instead of pairing
    for rows in rows_list:
        t0 = time.perf_counter()
        if args.dim == d and rows <= len(real["base"]) and args.synth != "gaussian":
            vectors, queries, source = real["base"][:rows], real["queries"], f"real-{d}"
        else:
            vectors, queries, source = synthesize(real, rows, args.dim, synth, args.seed)
        log(f"rows={rows}: {source} vectors generated in {time.perf_counter() - t0:.1f}s")
        results += bench_rows(rows, vectors, queries, source, args)
        del vectors

    if not args.json:
        print(f"\nmachine at the end: {machine_line()}; total {time.perf_counter() - started:.0f}s\n")
        print_table(results)
        print()
    for line in recommend(results, args.budget_ms, args.min_recall, args.dim):
        (log if args.json else print)(line)


if __name__ == "__main__":
    main()
