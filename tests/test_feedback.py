"""Issue 13: feedback that feeds optimization, end to end.

Answers from the real app under uvicorn (the session's sample index of all three sites, copied so this
module's answer log is its own; bundled MiniLM; reranker fallback; no LM, so answers are extractive)
are logged by request id; ``POST /v1/feedback`` rates them; ``rag-app feedback export`` turns the
ratings into eval rows that ``load_eval_jsonl``, ``rag-app eval retrieval --dataset`` and the optimizer
(``load_rows``/``to_examples``, and a bootstrap run with ``dspy.utils.DummyLM`` standing in for an LM)
read as they are. Also: idempotency, 404/403/410/422, two processes writing one log, and stats.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from dspy.utils import DummyLM
from fastapi import FastAPI
from typer.testing import CliRunner

from rag_app.answering.registry import program_class
from rag_app.cli import app as rag_app_cli
from rag_app.cli.feedback import register
from rag_app.core.settings import Settings
from rag_app.evaluation.answers import program_input
from rag_app.evaluation.datasets import load_eval_jsonl
from rag_app.optimize.examples import load_rows, to_examples
from rag_app.optimize.program import optimize_program
from rag_app.server.app import create_app
from rag_app.server.auth import add_key
from rag_app.server.feedback_store import STORE_FILE, FeedbackRecord, FeedbackStore, LoggedAnswer
from rag_app.server.routes.feedback import feedback_router
from tests.conftest import make_test_settings, set_offline_cli_env
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(300)

runner = CliRunner()


def feedback_cli() -> typer.Typer:
    """A Typer app with just the ``feedback`` group (``rag_app.cli`` adds it the same way)."""
    cli = typer.Typer()
    register(cli)

    @cli.callback()
    def main() -> None:
        """The feedback group alone."""

    return cli


def with_feedback_route(app: FastAPI) -> FastAPI:
    """``app`` with ``POST /v1/feedback`` (mounted here unless ``create_app`` already does)."""
    if not any(getattr(route, "path", None) == "/v1/feedback" for route in app.routes):
        app.include_router(feedback_router(app.state.rag))
    return app


def copy_index(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(f"{STORE_FILE}*", "api_keys.json*"))
    return target


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message", "request_id"} <= set(body["error"])
    return body["error"]


# ============================================================================================ fixtures


@pytest.fixture(scope="module")
def data_dir(sample_index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_index(sample_index_dir, tmp_path_factory.mktemp("feedback") / "data")


@pytest.fixture(scope="module")
def keys(data_dir: Path) -> dict[str, str]:
    settings = make_test_settings(data_dir)
    return {"all": add_key(settings, "ops", ["*"]), "sage": add_key(settings, "sage-bot", ["sagedaily"])}


@pytest.fixture(scope="module")
def live(data_dir: Path, keys: dict[str, str]) -> Iterator[LiveServer]:
    with LiveServer(with_feedback_route(create_app(make_test_settings(data_dir)))) as server:
        yield server


@pytest.fixture
def client(live: LiveServer, keys: dict[str, str]) -> Iterator[httpx.Client]:
    with live.client(headers={"Authorization": f"Bearer {keys['all']}"}) as http:
        yield http


def chat(client: httpx.Client, question: str, history: list[dict[str, str]] | None = None) -> dict[str, Any]:
    messages = [*(history or []), {"role": "user", "content": question}]
    r = client.post("/v1/chat-bridge", json={"site": "builddaily", "messages": messages})
    assert r.status_code == 200, r.text
    return r.json()


def program(client: httpx.Client, site: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/v1/programs/{site}/{name}", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def rate(client: httpx.Client, request_id: str, rating: int, **fields: Any) -> httpx.Response:
    return client.post("/v1/feedback", json={"request_id": request_id, "rating": rating, **fields})


# ========================================================================================= answering


def test_every_answer_carries_its_request_id_and_is_logged(client: httpx.Client, data_dir: Path) -> None:
    body = chat(client, "How much is the Trellis Growth plan?")
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
    typed = program(client, "builddaily", "resources_search", {"query": "status page uptime", "limit": 2})
    assert typed["request_id"] and typed["results"]
    # A client's X-Request-ID becomes the answer's id.
    r = client.post(
        "/v1/programs/paiddaily/tickers", json={"setup": "strong beat"}, headers={"X-Request-ID": "mine-1"}
    )
    assert r.status_code == 200 and r.json()["request_id"] == "mine-1" == r.headers["x-request-id"]

    store = FeedbackStore.from_settings(make_test_settings(data_dir))
    logged = store.answer(body["request_id"])
    assert logged is not None and not logged.expired
    assert (logged.site, logged.program, logged.question) == (
        "builddaily",
        "chat_bridge",
        "How much is the Trellis Growth plan?",
    )
    assert logged.answer == body["answer"] and logged.citations == body["citations"]
    assert [p["id"] for p in logged.passages] == [p["id"] for p in body["passages"]]
    assert {"id", "doc_id", "title", "text"} <= set(logged.passages[0])
    searched = store.answer(typed["request_id"])
    assert searched is not None and searched.inputs == {"query": "status page uptime", "limit": 2}
    assert searched.question_field == "query" and searched.collection is None
    tickers = store.answer("mine-1")
    assert tickers is not None and tickers.collection == "tickers" and tickers.question == "strong beat"

    # The OpenAPI document promises the request id on the typed routes' answers.
    doc = client.get("/openapi.json").json()
    ok = doc["paths"]["/v1/programs/builddaily/resources_search"]["post"]["responses"]["200"]
    schema = ok["content"]["application/json"]["schema"]
    assert "request_id" in schema["required"] and "$ref" in schema
    assert "/v1/feedback" in doc["paths"]


def test_streamed_answer_is_logged_and_can_be_rated(client: httpx.Client) -> None:
    body = {
        "site": "builddaily",
        "stream": True,
        "messages": [{"role": "user", "content": "What is Beacon?"}],
    }
    with client.stream("POST", "/v1/chat-bridge", json=body) as r:
        assert r.status_code == 200
        text = r.read().decode()
    done = json.loads(re.search(r"event: done\ndata: (.*)\n", text).group(1))  # type: ignore[union-attr]
    r = rate(client, done["request_id"], 1)
    assert r.status_code == 200, r.text
    assert r.json()["program"] == "chat_bridge"


# ============================================================================ feedback -> eval rows


def test_feedback_exports_eval_rows_that_eval_and_optimize_read(
    client: httpx.Client,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A: chat-bridge answer, thumbs-up -> its answer and cited documents are gold.
    a = chat(client, "How much is the Trellis Growth plan?")
    assert a["citations"]
    # B: resources_search, thumbs-down naming the right passage -> relevant_ids, no gold answer.
    b = program(
        client, "builddaily", "resources_search", {"query": "How long are digests stored?", "limit": 3}
    )
    right = b["passages"][-1]
    # C: chat with history, thumbs-down with a corrected answer.
    history = [
        {"role": "user", "content": "Tell me about Sage Daily."},
        {"role": "assistant", "content": "Sage Daily sends a morning digest."},
    ]
    c = program(
        client,
        "builddaily",
        "chat_bridge",
        {"message": "Which phones can read it?", "history": history},
    )
    # D: a bare thumbs-down -> counted, not exported.
    d = chat(client, "Does Beacon support SAML?")
    # E: a sagedaily reading from cards only (no free-text question), thumbs-up.
    e = program(client, "sagedaily", "reading", {"cards": ["The Tower reversed"]})

    assert rate(client, a["request_id"], 1, comment="spot on").status_code == 200
    r = rate(client, b["request_id"], -1, correct_passage_ids=[right["id"]])
    assert r.status_code == 200, r.text
    assert r.json() == {
        "request_id": b["request_id"],
        "site": "builddaily",
        "program": "resources_search",
        "rating": -1,
        "relevant_ids": [right["doc_id"]],
        "gold": True,
    }
    corrected = "iOS 16 or newer and Android 12 or newer."
    assert rate(client, c["request_id"], -1, corrected_answer=corrected).json()["gold"] is True
    bare = rate(client, d["request_id"], -1, comment="wrong product")
    assert bare.status_code == 200 and bare.json()["gold"] is False and bare.json()["relevant_ids"] == []
    assert rate(client, e["request_id"], 1).status_code == 200

    out = tmp_path / "gold.jsonl"
    cli = feedback_cli()
    result = runner.invoke(
        cli, ["feedback", "export", "--site", "builddaily", "--out", str(out), "--data-dir", str(data_dir)]
    )
    assert result.exit_code == 0, result.output
    rows = {row.id: row for row in load_eval_jsonl(out)}
    # the module's data dir also holds the streamed answer another test rated +1: export takes every gold row
    assert f"wrote {len(rows)} eval row(s)" in result.output and "1 thumbs-down without" in result.output
    assert "not exported" in result.output
    assert {a["request_id"], b["request_id"], c["request_id"]} <= set(rows)
    assert d["request_id"] not in rows
    row_a = rows[a["request_id"]]
    assert (row_a.query, row_a.site, row_a.program) == (
        "How much is the Trellis Growth plan?",
        "builddaily",
        "chat_bridge",
    )
    assert row_a.answer == a["answer"]
    assert row_a.relevant_ids == list(dict.fromkeys(cit["doc_id"] for cit in a["citations"]))
    assert row_a.metadata["rating"] == 1 and row_a.metadata["comment"] == "spot on"
    row_b = rows[b["request_id"]]
    assert row_b.relevant_ids == [right["doc_id"]] and row_b.answer is None
    assert row_b.program == "resources_search" and row_b.metadata["inputs"] == {"limit": 3}
    row_c = rows[c["request_id"]]
    assert row_c.answer == corrected and row_c.relevant_ids == []
    assert [t.model_dump() for t in row_c.history] == history and row_c.query == "Which phones can read it?"

    # The rows replay the logged inputs through each program's Input.
    settings = make_test_settings(data_dir)
    chat_cls = program_class(settings, "builddaily", "chat_bridge")
    search_cls = program_class(settings, "builddaily", "resources_search")
    assert program_input(chat_cls, row_c).model_dump() == {
        "message": "Which phones can read it?",
        "history": history,
    }
    assert program_input(search_cls, row_b).model_dump() == {
        "query": "How long are digests stored?",
        "limit": 3,
    }

    # --since: a day in the future leaves nothing (an error, and the file is not touched).
    before = out.read_bytes()
    later = runner.invoke(
        cli,
        [
            "feedback",
            "export",
            "--site",
            "builddaily",
            "--out",
            str(out),
            "--since",
            "2999-01-01",
            "--data-dir",
            str(data_dir),
        ],
    )
    assert later.exit_code != 0 and "no exportable feedback" in later.output and out.read_bytes() == before

    # sagedaily: a reading from cards only has no question; its words are the query, its cards kept.
    sage = tmp_path / "sage.jsonl"
    result = runner.invoke(
        cli, ["feedback", "export", "--site", "sagedaily", "--out", str(sage), "--data-dir", str(data_dir)]
    )
    assert result.exit_code == 0, result.output
    (row_e,) = load_eval_jsonl(sage)
    reading = program_class(settings, "sagedaily", "reading")
    assert row_e.query == "The Tower reversed" and row_e.collection is None
    assert row_e.metadata["inputs"] == {"cards": ["The Tower reversed"]}
    assert program_input(reading, row_e).model_dump() == {
        "cards": ["The Tower reversed"],
        "transits": [],
        "question": "The Tower reversed",
    }

    # `rag-app eval retrieval --dataset` runs on the export.
    set_offline_cli_env(monkeypatch, data_dir)
    evaluated = runner.invoke(
        rag_app_cli,
        [
            "eval",
            "retrieval",
            "--dataset",
            str(out),
            "--mode",
            "vector",
            "--json",
            "--data-dir",
            str(data_dir),
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert set(report) == {"recall@5", "recall@20", "mrr@5", "ndcg@10"}
    assert all(0.0 <= value <= 1.0 for value in report.values())

    # `rag-app optimize --train/--dev` reads it: its rows and examples, then a bootstrap run.
    loaded = load_rows(out, "builddaily", "chat_bridge", all_rows=False, limit=None, what="train")
    assert {a["request_id"], c["request_id"]} <= {row.id for row in loaded}
    # this test's own rows, in file order (the module's data dir also holds another test's streamed answer)
    train_rows = [row for row in loaded if row.id in {a["request_id"], c["request_id"]}]
    assert [row.id for row in train_rows] == [a["request_id"], c["request_id"]]
    examples = to_examples(chat_cls, train_rows)
    assert examples[1].inputs().toDict() == {"message": "Which phones can read it?", "history": history}
    assert examples[1].answer == corrected and examples[0].relevant_ids == row_a.relevant_ids
    lm = DummyLM({row.query: {"answer": f"{row.answer} [1]"} for row in train_rows})
    optimized = optimize_program(
        settings,
        "builddaily",
        "chat_bridge",
        out,
        out,
        optimizer="bootstrap",
        lm=lm,
        state_dir=tmp_path / "states",
        progress=False,
    )
    assert optimized.meta["train"]["rows"] == len(loaded) and optimized.meta["dev"]["rows"] == len(loaded)
    assert optimized.state_path == tmp_path / "states" / "builddaily" / "chat_bridge.json"


# ========================================================================================== feedback


def test_feedback_is_idempotent_per_request_id(client: httpx.Client, data_dir: Path) -> None:
    answer = chat(client, "How do I rotate an API key?")
    rid = answer["request_id"]
    first = rate(client, rid, -1, comment="too vague")
    second = rate(client, rid, -1, comment="too vague")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.headers["x-request-id"] != second.headers["x-request-id"]  # two calls, one row
    store = FeedbackStore.from_settings(make_test_settings(data_dir))
    (row,) = store.feedback(request_id=rid)
    assert row.rating == -1 and row.comment == "too vague"

    changed = rate(client, rid, 1)  # a later post replaces the earlier one
    assert changed.status_code == 200 and changed.json()["rating"] == 1 and changed.json()["gold"]
    (row,) = store.feedback(request_id=rid)
    assert row.rating == 1 and row.comment is None
    assert row.answer.answer == answer["answer"] and row.answer.question == "How do I rotate an API key?"
    with sqlite3.connect(data_dir / STORE_FILE) as conn:
        assert conn.execute("SELECT COUNT(*) FROM feedback WHERE request_id = ?", (rid,)).fetchone() == (1,)


def test_feedback_errors(client: httpx.Client, live: LiveServer, keys: dict[str, str]) -> None:
    r = rate(client, "f" * 32, 1)
    assert r.status_code == 404 and error_of(r)["code"] == "unknown_request_id"
    assert error_of(r)["field"] == "request_id"

    answer = chat(client, "How do I configure SSO with Okta?")
    rid = answer["request_id"]
    with live.client(headers={"Authorization": f"Bearer {keys['sage']}"}) as sage:
        r = rate(sage, rid, 1)
    assert r.status_code == 403 and error_of(r)["code"] == "forbidden"
    with live.client() as anonymous:
        assert rate(anonymous, rid, 1).status_code == 401

    for body, field in [
        ({"request_id": rid, "rating": 0}, "rating"),
        ({"request_id": rid, "rating": True}, "rating"),
        ({"request_id": rid, "rating": "1"}, "rating"),
        ({"request_id": rid}, "rating"),
        ({"rating": 1}, "request_id"),
        ({"request_id": rid, "rating": 1, "stars": 5}, "stars"),
        ({"request_id": rid, "rating": 1, "corrected_answer": "  "}, "corrected_answer"),
        ({"request_id": rid, "rating": 1, "correct_passage_ids": [""]}, "correct_passage_ids"),
        ({"request_id": rid, "rating": 1, "comment": "x" * 8001}, "comment"),
        (
            {"request_id": rid, "rating": -1, "correct_passage_ids": ["no-such-passage"]},
            "correct_passage_ids[0]",
        ),
    ]:
        r = client.post("/v1/feedback", json=body)
        assert r.status_code == 422, (body, r.text)
        assert error_of(r)["field"] == field, (body, r.text)
    # Nothing was stored by the refused posts.
    assert rate(client, "f" * 32, 1).status_code == 404

    # A passage of the site's index that the answer did not show is accepted (resolved to its document).
    other = program(client, "builddaily", "resources_search", {"query": "webhook retries", "limit": 1})
    passage = other["passages"][0]
    assert passage["id"] not in {p["id"] for p in answer["passages"]}
    r = rate(client, rid, -1, correct_passage_ids=[passage["id"], passage["id"]])
    assert r.status_code == 200, r.text
    assert r.json()["relevant_ids"] == [passage["doc_id"]]


def test_expired_answers_get_410(data_dir: Path, keys: dict[str, str], tmp_path: Path) -> None:
    """A server with a TTL of 1.5 seconds: its answers soon stop taking feedback."""
    ttl_days = 1.5 / 86400
    settings = make_test_settings(
        copy_index(data_dir, tmp_path / "data"),
        sites={"builddaily": ["resources"]},
        feedback_ttl_days=ttl_days,
    )
    with (
        LiveServer(with_feedback_route(create_app(settings))) as server,
        server.client(headers={"Authorization": f"Bearer {keys['all']}"}) as http,
    ):
        old = chat(http, "How much is the Trellis Growth plan?")
        time.sleep(1.6)  # let the answer pass its TTL
        r = rate(http, old["request_id"], 1)
        assert r.status_code == 410, r.text
        assert error_of(r)["code"] == "expired" and "feedback_ttl_days" in error_of(r)["message"]
        # The next answer expires the old one for good (its content is dropped); still a 410.
        fresh = chat(http, "What is Beacon?")
        assert rate(http, fresh["request_id"], 1).status_code == 200
        gone = FeedbackStore.from_settings(settings).answer(old["request_id"])
        assert gone is not None and gone.expired and gone.answer == "" and gone.passages == []
        assert rate(http, old["request_id"], 1).status_code == 410


# ====================================================================================== concurrency


def write_answers_and_feedback(path: str, prefix: str, count: int) -> None:
    """One writer (a process or thread of its own, with its own connections)."""
    store = FeedbackStore(Path(path), ttl_days=30)
    for i in range(count):
        logged = LoggedAnswer(
            request_id=f"{prefix}-{i}",
            site="builddaily",
            program="chat_bridge",
            created_at=time.time(),
            question=f"question {i}",
            answer=f"answer {i}",
            citations=[{"index": 1, "passage_id": "p", "doc_id": f"doc-{i}"}],
        )
        assert store.record_answer(logged)
        store.put_feedback(
            FeedbackRecord(answer=logged, rating=1 if i % 2 else -1, relevant_ids=[], rated_at=time.time())
        )


def test_two_processes_and_two_threads_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    FeedbackStore(path, ttl_days=30).purge()  # creates the file (WAL) before the writers race
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=write_answers_and_feedback, args=(str(path), f"proc{n}", 150)) for n in range(2)
    ]
    threads = [
        threading.Thread(target=write_answers_and_feedback, args=(str(path), f"thread{n}", 150))
        for n in range(2)
    ]
    for worker in [*procs, *threads]:
        worker.start()
    for thread in threads:
        thread.join(120)
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT COUNT(*) FROM answers").fetchone() == (600,)
        assert conn.execute("SELECT COUNT(*) FROM feedback").fetchone() == (600,)
        prefixes = conn.execute(
            "SELECT substr(request_id, 1, instr(request_id, '-') - 1), COUNT(*) FROM feedback GROUP BY 1"
        ).fetchall()
    assert sorted(prefixes) == [("proc0", 150), ("proc1", 150), ("thread0", 150), ("thread1", 150)]


def test_request_id_of_another_site_is_not_overwritten(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / STORE_FILE, ttl_days=30)
    first = LoggedAnswer(
        request_id="same", site="builddaily", program="chat_bridge", created_at=time.time(), question="q"
    )
    assert store.record_answer(first)
    assert not store.record_answer(
        LoggedAnswer(**{**first.to_json(), "site": "sagedaily", "program": "reading"})
    )
    assert store.record_answer(LoggedAnswer(**{**first.to_json(), "question": "again"}))  # same site: newest
    logged = store.answer("same")
    assert logged is not None and logged.site == "builddaily" and logged.question == "again"


# ============================================================================================ stats


def test_stats_counts_and_thumbs_down_rate(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    store = FeedbackStore.from_settings(settings)
    now = time.time()
    plan = [  # (site, program, rating or None, correction)
        ("builddaily", "chat_bridge", 1, None),
        ("builddaily", "chat_bridge", -1, None),
        ("builddaily", "chat_bridge", -1, "better"),
        ("builddaily", "chat_bridge", -1, None),
        ("builddaily", "chat_bridge", None, None),
        ("builddaily", "resources_search", 1, None),
        ("sagedaily", "reading", None, None),
    ]
    for i, (site, name, rating, corrected) in enumerate(plan):
        logged = LoggedAnswer(request_id=f"r{i}", site=site, program=name, created_at=now, question=f"q{i}")
        store.record_answer(logged)
        if rating is not None:
            store.put_feedback(
                FeedbackRecord(
                    answer=logged, rating=rating, relevant_ids=[], rated_at=now, corrected_answer=corrected
                )
            )
    cli = feedback_cli()
    result = runner.invoke(cli, ["feedback", "stats", "--json", "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 0, result.output
    programs = {(p["site"], p["program"]): p for p in json.loads(result.stdout)["programs"]}
    assert programs[("builddaily", "chat_bridge")] == {
        "site": "builddaily",
        "program": "chat_bridge",
        "answers": 5,
        "feedback": 4,
        "thumbs_up": 1,
        "thumbs_down": 3,
        "thumbs_down_rate": 0.75,
        "gold": 2,
    }
    assert programs[("builddaily", "resources_search")]["thumbs_down_rate"] == 0.0
    assert programs[("sagedaily", "reading")]["feedback"] == 0
    assert programs[("sagedaily", "reading")]["thumbs_down_rate"] is None

    only = runner.invoke(
        cli, ["feedback", "stats", "--site", "sagedaily", "--json", "--data-dir", str(settings.data_dir)]
    )
    assert [p["program"] for p in json.loads(only.stdout)["programs"]] == ["reading"]
    table = runner.invoke(cli, ["feedback", "stats", "--data-dir", str(settings.data_dir)])
    assert table.exit_code == 0 and "75.0%" in table.output and "chat_bridge" in table.output


def test_cli_errors_name_what_to_fix(tmp_path: Path) -> None:
    cli = feedback_cli()
    empty = tmp_path / "empty"
    r = runner.invoke(cli, ["feedback", "stats", "--data-dir", str(empty)])
    assert r.exit_code != 0 and "no answer log" in r.output
    FeedbackStore(empty / STORE_FILE, ttl_days=30).purge()
    out = tmp_path / "x.jsonl"
    args = ["feedback", "export", "--out", str(out), "--data-dir", str(empty)]
    r = runner.invoke(cli, [*args, "--site", "nowhere"])
    assert r.exit_code != 0 and "unknown site 'nowhere'" in r.output
    r = runner.invoke(cli, [*args, "--site", "builddaily", "--since", "last week"])
    assert r.exit_code != 0 and "--since" in r.output and "YYYY-MM-DD" in r.output
    r = runner.invoke(cli, [*args, "--site", "builddaily"])
    assert r.exit_code != 0 and "no exportable feedback" in r.output and not out.exists()
