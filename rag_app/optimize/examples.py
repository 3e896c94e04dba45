"""The optimizers' train and dev sets: a program's eval rows as ``dspy.Example`` objects.

Inputs are the program's own ``Input`` fields (mapped from each row exactly as ``rag-app eval
answers`` maps them), so the optimizers run the program the way the CLI and the server run it; the
gold ``answer``, ``relevant_ids`` and ``row_id`` ride along as labels for the metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dspy

from rag_app.core.errors import InputError
from rag_app.evaluation.answers import program_input, select_rows
from rag_app.evaluation.datasets import EvalExample, load_eval_jsonl

__all__ = ["load_rows", "to_examples"]


def to_examples(cls: Any, rows: Sequence[EvalExample]) -> list[dspy.Example]:
    """``dspy.Example`` per row: the program's ``Input`` fields as inputs; ``answer`` (gold),
    ``relevant_ids`` and ``row_id`` as labels."""
    examples = []
    for index, row in enumerate(rows):
        inputs = program_input(cls, row, index).model_dump(mode="json", exclude_defaults=True)
        labels = {"answer": row.answer, "relevant_ids": sorted(row.relevant), "row_id": row.id or str(index)}
        clash = sorted(set(inputs) & set(labels))
        if clash:
            raise InputError(f"{cls.site}/{cls.name}: input field(s) {clash} clash with the eval labels")
        examples.append(dspy.Example(**inputs, **labels).with_inputs(*inputs))
    return examples


def load_rows(
    path: Path, site: str, program: str, *, all_rows: bool, limit: int | None, what: str
) -> list[EvalExample]:
    """The rows of ``path`` for ``site``/``program`` (every row of the site with ``all_rows``), at most
    ``limit``; an error naming the file when none are left."""
    rows, skipped = select_rows(load_eval_jsonl(path), site, program, all_rows=all_rows)
    if limit is not None:
        if limit < 1:
            raise InputError(f"the {what} limit must be at least 1, got {limit}")
        rows = rows[:limit]
    if not rows:
        raise InputError(
            f"{path}: no {what} rows for {site}/{program} ({skipped} name another site or program; "
            "--all-rows uses every row of the site)"
        )
    return rows
