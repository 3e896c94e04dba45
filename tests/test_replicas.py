"""Stateless replicas: two real ``rag-app serve`` processes and one ingest process on one LanceDB
database on object storage (a loopback moto S3 server), sharing a data dir for keys and feedback.

What it checks (issue "Grow past one machine"):
- both servers answer while an ingest process adds and replaces documents: no error but documented
  503s, and every passage list holds each document wholly old or wholly new (never chunks of two
  versions, never part of a version);
- new documents become visible on both servers within the read-consistency interval (plus the time
  the last commit takes to land), and afterwards both servers give the same answers;
- keys live in the shared keys file: a key added or revoked after the servers started is honoured
  by both, and feedback given on one server about an answer from the other is accepted.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag_app.core.settings import Settings
from rag_app.server.auth import add_key, revoke_key
from tests.conftest import REPO_ROOT, S3Server

SITE, COLLECTION = "builddaily", "resources"
#: Seconds a replica may serve a table version after a newer commit (RAG_READ_CONSISTENCY_S).
CONSISTENCY_S = 1.0
#: Documents present from the start, each replaced by the ingest process, and the ones it adds.
DOCS = [f"page-{i}" for i in range(6)]
NEW_DOCS = [f"page-{i}" for i in range(6, 8)]  # same shape as DOCS: same chunk count
GENERATIONS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def page(doc_id: str, generation: int) -> dict[str, Any]:
    """A document of a few chunks (RAG_CHUNK_TOKENS=32), each carrying the document's generation."""
    paragraphs = [
        f"{doc_id} generation g{generation} section {n}: configure single sign-on, rotate the signing "
        f"certificate, map groups to roles and audit every login of the workspace {doc_id}."
        for n in range(3)
    ]
    return {"id": doc_id, "title": f"Guide {doc_id}", "text": "\n\n".join(paragraphs)}


def write_corpus(path: Path, generation: int, doc_ids: list[str]) -> Path:
    path.write_text("".join(json.dumps(page(d, generation)) + "\n" for d in doc_ids))
    return path


@pytest.fixture(scope="module")
def s3_env(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment every process of the deployment shares: S3 database, shared data dir."""
    shared = tmp_path_factory.mktemp("shared-state")
    return {
        "RAG_SITES": json.dumps({SITE: [COLLECTION]}),  # readiness wants every served site indexed
        "RAG_DB_URI": s3_server.new_db_uri(),
        "RAG_STORAGE_OPTIONS": json.dumps(s3_server.storage_options()),
        "RAG_READ_CONSISTENCY_S": str(CONSISTENCY_S),
        "RAG_DATA_DIR": str(shared),
        "RAG_CHUNK_TOKENS": "32",
        "RAG_CHUNK_OVERLAP": "0",
        "RAG_LM_MODEL": "",
        "RAG_RERANKER_MODEL": str(shared / "no-such-reranker"),
        "RAG_RERANKER_ON_MISSING": "fallback",
        "RAG_EMBEDDER_PRECISION": "float32",
        "RAG_PROGRAMS_DIR": str(REPO_ROOT / "programs"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(
        data_dir=Path(env["RAG_DATA_DIR"]),
        sites=json.loads(env["RAG_SITES"]),
        db_uri=env["RAG_DB_URI"],
        storage_options=json.loads(env["RAG_STORAGE_OPTIONS"]),
    )


#: ``rag-app`` as a subprocess (the console script's own entry point, without relying on PATH).
CLI = [sys.executable, "-c", "from rag_app.cli import app; app()"]


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def ingest_command(corpus: Path) -> list[str]:
    return [*CLI, "ingest", "--site", SITE, "--collection", COLLECTION, str(corpus)]


class Replica:
    """One ``rag-app serve`` process on a free loopback port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [*CLI, "serve", "--port", str(self.port), "--log-level", "warning"],
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, Path(self.log.name).read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"replica on {self.url} not ready: {Path(self.log.name).read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def search(client: httpx.Client, replica: Replica, key: str, query: str) -> httpx.Response:
    body = {"site": SITE, "query": query, "k": 40, "top_n": 40}  # no reranker weights: retrieval order
    return client.post(f"{replica.url}/v1/search", json=body, headers={"Authorization": f"Bearer {key}"})


def versions_seen(passages: list[dict[str, Any]]) -> dict[str, set[str]]:
    """doc id -> the generations its returned chunks carry."""
    seen: dict[str, set[str]] = {}
    for p in passages:
        seen.setdefault(p["doc_id"], set()).update(re.findall(r"generation (g\d+)", p["text"]))
    return seen


def check_whole_documents(passages: list[dict[str, Any]], chunks_per_doc: int) -> None:
    """Each document's chunks all come from one generation, and all of them are there (every page has
    the same shape, so the same number of chunks in every generation)."""
    for doc_id, generations in versions_seen(passages).items():
        assert len(generations) == 1, f"{doc_id} mixes generations {generations}"
        chunks = [p for p in passages if p["doc_id"] == doc_id]
        assert len(chunks) == chunks_per_doc, f"{doc_id}: {len(chunks)} of its {chunks_per_doc} chunks"


def chunk_count(passages: list[dict[str, Any]]) -> int:
    """The one number of chunks every document has (asserted), from a quiescent search."""
    counts = {d: sum(p["doc_id"] == d for p in passages) for d in versions_seen(passages)}
    assert len(set(counts.values())) == 1 and set(counts) == set(DOCS), counts
    return next(iter(counts.values()))


def test_two_replicas_serve_one_object_store_database_while_an_ingest_writes(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    first = run_cli(s3_env, "ingest", "--site", SITE, "--collection", COLLECTION,
                    str(write_corpus(tmp_path / "g1.jsonl", 1, DOCS)))  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    settings = settings_of(s3_env)
    key = add_key(settings, "replicas", ["*"])

    replicas = [Replica(s3_env, tmp_path / f"replica-{i}.log") for i in range(2)]
    try:
        for r in replicas:
            r.wait_ready()
        statuses: dict[int, int] = {}
        requests = 0
        # each generation replaces every document; the last one also adds NEW_DOCS
        with httpx.Client(timeout=60) as client:
            baseline = search(client, replicas[0], key, "single sign-on signing certificate")
            chunks_per_doc = chunk_count(baseline.json()["passages"])
            assert chunks_per_doc >= 2 and len(DOCS + NEW_DOCS) * chunks_per_doc <= 40  # all fit in k
            for generation in range(2, GENERATIONS + 2):
                ids = DOCS + (NEW_DOCS if generation == GENERATIONS + 1 else [])
                corpus = write_corpus(tmp_path / f"g{generation}.jsonl", generation, ids)
                writer = subprocess.Popen(
                    ingest_command(corpus),
                    env={**os.environ, **s3_env},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                while writer.poll() is None or requests % 2:  # a bounded loop: as long as the ingest runs
                    replica = replicas[requests % 2]
                    response = search(client, replica, key, "single sign-on signing certificate")
                    requests += 1
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.status_code == 200:
                        check_whole_documents(response.json()["passages"], chunks_per_doc)
                _, err = writer.communicate(timeout=600)
                assert writer.returncode == 0, err[-3000:]
            done_at = time.monotonic()

            assert requests > 0 and set(statuses) <= {200, 503}, statuses
            assert statuses.get(200, 0) > 0, statuses

            # the last commit is visible on both replicas within the consistency interval
            latest = f"g{GENERATIONS + 1}"
            visible_after: list[float] = []
            for replica in replicas:
                while True:
                    response = search(client, replica, key, "single sign-on signing certificate")
                    assert response.status_code == 200, response.text
                    seen = versions_seen(response.json()["passages"])
                    if set(seen) >= set(DOCS + NEW_DOCS) and all(v == {latest} for v in seen.values()):
                        visible_after.append(time.monotonic() - done_at)
                        break
                    assert time.monotonic() - done_at < CONSISTENCY_S + 10, seen
                    time.sleep(0.1)
            answers = [
                [p["id"] for p in search(client, r, key, "rotate the signing certificate").json()["passages"]]
                for r in replicas
            ]
            assert answers[0] == answers[1]
    finally:
        for r in replicas:
            r.stop()


def test_keys_and_feedback_are_shared_by_replicas(s3_env: dict[str, str], tmp_path: Path) -> None:
    settings = settings_of(s3_env)
    seeded = run_cli(s3_env, "ingest", "--site", SITE, "--collection", COLLECTION,
                     str(write_corpus(tmp_path / "g1.jsonl", 1, DOCS)))  # fmt: skip
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    add_key(settings, "bootstrap", ["*"])  # auth is on from the start in both processes
    replicas = [Replica(s3_env, tmp_path / f"replica-{i}.log") for i in range(2)]
    try:
        for r in replicas:
            r.wait_ready()
        late = add_key(settings, "late", [SITE])  # added after both servers started
        with httpx.Client(timeout=60) as client:
            for r in replicas:
                assert search(client, r, late, "signing certificate").status_code == 200
            ask = client.post(
                f"{replicas[0].url}/v1/programs/{SITE}/chat_bridge",
                json={"message": "How do I rotate the signing certificate?"},
                headers={"Authorization": f"Bearer {late}"},
            )
            assert ask.status_code == 200, ask.text
            request_id = ask.json()["request_id"]
            feedback = client.post(
                f"{replicas[1].url}/v1/feedback",
                json={"request_id": request_id, "rating": 1},
                headers={"Authorization": f"Bearer {late}"},
            )
            assert feedback.status_code in (200, 201), feedback.text
            revoke_key(settings, "late")
            for r in replicas:
                assert search(client, r, late, "signing certificate").status_code == 401
    finally:
        for r in replicas:
            r.stop()
