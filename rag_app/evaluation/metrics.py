"""Retrieval and answer metrics: pure functions over ids and strings, no I/O.

Retrieval is scored at the *document* level, the way BEIR and pytrec_eval score it: a query's
passages are first collapsed to a ranking of distinct documents (:func:`doc_ranking`), because
several chunks of one relevant document must not count as several hits. Cut-off conventions follow
pytrec_eval (``recall_k``, ``P_k``, ``ndcg_cut_k``, reciprocal rank cut at ``k``), so numbers are
comparable with published BEIR tables:

* recall@k = relevant documents in the top k / all relevant documents;
* precision@k = relevant documents in the top k / k (even when fewer than k were retrieved);
* MRR@k = 1 / rank of the first relevant document in the top k, else 0;
* nDCG@k: gain = grade (linear, binary for a plain set), discount log2(rank + 1), ideal DCG over the
  best min(k, |relevant|) grades.

Relevance matching: a retrieved id ``d`` is relevant if ``d`` is judged, or if its page part
``d.split('#', 1)[0]`` is (a page-level judgment covers the page's sections, e.g. ``alternatives#3``).
Each judged id is credited once, at its best rank, so two sections of one relevant page cannot push
recall above 1. Grades of 0 or below mean "judged not relevant", as in trec_eval.

Answer metrics are SQuAD's (normalised exact match and token F1) plus citation precision and the
not-found check the answer programs rely on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from types import MappingProxyType

from rag_app.core.text import normalize_answer

#: The exact answer the per-site programs give when the passages do not contain the answer.

#: Relevance judgments: a collection of relevant ids (grade 1) or a mapping id -> grade.
Relevance = Mapping[str, int] | Mapping[str, float] | Collection[str]

#: The cut-offs :func:`retrieval_metrics` reports unless told otherwise.
DEFAULT_KS: Mapping[str, tuple[int, ...]] = MappingProxyType({"recall": (5, 20), "mrr": (5,), "ndcg": (10,)})


# --- document ranking and relevance --------------------------------------------------------------


def doc_ranking(passage_doc_ids: Sequence[str], *, collapse_sections: bool = False) -> list[str]:
    """Rank documents by their best (first) passage, dropping later passages of the same document.

    Retrieval returns chunks; BEIR qrels judge documents. Keeping duplicates would let one document
    occupy several ranks and push other documents below the cut-off.

    ``collapse_sections`` additionally treats ``page#section`` ids as their page (``page``), for scoring
    a section-level index against page-level judgments where two sections of one page should count as
    one ranked document. By default sections are documents of their own (the FastAPI docs corpus uses
    ``page#n`` ids for separate documents).
    """
    seen: set[str] = set()
    ranking: list[str] = []
    for doc_id in passage_doc_ids:
        key = doc_id.split("#", 1)[0] if collapse_sections else doc_id
        if key not in seen:
            seen.add(key)
            ranking.append(key)
    return ranking


def relevance_grades(relevant: Relevance) -> dict[str, float]:
    """Normalise judgments to id -> positive grade; raise ValueError when nothing is relevant.

    A query with no relevant document has undefined recall and nDCG; silently scoring it 0 (or
    skipping it) changes the average, so the caller must filter such queries explicitly.
    """
    if isinstance(relevant, str | bytes):
        raise TypeError("relevant must be a set of ids or a dict id -> grade, not a single string")
    if isinstance(relevant, Mapping):
        grades = {str(doc_id): float(grade) for doc_id, grade in relevant.items() if grade > 0}
    else:
        grades = {str(doc_id): 1.0 for doc_id in relevant}
    if not grades:
        raise ValueError("query has no relevant documents (empty relevant set); filter it out before scoring")
    return grades


def match_relevant(doc_id: str, grades: Mapping[str, float]) -> str | None:
    """The judged id that ``doc_id`` counts as: itself, else its page (``page#section`` -> ``page``)."""
    if doc_id in grades:
        return doc_id
    page = doc_id.split("#", 1)[0]
    if page in grades:
        return page
    return None


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"cut-off k must be >= 1, got {k}")


def _gains(ranked_doc_ids: Sequence[str], grades: Mapping[str, float], k: int) -> list[float]:
    """Gain at each of the first k ranks; each judged id is credited once, at its best rank."""
    _check_k(k)
    if len(set(ranked_doc_ids)) != len(ranked_doc_ids):
        dupes = sorted({d for d, n in Counter(ranked_doc_ids).items() if n > 1})
        raise ValueError(
            f"ranked ids contain duplicates ({', '.join(dupes[:5])}); rank documents with doc_ranking() first"
        )
    credited: set[str] = set()
    gains: list[float] = []
    for doc_id in ranked_doc_ids[:k]:
        key = match_relevant(doc_id, grades)
        if key is None or key in credited:
            gains.append(0.0)
        else:
            credited.add(key)
            gains.append(grades[key])
    return gains


# --- retrieval metrics ---------------------------------------------------------------------------


def recall_at_k(ranked_doc_ids: Sequence[str], relevant: Relevance, k: int) -> float:
    """Share of the relevant documents found in the top k (pytrec_eval ``recall_k``)."""
    grades = relevance_grades(relevant)
    hits = sum(1 for gain in _gains(ranked_doc_ids, grades, k) if gain > 0)
    return hits / len(grades)


def precision_at_k(ranked_doc_ids: Sequence[str], relevant: Relevance, k: int) -> float:
    """Relevant documents in the top k divided by k (pytrec_eval ``P_k``; short lists are not rescaled)."""
    grades = relevance_grades(relevant)
    hits = sum(1 for gain in _gains(ranked_doc_ids, grades, k) if gain > 0)
    return hits / k


def mrr_at_k(ranked_doc_ids: Sequence[str], relevant: Relevance, k: int) -> float:
    """Reciprocal rank of the first relevant document within the top k, 0 when none is there."""
    grades = relevance_grades(relevant)
    for rank, gain in enumerate(_gains(ranked_doc_ids, grades, k), start=1):
        if gain > 0:
            return 1.0 / rank
    return 0.0


def _dcg(gains: Sequence[float]) -> float:
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1))


def ndcg_at_k(ranked_doc_ids: Sequence[str], relevant: Relevance, k: int) -> float:
    """nDCG@k with linear gains and a log2 discount (pytrec_eval ``ndcg_cut_k``, BEIR's headline metric)."""
    grades = relevance_grades(relevant)
    ideal = _dcg(sorted(grades.values(), reverse=True)[:k])
    return _dcg(_gains(ranked_doc_ids, grades, k)) / ideal


_RETRIEVAL_METRICS: Mapping[str, Callable[[Sequence[str], Relevance, int], float]] = MappingProxyType(
    {"recall": recall_at_k, "precision": precision_at_k, "mrr": mrr_at_k, "ndcg": ndcg_at_k}
)


def retrieval_metrics(
    ranked_doc_ids: Sequence[str],
    relevant: Relevance,
    ks: Mapping[str, Sequence[int]] = DEFAULT_KS,
) -> dict[str, float]:
    """Score one query's document ranking; keys are ``<metric>@<k>`` in the order of ``ks``.

    The default gives exactly ``recall@5``, ``recall@20``, ``mrr@5`` and ``ndcg@10``: recall at the
    rerank and retrieve depths of the pipeline, plus BEIR's headline nDCG@10.
    """
    unknown = sorted(set(ks) - set(_RETRIEVAL_METRICS))
    if unknown:
        raise ValueError(
            f"unknown retrieval metric(s) {unknown}; known: {', '.join(sorted(_RETRIEVAL_METRICS))}"
        )
    relevance_grades(relevant)  # fail on an empty relevant set even when ks is empty
    return {
        f"{name}@{k}": _RETRIEVAL_METRICS[name](ranked_doc_ids, relevant, k)
        for name, cutoffs in ks.items()
        for k in cutoffs
    }


def mean_metrics(
    per_query: Sequence[Mapping[str, float | None]], *, count_key: str | None = None
) -> dict[str, float | None]:
    """Macro-average per-query metric dicts (every query weighs the same, as in BEIR).

    ``None`` values (e.g. citation precision of an answer that cites nothing) are left out of that
    metric's average; a metric that is ``None`` for every query averages to ``None``. All dicts must
    have the same keys, since a metric missing for some queries would be averaged over a different
    set of queries without anyone noticing. With ``count_key`` the number of queries is added under
    that key.
    """
    if not per_query:
        raise ValueError("no per-query metrics to average")
    keys = list(per_query[0])
    for index, row in enumerate(per_query):
        if set(row) != set(keys):
            missing = sorted(set(keys) - set(row))
            extra = sorted(set(row) - set(keys))
            raise ValueError(
                f"per-query metrics #{index} have different keys than #0 (missing {missing}, extra {extra})"
            )
    if count_key is not None and count_key in keys:
        raise ValueError(f"count_key {count_key!r} clashes with a metric name")
    means: dict[str, float | None] = {}
    for key in keys:
        values = [float(value) for row in per_query if (value := row[key]) is not None]
        means[key] = math.fsum(values) / len(values) if values else None
    if count_key is not None:
        means[count_key] = float(len(per_query))
    return means


# --- answer metrics ------------------------------------------------------------------------------


def _golds(gold: str | Sequence[str]) -> list[str]:
    golds = [gold] if isinstance(gold, str) else list(gold)
    if not golds:
        raise ValueError("no gold answers given")
    return golds


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer (best over several), else 0.0."""
    pred = normalize_answer(prediction)
    return max(float(pred == normalize_answer(g)) for g in _golds(gold))


def _f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        # SQuAD v2 convention: two empty answers agree, one empty answer scores 0.
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, gold: str | Sequence[str]) -> float:
    """SQuAD token-overlap F1 on normalised answers, best over several gold answers."""
    return max(_f1(prediction, g) for g in _golds(gold))


def citation_precision(cited_doc_ids: Sequence[str], relevant: Relevance) -> float | None:
    """Share of cited passages whose document is relevant; None when the answer cites nothing.

    None rather than 0 or 1: an answer without citations is neither precise nor imprecise, and
    :func:`mean_metrics` leaves it out of the average instead of skewing it.
    """
    if not cited_doc_ids:
        return None
    grades = relevance_grades(relevant)
    good = sum(1 for doc_id in cited_doc_ids if match_relevant(doc_id, grades) is not None)
    return good / len(cited_doc_ids)
