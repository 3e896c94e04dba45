"""``rag-app optimize --site S --reranker|--embedder --train FILE``: labels -> pairs -> fit -> card ->
activation (or a refusal with the numbers).

One run, step by step:

1. the labelled queries (:mod:`.labelled`: eval JSONL, feedback export or BEIR qrels) with their
   train/dev split;
2. pairs mined from the site's own top 20 (:mod:`.site_pairs`);
3. the run folder ``<models dir>/<site>/<kind>/<run-id>/``, where the run id is a hash of the pairs and
   every knob, so rerunning the same command finds the same folder: an interrupted fit continues from
   its checkpoint, a finished one is not trained again (its checkpoint is then deleted: weights and
   optimizer state are hundreds of MB);
4. the fit, in process (:mod:`.cross_encoder_fit` / :mod:`.bi_encoder_fit`), bounded by
   ``--max-steps``/``--max-minutes``;
5. the best checkpoint copied to an immutable ``step-NNNNNN/`` folder with its card (:mod:`.card`), so
   a later continuation of the run never rewrites the weights a site is using;
6. the decision (:mod:`.activation`) and, for an embedder, the re-embed of the site's tables
   (:mod:`.reembed`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag_app.core.errors import InputError, ModelNotAvailableError, RagError
from rag_app.evaluation.report import git_commit
from rag_app.models.embeddings import SentenceTransformerEmbedder
from rag_app.models.files import bundled_minilm_dir, resolve_model
from rag_app.optimize.checkpoint import checkpoint_key
from rag_app.optimize.training.activation import activate, check_activation
from rag_app.optimize.training.card import write_card
from rag_app.optimize.training.embedder_eval import compare_embedders
from rag_app.optimize.training.fit_common import write_json
from rag_app.optimize.training.labelled import LabelledQuery, load_labelled, with_dev
from rag_app.optimize.training.pairs import PairsFileError, file_sha256
from rag_app.optimize.training.reembed import reembed_site
from rag_app.optimize.training.site_pairs import mine_site_pairs
from rag_app.runtime import Runtime

__all__ = ["FinetuneRequest", "FinetuneResult", "finetune"]

KINDS = ("reranker", "embedder")
#: The fit's full outcome in the run folder (``fit.json`` is the fit loop's own, without the run facts).
RUN_FILE = "run.json"
Step = Callable[[int, int, float], None]


@dataclass(frozen=True)
class FinetuneRequest:
    """What ``rag-app optimize --reranker/--embedder`` asks for (``None`` = the kind's default)."""

    site: str
    kind: str
    train: Path
    dev: Path | None = None
    qrels: str = "train"
    base: Path | None = None
    device: str | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    max_minutes: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    eval_every: int = 50
    force: bool = False

    def command(self, device: str) -> str:
        """The CLI command that reproduces this run (under the same settings and data dir); ``--base``
        only when one was given, so the default base resolves on the machine that reruns it."""
        parts = ["rag-app optimize", f"--site {self.site}", f"--{self.kind}", f"--train {self.train}"]
        parts += [f"--dev {self.dev}"] if self.dev else []
        parts += [f"--qrels {self.qrels}"] if Path(self.train).is_dir() else []
        parts += [f"--base {self.base}"] if self.base else []
        parts += [f"--device {device}", f"--epochs {self.epochs:g}"]
        for flag, value in (
            ("--max-steps", self.max_steps),
            ("--max-minutes", self.max_minutes),
            ("--batch-size", self.batch_size),
            ("--lr", self.lr),
        ):
            parts += [f"{flag} {value}"] if value is not None else []
        return " ".join([*parts, f"--eval-every {self.eval_every}"])


@dataclass
class FinetuneResult:
    site: str
    kind: str
    run_dir: Path
    model_dir: Path
    activated: bool
    decision: str
    before: dict[str, float]
    after: dict[str, float]
    replaced_is: str
    fit: dict[str, Any]
    mining: dict[str, int]
    reembedded: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Before/after dev scores, the fit's extent, and what was activated (the CLI's text output)."""
        b, a, fit = self.before, self.after, self.fit
        return (
            f"{self.site} {self.kind}: dev nDCG@10 {b['ndcg@10']:.3f} -> {a['ndcg@10']:.3f}, MRR@5 "
            f"{b['mrr@5']:.3f} -> {a['mrr@5']:.3f} (before: {self.replaced_is}); {fit['steps']} of "
            f"{fit['total_steps']} steps on {fit['device']}\nactivated {self.model_dir}"
            + (f" (re-embedded {sum(r['rows'] for r in self.reembedded)} rows)" if self.reembedded else "")
        )

    def json_payload(self) -> dict[str, Any]:
        keys = ("steps", "total_steps", "complete", "minutes", "device", "best_step", "resumed_from")
        return {
            "site": self.site,
            "kind": self.kind,
            "activated": self.activated,
            "decision": self.decision,
            "model": str(self.model_dir),
            "run": str(self.run_dir),
            "before": self.before,
            "after": self.after,
            "replaced": self.replaced_is,
            "fit": {k: self.fit.get(k) for k in keys},
            "mining": self.mining,
            "reembedded": self.reembedded,
            "notes": self.notes,
        }


def default_base(runtime: Runtime, kind: str, base: Path | None) -> tuple[Path, list[str]]:
    """The folder to start from, and a note on why: ``base``; else for a reranker the configured
    cross-encoder when its weights are on disk (bge-reranker-base); else the bundled MiniLM."""
    settings = runtime.settings
    if base is not None:
        return resolve_model(str(base), None, None, kind=kind).path, []
    if kind == "reranker":
        try:
            found = resolve_model(
                settings.reranker_model, settings.reranker_revision, settings.hf_cache_dir, kind="reranker"
            )
            return found.path, [f"starting from the configured cross-encoder {settings.reranker_model}"]
        except ModelNotAvailableError:
            return bundled_minilm_dir(), [
                f"{settings.reranker_model} is not on disk: starting from the bundled MiniLM with a new head "
                "(learns slowly on a CPU; pass --base DIR for a local cross-encoder)"
            ]
    return bundled_minilm_dir(), []


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _queries(request: FinetuneRequest) -> list[LabelledQuery]:
    split = "train" if request.dev else None
    train = load_labelled(request.train, site=request.site, qrels=request.qrels, split=split)
    dev = None
    if request.dev is not None:
        dev = load_labelled(request.dev, site=request.site, qrels=request.qrels, split="dev")
    return with_dev(train, dev)


def _fit(
    kind: str,
    pairs: Path,
    base: Path,
    run_dir: Path,
    device: str,
    request: FinetuneRequest,
    on_step: Step | None,
) -> dict[str, Any]:
    knobs: dict[str, Any] = {
        "pairs": pairs,
        "base": base,
        "out": run_dir,
        "device": device,
        "epochs": request.epochs,
        "max_steps": request.max_steps,
        "max_minutes": request.max_minutes,
        "eval_every": request.eval_every,
    }
    knobs |= {k: v for k, v in (("batch_size", request.batch_size), ("lr", request.lr)) if v is not None}
    try:
        if kind == "reranker":
            from rag_app.optimize.training.cross_encoder_fit import CrossEncoderFitConfig, fit_cross_encoder

            return fit_cross_encoder(CrossEncoderFitConfig(**knobs), progress=on_step)
        from rag_app.optimize.training.bi_encoder_fit import BiEncoderFitConfig, fit_bi_encoder

        return fit_bi_encoder(BiEncoderFitConfig(**knobs), progress=on_step)
    except PairsFileError as exc:
        raise InputError(str(exc)) from exc
    except (ValueError, FileNotFoundError) as exc:
        raise InputError(f"{kind} fit: {exc}") from exc


def finetune(
    runtime: Runtime,
    request: FinetuneRequest,
    *,
    on_step: Step | None = None,
    on_message: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Run ``request`` end to end; raises the activation's refusal after saving the model and card."""
    settings = runtime.settings
    say = on_message or (lambda _message: None)
    if request.kind not in KINDS:
        raise InputError(f"fine-tune --reranker or --embedder, got {request.kind!r}")
    settings.check_sites([request.site])
    base, notes = default_base(runtime, request.kind, request.base)
    device = request.device or settings.train_device
    kind_dir = settings.resolved_models_dir / request.site / request.kind
    mining = kind_dir / ".mining.jsonl"
    queries = _queries(request)
    say(f"mining pairs for {len(queries)} labelled queries from {request.site}'s top 20")
    report = mine_site_pairs(runtime, request.site, queries, mining)
    pairs_sha = file_sha256(mining)
    knobs = asdict(request) | {"base": str(base), "device": None, "max_minutes": None, "force": None}
    run_dir = kind_dir / checkpoint_key([pairs_sha, knobs])[:12]
    run_dir.mkdir(parents=True, exist_ok=True)
    mining.replace(run_dir / "pairs.jsonl")
    finished = _read_json(run_dir / RUN_FILE)
    if finished is not None and finished.get("complete"):
        fit = finished
        notes.append(f"trained earlier in {run_dir}: not trained again")
    else:
        say(f"training the {request.kind} from {base} on {device} (run {run_dir.name})")
        fit = _fit(request.kind, run_dir / "pairs.jsonl", base, run_dir, device, request, on_step)
        write_json(run_dir / RUN_FILE, fit | {"site": request.site, "run_id": run_dir.name})
    if fit.get("complete"):
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    else:
        notes.append(
            f"stopped by its budget after {fit['steps']} of {fit['total_steps']} steps; the best checkpoint "
            "so far is judged below, and rerunning the same command continues training"
        )
    model_dir = run_dir / f"step-{int(fit['steps']):06d}-best-{int(fit['best_step']):06d}"
    if not model_dir.is_dir():
        shutil.copytree(run_dir / "best", model_dir)
    before, after, replaced_is, candidate = _judge(runtime, request, model_dir, fit, queries)
    card = {
        "kind": request.kind,
        "site": request.site,
        "run_id": run_dir.name,
        "model_path": str(model_dir),
        "base_model": str(base),
        "new_head": fit.get("new_head", False),
        "data": {
            "train": str(request.train),
            "train_sha256": file_sha256(request.train) if Path(request.train).is_file() else None,
            "dev": str(request.dev) if request.dev else None,
            "pairs_sha256": pairs_sha,
            "mining": report.counts(),
        },
        "settings": fit.get("config"),
        "dev": {
            "queries": sum(q.split == "dev" for q in queries),
            "before_is": replaced_is,
            "before": before,
            "base": fit.get("base"),
            "after": after,
            "fit_best": fit.get("best"),
        },
        "device": fit.get("device"),
        "steps": fit.get("steps"),
        "total_steps": fit.get("total_steps"),
        "best_step": fit.get("best_step"),
        "minutes": fit.get("total_minutes", fit.get("minutes")),
        "complete": fit.get("complete"),
        "command": request.command(device),
        "git_commit": git_commit(),
    }
    result = FinetuneResult(
        request.site,
        request.kind,
        run_dir,
        model_dir,
        False,
        "",
        before,
        after,
        replaced_is,
        fit,
        report.counts(),
        notes=notes,
    )
    try:
        result.decision = check_activation(
            settings,
            request.site,
            request.kind,
            new=after,
            replaced=before,
            replaced_is=replaced_is,
            model_dir=model_dir,
            force=request.force,
        )
    except RagError as exc:
        write_card(model_dir, card | {"activated": False, "decision": str(exc)})
        raise
    model_id = candidate.model_id if candidate is not None else str(model_dir)
    write_card(model_dir, card | {"activated": True, "decision": result.decision})
    activate(settings, request.site, request.kind, model_dir, model_id)
    result.activated = True
    if candidate is not None:
        say(f"re-embedding {request.site}'s collections with {model_dir.name}")
        done = reembed_site(settings, request.site, candidate)
        result.reembedded = [asdict(r) for r in done]
    runtime.forget_site_models(request.site)
    return result


def _judge(
    runtime: Runtime,
    request: FinetuneRequest,
    model_dir: Path,
    fit: dict[str, Any],
    queries: list[LabelledQuery],
) -> tuple[dict[str, float], dict[str, float], str, SentenceTransformerEmbedder | None]:
    """``(before, after, what 'before' is, the loaded embedder)``: the fit's own dev lists for a
    reranker; the whole index, current embedder against the new one, for an embedder."""
    if request.kind == "reranker":
        return fit["before"], fit["best"], "the retrieval order", None
    settings = runtime.settings
    current = runtime.embedder_for(request.site)
    candidate = SentenceTransformerEmbedder(
        str(model_dir), precision=settings.embedder_precision, batch_size=settings.embed_batch_size
    )
    dev = [q for q in queries if q.split == "dev"]
    scores = compare_embedders(settings, request.site, dev, current, candidate)
    before = {k: float(v) for k, v in scores["current"].items() if v is not None}
    after = {k: float(v) for k, v in scores["candidate"].items() if v is not None}
    return before, after, f"the current embedder {current.model_id} ({scores['mode']} search)", candidate
