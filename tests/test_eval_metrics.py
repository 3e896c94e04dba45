"""Retrieval and answer metrics against hand-computed values (BEIR / pytrec_eval / SQuAD conventions)."""

from __future__ import annotations

import math

import pytest

from rag_app.answering.not_found import NOT_FOUND_ANSWER, is_not_found
from rag_app.core.text import normalize_answer
from rag_app.evaluation.metrics import (
    citation_precision,
    doc_ranking,
    exact_match,
    mean_metrics,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    retrieval_metrics,
    token_f1,
)

RELEVANT = {"d1", "d2"}
IDEAL_TWO = 1 + 1 / math.log2(3)  # ideal DCG of two relevant docs: ranks 1 and 2


# --- document ranking ----------------------------------------------------------------------------


def test_doc_ranking_keeps_each_document_at_its_best_chunk() -> None:
    assert doc_ranking(["d3", "d1", "d3", "d7", "d1", "d2"]) == ["d3", "d1", "d7", "d2"]


def test_doc_ranking_keeps_sections_as_documents_unless_collapsed() -> None:
    ranked = ["d3", "d1", "d3#2", "d7", "d2"]
    assert doc_ranking(ranked) == ranked
    assert doc_ranking(ranked, collapse_sections=True) == ["d3", "d1", "d7", "d2"]


# --- toy ranking of the brief -------------------------------------------------------------------


def test_toy_ranking_with_duplicate_chunks() -> None:
    # Passages' doc ids [d3, d1, d3, d7, d2] -> documents [d3, d1, d7, d2]: d1 at rank 2, d2 at rank 4.
    ranked = doc_ranking(["d3", "d1", "d3", "d7", "d2"])
    assert recall_at_k(ranked, RELEVANT, 5) == 1.0
    assert mrr_at_k(ranked, RELEVANT, 5) == 0.5
    # DCG = 1/log2(2+1) + 1/log2(4+1); ideal = 1/log2(2) + 1/log2(3)
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / IDEAL_TWO
    assert ndcg_at_k(ranked, RELEVANT, 10) == pytest.approx(expected)
    assert precision_at_k(ranked, RELEVANT, 5) == pytest.approx(2 / 5)


def test_toy_ranking_with_a_section_id() -> None:
    # [d3, d1, d3#2, d7, d2]: d3#2 is a separate (irrelevant) section document, so d2 sits at rank 5.
    ranked = doc_ranking(["d3", "d1", "d3#2", "d7", "d2"])
    assert recall_at_k(ranked, RELEVANT, 5) == 1.0
    assert mrr_at_k(ranked, RELEVANT, 5) == 0.5
    # DCG = 1/log2(3) + 1/log2(6)
    assert ndcg_at_k(ranked, RELEVANT, 10) == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / IDEAL_TWO)
    # Collapsing sections into their page gives the [d3, d1, d7, d2] ranking: DCG = 1/log2(3) + 1/log2(5).
    collapsed = doc_ranking(["d3", "d1", "d3#2", "d7", "d2"], collapse_sections=True)
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / IDEAL_TWO
    assert ndcg_at_k(collapsed, RELEVANT, 10) == pytest.approx(expected)


def test_cutoffs_limit_what_counts() -> None:
    ranked = ["d3", "d1", "d7", "d2"]
    assert recall_at_k(ranked, RELEVANT, 1) == 0.0
    assert recall_at_k(ranked, RELEVANT, 2) == 0.5
    assert mrr_at_k(ranked, RELEVANT, 1) == 0.0
    # nDCG@1: ideal over min(1, 2) = 1 doc -> 1.0; d3 at rank 1 is irrelevant -> 0.
    assert ndcg_at_k(ranked, RELEVANT, 1) == 0.0
    # nDCG@2 = (1/log2 3) / (1 + 1/log2 3)
    assert ndcg_at_k(ranked, RELEVANT, 2) == pytest.approx((1 / math.log2(3)) / IDEAL_TWO)
    # precision divides by k even when the list is shorter (trec_eval P_k).
    assert precision_at_k(ranked, RELEVANT, 10) == pytest.approx(2 / 10)


def test_perfect_and_empty_rankings() -> None:
    assert ndcg_at_k(["d1", "d2", "x"], RELEVANT, 10) == pytest.approx(1.0)
    assert retrieval_metrics([], RELEVANT) == {
        "recall@5": 0.0,
        "recall@20": 0.0,
        "mrr@5": 0.0,
        "ndcg@10": 0.0,
    }


def test_retrieval_metrics_keys_and_values() -> None:
    metrics = retrieval_metrics(["d3", "d1", "d7", "d2"], RELEVANT)
    assert list(metrics) == ["recall@5", "recall@20", "mrr@5", "ndcg@10"]
    assert metrics["recall@5"] == 1.0
    assert metrics["recall@20"] == 1.0
    assert metrics["mrr@5"] == 0.5
    assert metrics["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / IDEAL_TWO)


def test_retrieval_metrics_custom_cutoffs() -> None:
    metrics = retrieval_metrics(["d3", "d1"], RELEVANT, ks={"precision": (1, 2), "recall": (100,)})
    assert metrics == {"precision@1": 0.0, "precision@2": 0.5, "recall@100": 0.5}
    with pytest.raises(ValueError, match="unknown retrieval metric"):
        retrieval_metrics(["d1"], RELEVANT, ks={"map": (10,)})
    with pytest.raises(ValueError, match="k must be >= 1"):
        recall_at_k(["d1"], RELEVANT, 0)


# --- graded relevance ----------------------------------------------------------------------------


def test_graded_relevance_uses_linear_gains() -> None:
    # Grades: a=1, b=2, x=3 (never retrieved); c=0 is judged non-relevant and gains nothing.
    relevant = {"a": 1, "b": 2, "c": 0, "x": 3}
    ranked = ["a", "b", "c"]
    # DCG@10 = 1/log2(2) + 2/log2(3); ideal = 3/log2(2) + 2/log2(3) + 1/log2(4)
    dcg = 1 + 2 / math.log2(3)
    ideal = 3 + 2 / math.log2(3) + 1 / 2
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx(0.4750, abs=1e-4)
    # nDCG@1: ideal is the single best grade (3); 'a' earns 1.
    assert ndcg_at_k(ranked, relevant, 1) == pytest.approx(1 / 3)
    # Recall and MRR are binary: any grade > 0 is relevant; grade 0 is not.
    assert recall_at_k(ranked, relevant, 5) == pytest.approx(2 / 3)
    assert mrr_at_k(["c", "b"], relevant, 5) == 0.5


def test_grade_zero_only_is_treated_as_no_relevant_documents() -> None:
    with pytest.raises(ValueError, match="no relevant documents"):
        ndcg_at_k(["a"], {"a": 0}, 10)


# --- page covers sections ------------------------------------------------------------------------


def test_page_judgment_covers_its_sections_once() -> None:
    relevant = {"guide"}
    ranked = ["other", "guide#2", "guide#5"]
    assert mrr_at_k(ranked, relevant, 5) == 0.5
    # The page is credited once, at its best section: recall stays <= 1, the second section gains 0.
    assert recall_at_k(ranked, relevant, 5) == 1.0
    assert precision_at_k(ranked, relevant, 3) == pytest.approx(1 / 3)
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx(1 / math.log2(3))


def test_section_judgment_does_not_cover_its_page() -> None:
    relevant = {"guide#5"}
    assert mrr_at_k(["guide", "guide#5"], relevant, 5) == 0.5
    assert recall_at_k(["guide", "guide#2"], relevant, 5) == 0.0


def test_page_match_keeps_page_grade() -> None:
    assert ndcg_at_k(["p#1", "q"], {"p": 2, "q": 1}, 10) == pytest.approx(1.0)


# --- rejected input ------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [recall_at_k, precision_at_k, mrr_at_k, ndcg_at_k])
@pytest.mark.parametrize("empty", [set(), {}, []])
def test_empty_relevant_set_is_rejected(metric, empty) -> None:
    with pytest.raises(ValueError, match="no relevant documents"):
        metric(["d1"], empty, 5)


def test_empty_relevant_set_is_rejected_by_retrieval_metrics() -> None:
    with pytest.raises(ValueError, match="no relevant documents"):
        retrieval_metrics(["d1"], set())


def test_duplicate_ranked_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="doc_ranking"):
        recall_at_k(["d1", "d1", "d2"], RELEVANT, 5)


def test_a_single_string_is_not_a_relevant_set() -> None:
    with pytest.raises(TypeError):
        recall_at_k(["d1"], "d1", 5)


# --- averaging -----------------------------------------------------------------------------------


def test_mean_metrics_macro_average() -> None:
    rows = [{"recall@5": 1.0, "mrr@5": 0.5}, {"recall@5": 0.0, "mrr@5": 1.0}, {"recall@5": 0.5, "mrr@5": 0.0}]
    assert mean_metrics(rows) == {"recall@5": pytest.approx(0.5), "mrr@5": pytest.approx(0.5)}
    assert mean_metrics(rows, count_key="n_queries")["n_queries"] == 3


def test_mean_metrics_skips_none_values() -> None:
    rows = [{"em": 1.0, "citation_precision": None}, {"em": 0.0, "citation_precision": 0.5}]
    assert mean_metrics(rows) == {"em": 0.5, "citation_precision": 0.5}
    assert mean_metrics([{"citation_precision": None}]) == {"citation_precision": None}


def test_mean_metrics_rejects_empty_and_mismatched_input() -> None:
    with pytest.raises(ValueError, match="no per-query metrics"):
        mean_metrics([])
    with pytest.raises(ValueError, match="#1 have different keys"):
        mean_metrics([{"a": 1.0, "b": 1.0}, {"a": 1.0}])
    with pytest.raises(ValueError, match="clashes"):
        mean_metrics([{"n": 1.0}], count_key="n")


# --- answers (examples from the SQuAD evaluation script's conventions) ------------------------


def test_normalize_answer() -> None:
    assert normalize_answer("The Denver Broncos!") == "denver broncos"
    assert normalize_answer("  an   apple,  a day ") == "apple day"
    assert normalize_answer("Theatre") == "theatre"  # only whole-word articles go
    assert normalize_answer("$1,577.00") == "157700"


def test_exact_match() -> None:
    assert exact_match("Denver Broncos", "Denver Broncos") == 1.0
    assert exact_match("the denver broncos.", "Denver Broncos") == 1.0
    assert exact_match("Broncos", "Denver Broncos") == 0.0
    assert exact_match("Carolina Panthers", ["Denver Broncos", "Carolina Panthers"]) == 1.0
    with pytest.raises(ValueError):
        exact_match("x", [])


def test_token_f1() -> None:
    # pred tokens {denver, broncos, won}, gold {denver, broncos}: P = 2/3, R = 1, F1 = 0.8
    assert token_f1("the Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)
    assert token_f1("Denver Broncos", "Denver Broncos") == 1.0
    assert token_f1("Santa Clara", "Denver Broncos") == 0.0
    # Best over several golds.
    assert token_f1("Levi's Stadium", ["Santa Clara", "Levi's Stadium in Santa Clara"]) == pytest.approx(
        2 * (1.0 * (2 / 5)) / (1.0 + 2 / 5)
    )
    # Repeated tokens count as often as both sides have them.
    # pred [x x y], gold [x y y]: overlap 2, P = R = 2/3.
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    # Empty after normalisation: equal empties agree (SQuAD v2), otherwise 0.
    assert token_f1("The", "a") == 1.0
    assert token_f1("", "Denver") == 0.0


def test_citation_precision() -> None:
    assert citation_precision(["d1", "d3", "d1#2", "d2"], RELEVANT) == pytest.approx(3 / 4)
    assert citation_precision(["d9"], RELEVANT) == 0.0
    assert citation_precision([], RELEVANT) is None
    assert citation_precision(["a"], {"a": 2, "b": 0}) == 1.0
    with pytest.raises(ValueError):
        citation_precision(["d1"], set())


def test_is_not_found() -> None:
    assert NOT_FOUND_ANSWER == "Not found in the sources."
    assert is_not_found(NOT_FOUND_ANSWER)
    assert is_not_found("  not found in the sources ")
    assert not is_not_found("The capex was $1,577 million [1].")
    assert not is_not_found("")
