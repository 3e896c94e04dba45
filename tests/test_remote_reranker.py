"""Issue 14: the ``remote`` reranker backend, against real servers on loopback.

* rag-app's own ``POST /v1/rerank`` (the Cohere shape), run as a SEPARATE PROCESS (``rag-app serve``)
  with the tiny cross-encoder from ``tiny_models``: the remote ranking must be the in-process one.
* ``TeiStandIn`` (``tests/tei_standin.py``), a STAND-IN for Hugging Face TEI (which cannot run here)
  that scores with a real cross-encoder and can hang, fail with 500/503/429/413, miscount, send bad
  scores or an unreadable answer: retries, timeouts, batching, the circuit breaker,
  ``reranker_on_missing`` and a served ``/v1/rerank`` in front of it are checked on it.
* ``httpx.MockTransport``, a STAND-IN for what no real server can cause: an exception raised inside the
  HTTP client itself (a bug), during the circuit's half-open trial.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from rag_app.core.errors import InputError, ServiceUnavailableError
from rag_app.core.settings import Settings
from rag_app.core.types import Passage
from rag_app.models.remote_http import (
    CircuitOpenError,
    RemoteHttpClient,
    RemoteRefusedError,
    RemoteResponseError,
    RemoteServerError,
)
from rag_app.models.rerank import CrossEncoderReranker, RemoteReranker, load_reranker, unavailable_note
from rag_app.models.rerank.remote import logit_from_relevance
from rag_app.server.app import create_app
from rag_app.server.auth import add_key
from rag_app.server.errors import to_api_error
from tests.conftest import REPO_ROOT, make_test_settings
from tests.live_server import LiveServer
from tests.ollama_standin import dead_host
from tests.tei_standin import TeiStandIn

pytestmark = pytest.mark.timeout(300)

QUERY = "How do I rotate an API key?"
DOCS = [
    "Pricing plans are billed monthly.",
    "Rotate a key in Settings > API keys, then revoke the old one.",
    "Forge jobs run for at most 6 hours.",
    "API keys can be rotated without downtime.",
    "The Tower card signals sudden upheaval.",
]
#: Thirty distinct short documents and a repeat of one, for batching.
DISTINCT = [f"Document {i}: {DOCS[i % len(DOCS)]} Note {i * 7 % 11}." for i in range(30)]
MANY = [*DISTINCT, DISTINCT[3]]


def passages(texts: list[str]) -> list[Passage]:
    return [Passage(id=f"c{i}", doc_id=f"doc-{i}", text=t, score=1.0 - i / 100) for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def local(tiny_path: Path) -> CrossEncoderReranker:
    """The same tiny cross-encoder in process, fp32: the reference ranking."""
    return CrossEncoderReranker(str(tiny_path), revision=None, backend="torch-fp32", cache_size=0)


def remote(url: str, tmp_path: Path, **overrides: Any) -> RemoteReranker:
    """A remote reranker built the way the runtime builds one: ``load_reranker(settings)``."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "rag",
        "reranker_backend": "remote",
        "reranker_url": url,
        "reranker_api": "tei",
        "reranker_model": "tiny-ce",
        "reranker_on_missing": "fail",
        "remote_timeout_s": 5.0,
        "remote_retries": 0,
        "rerank_cache_size": 0,
    }
    values.update(overrides)
    reranker = load_reranker(Settings(**values))
    assert isinstance(reranker, RemoteReranker)
    return reranker


def order(ranked: list[Passage]) -> list[str]:
    return [p.text for p in ranked]


# ----------------------------------------------------------------------------------- TEI stand-in


def test_tei_ranking_and_scores_match_the_in_process_cross_encoder(
    tei: TeiStandIn, local: CrossEncoderReranker, tmp_path: Path
) -> None:
    reranker = remote(tei.url, tmp_path)
    assert reranker.backend == "remote" and reranker.available and reranker.model_id == "tiny-ce"
    ranked = reranker.rerank(QUERY, passages(DOCS), top_n=3)
    expected = local.rerank(QUERY, passages(DOCS), top_n=3)
    assert order(ranked) == order(expected)
    for got, want in zip(ranked, expected, strict=True):
        # TEI is asked for raw scores: the model's logits, the protocol's rerank_score.
        assert got.rerank_score == pytest.approx(want.rerank_score, abs=1e-4)
        assert got.relevance == pytest.approx(want.relevance, abs=1e-5)
        assert got.reranked and got.retrieval_rank == want.retrieval_rank and got.id == want.id
    [(path, body)] = tei.requests
    assert path == "/rerank" and body["raw_scores"] is True and body["texts"] == DOCS
    assert unavailable_note(reranker) is None
    assert "remote tei server" in reranker.describe() and "circuit=closed" in reranker.describe()


def test_large_candidate_lists_go_in_batches_with_the_same_order(
    tei: TeiStandIn, local: CrossEncoderReranker, tmp_path: Path
) -> None:
    one_batch = remote(tei.url, tmp_path, remote_batch_size=32).rerank(QUERY, passages(MANY))
    assert tei.count("/rerank") == 1 and len(tei.requests[0][1]["texts"]) == 30  # the duplicate went once
    tei.reset()
    batched = remote(tei.url, tmp_path, remote_batch_size=7).rerank(QUERY, passages(MANY))
    assert [len(body["texts"]) for _, body in tei.requests] == [7, 7, 7, 7, 2]
    assert order(batched) == order(one_batch) == order(local.rerank(QUERY, passages(MANY)))
    np.testing.assert_allclose(
        [p.rerank_score for p in batched], [p.rerank_score for p in one_batch], rtol=0, atol=1e-5
    )
    # More texts than TEI takes at once: a 422 that names the setting to lower, not retried.
    tei.reset()
    with pytest.raises(RemoteServerError) as err:
        remote(tei.url, tmp_path, remote_batch_size=64, remote_retries=2).rerank(
            QUERY, passages([*DISTINCT, *DOCS])
        )
    assert "HTTP 422" in str(err.value) and "RAG_REMOTE_BATCH_SIZE" in str(err.value)
    assert tei.count("/rerank") == 1


def test_repeated_pairs_come_from_the_score_cache(tei: TeiStandIn, tmp_path: Path) -> None:
    reranker = remote(tei.url, tmp_path, rerank_cache_size=100)
    first = reranker.rerank(QUERY, passages(DOCS))
    second = reranker.rerank(QUERY, passages(DOCS))
    assert order(first) == order(second) and tei.count("/rerank") == 1
    stats = reranker.cache_stats()
    assert stats["hits"] == len(DOCS) and stats["pairs_scored"] == len(DOCS) and stats["batches"] == 1


def test_retries_with_backoff_then_success(tei: TeiStandIn, tmp_path: Path) -> None:
    tei.fail_next(1, 503)
    tei.fail_next(1, 429)
    ranked = remote(tei.url, tmp_path, remote_retries=2).rerank(QUERY, passages(DOCS))
    assert all(p.reranked for p in ranked) and tei.count("/rerank") == 3
    # Retries exhausted: the error names the server, what happened and what to set.
    tei.fail_next(2, 500)
    with pytest.raises(RemoteServerError) as err:
        remote(tei.url, tmp_path, remote_retries=1).rerank(QUERY, passages(DOCS))
    message = str(err.value)
    assert f"{tei.url}/rerank failed after 2 attempts: HTTP 500" in message and "injected failure" in message
    assert "RAG_RERANKER_URL" in message
    assert to_api_error(err.value).status == 503  # type: ignore[union-attr]  # what the HTTP server answers
    # Nothing listens there: connection errors are retried like 5xx, then named.
    with pytest.raises(RemoteServerError, match=r"failed after 2 attempts: connection failed \(ConnectError"):
        remote(dead_host(), tmp_path, remote_retries=1).rerank(QUERY, passages(DOCS))


def test_a_hanging_server_times_out_then_falls_back(tei: TeiStandIn, tmp_path: Path) -> None:
    tei.mode = "hang"
    with pytest.raises(RemoteServerError) as err:
        remote(tei.url, tmp_path, remote_timeout_s=0.5).rerank(QUERY, passages(DOCS))
    assert "no answer within 0.5s" in str(err.value) and "RAG_REMOTE_TIMEOUT_S" in str(err.value)
    reranker = remote(tei.url, tmp_path, remote_timeout_s=0.5, reranker_on_missing="fallback")
    kept = reranker.rerank(QUERY, passages(DOCS), top_n=3)
    assert order(kept) == DOCS[:3] and not any(p.reranked for p in kept)
    assert [p.retrieval_rank for p in kept] == [1, 2, 3] and kept[0].rerank_score is None
    assert not reranker.available
    note = unavailable_note(reranker)
    assert note is not None and "keeping retrieval order" in note and "no answer within 0.5s" in note
    with pytest.raises(ServiceUnavailableError):  # score has nothing to fall back on
        reranker.score(QUERY, DOCS)


def test_500_falls_back_with_a_note_and_recovers(tei: TeiStandIn, tmp_path: Path) -> None:
    tei.mode = "error"
    reranker = remote(tei.url, tmp_path, remote_retries=1, reranker_on_missing="fallback")
    kept = reranker.rerank(QUERY, passages(DOCS))
    assert order(kept) == DOCS and tei.count("/rerank") == 2
    note = unavailable_note(reranker)
    assert note is not None and "HTTP 500" in note and tei.url in note
    tei.mode = "ok"
    ranked = reranker.rerank(QUERY, passages(DOCS))
    assert all(p.reranked for p in ranked) and reranker.available and unavailable_note(reranker) is None


@pytest.mark.parametrize(
    ("api", "mode", "reason"),
    [
        ("tei", "wrong_count", "4 scores for 5 documents"),
        ("tei", "bad_score", "score nan of index"),
        ("cohere", "wrong_count", "4 scores for 5 documents"),
        ("cohere", "bad_score", "relevance_score 1.5 is outside 0-1"),
    ],
)
def test_wrong_answers_are_clear_errors_or_fall_back(
    tei: TeiStandIn, tmp_path: Path, api: str, mode: str, reason: str
) -> None:
    tei.mode = mode
    with pytest.raises(RemoteResponseError) as err:
        remote(tei.url, tmp_path, reranker_api=api, remote_retries=2).rerank(QUERY, passages(DOCS))
    assert reason in str(err.value) and "unexpected shape" in str(err.value)
    assert len(tei.requests) == 1  # a miscounting server is not asked again in the same call
    fallback = remote(tei.url, tmp_path, reranker_api=api, reranker_on_missing="fallback")
    assert order(fallback.rerank(QUERY, passages(DOCS))) == DOCS
    assert reason in (unavailable_note(fallback) or "")


def test_circuit_opens_fails_fast_and_closes_after_the_reset(tei: TeiStandIn, tmp_path: Path) -> None:
    tei.mode = "error"
    reranker = remote(
        tei.url,
        tmp_path,
        remote_circuit_failures=3,
        remote_circuit_reset_s=1.0,
        reranker_on_missing="fallback",
    )
    for _ in range(3):
        reranker.rerank(QUERY, passages(DOCS))
    assert tei.count("/rerank") == 3 and reranker.client.circuit.state == "open"
    kept = reranker.rerank(QUERY, passages(DOCS))  # fails fast: the server is not asked
    assert order(kept) == DOCS and tei.count("/rerank") == 3
    assert "failing fast" in (unavailable_note(reranker) or "")
    with pytest.raises(CircuitOpenError):
        reranker.score(QUERY, DOCS)
    # After the reset, one trial request: it fails, so the circuit opens again at once.
    time.sleep(1.1)
    reranker.rerank(QUERY, passages(DOCS))
    reranker.rerank(QUERY, passages(DOCS))
    assert tei.count("/rerank") == 4
    # The server is back: the next trial succeeds and closes the circuit.
    tei.mode = "ok"
    time.sleep(1.1)
    assert reranker.available  # the reset has passed: callers may try again
    assert all(p.reranked for p in reranker.rerank(QUERY, passages(DOCS)))
    assert tei.count("/rerank") == 5 and reranker.client.circuit.state == "closed"


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("bad_encoding", "cannot be read (DecodingError"), ("not_json", "unexpected shape: JSONDecodeError")],
)
def test_an_unreadable_answer_is_a_server_error_that_falls_back(
    tei: TeiStandIn, tmp_path: Path, mode: str, reason: str
) -> None:
    """An answer httpx cannot decode (a gzip header over a plain body) or that is not JSON is the
    server failing: a RemoteServerError naming the endpoint, not an httpx error escaping the fallback."""
    tei.mode = mode
    with pytest.raises(RemoteResponseError) as err:
        remote(tei.url, tmp_path, remote_retries=2).rerank(QUERY, passages(DOCS))
    assert reason in str(err.value) and f"{tei.url}/rerank" in str(err.value)
    assert tei.count("/rerank") == 1  # not retried: it would answer the same way
    assert to_api_error(err.value).status == 503  # type: ignore[union-attr]
    reranker = remote(tei.url, tmp_path, reranker_on_missing="fallback")
    kept = reranker.rerank(QUERY, passages(DOCS))
    assert order(kept) == DOCS and not any(p.reranked for p in kept)
    assert reranker.client.circuit.consecutive_failures == 1 and not reranker.available
    assert reason in (unavailable_note(reranker) or "")


def test_an_unexpected_error_in_the_half_open_trial_does_not_wedge_the_circuit() -> None:
    """Each request is recorded in the circuit, however it ends. The stand-in transport plays a script:
    a 500 (opens the circuit: one failure is the threshold, and with a reset of 0 s the next call is the
    half-open trial), an unreadable answer, an exception from inside the client, then real answers."""
    script: list[Any] = [
        httpx.Response(500, json={"error": "down", "error_type": "backend"}),
        httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(b"[]")),  # not gzip
        RuntimeError("a bug inside the HTTP stack"),
    ]
    asked: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        if script:
            step = script.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        texts = json.loads(request.content)["texts"]
        return httpx.Response(200, json=[{"index": i, "score": float(-i)} for i in range(len(texts))])

    client = RemoteHttpClient(
        "http://reranker.test",
        what="reranker server",
        url_setting="RAG_RERANKER_URL",
        key_setting="RAG_RERANKER_API_KEY",
        retries=0,
        circuit_failures=1,
        circuit_reset_s=0.0,
        transport=httpx.MockTransport(handler),
    )
    reranker = RemoteReranker(client, api="tei", model="scripted", on_missing="fallback", cache_size=0)
    assert order(reranker.rerank(QUERY, passages(DOCS))) == DOCS  # the 500: retrieval order
    assert client.circuit.state == "half-open"
    # The trial gets an answer httpx cannot decode: the fallback covers it, the circuit opens again.
    assert order(reranker.rerank(QUERY, passages(DOCS))) == DOCS and len(asked) == 2
    assert "DecodingError" in client.circuit.last_error
    # The next trial ends in an exception from inside the client: a bug is raised, not hidden...
    with pytest.raises(RuntimeError, match="a bug inside the HTTP stack"):
        reranker.rerank(QUERY, passages(DOCS))
    # ...and recorded as the trial's failure, so it is not left "in flight" for ever: the next call is
    # the next trial, and it closes the circuit.
    assert "unexpected RuntimeError" in client.circuit.last_error and client.circuit.state == "half-open"
    ranked = reranker.rerank(QUERY, passages(DOCS))
    assert all(p.reranked for p in ranked) and len(asked) == 4
    assert client.circuit.state == "closed" and reranker.available
    # A closed client (the runtime shut down mid-request) is a clear RemoteServerError, so the fallback
    # covers it; no request went out, so the circuit is left as it was.
    reranker.close()
    assert order(reranker.rerank(QUERY, passages(DOCS))) == DOCS and len(asked) == 4
    with pytest.raises(RemoteServerError, match="its client was closed"):
        reranker.score(QUERY, DOCS)
    assert client.circuit.state == "closed"


def test_a_refusal_leaves_the_reranker_available(tei: TeiStandIn, tmp_path: Path) -> None:
    """A 4xx is the server up and the request wrong: it falls back (or raises) for that call, but does
    not open the circuit (even at a threshold of one failure) nor mark the reranker unavailable."""
    reranker = remote(tei.url, tmp_path, reranker_on_missing="fallback", remote_circuit_failures=1)
    tei.fail_next(1, 413)
    kept = reranker.rerank(QUERY, passages(DOCS))
    assert order(kept) == DOCS and not any(p.reranked for p in kept)
    assert reranker.available and unavailable_note(reranker) is None
    assert reranker.client.circuit.state == "closed"
    tei.fail_next(1, 413)
    with pytest.raises(RemoteRefusedError, match="HTTP 413"):  # score has no fallback
        reranker.score(QUERY, DOCS)
    assert all(p.reranked for p in reranker.rerank(QUERY, passages(DOCS))) and tei.count("/rerank") == 3


def test_rerank_route_in_front_of_a_remote_reranker(tei: TeiStandIn, tmp_path: Path) -> None:
    """``/v1/rerank`` served by a remote reranker asks the server on every request (its circuit, not an
    earlier failure, decides): a refusal or a single 500 costs that request only, and only an open circuit
    answers 503 without asking, with a message naming the settings that govern it."""
    settings = make_test_settings(
        tmp_path / "rag",
        sites={"builddaily": ["resources"]},
        reranker_backend="remote",
        reranker_url=tei.url,
        reranker_api="tei",
        reranker_model="tiny-ce",
        remote_retries=0,
        remote_circuit_failures=2,
        remote_circuit_reset_s=600.0,
        rerank_cache_size=0,
    )
    body = {"query": QUERY, "documents": DOCS}
    with LiveServer(create_app(settings)) as server, server.client() as http:

        def refused(*needles: str) -> None:
            r = http.post("/v1/rerank", json=body)
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["code"] == "reranker_unavailable", error
            for needle in needles:
                assert needle in error["message"], (needle, error["message"])

        assert http.post("/v1/rerank", json=body).status_code == 200
        tei.fail_next(1, 413)
        refused("HTTP 413", "RAG_REMOTE_BATCH_SIZE")
        assert http.post("/v1/rerank", json=body).status_code == 200
        tei.fail_next(1, 500)
        refused("HTTP 500", tei.url, "RAG_RERANKER_URL", "RAG_REMOTE_CIRCUIT_RESET_S")
        assert http.post("/v1/rerank", json=body).status_code == 200  # asked again at once: it answers
        tei.mode = "error"
        refused("HTTP 500")
        refused("HTTP 500")  # the second consecutive failure opens the circuit
        asked = tei.count("/rerank")
        refused("failing fast", "RAG_RERANKER_URL", "RAG_REMOTE_CIRCUIT_RESET_S")
        assert tei.count("/rerank") == asked  # the open circuit answered, not the server
        assert asked == 7


def test_bearer_auth_and_the_key_never_shows(tei: TeiStandIn, tmp_path: Path) -> None:
    tei.api_key = "right-key-0123456789"
    assert all(
        p.reranked
        for p in remote(tei.url, tmp_path, reranker_api_key=tei.api_key).rerank(QUERY, passages(DOCS))
    )
    wrong = "wrong-key-9876543210"
    reranker = remote(tei.url, tmp_path, reranker_api_key=wrong, remote_retries=2)
    with pytest.raises(RemoteServerError) as err:
        reranker.rerank(QUERY, passages(DOCS))
    assert "HTTP 401" in str(err.value) and "RAG_RERANKER_API_KEY" in str(err.value)
    assert tei.count("/rerank") == 2  # a 401 is not retried
    for text in (str(err.value), reranker.describe(), repr(reranker), repr(Settings(reranker_api_key=wrong))):
        assert wrong not in text
    # Credentials in the URL never show either.
    with_userinfo = remote(tei.url.replace("http://", "http://user:pw-secret@"), tmp_path)
    assert "pw-secret" not in with_userinfo.describe()


def test_remote_needs_a_url_and_is_not_a_local_backend(tmp_path: Path, tiny_path: Path) -> None:
    with pytest.raises(InputError, match="RAG_RERANKER_URL"):
        load_reranker(Settings(data_dir=tmp_path, reranker_backend="remote"))
    with pytest.raises(InputError, match="not an http"):
        load_reranker(Settings(data_dir=tmp_path, reranker_backend="remote", reranker_url="127.0.0.1:8080"))
    with pytest.raises(InputError, match=r"not a valid URL.*RAG_RERANKER_URL"):
        load_reranker(Settings(data_dir=tmp_path, reranker_backend="remote", reranker_url="http://tei:80a"))
    with pytest.raises(Exception, match="load_reranker"):
        CrossEncoderReranker(str(tiny_path), revision=None, backend="remote")


def test_logit_mapping_inverts_sigmoid() -> None:
    from rag_app.models.rerank.base import relevance_from_logits

    logits = np.array([-30.0, -3.5, 0.0, 0.25, 12.0, 20.0])
    np.testing.assert_allclose(logit_from_relevance(relevance_from_logits(logits)), logits, atol=1e-6)
    # Near 1, float64 resolves 1 - p coarsely: large logits come back close and in order, then saturate.
    high = logit_from_relevance(relevance_from_logits([25.0, 30.0, 35.0]))
    assert np.all(np.diff(high) > 0) and np.allclose(high, [25.0, 30.0, 35.0], atol=0.1)
    assert np.isfinite(logit_from_relevance([0.0, 1.0])).all()


# ------------------------------------------------------------- rag-app's own /v1/rerank, another process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def rag_app_server(tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``rag-app serve`` in its own process with the tiny cross-encoder; (base URL, API key)."""
    data_dir = tmp_path_factory.mktemp("remote-rerank-server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update(
        {
            "RAG_DATA_DIR": str(data_dir),
            "RAG_PROGRAMS_DIR": str(REPO_ROOT / "programs"),
            "RAG_SITES": '{"builddaily": ["resources"]}',
            "RAG_LM_MODEL": "",
            "RAG_EMBEDDER_PRECISION": "float32",
            "RAG_RERANKER_MODEL": str(tiny_path),
            "RAG_RERANKER_BACKEND": "torch-fp32",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
    )
    key = add_key(Settings(data_dir=data_dir, sites={"builddaily": ["resources"]}), "remote-reranker", ["*"])
    port = _free_port()
    log_path = data_dir / "server.log"
    exe = Path(sys.executable).with_name("rag-app")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(exe), "serve", "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"rag-app serve exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"rag-app serve did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, key
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_rag_app_server_in_another_process_ranks_like_the_in_process_model(
    rag_app_server: tuple[str, str], local: CrossEncoderReranker, tmp_path: Path
) -> None:
    url, key = rag_app_server
    reranker = remote(url, tmp_path, reranker_api="cohere", reranker_api_key=key, remote_batch_size=2)
    ranked = reranker.rerank(QUERY, passages(DOCS))
    expected = local.rerank(QUERY, passages(DOCS))
    assert order(ranked) == order(expected) and all(p.reranked for p in ranked)
    # relevance_score = sigmoid(logit) on the wire; mapped back, it is the model's logit.
    np.testing.assert_allclose(
        [p.rerank_score for p in ranked], [p.rerank_score for p in expected], rtol=0, atol=1e-5
    )
    assert reranker.cache_stats()["batches"] == 3  # 5 documents, 2 per request
    np.testing.assert_allclose(reranker.score(QUERY, DOCS), local.score(QUERY, DOCS), rtol=0, atol=1e-5)
    # Without the key, the server refuses: a clear 401, not a fallback ranking.
    with pytest.raises(RemoteServerError) as err:
        remote(url, tmp_path, reranker_api="cohere").rerank(QUERY, passages(DOCS))
    assert "HTTP 401" in str(err.value) and "set RAG_RERANKER_API_KEY" in str(err.value)
