"""Fine-tuning the site reranker and embedder (issue #15), end to end on tiny slices.

Real parts: the sagedaily sample canon ingested into LanceDB on disk with the real bundled MiniLM, the
site's own hybrid retrieval for mining, real torch training steps (a seeded 2-layer cross-encoder from
tests/tiny_models.py for the reranker, the real MiniLM for the embedder), the real ``rag-app`` CLI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag_app.cli import app
from rag_app.core.errors import EmbedderMismatchError, InputError
from rag_app.core.settings import Settings
from rag_app.core.types import Passage
from rag_app.ingest.pipeline import ingest_paths
from rag_app.models.embeddings import Embedder, SentenceTransformerEmbedder
from rag_app.optimize.state import StateNotOverwrittenError
from rag_app.optimize.training.activation import ModelNotActivatedError, activate, check_activation
from rag_app.optimize.training.bi_encoder_fit import BiEncoderFitConfig, fit_bi_encoder
from rag_app.optimize.training.card import write_card
from rag_app.optimize.training.cross_encoder_fit import CrossEncoderFitConfig, fit_cross_encoder
from rag_app.optimize.training.embedder_eval import compare_embedders
from rag_app.optimize.training.hard_negatives import MiningReport, mine_pairs
from rag_app.optimize.training.labelled import LabelledQuery, load_labelled, with_dev
from rag_app.optimize.training.pairs import PairRow, PairsFileError, read_pairs, split_of, write_pairs
from rag_app.optimize.training.reembed import reembed_site
from rag_app.optimize.training.site_pairs import mine_site_pairs
from rag_app.runtime import Runtime, active_models
from rag_app.store.schema import stored_embedder
from rag_app.store.vector_store import VectorStore
from tests.conftest import REPO_ROOT, SAMPLE_DATA, SHARED_DATA, make_test_settings, set_offline_cli_env

runner = CliRunner()
TRAIN = SAMPLE_DATA / "eval" / "sagedaily_train.jsonl"
DEV = SAMPLE_DATA / "eval" / "sagedaily_dev.jsonl"
CANON = SAMPLE_DATA / "sagedaily" / "canon"


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """These tiny training steps run on one intra-op thread while this module runs: on 2 cores shared
    with other test processes, a second spinning thread made a 64-wide matmul 100x slower (measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sage_index(tmp_path_factory: pytest.TempPathFactory, minilm: Embedder) -> Path:
    """The sagedaily canon ingested once for this module (read-only: tests that write copy it)."""
    data_dir = tmp_path_factory.mktemp("sage-index")
    report = ingest_paths(
        make_test_settings(data_dir), "sagedaily", "canon", [CANON], embedder=minilm, progress=False
    )
    assert report.chunks_written > 0
    return data_dir


@pytest.fixture(scope="module")
def sage_queries() -> list[LabelledQuery]:
    train = load_labelled(TRAIN, site="sagedaily", split="train")
    dev = load_labelled(DEV, site="sagedaily", split="dev")
    return with_dev(train, dev)


@pytest.fixture(scope="module")
def sage_pairs(
    sage_index: Path,
    sage_queries: list[LabelledQuery],
    minilm: Embedder,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, MiningReport]:
    runtime = Runtime(make_test_settings(sage_index), embedder=minilm)
    out = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    return out, mine_site_pairs(runtime, "sagedaily", sage_queries, out)


@pytest.fixture(scope="module")
def small_pairs(sage_pairs: tuple[Path, MiningReport], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slice of the mined pairs: 6 train queries, 4 dev queries (fast fits)."""
    rows = read_pairs(sage_pairs[0])
    train_q = sorted({r.qid for r in rows if r.split == "train"})[:6]
    dev_q = sorted({r.qid for r in rows if r.split == "dev"})[:4]
    keep = [r for r in rows if r.qid in {*train_q, *dev_q}]
    out = tmp_path_factory.mktemp("small") / "pairs.jsonl"
    write_pairs(out, keep)
    return out


def ce_config(pairs: Path, base: Path, out: Path, **overrides: object) -> CrossEncoderFitConfig:
    values: dict[str, object] = {
        "pairs": pairs,
        "base": base,
        "out": out,
        "device": "cpu",
        "batch_size": 8,
        "max_length": 96,
        "max_steps": 4,
        "eval_every": 2,
        "lr": 1e-3,
    }
    return CrossEncoderFitConfig(**(values | overrides))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- labels, pairs
def test_labelled_sources_and_deterministic_split(tmp_path: Path) -> None:
    eval_set = load_labelled(TRAIN, site="sagedaily")
    assert eval_set.kind == "eval-jsonl" and len(eval_set.queries) >= 40
    assert {q.split for q in eval_set.queries} == {"train", "dev"}
    assert [q.split for q in eval_set.queries] == [split_of(q.query) for q in eval_set.queries]

    feedback = tmp_path / "feedback.jsonl"  # the rows `rag-app feedback export` writes
    rows = [
        {
            "id": "r1",
            "query": "the tower card",
            "site": "sagedaily",
            "relevant_ids": ["the-tower"],
            "metadata": {"source": "feedback", "rating": 1},
        },
        {
            "id": "r2",
            "query": "a corrected answer only",
            "site": "sagedaily",
            "answer": "x",
            "metadata": {"source": "feedback", "rating": -1},
        },
    ]
    feedback.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_labelled(feedback, site="sagedaily")
    assert loaded.kind == "feedback" and [q.qid for q in loaded.queries] == ["r1"]
    assert loaded.skipped_unjudged == 1 and "without judged documents" in loaded.notes[0]

    beir = load_labelled(SHARED_DATA / "scifact", qrels="train")
    assert beir.kind == "beir" and len(beir.queries) > 500
    dev_share = beir.split_counts()["dev"] / len(beir.queries)
    assert 0.15 < dev_share < 0.25

    with pytest.raises(InputError, match="training data not found"):
        load_labelled(tmp_path / "missing.jsonl")


def test_pairs_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    good = {"qid": "q", "query": "a", "passage": "b", "label": 1, "doc_id": "d", "split": "train"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(good | {"label": 2}) + "\n")
    with pytest.raises(PairsFileError, match=r"line 2: 'label' must be 0 or 1"):
        read_pairs(path)
    path.write_text(json.dumps(good | {"split": "test"}) + "\n")
    with pytest.raises(PairsFileError, match="'split' must be 'train' or 'dev'"):
        read_pairs(path)
    write_pairs(path, [PairRow("q", "a", "b", 0, "d", "dev", 3)])
    assert read_pairs(path) == [PairRow("q", "a", "b", 0, "d", "dev", 3)]


# ---------------------------------------------------------------------------------- mining
def test_mining_never_returns_a_positive_as_negative(
    sage_pairs: tuple[Path, MiningReport], sage_queries: list[LabelledQuery]
) -> None:
    path, report = sage_pairs
    relevant = {q.qid: set(q.relevant) for q in sage_queries}
    rows = read_pairs(path)
    assert report.counts()["train_negative"] > 0 and report.counts()["dev_positive"] > 0
    for row in rows:
        judged = row.doc_id in relevant[row.qid]
        assert judged == (row.label == 1), row
    dev_lists: dict[str, list[int]] = {}
    for row in rows:
        if row.split == "dev":
            dev_lists.setdefault(row.qid, []).append(row.rank or 0)
    assert all(ranks == list(range(1, len(ranks) + 1)) for ranks in dev_lists.values())

    # Sections of a judged page are positives, wherever retrieval ranks them.
    query = LabelledQuery("q1", "what is justice", {"justice": 1}, "train")
    retrieved = [
        Passage(id=f"c{i}", doc_id=doc, text=f"text {i}", score=1.0)
        for i, doc in enumerate(["strength", "justice#2", "death", "justice#1"])
    ]
    stored = [
        {"id": "c3", "doc_id": "justice#1", "text": "text 3"},
        {"id": "c9", "doc_id": "justice#2", "text": "t9"},
    ]
    mined = mine_pairs([query], lambda q: retrieved, lambda ids: stored).rows
    assert {r.passage for r in mined if r.label == 0} == {"text 0", "text 2"}
    assert {r.doc_id for r in mined if r.label == 1} == {"justice"}


# ----------------------------------------------------------------------------------- fitting
def test_cross_encoder_fit_resumes_after_interruption(
    small_pairs: Path, tiny_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    first = fit_cross_encoder(ce_config(small_pairs, tiny_path, out, max_minutes=0))
    assert first["steps"] == 1 and not first["complete"]
    assert (out / "checkpoint" / "state.json").is_file() and (out / "best" / "config.json").is_file()
    second = fit_cross_encoder(ce_config(small_pairs, tiny_path, out))
    assert second["resumed_from"] == 1 and second["steps"] == 4 and second["complete"]

    # Killed mid-run (Ctrl-C at step 3): the rerun continues from the checkpoint of step 2.
    out2 = tmp_path / "run2"

    def interrupt(step: int, total: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_cross_encoder(ce_config(small_pairs, tiny_path, out2), progress=interrupt)
    resumed = fit_cross_encoder(ce_config(small_pairs, tiny_path, out2))
    assert resumed["resumed_from"] == 2 and resumed["complete"]
    assert [h["step"] for h in resumed["history"]] == [0, 2, 4]

    with pytest.raises(ValueError, match="another run"):
        fit_cross_encoder(ce_config(small_pairs, tiny_path, out2, lr=5e-4))


def test_trained_reranker_is_loaded_and_used_by_the_pipeline(
    small_pairs: Path, tiny_path: Path, sage_index: Path, minilm: Embedder, tmp_path: Path
) -> None:
    result = fit_cross_encoder(ce_config(small_pairs, tiny_path, tmp_path / "run", max_steps=2))
    model_dir = Path(result["best_dir"])
    settings = make_test_settings(sage_index, models_dir=tmp_path / "models")
    assert Runtime(settings, embedder=minilm).pipeline("sagedaily").reranker.available is False  # as today
    activate(settings, "sagedaily", "reranker", model_dir, str(model_dir))
    runtime = Runtime(settings, embedder=minilm)
    pred = runtime.pipeline("sagedaily")(query="a tower struck by lightning", top_n=3)
    assert pred.reranked and len(pred.passages) == 3
    assert runtime.reranker_for("sagedaily").model_id == str(model_dir)
    assert all(p.rerank_score is not None for p in pred.passages)
    assert runtime.reranker_for("paiddaily") is runtime.reranker  # other sites keep the global one


def test_fit_modules_import_without_the_service_stack() -> None:
    code = (
        "import sys, rag_app.optimize.training.cross_encoder_fit, rag_app.optimize.training.bi_encoder_fit;"
        "print([m for m in ('pydantic', 'dspy', 'lancedb', 'rag_app.core') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


# -------------------------------------------------------------------------------- activation
def test_cli_refuses_a_reranker_that_does_not_beat_retrieval(
    sage_index: Path, tiny_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "rag"
    shutil.copytree(sage_index, data_dir)
    set_offline_cli_env(monkeypatch, data_dir)
    args = ["optimize", "--site", "sagedaily", "--reranker", "--train", str(TRAIN), "--dev", str(DEV)]
    args += ["--base", str(tiny_path), "--device", "cpu", "--max-steps", "2", "--eval-every", "2"]
    result = runner.invoke(app, [*args, "--data-dir", str(data_dir)])
    # The site's hybrid order already ranks every dev query's document first: nothing can beat it.
    assert result.exit_code == 8, result.output
    assert "not activated" in result.output and "the retrieval order scores ndcg@10 1.000" in result.output
    settings = make_test_settings(data_dir)
    assert active_models(settings, "sagedaily") == {}
    card_file = next((settings.resolved_models_dir / "sagedaily" / "reranker").glob("*/step-*/card.json"))
    card = json.loads(card_file.read_text())
    assert card["activated"] is False and card["base_model"] == str(tiny_path)
    assert card["dev"]["before"]["ndcg@10"] == 1.0 and "ndcg@10" in card["dev"]["after"]
    assert len(card["data"]["pairs_sha256"]) == 64 and card["steps"] == 2 and card["device"] == "cpu"
    assert card["command"].startswith("rag-app optimize --site sagedaily --reranker")
    assert (card_file.parent / "README.md").is_file() and (card_file.parent / "model.safetensors").is_file()
    assert not (card_file.parent.parent / "checkpoint").exists()  # finished: no resume state kept

    missing = runner.invoke(app, [*args[:-6], "--base", str(tmp_path / "nope"), "--data-dir", str(data_dir)])
    assert missing.exit_code != 0 and "does not exist" in missing.output


def test_saved_model_guard_needs_force(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "rag", lm_model=None)
    active_dir = tmp_path / "active-model"
    write_card(
        active_dir,
        {
            "kind": "reranker",
            "site": "sagedaily",
            "run_id": "a",
            "base_model": "b",
            "data": {"pairs_sha256": "0" * 64, "train": "t"},
            "dev": {"after": {"ndcg@10": 0.8}},
            "device": "cpu",
            "steps": 1,
            "total_steps": 1,
            "minutes": 0.1,
            "command": "c",
        },
    )
    activate(settings, "sagedaily", "reranker", active_dir, "m")
    new_dir = tmp_path / "new-model"
    kwargs = {
        "replaced": {"ndcg@10": 0.5, "mrr@5": 0.5},
        "replaced_is": "the retrieval order",
        "model_dir": new_dir,
    }
    worse = {"ndcg@10": 0.7, "mrr@5": 0.7}
    with pytest.raises(
        StateNotOverwrittenError, match=r"recorded dev ndcg@10 0.800 is better than this run's 0.700"
    ):
        check_activation(settings, "sagedaily", "reranker", new=worse, force=False, **kwargs)  # type: ignore[arg-type]
    assert "beats the retrieval order" in check_activation(
        settings,
        "sagedaily",
        "reranker",
        new=worse,
        force=True,
        **kwargs,  # type: ignore[arg-type]
    )
    better = {"ndcg@10": 0.9, "mrr@5": 0.9}
    check_activation(settings, "sagedaily", "reranker", new=better, force=False, **kwargs)  # type: ignore[arg-type]
    # A gain inside the margin (RAG_FINETUNE_MIN_GAIN, default 0.02) is refused too.
    with pytest.raises(ModelNotActivatedError, match=r"by more than 0\.02"):
        check_activation(
            settings, "sagedaily", "reranker", new={"ndcg@10": 0.51, "mrr@5": 0.6}, force=True, **kwargs
        )  # type: ignore[arg-type]
    # Not beating what it replaces is refused, --force or not, with both scores.
    with pytest.raises(ModelNotActivatedError, match=r"scores dev ndcg@10 0.400 .* scores ndcg@10 0.500"):
        check_activation(
            settings, "sagedaily", "reranker", new={"ndcg@10": 0.4, "mrr@5": 0.4}, force=True, **kwargs
        )  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- embedder
def test_embedder_fit_then_reembed_leaves_no_old_model_id(
    small_pairs: Path, sage_index: Path, sage_queries: list[LabelledQuery], minilm: Embedder, tmp_path: Path
) -> None:
    from rag_app.models.files import bundled_minilm_dir

    config = BiEncoderFitConfig(
        pairs=small_pairs,
        base=bundled_minilm_dir(),
        out=tmp_path / "bi",
        device="cpu",
        batch_size=4,
        max_length=64,
        max_steps=2,
        eval_every=2,
    )
    result = fit_bi_encoder(config)
    assert result["complete"] and result["before"]["ndcg@10"] > 0
    model_dir = Path(result["best_dir"])
    assert (model_dir / "modules.json").is_file() and (model_dir / "1_Pooling" / "config.json").is_file()

    data_dir = tmp_path / "rag"
    shutil.copytree(sage_index, data_dir)
    settings = make_test_settings(data_dir, models_dir=tmp_path / "models")
    trained = SentenceTransformerEmbedder(str(model_dir), precision="float32")
    dev = [q for q in sage_queries if q.split == "dev"]
    scores = compare_embedders(settings, "sagedaily", dev, minilm, trained)
    assert scores["mode"] == "hybrid" and set(scores["current"]) == set(scores["candidate"])

    activate(settings, "sagedaily", "embedder", model_dir, trained.model_id)
    done = reembed_site(settings, "sagedaily", trained)
    assert [r.new_model for r in done] == [trained.model_id] and done[0].rows > 0
    store = VectorStore(settings)
    models = {name: stored_embedder(store.db.open_table(name))[0] for name in store.table_names()}
    assert models and set(models.values()) == {trained.model_id}, models  # chunk and document tables
    assert reembed_site(settings, "sagedaily", trained)[0].skipped  # idempotent

    runtime = Runtime(settings, embedder=minilm)
    hits = runtime.search("sagedaily", "lightning strikes a tower", mode="hybrid")["passages"]
    assert hits and runtime.embedder_for("sagedaily").model_id == trained.model_id
    note = tmp_path / "new-card.md"
    note.write_text("# The Star\n\nHope after the storm, calm water and a clear night sky.\n")
    assert runtime.ingest("sagedaily", "canon", [note], progress=False).chunks_written == 1
    with pytest.raises(EmbedderMismatchError):  # the guard: the old embedder is refused on the new tables
        Runtime(make_test_settings(data_dir), embedder=minilm).search("sagedaily", "tower", mode="vector")
