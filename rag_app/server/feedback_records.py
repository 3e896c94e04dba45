"""What the answer log holds: a logged answer, the feedback on it, and per-program counts.

Plain frozen dataclasses, shared by the store (:mod:`rag_app.server.feedback_store`), the feedback
route and the exporter (:mod:`rag_app.server.feedback_export`), so none of them depends on the others'
internals. :func:`is_gold` is the one rule for which ratings become eval rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class LoggedAnswer:
    """One answer as the caller saw it. ``question`` is the input's main text (what an eval row's
    ``query`` holds); ``inputs`` the program's whole input (defaults left out), ``question_field`` the
    input field ``question`` came from (None when the input has no free-text question)."""

    request_id: str
    site: str
    program: str
    created_at: float
    question: str
    inputs: dict[str, Any] = field(default_factory=dict)
    question_field: str | None = None
    collection: str | None = None
    filters: dict[str, Any] = field(default_factory=dict)
    passages: list[dict[str, Any]] = field(default_factory=list)
    answer: str = ""
    citations: list[dict[str, Any]] = field(default_factory=list)
    mode: str = ""
    expired: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FeedbackRecord:
    """A rating of one answer, with the answer it rates. ``relevant_ids`` are document ids (resolved
    from ``correct_passage_ids``, or the cited documents of a +1 answer)."""

    answer: LoggedAnswer
    rating: int
    relevant_ids: list[str]
    rated_at: float
    comment: str | None = None
    correct_passage_ids: list[str] = field(default_factory=list)
    corrected_answer: str | None = None

    @property
    def gold(self) -> bool:
        return is_gold(self.rating, self.correct_passage_ids, self.corrected_answer)


@dataclass(frozen=True)
class ProgramStats:
    """Counts for one site program: answers still taking feedback, ratings, and exportable rows."""

    site: str
    program: str
    answers: int
    feedback: int
    thumbs_up: int
    thumbs_down: int
    gold: int

    @property
    def thumbs_down_rate(self) -> float | None:
        """Share of ratings that are thumbs-down (None without ratings)."""
        return self.thumbs_down / self.feedback if self.feedback else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "thumbs_down_rate": self.thumbs_down_rate}


def is_gold(rating: int, correct_passage_ids: Sequence[str], corrected_answer: str | None) -> bool:
    """Whether a rating yields an eval row: a +1 (its answer and citations are gold), or a correction.
    A bare thumbs-down says only what is wrong, not what is right, so it is not gold."""
    return rating == 1 or bool(correct_passage_ids) or bool(corrected_answer)
