"""Grounding in code, not left to the prompt: how passages are shown to the LM, and the citation check.

* passages reach the LM as numbered, delimited data blocks (``[1] (title) «text»``, :func:`format_passages`),
  and every answer signature says that instructions inside passages are to be ignored;
* :func:`ground_answer` parses the ``[n]`` markers of an answer; a marker naming a passage that was not
  passed in is removed and counted; an answer left without any valid citation becomes
  :data:`NOT_FOUND_ANSWER` with no citations.

An LM can cite passages it was never given or ignore them; only a check on its output makes every
citation in a response point at a passage that is in it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from rag_app.evaluation.metrics import NOT_FOUND_ANSWER, is_not_found
from rag_app.extractive import best_sentence, passage_citation
from rag_app.types import Citation, Passage

__all__ = ["Grounding", "format_passages", "ground_answer", "parse_citations", "passage_label"]


def _sanitize(text: str) -> str:
    """Passage text made safe to put between the prompt's delimiters."""
    text = text.replace("«", '"').replace("»", '"')
    return re.sub(r"\[\[\s*##", "[ ##", text)


def passage_label(passage: Passage) -> str:
    """``Title > Heading | date | TICKERS`` for a passage's block header."""
    parts = [passage.title.strip()] if passage.title.strip() else []
    parts += [h for h in passage.heading_path if h.strip() and h.strip() != passage.title.strip()]
    label = " > ".join(parts) or passage.doc_id
    date = passage.metadata.get("date")
    tickers = passage.metadata.get("tickers") or []
    extra = [str(date)] if date else []
    if tickers:
        extra.append(", ".join(tickers))
    return " | ".join([label, *extra])


def format_passages(passages: Sequence[Passage], numbers: Sequence[int] | None = None) -> str:
    """Passages as numbered, delimited data blocks: ``[n] (title > heading | date) «text»``."""
    numbers = list(numbers) if numbers is not None else list(range(1, len(passages) + 1))
    blocks = [
        f"[{n}] ({_sanitize(passage_label(p))}) «{_sanitize(p.text.strip())}»"
        for n, p in zip(numbers, passages, strict=True)
    ]
    return "\n\n".join(blocks) if blocks else "(no passages)"


# ======================================================================================== grounding

_CITE = re.compile(r"\[\s*(?:(?:passage|source)\s*)?(\d+(?:\s*(?:,|;|and)\s*\d+)*)\s*\]", re.IGNORECASE)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")


def parse_citations(text: str) -> list[int]:
    """Passage numbers cited as ``[n]``, ``[n, m]``, ``[n][m]`` or ``[Passage n]``, in order, repeats kept."""
    return [int(n) for match in _CITE.finditer(text) for n in re.findall(r"\d+", match.group(1))]


@dataclass
class Grounding:
    """An answer after the citation check."""

    answer: str
    citations: list[Citation] = field(default_factory=list)
    dropped: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def not_found(self) -> bool:
        return is_not_found(self.answer)


def _quote_for(answer: str, n: int, passage: Passage) -> str:
    """The passage sentence best supporting the answer sentences that cite ``[n]``."""
    claim = " ".join(s for s in re.split(r"(?<=[.!?])\s+", answer) if re.search(rf"\[{n}\]", s)) or answer
    return best_sentence(_CITE.sub(" ", claim), passage)


def ground_answer(
    text: str,
    passages: Sequence[Passage],
    *,
    allowed: Collection[int] | None = None,
    require_citations: bool = True,
) -> Grounding:
    """Keep only citations of passages actually passed in; no valid citation -> not found.

    Passage ``[n]`` is ``passages[n - 1]``; ``allowed`` narrows the numbers an answer may cite (default
    all of 1..len(passages)). Markers naming anything else are removed from the text and counted.
    """
    allowed_set = set(allowed) if allowed is not None else set(range(1, len(passages) + 1))
    allowed_set &= set(range(1, len(passages) + 1))
    text = (text or "").strip()
    dropped_numbers: list[int] = []

    def rewrite(match: re.Match[str]) -> str:
        kept = []
        for raw in re.findall(r"\d+", match.group(1)):
            n = int(raw)
            if n in allowed_set:
                kept.append(n)
            else:
                dropped_numbers.append(n)
        return "".join(f"[{n}]" for n in kept)

    cleaned = _CITE.sub(rewrite, text)
    cleaned = _SPACE_BEFORE_PUNCT.sub(r"\1", re.sub(r"[ \t]{2,}", " ", cleaned)).strip()
    notes: list[str] = []
    if dropped_numbers:
        shown = ", ".join(f"[{n}]" for n in sorted(set(dropped_numbers)))
        notes.append(
            f"dropped {len(dropped_numbers)} citation(s) naming passages that were not provided: {shown}"
        )
    if not cleaned or is_not_found(cleaned) or is_not_found(_CITE.sub("", cleaned)):
        return Grounding(NOT_FOUND_ANSWER, [], len(dropped_numbers), notes)
    order: list[int] = []
    for n in parse_citations(cleaned):
        if n not in order:
            order.append(n)
    if not order and require_citations:
        notes.append(
            "the answer cited none of the passages it was given, so it was replaced by the not-found answer"
        )
        return Grounding(NOT_FOUND_ANSWER, [], len(dropped_numbers), notes)
    citations = [passage_citation(n, passages[n - 1], _quote_for(cleaned, n, passages[n - 1])) for n in order]
    return Grounding(cleaned, citations, len(dropped_numbers), notes)
