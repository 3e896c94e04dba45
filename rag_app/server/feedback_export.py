"""Feedback as eval rows: what ``rag-app feedback export`` writes, in the format ``rag-app eval`` and
``rag-app optimize`` read (:class:`~rag_app.evaluation.datasets.EvalExample`, one JSON object a line).

A rated answer becomes a row that replays the same program input: ``query`` is the input's question,
``history`` its earlier turns (chat-bridge), ``filters`` the input's filter fields, and
``metadata.inputs`` the remaining input fields, which :func:`rag_app.evaluation.answers.program_input`
passes back to the program. (An input without a free-text question, e.g. a sagedaily reading from
cards only, is exported with its words as ``query``; replayed, they also become its question.)
The judgments come from the feedback:

* ``relevant_ids``: the documents of ``correct_passage_ids`` when given, else (for a +1) the documents
  the answer cited;
* ``answer``: ``corrected_answer`` when given, else (for a +1) the answer itself.

A thumbs-down without a correction says what is wrong but not what is right: it is not gold, and is
counted in the summary instead of exported.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag_app.core.errors import InputError
from rag_app.evaluation.datasets import EvalExample
from rag_app.server.feedback_records import FeedbackRecord
from rag_app.server.feedback_store import FeedbackStore


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote, and what it left out and why."""

    path: Path
    site: str
    rows: int
    thumbs_up: int
    corrected: int
    skipped_thumbs_down: int

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "site": self.site,
            "rows": self.rows,
            "thumbs_up": self.thumbs_up,
            "corrected": self.corrected,
            "skipped_thumbs_down": self.skipped_thumbs_down,
        }

    def text(self) -> str:
        line = (
            f"wrote {self.rows} eval row(s) for {self.site} to {self.path} "
            f"({self.thumbs_up} thumbs-up, {self.corrected} with corrections)"
        )
        if self.skipped_thumbs_down:
            line += (
                f"; {self.skipped_thumbs_down} thumbs-down without a corrected answer or correct passages "
                "not exported (no gold to learn from)"
            )
        return line


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def to_eval_example(record: FeedbackRecord) -> EvalExample | None:
    """The eval row of one feedback record, or None when it is not gold (a bare thumbs-down)."""
    if not record.gold:
        return None
    logged = record.answer
    extras = dict(logged.inputs)
    history = extras.pop("history", None) or []
    query = logged.question
    if logged.question_field is not None:
        # Without a free-text question (a reading from cards only), ``query`` holds the input's words
        # (see :func:`rag_app.server.routes.feedback.question_of`); replayed, they fill the question.
        extras.pop(logged.question_field, None)
    if not query.strip():
        return None
    for name in logged.filters:
        extras.pop(name, None)
    if record.corrected_answer:
        answer: str | None = record.corrected_answer
    elif record.rating == 1:
        answer = logged.answer
    else:
        answer = None
    metadata: dict[str, Any] = {
        "source": "feedback",
        "rating": record.rating,
        "answered_at": _iso(logged.created_at),
        "rated_at": _iso(record.rated_at),
    }
    if record.comment:
        metadata["comment"] = record.comment
    if extras:
        metadata["inputs"] = extras
    return EvalExample(
        id=logged.request_id,
        query=query,
        site=logged.site,
        program=logged.program,
        collection=logged.collection,
        relevant_ids=list(record.relevant_ids),
        answer=answer,
        history=history,
        filters=dict(logged.filters) or None,
        metadata=metadata,
    )


def parse_since(text: str | None) -> float | None:
    """``--since YYYY-MM-DD`` as a unix time (that day's start, UTC); an error naming the option."""
    if text is None:
        return None
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise InputError(f"--since: expected a date as YYYY-MM-DD, got {text!r}") from None
    return dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()


def write_jsonl(path: Path, examples: Sequence[EvalExample]) -> None:
    """Write ``examples`` to ``path`` atomically (a temporary file renamed over it), so a reader never
    sees half a file and a failed export leaves the old file as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for example in examples:
                row = example.model_dump(mode="json", exclude_defaults=True)
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_feedback(
    store: FeedbackStore, site: str, out: Path, *, since: float | None = None
) -> ExportSummary:
    """Write ``site``'s gold feedback (rated at or after ``since``) to ``out`` as eval JSONL.

    Raises :class:`InputError` (and writes nothing) when there is no gold row to write, since an empty
    eval file is refused by every reader.
    """
    examples: list[EvalExample] = []
    skipped = up = corrected = 0
    records = store.feedback(site=site, since=since)
    for record in records:
        example = to_eval_example(record)
        if example is None:
            skipped += not record.gold
            continue
        examples.append(example)
        if record.corrected_answer or record.correct_passage_ids:
            corrected += 1
        else:
            up += 1
    if not examples:
        window = f" since {_iso(since)[:10]}" if since is not None else ""
        raise InputError(
            f"no exportable feedback for site {site!r}{window} in {store.path} ({len(records)} rating(s), "
            f"{skipped} thumbs-down without a correction); nothing written to {out}"
        )
    write_jsonl(out, examples)
    return ExportSummary(
        path=out,
        site=site,
        rows=len(examples),
        thumbs_up=up,
        corrected=corrected,
        skipped_thumbs_down=skipped,
    )
