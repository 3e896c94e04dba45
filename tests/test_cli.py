"""The CLI end to end on a temp data dir: ingest, search (single and batch), stats, doctor, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag_app.cli import app

runner = CliRunner()
CATALYSTS = (
    "id,title,text,date,tickers,tags,shape\n"
    'c1,NVDA beat,"Nvidia beat estimates, gapped up, then faded.",2024-02-21,NVDA,earnings,gap-up-fade\n'
    'c2,AMD guide,"AMD raised data-center guidance and drifted higher.",2024-05-01,AMD,guidance,drift\n'
)


@pytest.fixture
def indexed(tmp_path: Path) -> Path:
    data_dir = tmp_path / "rag"
    src = tmp_path / "catalysts.csv"
    src.write_text(CATALYSTS)
    result = runner.invoke(
        app,
        ["ingest", "--site", "paiddaily", "--collection", "catalysts", str(src), "--data-dir", str(data_dir)],
    )
    assert result.exit_code == 0, result.output
    assert "2 added, 0 updated, 0 unchanged, 0 removed" in result.output
    return data_dir


def test_search_json_and_batch(indexed: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "search",
            "--site",
            "paiddaily",
            "--collection",
            "catalysts",
            "--json",
            "--data-dir",
            str(indexed),
            "--ticker",
            "AMD",
            "guidance raised",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["mode"] == "hybrid" and [p["doc_id"] for p in payload["passages"]] == ["c2"]
    assert set(payload["passages"][0]) >= {"id", "title", "text", "score", "metadata"}

    queries = tmp_path / "q.jsonl"
    queries.write_text('{"query": "Nvidia faded"}\n{"query": "AMD guidance"}\n')
    batch = runner.invoke(
        app,
        [
            "search",
            "--site",
            "paiddaily",
            "--collection",
            "catalysts",
            "--queries",
            str(queries),
            "--json",
            "--k",
            "1",
            "--data-dir",
            str(indexed),
        ],
    )
    assert batch.exit_code == 0, batch.output
    lines = [json.loads(line) for line in batch.stdout.splitlines()]
    assert [(x["query"], x["passages"][0]["doc_id"]) for x in lines] == [
        ("Nvidia faded", "c1"),
        ("AMD guidance", "c2"),
    ]


def test_stats_and_doctor(indexed: Path) -> None:
    stats = runner.invoke(app, ["stats", "--json", "--data-dir", str(indexed)])
    assert stats.exit_code == 0
    [info] = json.loads(stats.stdout)
    assert (info["site"], info["rows"], info["documents"], info["dimension"]) == ("paiddaily", 2, 2, 384)
    doctor = runner.invoke(app, ["doctor", "--json", "--data-dir", str(indexed)])
    checks = {c["component"]: c for c in json.loads(doctor.stdout)}
    assert checks["bundled MiniLM"]["status"] == "ok"
    assert checks["reranker (in use)"]["status"] == "missing"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["search", "--site", "nope", "q"], 2, "unknown site 'nope'"),
        (["search", "--site", "paiddaily", "   "], 2, "query is empty"),
        (["search", "--site", "paiddaily", "x" * 9000], 2, "over the limit of 8000"),
        (["search", "--site", "paiddaily", "--mode", "fuzzy", "q"], 2, "unknown search mode 'fuzzy'"),
        (["search", "--site", "paiddaily", "--collection", "news", "q"], 2, "unknown collection 'news'"),
        (["ingest", "--site", "paiddaily", "--collection", "tickers", "/no/such/path"], 3, "no such file"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(
    indexed: Path, args: list[str], code: int, message: str
) -> None:
    result = runner.invoke(app, [*args, "--data-dir", str(indexed)])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_malformed_csv_keeps_index_and_skip_mode(indexed: Path, tmp_path: Path) -> None:
    (tmp_path / "v2").mkdir()
    bad = tmp_path / "v2" / "catalysts.csv"  # same name: the source path is part of a document
    bad.write_text(CATALYSTS + "c3,broken row\n")
    result = runner.invoke(
        app,
        ["ingest", "--site", "paiddaily", "--collection", "catalysts", str(bad), "--data-dir", str(indexed)],
    )
    assert result.exit_code == 3 and "v2/catalysts.csv:4: expected 7 columns, found 2" in result.output
    skipped = runner.invoke(
        app,
        [
            "ingest",
            "--site",
            "paiddaily",
            "--collection",
            "catalysts",
            str(bad),
            "--on-error",
            "skip",
            "--data-dir",
            str(indexed),
        ],
    )
    assert skipped.exit_code == 0 and "1 bad records skipped" in skipped.output
    assert "0 added, 2 updated, 0 unchanged" in skipped.output  # the source path changed


def test_console_script_help_for_every_command() -> None:
    exe = Path(sys.executable).with_name("rag-app")
    for cmd in (
        ["--help"],
        ["ingest", "--help"],
        ["search", "--help"],
        ["eval", "retrieval", "--help"],
        ["models", "pull", "--help"],
        ["doctor", "--help"],
        ["stats", "--help"],
        ["demo", "--help"],
    ):
        out = subprocess.run([str(exe), *cmd], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (cmd, out.stderr)
        assert "Usage" in out.stdout


def test_unreachable_ollama_and_missing_model_are_one_line_errors(indexed: Path, tmp_path: Path) -> None:
    from tests.ollama_standin import dead_host

    ollama = runner.invoke(
        app,
        ["search", "--site", "paiddaily", "--data-dir", str(tmp_path / "o"), "q"],
        env={"RAG_EMBEDDER_BACKEND": "ollama", "RAG_OLLAMA_HOST": dead_host(), "RAG_OLLAMA_RETRIES": "0"},
    )
    assert ollama.exit_code == 6 and "cannot reach Ollama" in ollama.output, ollama.output
    missing = runner.invoke(
        app,
        ["search", "--site", "paiddaily", "--data-dir", str(indexed), "q"],
        env={
            "RAG_EMBEDDER_MODEL": "nomic-ai/nomic-embed-text-v1.5",
            "RAG_HF_CACHE_DIR": str(tmp_path / "empty-cache"),
        },
    )
    assert missing.exit_code == 4 and "rag-app models pull" in missing.output, missing.output
    rerank = runner.invoke(
        app,
        ["search", "--site", "paiddaily", "--rerank", "--data-dir", str(indexed), "q"],
        env={"RAG_RERANKER_MODEL": str(tmp_path / "no-model")},
    )
    assert rerank.exit_code == 4 and "no-model" in rerank.output, rerank.output
    assert "Traceback" not in ollama.output + missing.output + rerank.output


def test_demo_and_ask_on_the_sample_index(sample_index_dir: Path, tmp_path: Path) -> None:
    env = {"RAG_LM_MODEL": "", "RAG_PROGRAMS_DIR": str(Path(__file__).resolve().parents[1] / "programs")}
    demo = runner.invoke(app, ["demo", "--data-dir", str(sample_index_dir)], env=env)
    assert demo.exit_code == 0, demo.output
    assert "0 added, 0 updated" in demo.output  # the sample indexes already exist: nothing re-embedded
    assert "reranker weights are not on this machine" in demo.output
    assert demo.output.count("A (extractive):") == 3 and "$8" in demo.output

    ask = runner.invoke(
        app,
        [
            "ask",
            "--site",
            "builddaily",
            "--program",
            "chat_bridge",
            "--json",
            "--data-dir",
            str(sample_index_dir),
            "How much does Sage cost per seat?",
        ],
        env={**env, "RAG_RERANKER_ON_MISSING": "fallback"},
    )
    assert ask.exit_code == 0, ask.output
    out = json.loads(ask.stdout)
    assert {"answer", "citations", "passages", "mode", "timings"} <= set(out)
    assert out["mode"] == "extractive" and out["citations"]
    assert all(c["doc_id"] != "sage-daily" for c in out["citations"])


def _tiny_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    docs = {
        "d1": ("Tower card", "The Tower card means sudden upheaval and revelation."),
        "d2": ("Saturn return", "Saturn returns to its natal place around age twenty-nine."),
        "d3": ("Nvidia earnings", "Nvidia beat estimates and the stock gapped up then faded."),
    }
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, (t, x) in docs.items())
    )
    queries = {"q1": "sudden upheaval card", "q2": "Saturn return age", "q3": "earnings gap and fade"}
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items())
    )
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t1\n")
    return root


def test_eval_retrieval_json_shapes_and_report(tmp_path: Path) -> None:
    from tests.tiny_models import build_tiny_cross_encoder

    beir = _tiny_beir(tmp_path / "tiny-beir")
    base = ["eval", "retrieval", "--beir", str(beir), "--data-dir", str(tmp_path / "rag"), "--k", "3"]
    plain = runner.invoke(app, [*base, "--mode", "hybrid", "--json"])
    assert plain.exit_code == 0, plain.output
    assert set(json.loads(plain.stdout)) == {"recall@5", "recall@20", "mrr@5", "ndcg@10"}
    model = build_tiny_cross_encoder(tmp_path / "tiny-ce")
    reranked = runner.invoke(app, [*base, "--mode", "vector", "--json", "--rerank", "--reranker", str(model)])
    assert reranked.exit_code == 0, reranked.output
    payload = json.loads(reranked.stdout)
    assert set(payload) == {"retrieval", "reranked"}
    assert set(payload["retrieval"]) == set(payload["reranked"]) == {"recall@5", "mrr@5", "ndcg@10"}
    report = runner.invoke(app, [*base, "--report-dir", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert {"vector", "fts", "hybrid"} <= set(report.stdout.split())
    assert {p.name for p in (tmp_path / "report").iterdir()} >= {"report.json", "report.md", "report.png"}


def test_search_rerank_prints_both_scores(indexed: Path, tmp_path: Path) -> None:
    from tests.tiny_models import build_tiny_cross_encoder

    model = build_tiny_cross_encoder(tmp_path / "tiny-ce")
    result = runner.invoke(
        app,
        [
            "search",
            "--site",
            "paiddaily",
            "--collection",
            "catalysts",
            "--rerank",
            "--top-n",
            "1",
            "--json",
            "--data-dir",
            str(indexed),
            "data-center guidance",
        ],
        env={"RAG_RERANKER_MODEL": str(model), "RAG_RERANKER_REVISION": ""},
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["reranked"] is True and len(payload["passages"]) == 1
    [best] = payload["passages"]
    assert best["rerank_score"] is not None and 0 < best["relevance"] < 1
    assert best["retrieval_rank"] in (1, 2) and best["retrieval_score"] > 0


def test_keys_lifecycle_and_serve_refuses_open_public_bind(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "rag")]
    added = runner.invoke(app, ["keys", "add", "--name", "chat", "--sites", "builddaily,sagedaily", *data])
    assert added.exit_code == 0, added.output
    key = added.stdout.strip().splitlines()[-1]
    assert key.startswith("rag-") and len(key) > 40
    assert key not in (tmp_path / "rag" / "api_keys.json").read_text()  # only a hash is stored
    listed = runner.invoke(app, ["keys", "list", "--json", *data])
    assert json.loads(listed.stdout) == [
        {
            "name": "chat",
            "sites": ["builddaily", "sagedaily"],
            "scopes": ["read"],
            "created_at": json.loads(listed.stdout)[0]["created_at"],
        }
    ]
    assert runner.invoke(app, ["keys", "revoke", "chat", *data]).exit_code == 0
    again = runner.invoke(app, ["keys", "revoke", "chat", *data])
    assert again.exit_code == 2 and "no API key named 'chat'" in again.output
    public = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "fresh")])
    assert public.exit_code == 2 and "refusing to listen on 0.0.0.0" in public.output


def test_models_pull_pulls_ollama_models_and_skips_local_ones(tmp_path: Path) -> None:
    """`models pull` against the Ollama stand-in (a STAND-IN server: Ollama cannot be installed here)."""
    from tests.ollama_standin import OllamaStandIn

    local = runner.invoke(
        app,
        ["models", "pull", "--data-dir", str(tmp_path)],
        env={"RAG_RERANKER_MODEL": str(tmp_path), "RAG_LM_MODEL": ""},
    )
    assert local.exit_code == 0 and "nothing to pull" in local.output, local.output
    with OllamaStandIn(models={}) as srv:
        pulled = runner.invoke(
            app,
            ["models", "pull", "--data-dir", str(tmp_path)],
            env={
                "RAG_EMBEDDER_BACKEND": "ollama",
                "RAG_OLLAMA_HOST": srv.host,
                "RAG_RERANKER_MODEL": str(tmp_path),
                "RAG_LM_MODEL": "ollama_chat/llama3.2",
            },
        )
        assert pulled.exit_code == 0, pulled.output
        assert "ollama: nomic-embed-text -> success" in pulled.output
        assert "ollama: llama3.2 -> success" in pulled.output
        assert {"nomic-embed-text:latest", "llama3.2:latest"} <= set(srv.models)
