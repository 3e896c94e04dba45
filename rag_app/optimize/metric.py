"""What the program optimizers maximise: one score for an answer's correctness and grounding.

:func:`answer_metric` is ``0.5 * token F1`` of the answer (citation markers removed) against the gold
answer, plus ``0.5 * grounding``, where grounding is

* 1/0 for answering (not) with the not-found phrase when the gold answer is the not-found phrase;
* 0 for a not-found answer to a question that has a gold answer;
* otherwise the mean of the share of citations that named a passage the program was given (dropped
  markers count against it) and, when the row has ``relevant_ids``, the citation precision.

Rows without a gold answer are scored on grounding alone. During bootstrapping (a ``trace`` is
given) the metric answers "good enough to keep as a demo": score >= :data:`BOOTSTRAP_THRESHOLD`.
GEPA gets :func:`feedback_metric`: the same score with the reasons as text feedback, because GEPA's
reflection LM improves the prompts from those words. :func:`evaluate_program` is the metric's mean
over a dev set: the "before" and "after" scores of a run.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import dspy

from rag_app.answering.not_found import is_not_found
from rag_app.evaluation.answers import strip_citations
from rag_app.evaluation.metrics import citation_precision, token_f1

#: Weight of token F1 in :func:`answer_score`; grounding gets the rest.
F1_WEIGHT = 0.5
#: A bootstrapped trace becomes a demo when its score reaches this.
BOOTSTRAP_THRESHOLD = 0.5
#: Bumped whenever the metric changes, so old checkpoints stop matching.
METRIC_VERSION = "answer_score/1"

__all__ = [
    "BOOTSTRAP_THRESHOLD",
    "F1_WEIGHT",
    "METRIC_VERSION",
    "answer_metric",
    "answer_score",
    "evaluate_program",
    "feedback_metric",
    "grounding_score",
]


def _field(obj: Any, name: str, default: Any = None) -> Any:
    try:
        value = obj.get(name, default) if hasattr(obj, "get") else getattr(obj, name, default)
    except Exception:
        value = getattr(obj, name, default)
    return default if value is None else value


def grounding_score(example: Any, pred: Any) -> tuple[float, list[str]]:
    """How well the answer is grounded (see the module docstring), with the reasons in words."""
    gold = _field(example, "answer")
    answer = str(_field(pred, "answer", ""))
    pred_nf = is_not_found(strip_citations(answer))
    if gold is not None and is_not_found(str(gold)):
        if pred_nf:
            return 1.0, ["Correctly answered that the sources do not contain the answer."]
        return 0.0, ["The sources do not contain the answer: the reply should be 'Not found in the sources.'"]
    if pred_nf:
        return 0.0, [
            "Answered 'Not found in the sources.' although the passages should contain the answer"
            + (f" ({gold!r})." if gold else ".")
        ]
    citations = list(_field(pred, "citations", []))
    dropped = int(_field(pred, "dropped_citations", 0) or 0)
    if not citations:
        return 0.0, ["The answer cites no passage: cite the passage of every claim as [n]."]
    valid = len(citations) / (len(citations) + dropped)
    notes = []
    if dropped:
        notes.append(f"{dropped} citation marker(s) named passages that were not provided and were removed.")
    relevant = _field(example, "relevant_ids", [])
    if not relevant:
        return valid, notes
    cited = [str(_field(c, "doc_id", "")) for c in citations]
    precision = citation_precision(cited, relevant) or 0.0
    good = round(precision * len(cited))
    notes.append(
        f"{good} of {len(cited)} cited passage(s) come from a relevant document "
        f"(cited: {', '.join(cited)}; relevant: {', '.join(relevant)})."
    )
    return (valid + precision) / 2, notes


def answer_score(example: Any, pred: Any) -> tuple[float, list[str]]:
    """``F1_WEIGHT * token F1 + (1 - F1_WEIGHT) * grounding`` (grounding alone without a gold answer)."""
    grounding, notes = grounding_score(example, pred)
    gold = _field(example, "answer")
    if gold is None or not str(gold).strip():
        return grounding, notes
    text = strip_citations(str(_field(pred, "answer", "")))
    f1 = token_f1(text, str(gold))
    notes.insert(0, f"Token F1 against the gold answer {str(gold)!r} is {f1:.2f}.")
    return F1_WEIGHT * f1 + (1 - F1_WEIGHT) * grounding, notes


def answer_metric(example: Any, pred: Any, trace: Any = None) -> float | bool:
    """The optimization metric: a float in [0, 1]; with a ``trace`` (bootstrapping) whether the trace
    is good enough to become a demo."""
    score, _ = answer_score(example, pred)
    return score >= BOOTSTRAP_THRESHOLD if trace is not None else score


def feedback_metric(
    gold: Any,
    pred: Any,
    trace: Any = None,
    pred_name: str | None = None,
    pred_trace: Any = None,
) -> dspy.Prediction:
    """GEPA's metric: ``dspy.Prediction(score=..., feedback=...)`` (the score of :func:`answer_score`)."""
    score, notes = answer_score(gold, pred)
    mode = _field(pred, "mode")
    if mode == "extractive":
        notes.append("The LM call failed or was skipped, so the program answered extractively.")
    return dspy.Prediction(score=score, feedback=" ".join(notes) or f"Score {score:.2f}.")


def evaluate_program(
    module: Any, devset: Sequence[dspy.Example], lm: Any, *, num_threads: int = 1, progress: bool = False
) -> dict[str, Any]:
    """``dspy.Evaluate`` with :func:`answer_metric` under ``lm``: mean score in [0, 1], per-row scores,
    how many answers came from the LM and how many rows failed."""
    evaluator = dspy.Evaluate(
        devset=list(devset),
        metric=answer_metric,
        num_threads=num_threads,
        display_progress=progress,
        display_table=False,
        max_errors=len(devset) + 1,
        failure_score=0.0,
    )
    with dspy.context(lm=lm):
        result = evaluator(module)
    scores = [float(score) for _, _, score in result.results]
    modes = Counter(str(getattr(pred, "mode", None) or "failed") for _, pred, _ in result.results)
    return {
        "score": math.fsum(scores) / len(scores) if scores else 0.0,
        "scores": scores,
        "n": len(scores),
        "modes": dict(modes),
    }
