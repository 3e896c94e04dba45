"""The HTTP service, end to end: the real app under uvicorn on a loopback port, spoken to over HTTP.

One index of the BuildDaily sample resources is built per module (bundled MiniLM embedder); the
reranker is the tiny random-weight cross-encoder from ``tiny_models`` (fast; scores only need to be
stable), and there is no LM (extractive answers). Test doubles, named as such: ``SlowEmbedderTestDouble``
(sleeps on queries containing "slowpoke", to hold the embed stage for real) and
``ExplodingRerankerTestDouble`` (raises an unexpected error on queries containing "kaboom").
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag_app.core.settings import Settings
from rag_app.ingest.pipeline import ingest_paths
from rag_app.server.app import create_app
from rag_app.server.logging import JsonFormatter
from tests.live_server import LiveServer
from tests.ollama_standin import OllamaStandIn, dead_host, dspy_chat_reply, passage_number_containing

REPO_ROOT = Path(__file__).resolve().parents[1]
RESOURCES = REPO_ROOT / "data" / "builddaily" / "resources"

pytestmark = pytest.mark.timeout(300)


# ============================================================================================ helpers


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """``[(event, json data), ...]`` from a Server-Sent Events body."""
    events = []
    for block in re.split(r"\r?\n\r?\n", text.strip()):
        name, data = "message", []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].lstrip())
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample (labels must match exactly the ones given, in any order)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if head.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "message", "request_id"} <= set(error), error
    assert "Traceback" not in response.text
    return error


def sample_queries(n: int) -> list[str]:
    """``n`` different questions, "<page title>: <section heading>", round-robin over the pages."""
    per_doc: list[list[str]] = []
    for path in sorted(RESOURCES.rglob("*.md")):
        text = path.read_text()
        title = re.search(r"^title:\s*(.+)$", text, re.M)
        headings = [h.strip() for h in re.findall(r"^## (.+)$", text, re.M)]
        if title:
            per_doc.append([f"{title.group(1).strip()}: {h}" for h in headings] or [title.group(1).strip()])
    queries: list[str] = []
    depth = 0
    while len(queries) < n:
        added = False
        for items in per_doc:
            if depth < len(items) and items[depth] not in queries:
                queries.append(items[depth])
                added = True
                if len(queries) == n:
                    break
        if not added:
            break
        depth += 1
    assert len(queries) == n
    return queries


class SlowEmbedderTestDouble:
    """TEST DOUBLE: the real embedder, but queries containing "slowpoke" take ``delay_s`` longer."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.model_id = inner.model_id
        self.max_tokens = inner.max_tokens

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed_query(self, text: str) -> Any:
        if "slowpoke" in text:
            time.sleep(self.delay_s)
        return self.inner.embed_query(text)

    def embed_documents(self, texts: Any) -> Any:
        return self.inner.embed_documents(texts)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.inner.token_spans(text)


class ExplodingRerankerTestDouble:
    """TEST DOUBLE: the real reranker, but a query containing "kaboom" raises an unexpected error."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def rerank(self, query: str, passages: Any, top_n: int | None = None) -> Any:
        if "kaboom" in query:
            raise RuntimeError("secret internal detail /etc/passwd")
        return self.inner.rerank(query, passages, top_n=top_n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# =========================================================================================== fixtures


@pytest.fixture(scope="module")
def base_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings over a freshly built index of the BuildDaily resources (built once for this module)."""
    from tiny_models import build_tiny_cross_encoder

    root = tmp_path_factory.mktemp("server")
    cross_encoder = build_tiny_cross_encoder(root / "tiny-ce")
    settings = Settings(
        data_dir=root / "rag",
        programs_dir=REPO_ROOT / "programs",
        sites={"builddaily": ["resources"]},
        lm_model=None,
        reranker_model=str(cross_encoder),
        reranker_revision=None,
        max_queue=64,
        max_message_chars=1000,
        max_body_bytes=4096,
    )
    report = ingest_paths(settings, "builddaily", "resources", [RESOURCES], progress=False)
    assert report.chunks_written > 50
    return settings


@pytest.fixture(scope="module")
def live(base_settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(create_app(base_settings)) as server:
        yield server


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c


@pytest.fixture(scope="module")
def constrained(base_settings: Settings) -> Iterator[LiveServer]:
    """One embed slot, no queue, a 1.5 s deadline, CORS on; slow and exploding test doubles injected."""
    from rag_app.models.embeddings import load_embedder
    from rag_app.models.rerank import load_reranker

    settings = base_settings.model_copy(
        update={
            "max_concurrency_embed": 1,
            "max_queue": 0,
            "request_deadline_s": 1.5,
            "cors_origins": ["https://chat.example.test"],
        }
    )
    app = create_app(
        settings,
        embedder=SlowEmbedderTestDouble(load_embedder(settings), delay_s=3.5),
        reranker=ExplodingRerankerTestDouble(load_reranker(settings)),
    )
    with LiveServer(app) as server:
        yield server


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **extra}


# ============================================================================================= health


def test_healthz_readyz_docs_and_request_ids(client: httpx.Client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ready"] is True
    assert {"embedder", "reranker", "index", "lm", "programs"} <= set(body["checks"])
    assert body["checks"]["reranker"]["available"] is True
    assert body["checks"]["lm"]["mode"] == "extractive"
    assert body["lm"] == "not_configured" and body["answers"] == "extractive"
    assert body["checks"]["index"]["rows"]["builddaily/resources"] > 50
    # request ids: echoed when given, generated otherwise
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert (
        client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"] != ""
    )
    # OpenAPI docs, with each program's typed route
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/chat-bridge",
        "/v1/search",
        "/v1/programs/builddaily/chat_bridge",
        "/v1/programs/builddaily/resources_search",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths
    # no CORS unless configured
    r = client.options(
        "/v1/search", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in r.headers


# ============================================================================================= search


def test_search_returns_reranked_passages_with_both_scores(client: httpx.Client) -> None:
    r = client.post(
        "/v1/search",
        json={"site": "builddaily", "query": "single sign-on with SAML or OIDC", "k": 20, "top_n": 20},
        headers={"X-Request-ID": "search-1"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "search-1" == r.headers["x-request-id"]
    assert body["reranked"] is True and body["mode"] == "hybrid"
    assert len(body["passages"]) == 20
    assert "sso" in {p["doc_id"] for p in body["passages"]}
    for p in body["passages"]:
        assert p["reranked"] is True
        assert p["rerank_score"] is not None and 0.0 <= p["relevance"] <= 1.0
        assert p["retrieval_rank"] >= 1 and p["retrieval_score"] > 0
    scores = [p["rerank_score"] for p in body["passages"]]
    assert scores == sorted(scores, reverse=True)
    assert {"embed_ms", "search_ms", "rerank_ms", "queue_ms"} <= set(body["timings"])

    r = client.post(
        "/v1/search",
        json={
            "site": "builddaily",
            "collection": "resources",
            "query": "invoice",
            "mode": "fts",
            "k": 8,
            "top_n": 3,
        },
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["passages"]) == 3 and r.json()["mode"] == "fts"


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"site": "nope", "query": "x"}, 404, "unknown_site", "site"),
        ({"site": "builddaily", "collection": "nope", "query": "x"}, 404, "unknown_collection", "collection"),
        ({"site": "builddaily", "query": ""}, 422, "invalid_request", "query"),
        ({"site": "builddaily", "query": "   "}, 422, "invalid_request", "query"),
        ({"site": "builddaily", "query": "x", "k": 0}, 422, "invalid_request", "k"),
        ({"site": "builddaily", "query": "x", "k": "many"}, 422, "invalid_request", "k"),
        ({"site": "builddaily", "query": "x", "mode": "psychic"}, 422, "invalid_request", "mode"),
        (
            {"site": "builddaily", "query": "x", "filters": {"colour": "red"}},
            422,
            "invalid_request",
            "filters.colour",
        ),
        ({"query": "x"}, 422, "invalid_request", "site"),
        ({"site": "builddaily", "query": "x", "surprise": 1}, 422, "invalid_request", "surprise"),
    ],
)
def test_search_validation(
    client: httpx.Client, body: dict[str, Any], status: int, code: str, field: str
) -> None:
    r = client.post("/v1/search", json=body)
    assert r.status_code == status, r.text
    error = error_of(r)
    assert error["code"] == code and error["field"] == field
    assert field.split(".")[0] in error["message"]


# ======================================================================================= chat bridge


def test_chat_bridge_json(client: httpx.Client) -> None:
    r = client.post("/v1/chat-bridge", json=chat("How do I move our CI from Jenkins to Forge runners?"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"answer", "citations", "passages", "mode", "timings", "request_id"}
    assert body["request_id"] == r.headers["x-request-id"]
    assert body["mode"] == "extractive" and body["answer"]
    assert 1 <= len(body["passages"]) <= 5
    passage_ids = {p["id"] for p in body["passages"]}
    assert body["citations"] and {c["passage_id"] for c in body["citations"]} <= passage_ids
    assert {"embed_ms", "search_ms", "rerank_ms", "total_ms"} <= set(body["timings"])


def test_chat_bridge_history_and_role_checks(client: httpx.Client) -> None:
    messages = [
        {"role": "user", "content": "Tell me about Forge."},
        {"role": "assistant", "content": "Forge is the build cache and runners product [1]."},
        {"role": "user", "content": "How do I create a cache token for it?"},
    ]
    r = client.post("/v1/chat-bridge", json={"messages": messages, "site": "builddaily"})
    assert r.status_code == 200, r.text
    assert r.json()["answer"]

    r = client.post("/v1/chat-bridge", json={"messages": messages[:2]})
    assert r.status_code == 422
    error = error_of(r)
    assert error["field"] == "messages[1].role" and "user" in error["message"]


def test_chat_bridge_stream_sse(client: httpx.Client) -> None:
    question = "How do webhooks retry failed deliveries?"
    plain = client.post("/v1/chat-bridge", json=chat(question)).json()
    with client.stream(
        "POST", "/v1/chat-bridge", json=chat(question, stream=True), headers={"X-Request-ID": "stream-1"}
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"] == "stream-1"
        text = r.read().decode()
    events = parse_sse(text)
    names = [name for name, _ in events]
    assert names[0] == "passages" and names[-1] == "done" and set(names[1:-1]) == {"token"}
    passages = events[0][1]["passages"]
    assert [p["id"] for p in passages] == [p["id"] for p in plain["passages"]]
    tokens = "".join(data["text"] for name, data in events if name == "token")
    done = events[-1][1]
    assert tokens == done["answer"] == plain["answer"]
    assert done["citations"] == plain["citations"] and done["request_id"] == "stream-1"
    assert "total_ms" in done["timings"] and done["mode"] == "extractive"


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"messages": []}, "invalid_request", "messages"),
        ({"messages": "hello"}, "invalid_request", "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "invalid_request", "messages[0].content"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "invalid_request", "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "invalid_request", "messages[0].content"),
        ({"messages": [{"role": "user", "content": "   "}]}, "invalid_request", "messages[0].content"),
        (chat("hi", stream="maybe"), "invalid_request", "stream"),
        (chat("hi", stream=0), "invalid_request", "stream"),
        (
            {"messages": [{"role": "assistant", "content": " \t"}, {"role": "user", "content": "ok"}]},
            "invalid_request",
            "messages[0].content",
        ),
        (chat("x" * 1001), "message_too_long", "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": "x" * 1001}, {"role": "user", "content": "ok"}]},
            "message_too_long",
            "messages[0].content",
        ),
    ],
)
def test_chat_bridge_validation(client: httpx.Client, body: dict[str, Any], code: str, field: str) -> None:
    r = client.post("/v1/chat-bridge", json=body)
    assert r.status_code == 422, r.text
    error = error_of(r)
    assert error["code"] == code and error["field"] == field, error
    assert error["request_id"] == r.headers["x-request-id"]


def test_unknown_site_and_program_are_404(client: httpx.Client) -> None:
    r = client.post("/v1/chat-bridge", json=chat("hi", site="nowhere"))
    assert r.status_code == 404 and error_of(r)["code"] == "unknown_site" and error_of(r)["field"] == "site"
    r = client.post("/v1/programs/nowhere/chat_bridge", json={"message": "hi"})
    assert r.status_code == 404 and error_of(r)["code"] == "unknown_site"
    r = client.post("/v1/programs/builddaily/nothing", json={"message": "hi"})
    assert r.status_code == 404 and error_of(r)["code"] == "unknown_program"
    assert "resources_search" in error_of(r)["message"]
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = client.get("/v1/search")
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"


def test_body_limits_and_bad_json(client: httpx.Client) -> None:
    big = json.dumps(chat("y" * 5000)).encode()
    r = client.post("/v1/chat-bridge", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and error_of(r)["code"] == "body_too_large"
    assert "4096" in error_of(r)["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is what is checked
        for _ in range(10):
            yield b" " * 1000

    r = client.post("/v1/chat-bridge", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and error_of(r)["code"] == "body_too_large"

    r = client.post(
        "/v1/chat-bridge", content=b'{"messages": [', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "JSON" in error_of(r)["message"]


# ========================================================================================= programs


def test_program_routes_take_typed_input_and_return_typed_output(client: httpx.Client) -> None:
    r = client.post(
        "/v1/programs/builddaily/resources_search", json={"query": "status page for uptime", "limit": 2}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert 1 <= len(body["results"]) <= 2
    assert {"rank", "doc_id", "title", "url", "score", "reason"} <= set(body["results"][0])
    assert body["mode"] == "extractive" and body["answer"]

    r = client.post(
        "/v1/programs/builddaily/chat_bridge", json={"message": "What does Beacon cost?", "history": []}
    )
    assert r.status_code == 200, r.text
    assert r.json()["answer"] and "products" in r.json()

    for payload, field in [
        ({"query": "x", "limit": "lots"}, "limit"),
        ({"query": "x", "limit": 99}, "limit"),
        ({"limit": 2}, "query"),
        ({"query": "x", "colour": 1}, "colour"),
    ]:
        r = client.post("/v1/programs/builddaily/resources_search", json=payload)
        assert r.status_code == 422, (payload, r.text)
        assert error_of(r)["field"] == field


# ======================================================================================= concurrency


def test_fifty_concurrent_chats_get_their_own_answers(live: LiveServer, client: httpx.Client) -> None:
    queries = sample_queries(50)
    expected = {}
    for q in queries:  # sequential baseline
        r = client.post("/v1/chat-bridge", json=chat(q))
        assert r.status_code == 200, r.text
        expected[q] = r.json()

    async def one(http: httpx.AsyncClient, q: str, i: int) -> tuple[str, int, httpx.Response]:
        response = await http.post("/v1/chat-bridge", json=chat(q), headers={"X-Request-ID": f"conc-{i}"})
        return q, i, response

    async def run_all() -> list[tuple[str, int, httpx.Response]]:
        limits = httpx.Limits(max_connections=60, max_keepalive_connections=60)
        async with httpx.AsyncClient(base_url=live.url, timeout=120, limits=limits) as http:
            return await asyncio.gather(*(one(http, q, i) for i, q in enumerate(queries)))

    t0 = time.perf_counter()
    results = asyncio.run(run_all())
    elapsed = time.perf_counter() - t0
    distinct_answers = set()
    for q, i, response in results:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["request_id"] == f"conc-{i}" == response.headers["x-request-id"]
        assert body["answer"] == expected[q]["answer"], q
        assert [p["id"] for p in body["passages"]] == [p["id"] for p in expected[q]["passages"]], q
        assert body["citations"] == expected[q]["citations"]
        distinct_answers.add(body["answer"])
    distinct_passages = {tuple(p["id"] for p in r.json()["passages"]) for _, _, r in results}
    assert len(distinct_passages) >= 45, "different questions should get different passages"
    assert len(distinct_answers) >= 20, "different questions should mostly get different answers"
    assert elapsed < 60


# =========================================================================================== metrics


def test_metrics_exposition(client: httpx.Client) -> None:
    client.post("/v1/search", json={"site": "builddaily", "query": "pricing of Sage Daily"})
    client.post("/v1/search", json={"site": "builddaily", "query": "pricing of Sage Daily"})  # cache hit
    client.post("/v1/search", json={"site": "nope", "query": "x"})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric_value(text, "rag_http_requests_total", route="/v1/search", method="POST", status="200") >= 2
    assert metric_value(text, "rag_http_requests_total", route="/v1/search", status="404") >= 1
    for stage in ("embed", "search", "rerank", "total"):
        assert metric_value(text, "rag_stage_duration_seconds_count", stage=stage) > 0, stage
    assert metric_value(text, "rag_stage_duration_seconds_count", stage="lm") == 0  # extractive: no LM calls
    assert metric_value(text, "rag_rerank_cache_hits_total") >= 20
    assert 0 < metric_value(text, "rag_rerank_cache_hit_ratio") <= 1
    assert metric_value(text, "rag_errors_total", code="unknown_site") >= 1
    assert metric_value(text, "rag_ready") == 1
    assert metric_value(text, "rag_http_request_duration_seconds_bucket", route="/v1/search", le="+Inf") >= 2


def test_access_log_is_json_with_request_id(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="rag_app.server.access"):
        client.post(
            "/v1/search",
            json={"site": "builddaily", "query": "gradle cache"},
            headers={"X-Request-ID": "log-me"},
        )
        time.sleep(0.1)
    records = [
        r
        for r in caplog.records
        if r.name == "rag_app.server.access" and getattr(r, "route", "") == "/v1/search"
    ]
    assert records
    line = JsonFormatter().format(records[-1])
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["request_id"] == "log-me" and entry["status"] == 200 and entry["route"] == "/v1/search"
    assert entry["level"] == "info" and entry["ts"] and entry["duration_ms"] > 0
    assert {"embed_ms", "search_ms", "rerank_ms"} <= set(entry["timings"])


# ================================================================================ overload, deadline


def test_overload_503_with_retry_after_and_deadline_504(constrained: LiveServer) -> None:
    slow_result: dict[str, Any] = {}

    def slow_request() -> None:
        with constrained.client() as c:
            t0 = time.perf_counter()
            slow_result["response"] = c.post(
                "/v1/search", json={"site": "builddaily", "query": "slowpoke sso"}
            )
            slow_result["elapsed"] = time.perf_counter() - t0

    with constrained.client() as c:
        wait_embed_idle(c)
        thread = threading.Thread(target=slow_request)
        thread.start()
        limit = time.monotonic() + 10
        while metric_value(c.get("/metrics").text, "rag_stage_inflight", stage="embed") != 1:
            assert time.monotonic() < limit, "the slow request never reached the embed stage"
            time.sleep(0.02)
        # the embed stage is held and nothing may queue: turned away at once, with Retry-After
        t0 = time.perf_counter()
        r = c.post("/v1/search", json={"site": "builddaily", "query": "pricing plans"})
        assert r.status_code == 503, r.text
        assert time.perf_counter() - t0 < 1.0
        assert int(r.headers["retry-after"]) >= 1
        assert error_of(r)["code"] == "overloaded"
        r = c.post("/v1/chat-bridge", json=chat("what plans are there?"))
        assert r.status_code == 503 and "retry-after" in r.headers
        thread.join(10)
        # the slow request ran past its 1.5 s deadline: 504 JSON, promptly (its embed takes 3.5 s)
        slow = slow_result["response"]
        assert slow.status_code == 504, slow.text
        assert error_of(slow)["code"] == "deadline_exceeded"
        assert slow_result["elapsed"] < 3.0
        # once the stage frees up, requests are served again
        wait_embed_idle(c)
        r = c.post("/v1/search", json={"site": "builddaily", "query": "pricing plans"})
        assert r.status_code == 200, r.text
        text = c.get("/metrics").text
        assert metric_value(text, "rag_overload_rejections_total", stage="embed") >= 2
        assert metric_value(text, "rag_errors_total", code="deadline_exceeded") >= 1
        assert metric_value(text, "rag_errors_total", code="overloaded") >= 2


def wait_embed_idle(c: httpx.Client) -> None:
    """Wait for a slow test-double embed call left over from an earlier test to finish."""
    limit = time.monotonic() + 10
    while metric_value(c.get("/metrics").text, "rag_stage_inflight", stage="embed") != 0:
        assert time.monotonic() < limit, "the embed stage never freed up"
        time.sleep(0.05)


def test_chat_deadline_504(constrained: LiveServer) -> None:
    with constrained.client() as c:
        wait_embed_idle(c)
        r = c.post("/v1/chat-bridge", json=chat("slowpoke: how do I cancel?", stream=True))
        assert r.status_code == 504 and error_of(r)["code"] == "deadline_exceeded"
        assert r.headers["x-request-id"] == error_of(r)["request_id"]


def test_unexpected_error_is_a_generic_500(constrained: LiveServer) -> None:
    with constrained.client() as c:
        wait_embed_idle(c)
        r = c.post(
            "/v1/search", json={"site": "builddaily", "query": "kaboom"}, headers={"X-Request-ID": "boom-1"}
        )
        assert r.status_code == 500
        error = error_of(r)
        assert error == {"code": "internal_error", "message": error["message"], "request_id": "boom-1"}
        assert "secret" not in r.text and "RuntimeError" not in r.text
        assert c.get("/healthz").status_code == 200  # the server carries on


def test_cors_when_configured(constrained: LiveServer) -> None:
    with constrained.client() as c:
        r = c.options(
            "/v1/chat-bridge",
            headers={
                "Origin": "https://chat.example.test",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://chat.example.test"
        r = c.options(
            "/v1/chat-bridge",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"
        r = c.get("/healthz", headers={"Origin": "https://chat.example.test"})
        assert r.headers["access-control-allow-origin"] == "https://chat.example.test"


# ================================================================================================ LM


def test_lm_answers_through_the_ollama_standin(base_settings: Settings) -> None:
    """LM mode over the real LiteLLM ollama_chat path, against the loopback Ollama STAND-IN."""
    claim = "A single Forge job can run for at most 6 hours"
    cited: list[int] = []

    def responder(request: dict[str, Any]) -> str:
        cited.append(passage_number_containing(request, claim))
        return dspy_chat_reply(answer=f"{claim} [{cited[-1]}].")

    with OllamaStandIn(chat_responder=responder) as ollama:
        settings = base_settings.model_copy(
            update={
                "lm_model": "ollama_chat/llama3.2",
                "ollama_host": ollama.host,
                "lm_retries": 0,
                "lm_timeout_s": 10,
                "lm_cache": False,
            }
        )
        with LiveServer(create_app(settings)) as server, server.client() as c:
            ready = c.get("/readyz").json()
            assert ready["ready"] is True and ready["checks"]["lm"] == {
                "ok": True,
                "mode": "lm",
                "model": "ollama_chat/llama3.2",
            }
            r = c.post("/v1/chat-bridge", json=chat("How long can a Forge job run?"))
            assert r.status_code == 200, r.text
            body = r.json()
            reply = f"{claim} [{cited[-1]}]."
            assert body["mode"] == "lm" and body["answer"] == reply, body["notes"]
            assert body["citations"][0]["passage_id"] == body["passages"][cited[-1] - 1]["id"]
            assert body["timings"]["lm_ms"] > 0
            assert ollama.requests_to("/api/chat")
            with c.stream(
                "POST", "/v1/chat-bridge", json=chat("How long can a Forge job run?", stream=True)
            ) as s:
                events = parse_sse(s.read().decode())
            names = [e for e, _ in events]  # the LM's answer streams token by token
            assert names[0] == "passages" and names[-1] == "done" and set(names[1:-1]) == {"token"}
            assert len(names) > 3 and "".join(d["text"] for e, d in events if e == "token") == reply
            assert events[-1][1]["answer"] == reply and events[-1][1]["mode"] == "lm"
            metrics = c.get("/metrics").text
            assert metric_value(metrics, "rag_stage_duration_seconds_count", stage="lm") >= 2


def test_readyz_200_and_extractive_while_the_lm_is_unreachable(base_settings: Settings) -> None:
    """Ready means "can serve requests": an unreachable LM is reported, not a reason to stay 503."""
    settings = base_settings.model_copy(
        update={"lm_model": "ollama_chat/llama3.2", "ollama_host": dead_host(), "lm_retries": 0}
    )
    with LiveServer(create_app(settings)) as server, server.client() as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ready"] is True and body["lm"] == "unreachable" and body["answers"] == "extractive"
        checks = body["checks"]
        assert checks["lm"]["ok"] is False and "did not answer" in checks["lm"]["error"]
        assert checks["embedder"]["ok"] and checks["index"]["ok"] and checks["reranker"]["ok"]
        # requests still get grounded extractive answers, with a note saying why
        r = c.post("/v1/chat-bridge", json=chat("How do I cancel my subscription?"))
        assert r.status_code == 200 and r.json()["mode"] == "extractive"
        assert any("LM unreachable" in note for note in r.json()["notes"])
        assert metric_value(c.get("/metrics").text, "rag_ready") == 1
