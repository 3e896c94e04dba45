"""Offline optimization: DSPy optimizer runs (DummyLM), the save/refuse rule, checkpoints, and the
retrieval-configuration search with interrupt and resume, on a real builddaily index.

The index (``data/builddaily/resources`` with the bundled MiniLM) is built once per session and shared
with ``test_eval_answers.py`` (:func:`builddaily_index`). The reranker is the fallback (retrieval
order), so every ranking and answer here is deterministic. LMs are ``dspy.utils.DummyLM``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dspy
import pytest
import typer
from dspy.utils import DummyLM
from typer.testing import CliRunner

from rag_app.answering.not_found import NOT_FOUND_ANSWER
from rag_app.answering.program import state_path
from rag_app.cli.quality import register
from rag_app.core.errors import InputError, ServiceUnavailableError
from rag_app.core.settings import Settings
from rag_app.core.types import Citation
from rag_app.evaluation.answers import evaluate_answers
from rag_app.evaluation.datasets import EvalExample, load_eval_jsonl
from rag_app.optimize.metric import BOOTSTRAP_THRESHOLD, answer_metric, answer_score, feedback_metric
from rag_app.optimize.optimizers import make_optimizer, require_lm
from rag_app.optimize.program import optimize_program
from rag_app.optimize.retrieval import CHECKPOINT_NAME, search_retrieval_config
from rag_app.optimize.state import StateNotOverwrittenError, meta_path
from rag_app.optimize.trials import Trial, TrialResult, pick_best, trial_grid
from rag_app.retrieval.retriever import LanceDBRetriever
from tests.conftest import make_program, make_test_settings, set_offline_cli_env
from tests.ollama_standin import OllamaStandIn, dead_host, dspy_chat_reply, passage_number_containing

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
EVAL = DATA / "eval"


# ======================================================================================== fixtures


make_settings = make_test_settings


@pytest.fixture(scope="session")
def index_dir(sample_index_dir: Path) -> Path:
    return sample_index_dir


@pytest.fixture
def programs_dir(tmp_path: Path) -> Path:
    """A programs dir of our own: the site code copied, saved states written here by the tests."""
    folder = tmp_path / "programs"
    folder.mkdir()
    shutil.copy(REPO / "programs" / "builddaily.py", folder / "builddaily.py")
    return folder


@pytest.fixture
def settings(index_dir: Path, programs_dir: Path) -> Settings:
    return make_settings(index_dir, programs_dir)


def write_rows(path: Path, rows: list[EvalExample]) -> Path:
    path.write_text("".join(row.model_dump_json(exclude_none=True) + "\n" for row in rows))
    return path


# =========================================================================== DSPy optimizer run


def test_bootstrap_run_saves_a_state_the_program_loads_and_refuses_worse_runs(
    settings: Settings, programs_dir: Path, tmp_path: Path
) -> None:
    train_rows = load_eval_jsonl(EVAL / "builddaily_train.jsonl")[:4]
    dev_rows = load_eval_jsonl(EVAL / "builddaily_dev.jsonl")[:3]
    train = write_rows(tmp_path / "train.jsonl", train_rows)
    dev = write_rows(tmp_path / "dev.jsonl", dev_rows)
    # A well-behaved LM: the gold answer, citing passage [1] (keyed on the question in the prompt).
    good = DummyLM({row.query: {"answer": f"{row.answer} [1]"} for row in train_rows + dev_rows})
    steps: list[str] = []
    first = optimize_program(
        settings,
        "builddaily",
        "chat_bridge",
        train,
        dev,
        optimizer="bootstrap",
        lm=good,
        all_rows=True,  # the files mix chat_bridge and resources_search rows
        progress=False,
        on_step=steps.append,
    )
    path = state_path(settings, "builddaily", "chat_bridge")
    assert first.saved and first.state_path == path and path.is_file()
    assert first.score_after > BOOTSTRAP_THRESHOLD and first.resumed == []
    meta = json.loads(meta_path(path).read_text())
    assert meta["optimizer"] == "bootstrap" and meta["budget"] == "light" and meta["lm_model"] == "dummy"
    assert meta["score_before"] == first.score_before and meta["score_after"] == first.score_after
    assert meta["train_hash"] and meta["dev_hash"] and meta["train_hash"] != meta["dev_hash"]
    assert meta["train"]["rows"] == 4 and meta["dev"]["rows"] == 3
    assert meta["date"] and "git_commit" in meta
    state = json.loads(path.read_text())
    assert state["respond"]["demos"], "bootstrapped demos are saved"

    # The program loads the state, names it in its output, and its predictor shows the demos to the LM.
    lm = DummyLM([{"answer": "Sage Daily Pro is $8 per user per month [1]."}])
    loaded = make_program(settings, "builddaily", "chat_bridge", lm=lm)
    assert loaded.state == str(path) and len(loaded.respond.demos) == len(state["respond"]["demos"])
    out = loaded.run_dict({"message": "What does Sage Daily Pro cost per month?"})
    assert out.state == str(path) and out.mode == "lm" and out.citations
    prompt = "\n".join(m["content"] for m in lm.history[-1]["messages"])
    assert state["respond"]["demos"][0]["question"] in prompt
    evaluated = evaluate_answers(
        settings, "builddaily", "chat_bridge", dev_rows, lm=good, judge=False, all_rows=True
    )
    assert evaluated.state == str(path) and evaluated.mode == "lm" and evaluated.metrics["token_f1"] == 1.0

    # A worse run (the LM only says "not found") does not overwrite; its "before" comes from the checkpoint.
    bad = DummyLM({row.query: {"answer": NOT_FOUND_ANSWER} for row in train_rows + dev_rows})
    saved_bytes = path.read_bytes()
    steps.clear()
    with pytest.raises(StateNotOverwrittenError, match=r"recorded dev score 1\.000 is better .* 0\.000"):
        optimize_program(
            settings,
            "builddaily",
            "chat_bridge",
            train,
            dev,
            lm=bad,
            all_rows=True,
            progress=False,
            on_step=steps.append,
        )
    assert any("before (from the checkpoint)" in s for s in steps)
    assert path.read_bytes() == saved_bytes
    assert json.loads(meta_path(path).read_text())["score_after"] == first.score_after

    # force=True overwrites, reusing the checkpointed optimized program and its evaluation.
    forced = optimize_program(
        settings, "builddaily", "chat_bridge", train, dev, lm=bad, all_rows=True, force=True, progress=False
    )
    assert forced.saved and forced.score_after == 0.0
    assert forced.resumed == ["before", "compiled", "after"]
    assert json.loads(meta_path(path).read_text())["score_after"] == 0.0
    leftovers = sorted(p.name for p in path.parent.iterdir())
    assert leftovers == [".chat_bridge.optimize.jsonl", "chat_bridge.json", "chat_bridge.meta.json"]


def test_state_dir_option_and_rows_filtering(settings: Settings, tmp_path: Path) -> None:
    """--state-dir writes elsewhere; by default only rows naming the program are used."""
    rows = load_eval_jsonl(EVAL / "builddaily_dev.jsonl")
    data = write_rows(tmp_path / "rows.jsonl", rows)
    with pytest.raises(InputError, match="no train rows"):
        optimize_program(
            settings,
            "builddaily",
            "chat_bridge",
            write_rows(tmp_path / "t.jsonl", rows[1:2]),
            data,
            lm=DummyLM([]),
            progress=False,
        )
    answers = DummyLM({row.query: {"answer": f"{row.answer} [1]"} for row in rows})
    result = optimize_program(
        settings,
        "builddaily",
        "chat_bridge",
        data,
        data,
        lm=answers,
        state_dir=tmp_path / "states",
        train_limit=1,
        dev_limit=1,
        progress=False,
    )
    assert result.state_path == tmp_path / "states" / "builddaily" / "chat_bridge.json"
    assert result.meta["train"]["rows"] == 1 and result.meta["dev"]["rows"] == 1
    assert not state_path(settings, "builddaily", "chat_bridge").exists()


# ====================================================================================== metric


def _pred(answer: str, doc_ids: list[str], dropped: int = 0, mode: str = "lm") -> dspy.Prediction:
    citations = [Citation(index=i, passage_id=f"p{i}", doc_id=d) for i, d in enumerate(doc_ids, start=1)]
    return dspy.Prediction(answer=answer, citations=citations, dropped_citations=dropped, mode=mode)


def test_metric_combines_token_f1_and_grounding() -> None:
    gold = dspy.Example(message="q", answer="14 days", relevant_ids=["forge"]).with_inputs("message")
    assert answer_score(gold, _pred("14 days [1]", ["forge"]))[0] == pytest.approx(1.0)
    # F1 1.0; grounding = mean(valid share 1/2, citation precision 0/1) = 0.25 -> 0.5 + 0.125
    score, notes = answer_score(gold, _pred("14 days [1]", ["pricing"], dropped=1))
    assert score == pytest.approx(0.625)
    assert any("not provided" in n for n in notes) and any("0 of 1" in n for n in notes)
    assert answer_score(gold, _pred(NOT_FOUND_ANSWER, []))[0] == 0.0
    not_found_gold = dspy.Example(message="q", answer=NOT_FOUND_ANSWER, relevant_ids=[]).with_inputs(
        "message"
    )
    assert answer_score(not_found_gold, _pred(NOT_FOUND_ANSWER, []))[0] == pytest.approx(1.0)
    assert answer_score(not_found_gold, _pred("It is 5 [1].", ["x"]))[0] < 0.5
    no_gold = dspy.Example(message="q", answer=None, relevant_ids=[]).with_inputs("message")
    assert answer_score(no_gold, _pred("Something [1].", ["x"]))[0] == pytest.approx(1.0)
    # Bootstrapping (a trace is given): a yes/no "keep this demo".
    assert answer_metric(gold, _pred("14 days [1]", ["forge"]), trace=[]) is True
    assert answer_metric(gold, _pred(NOT_FOUND_ANSWER, []), trace=[]) is False
    feedback = feedback_metric(
        gold, _pred("about two weeks [1]", ["forge"], mode="extractive"), None, "respond", None
    )
    assert isinstance(feedback, dspy.Prediction) and 0 < feedback.score < 1
    assert "Token F1" in feedback.feedback and "extractively" in feedback.feedback


def test_optimizer_factory_and_lm_requirement(settings: Settings) -> None:
    lm = DummyLM([])
    opt, kwargs, config = make_optimizer("bootstrap", "light", lm)
    assert config["class"] == "BootstrapFewShot"
    assert isinstance(opt, dspy.BootstrapFewShot) and kwargs == {} and opt.max_labeled_demos == 0
    opt, kwargs, config = make_optimizer("bootstrap", "heavy", lm)
    assert config["num_candidate_programs"] == 16 and kwargs == {"valset": "dev"}
    assert isinstance(opt, dspy.BootstrapFewShotWithRandomSearch) and opt.num_candidate_sets == 16
    try:
        import optuna  # noqa: F401
    except ImportError:  # MIPROv2 cannot run without it: the factory says so up front
        with pytest.raises(InputError, match="optuna"):
            make_optimizer("mipro", "medium", lm, n_dev=3)
    else:
        opt, kwargs, _ = make_optimizer("mipro", "medium", lm, n_dev=3)
        assert isinstance(opt, dspy.MIPROv2) and opt.auto == "medium" and kwargs["minibatch_size"] == 3
    opt, _, _ = make_optimizer("gepa", "light", lm)  # GEPA checks the feedback metric's signature
    assert isinstance(opt, dspy.GEPA) and opt.auto == "light" and opt.reflection_lm is lm
    with pytest.raises(InputError, match="unknown optimizer"):
        make_optimizer("sgd", "light", lm)
    with pytest.raises(InputError, match="unknown budget"):
        make_optimizer("mipro", "huge", lm)
    with pytest.raises(InputError, match="RAG_LM_MODEL"):
        require_lm(settings)
    dead = settings.model_copy(update={"lm_model": "ollama_chat/llama3.2", "ollama_host": dead_host()})
    with pytest.raises(ServiceUnavailableError, match=r"RAG_LM_MODEL=ollama_chat/llama3\.2"):
        require_lm(dead)


# ==================================================================================== retrieval


def test_retrieval_search_resumes_after_an_interrupt_and_the_retriever_uses_it(
    index_dir: Path, programs_dir: Path
) -> None:
    # Defaults that differ from what the search will pick, so the retriever visibly follows the file.
    settings = make_settings(index_dir, programs_dir, retrieve_k=25, search_mode="vector")
    dev = EVAL / "builddaily.jsonl"

    class Interrupt(Exception):
        pass

    def stop_after_five(done: int, total: int, result: TrialResult, best: TrialResult) -> None:
        assert total == 18
        if done == 5:
            raise Interrupt

    plain = {"docs": ("chunks",)}  # the document options have their own test below
    with pytest.raises(Interrupt):
        search_retrieval_config(
            settings, "builddaily", dev, limit=6, progress=False, on_trial=stop_after_five, **plain
        )
    checkpoint = programs_dir / "builddaily" / CHECKPOINT_NAME
    assert len(checkpoint.read_text().splitlines()) == 5
    assert not (programs_dir / "builddaily" / "retrieval.json").exists()

    seen: list[tuple[int, Trial]] = []
    result = search_retrieval_config(
        settings,
        "builddaily",
        dev,
        limit=6,
        progress=False,
        on_trial=lambda done, total, r, best: seen.append((done, r.trial)),
        **plain,
    )
    assert result.resumed == 5 and result.ran == 13 and [d for d, _ in seen] == list(range(6, 19))
    first_five = trial_grid(docs=("chunks",))[:5]
    assert not {t for _, t in seen} & set(first_five)

    saved = json.loads(result.path.read_text())
    assert result.path == programs_dir / "builddaily" / "retrieval.json"
    assert len(saved["trials"]) == 18
    assert {(t["k"], t["mode"], t["rerank"], t["docs"], t["rewrite"]) for t in saved["trials"]} == {
        t.as_key() for t in trial_grid(docs=("chunks",))
    }
    assert saved["best"]["metric"] == "ndcg@10" and saved["dataset_hash"] and saved["date"]
    assert "git_commit" in saved and saved["n_queries"] == 6
    assert all(set(t["metrics"]) >= {"ndcg@10", "recall@5", "recall@20", "mrr@5"} for t in saved["trials"])
    # No reranker weights: rerank=on trials equal their twins and are never the best.
    assert saved["reranker_available"] is False and saved["best"]["rerank"] is False
    by_key = {(t["k"], t["mode"], t["rerank"]): t["metrics"] for t in saved["trials"]}
    assert all(by_key[(k, m, True)] == by_key[(k, m, False)] for k, m, r in by_key if r)
    assert any("never chosen" in note for note in result.notes)
    best_score = max(t["metrics"]["ndcg@10"] for t in saved["trials"])
    assert saved["best"]["score"] == best_score

    retriever = LanceDBRetriever(settings, "builddaily")
    assert (retriever.default_k, retriever.default_mode) == (saved["best"]["k"], saved["best"]["mode"])
    assert (retriever.default_k, retriever.default_mode) != (25, "vector")

    # Everything is checkpointed now: a rerun runs nothing, and gives the same best.
    again = search_retrieval_config(settings, "builddaily", dev, limit=6, progress=False, **plain)
    assert again.ran == 0 and again.resumed == 18 and again.payload["best"] == saved["best"]


def test_retrieval_search_learns_document_options_and_query_rewrites(
    index_dir: Path, programs_dir: Path
) -> None:
    settings = make_settings(index_dir, programs_dir)
    dev = EVAL / "builddaily.jsonl"
    one = {"ks": (10,), "modes": ("fts",), "reranks": (False,), "limit": 4, "progress": False}
    result = search_retrieval_config(settings, "builddaily", dev, **one)
    assert [r.trial.docs for r in result.trials] == ["chunks", "cap2", "title", "doc"]
    assert {r.trial.rewrite for r in result.trials} == {"none"}
    assert any("no LM configured" in n for n in result.notes)
    best = json.loads(result.path.read_text())["best"]
    assert {"doc_signals", "max_chunks_per_doc", "rewrite", "fts_title_boost"} <= set(best)
    retriever = LanceDBRetriever(settings, "builddaily")
    assert (retriever.doc_signals, retriever.max_chunks_per_doc) == (
        best["doc_signals"],
        best["max_chunks_per_doc"],
    )

    # With an LM the rewrites run: multi-query asks it for alternatives (a DummyLM stands in for it).
    lm = DummyLM([{"queries": '["price of the team plan", "cost per seat"]'}] * 4)
    rewritten = search_retrieval_config(
        settings, "builddaily", dev, docs=("chunks",), rewrites=("none", "multi"), lm=lm, **one
    )
    assert [r.trial.rewrite for r in rewritten.trials] == ["none", "multi"]
    assert len(lm.history) == 4  # one rewrite per query, and only for the multi trial


def test_rewrite_falls_back_to_the_query_without_an_lm(index_dir: Path, programs_dir: Path) -> None:
    retriever = LanceDBRetriever(make_settings(index_dir, programs_dir), "builddaily", use_saved_config=False)
    pred = retriever(query="How much does Sage Daily cost?", k=5, mode="fts", rewrite="hyde")
    assert len(pred.passages) == 5 and any("no LM configured" in n for n in pred.notes)
    with dspy.context(lm=DummyLM([{"passage": "Sage Daily costs 12 dollars a month per seat."}])):
        hyde = retriever(query="How much does Sage Daily cost?", k=5, mode="fts", rewrite="hyde")
    assert len(hyde.passages) == 5 and not hyde.notes and "rewrite_ms" in hyde.timings
    with pytest.raises(InputError, match="unknown query rewrite"):
        retriever(query="cost", rewrite="llm")


def test_pick_best_prefers_cheap_configurations_unless_strictly_better() -> None:
    def result(k: int, mode: str, rerank: bool, score: float) -> TrialResult:
        return TrialResult(Trial(k, mode, rerank), {"ndcg@10": score})

    tied = [result(30, "hybrid", True, 0.8), result(30, "hybrid", False, 0.8), result(10, "fts", False, 0.8)]
    assert pick_best(tied, "ndcg@10").trial == Trial(10, "fts", False)
    better = [*tied, result(20, "vector", True, 0.81)]
    assert pick_best(better, "ndcg@10").trial == Trial(20, "vector", True)


# ========================================================================================== CLI


def cli() -> typer.Typer:
    app = typer.Typer()
    eval_app = typer.Typer()
    app.add_typer(eval_app, name="eval")
    register(app, eval_app)
    return app


@pytest.fixture
def cli_env(index_dir: Path, programs_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)  # no ./rag.toml
    set_offline_cli_env(monkeypatch, index_dir, programs_dir)
    return index_dir


def test_cli_optimize(cli_env: Path, programs_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["optimize", "--site", "builddaily", "--data-dir", str(cli_env)]
    no_lm = runner.invoke(
        cli(),
        [
            *base,
            "--program",
            "chat_bridge",
            "--train",
            str(EVAL / "builddaily_train.jsonl"),
            "--dev",
            str(EVAL / "builddaily_dev.jsonl"),
        ],
    )
    assert no_lm.exit_code == 2 and "RAG_LM_MODEL" in no_lm.output
    missing = runner.invoke(cli(), [*base, "--program", "chat_bridge"])
    assert missing.exit_code == 2 and "--train, --dev" in missing.output

    result = runner.invoke(
        cli(),
        [
            *base,
            "--retrieval-only",
            "--dev",
            str(EVAL / "builddaily.jsonl"),
            "--limit",
            "2",
            "--json",
            "--report-dir",
            str(tmp_path / "report"),
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    # 3 k x 3 modes x 4 document options x rerank off/on; no LM, so no query rewrites
    assert len(payload["trials"]) == 72 and payload["ran"] == 72 and payload["n_queries"] == 2
    assert Path(payload["path"]) == programs_dir / "builddaily" / "retrieval.json"
    assert {Path(p).name for p in payload["report_files"].values()} == {
        "report.json",
        "report.md",
        "report.png",
    }
    table = runner.invoke(
        cli(), [*base, "--retrieval-only", "--dev", str(EVAL / "builddaily.jsonl"), "--limit", "2"]
    )
    assert table.exit_code == 0, table.output
    assert "k=30 hybrid+rerank" in table.output and "72 trial(s) resumed" in table.output
    assert f"best: k={payload['best']['k']} {payload['best']['mode']}" in table.output
    bad_metric = runner.invoke(
        cli(), [*base, "--retrieval-only", "--dev", str(EVAL / "builddaily.jsonl"), "--metric", "ndcg"]
    )
    assert bad_metric.exit_code == 2 and "ndcg@10" in bad_metric.output


def test_cli_optimize_through_the_ollama_standin(
    cli_env: Path, programs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LM from settings (real LiteLLM ``ollama_chat`` calls to the loopback stand-in, NOT Ollama)."""
    gold = {row.query: row.answer for row in load_eval_jsonl(EVAL / "builddaily_dev.jsonl")}
    gold.update({row.query: row.answer for row in load_eval_jsonl(EVAL / "builddaily_train.jsonl")})

    def responder(request: dict[str, Any]) -> str:
        last = request["messages"][-1]["content"]
        answer = next((a for q, a in gold.items() if q in last), "Not found in the sources.")
        return dspy_chat_reply(answer=f"{answer} [{passage_number_containing(request, answer)}]")

    with OllamaStandIn(chat_responder=responder) as srv:
        monkeypatch.setenv("RAG_LM_MODEL", "ollama_chat/llama3.2")
        monkeypatch.setenv("RAG_OLLAMA_HOST", srv.host)
        monkeypatch.setenv("RAG_LM_CACHE", "false")
        monkeypatch.setenv("RAG_LM_RETRIES", "0")
        args = [
            "optimize",
            "--site",
            "builddaily",
            "--program",
            "chat_bridge",
            "--data-dir",
            str(cli_env),
            "--train",
            str(EVAL / "builddaily_train.jsonl"),
            "--dev",
            str(EVAL / "builddaily_dev.jsonl"),
            "--limit",
            "2",
            "--state-dir",
            str(tmp_path / "states"),
        ]
        result = CliRunner().invoke(cli(), [*args, "--json"])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)  # DSPy's own prints went to stderr
        assert payload["saved"] and payload["meta"].endswith("chat_bridge.meta.json")
        assert srv.requests_to("/api/chat"), "the optimizer's program calls went to the configured LM"
    meta = json.loads((tmp_path / "states" / "builddaily" / "chat_bridge.meta.json").read_text())
    assert meta["lm_model"] == "ollama_chat/llama3.2" and meta["score_after"] > BOOTSTRAP_THRESHOLD
    assert meta["dev_scores"]["after"]["modes"] == {"lm": 2} and meta["train"]["rows"] == 2
    assert not (programs_dir / "builddaily" / "chat_bridge.json").exists()
