"""Offline evaluation: datasets with relevance judgments, BEIR-style metrics and shareable reports.

Kept free of the pipeline's heavy imports (torch, LanceDB), so metrics and reports can be used from
tests, benchmarks and notebooks without loading any model.
"""

from __future__ import annotations

from rag_app.answering.not_found import NOT_FOUND_ANSWER, is_not_found
from rag_app.core.text import normalize_answer
from rag_app.evaluation.datasets import (
    EvalExample,
    HistoryTurn,
    dataset_hash,
    load_beir_queries,
    load_eval_jsonl,
    load_financebench,
)
from rag_app.evaluation.metrics import (
    DEFAULT_KS,
    Relevance,
    citation_precision,
    doc_ranking,
    exact_match,
    match_relevant,
    mean_metrics,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    relevance_grades,
    retrieval_metrics,
    token_f1,
)
from rag_app.evaluation.report import (
    DatasetInfo,
    EvalReport,
    ReportRow,
    format_markdown,
    format_table,
    git_commit,
    load_report,
    models_from_settings,
    redact_secrets,
    settings_snapshot,
    write_report,
)

__all__ = [
    "DEFAULT_KS",
    "NOT_FOUND_ANSWER",
    "DatasetInfo",
    "EvalExample",
    "EvalReport",
    "HistoryTurn",
    "Relevance",
    "ReportRow",
    "citation_precision",
    "dataset_hash",
    "doc_ranking",
    "exact_match",
    "format_markdown",
    "format_table",
    "git_commit",
    "is_not_found",
    "load_beir_queries",
    "load_eval_jsonl",
    "load_financebench",
    "load_report",
    "match_relevant",
    "mean_metrics",
    "models_from_settings",
    "mrr_at_k",
    "ndcg_at_k",
    "normalize_answer",
    "precision_at_k",
    "recall_at_k",
    "redact_secrets",
    "relevance_grades",
    "retrieval_metrics",
    "settings_snapshot",
    "token_f1",
    "write_report",
]
