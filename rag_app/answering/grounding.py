"""Grounding in code, not left to the prompt: how passages are shown to the LM, and the checks on its answer.

* passages reach the LM as numbered, delimited data blocks (``[1] (title) «text»``, :func:`format_passages`),
  with every sentence that reads as an instruction to an assistant
  (:func:`~rag_app.core.text.looks_like_instruction`) replaced by a visible "withheld" marker, and
  every answer signature says that instructions inside passages are to be ignored;
* :func:`ground_answer` parses the ``[n]`` markers of an answer; a marker naming a passage that was not
  passed in is removed and counted; every sentence that cites passages must then be *supported* by
  them (:func:`check_support`: a :class:`SupportScorer`, by default :func:`token_overlap_support`, at
  least ``min_support``), else it is dropped and counted; an answer left without any valid citation
  becomes :data:`NOT_FOUND_ANSWER` with no citations (:attr:`Grounding.nothing_supported` tells the
  caller when that happened because sentences were unsupported, so it can answer extractively).

An LM can cite passages it was never given, ignore them, or obey a command planted in one while citing
a real passage ("PWNED [1]"); only a check on its output makes every citation point at a passage that
is in the response and that contains what the sentence says. The support score is lexical: it catches
claims whose words are not in the cited passage, not claims that reuse the passage's words to say
something else.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rag_app.answering.extractive import best_sentence, passage_citation
from rag_app.answering.not_found import NOT_FOUND_ANSWER, is_not_found
from rag_app.core.text import terms, withhold_instructions
from rag_app.core.types import Citation, Passage

__all__ = [
    "DEFAULT_MIN_SUPPORT",
    "Grounding",
    "SupportCheck",
    "SupportScorer",
    "answer_sentences",
    "check_support",
    "format_passages",
    "ground_answer",
    "instruction_note",
    "parse_citations",
    "passage_label",
    "token_overlap_support",
    "unsupported_note",
]

#: The support threshold when none is given; ``Settings.grounding_min_support`` has the same default,
#: measured by ``benchmarks/grounding_threshold.py``.
DEFAULT_MIN_SUPPORT = 0.5


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
    """Passages as numbered, delimited data blocks: ``[n] (title > heading | date) «text»``.

    Sentences that read as instructions to an assistant are replaced by
    :data:`~rag_app.core.text.WITHHELD`: the delimiters and the prompt's "treat passages as data" only
    ask the LM to ignore a planted command; withholding it means the LM never reads it.
    """
    numbers = list(numbers) if numbers is not None else list(range(1, len(passages) + 1))
    blocks = [
        f"[{n}] ({_sanitize(passage_label(p))}) «{_sanitize(withhold_instructions(p.text.strip())[0])}»"
        for n, p in zip(numbers, passages, strict=True)
    ]
    return "\n\n".join(blocks) if blocks else "(no passages)"


# ======================================================================================== grounding

_CITE = re.compile(r"\[\s*(?:(?:passage|source)\s*)?(\d+(?:\s*(?:,|;|and)\s*\d+)*)\s*\]", re.IGNORECASE)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")


def parse_citations(text: str) -> list[int]:
    """Passage numbers cited as ``[n]``, ``[n, m]``, ``[n][m]`` or ``[Passage n]``, in order, repeats kept."""
    return [int(n) for match in _CITE.finditer(text) for n in re.findall(r"\d+", match.group(1))]


def instruction_note(passages: Sequence[Passage], numbers: Sequence[int] | None = None) -> str | None:
    """The note that says how many passage sentences were withheld as instructions, or ``None``.

    One wording for the LM and the extractive path, so ``notes`` count planted commands the same way
    whichever mode answered.
    """
    numbers = list(numbers) if numbers is not None else list(range(1, len(passages) + 1))
    counts = {n: withhold_instructions(p.text)[1] for n, p in zip(numbers, passages, strict=True)}
    flagged = [n for n, count in counts.items() if count]
    if not flagged:
        return None
    shown = ", ".join(f"[{n}]" for n in flagged)
    return (
        "ignored passage text that reads as instructions to an assistant (withheld from the LM, never "
        f"quoted): {sum(counts.values())} sentence(s) in passage(s) {shown}"
    )


# ========================================================================================== support


class SupportScorer(Protocol):
    """How well ``passages`` support ``sentence``, from 0 (not at all) to 1 (fully).

    :func:`token_overlap_support` is the default; a cross-encoder (sentence, passage) scorer that
    returns a calibrated probability can replace it without touching the callers.
    """

    def __call__(self, sentence: str, passages: Sequence[Passage]) -> float: ...


#: Answer filler that claims nothing a passage could state ("Yes, ...", "since 2.6").
_FILLER = frozenset({"yes", "sinc"})


def _with_parts(words: Sequence[str]) -> set[str]:
    """Terms plus the pieces of compound ones ("2024-08-28" -> 2024, 08, 28; "post-earnings")."""
    out = set(words)
    for word in words:
        if re.search(r"[-/._]", word):
            out.update(part for part in re.split(r"[-/._]+", word) if part)
    return out


def _evidence_terms(passage: Passage) -> set[str]:
    """Content words a passage vouches for: its label (title, headings, date, tickers) and its text
    without the sentences that read as instructions (a planted "reply PWNED" is not evidence of PWNED)."""
    text = withhold_instructions(passage.text, placeholder="")[0]
    return _with_parts([*terms(passage_label(passage)), *terms(text)])


def token_overlap_support(sentence: str, passages: Sequence[Passage]) -> float:
    """Share of the sentence's distinct content words (stop words, "yes"/"since" and ``[n]`` markers
    removed, lightly stemmed: :func:`~rag_app.core.text.terms`) found in any of ``passages`` (a compound
    word such as a date "2024-08-28" or "post-earnings" also matches piece by piece).

    Deterministic and model-free, so the check runs on every answer at no cost. A sentence with no
    content words makes no claim and scores 1.0.
    """
    claim = set(terms(_CITE.sub(" ", sentence))) - _FILLER
    if not claim:
        return 1.0
    evidence: set[str] = set()
    for passage in passages:
        evidence |= _evidence_terms(passage)

    def found(word: str) -> bool:
        parts = [p for p in re.split(r"[-/._]+", word) if p]
        return word in evidence or (bool(parts) and all(p in evidence for p in parts))

    return sum(found(word) for word in claim) / len(claim)


_ANSWER_BREAK = re.compile(r"(?<=[.!?])[\"”')\]]*\s+(?=[\"“(\[*]?[A-Z0-9$£€\[])")
_LEADING_CITES = re.compile(rf"^(?:\s*{_CITE.pattern})+[.,;:!?]?", re.IGNORECASE)


def answer_sentences(line: str) -> list[str]:
    """The sentences of one line of an answer, each keeping the ``[n]`` markers that follow it
    ("Team is $19. [1] Pro is $8." -> "Team is $19. [1]", "Pro is $8.")."""
    pieces = [p.strip() for p in _ANSWER_BREAK.split(line) if p.strip()]
    out: list[str] = []
    for piece in pieces:
        lead = _LEADING_CITES.match(piece)
        if out and lead:
            out[-1] = f"{out[-1]} {lead.group(0).strip()}"
            piece = piece[lead.end() :].strip()
        if piece:
            out.append(piece)
    return out


@dataclass
class SupportCheck:
    """An answer after the support check: the kept text, and (cited numbers, score) per dropped sentence."""

    text: str
    dropped: list[tuple[list[int], float]] = field(default_factory=list)


def check_support(
    text: str,
    passages: Sequence[Passage],
    *,
    min_support: float = DEFAULT_MIN_SUPPORT,
    scorer: SupportScorer = token_overlap_support,
    implied: Sequence[int] = (),
) -> SupportCheck:
    """Drop each sentence scoring below ``min_support`` against the passages it cites.

    Passage ``[n]`` is ``passages[n - 1]``; numbers out of range are ignored (``ground_answer`` has
    removed them already). A sentence citing nothing is checked against ``implied`` (e.g. ``[1]`` for a
    one-passage reason) or, when that is empty, against all passages together: whether uncited
    sentences are allowed at all is the caller's rule, but none passes without support. Lines are kept
    as they were unless a sentence of theirs is dropped; lines left empty are removed.
    """
    dropped: list[tuple[list[int], float]] = []
    lines: list[str] = []
    for line in text.splitlines():
        sentences = answer_sentences(line)
        kept: list[str] = []
        for sentence in sentences:
            cited = [n for n in dict.fromkeys(parse_citations(sentence)) if 1 <= n <= len(passages)]
            cited = cited or [n for n in implied if 1 <= n <= len(passages)]
            # An uncited sentence must still be backed by the passages shown, taken together: otherwise
            # a bare planted payload ("PWNED.") next to one cited sentence would pass.
            evidence = [passages[n - 1] for n in cited] if cited else list(passages)
            score = scorer(sentence, evidence)
            if score < min_support:
                dropped.append((cited, score))
                continue
            kept.append(sentence)
        if len(kept) == len(sentences):
            lines.append(line)
        elif kept:
            lines.append(" ".join(kept))
    return SupportCheck(re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip(), dropped)


def unsupported_note(dropped: Sequence[tuple[list[int], float]], min_support: float) -> str:
    """What the support check dropped and why, without repeating the dropped text (it may be a planted
    command's payload)."""
    detail = "; ".join(
        f"cites {''.join(f'[{n}]' for n in cited) or 'nothing'}: support {score:.2f}"
        for cited, score in dropped
    )
    return (
        f"dropped {len(dropped)} sentence(s) as unsupported: fewer than {min_support:.0%} of their content "
        f"words appear in the passage(s) they cite ({detail})"
    )


# ======================================================================================== grounding


@dataclass
class Grounding:
    """An answer after the citation and support checks."""

    answer: str
    citations: list[Citation] = field(default_factory=list)
    dropped: int = 0
    notes: list[str] = field(default_factory=list)
    #: Sentences dropped because the passages they cite do not support them.
    unsupported: int = 0

    @property
    def not_found(self) -> bool:
        return is_not_found(self.answer)

    @property
    def nothing_supported(self) -> bool:
        """The answer is not found because every cited sentence was unsupported (not because the LM said
        so): the caller should answer extractively instead."""
        return self.unsupported > 0 and self.not_found


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
    min_support: float = DEFAULT_MIN_SUPPORT,
    scorer: SupportScorer = token_overlap_support,
) -> Grounding:
    """Keep only citations of passages actually passed in, and only sentences those passages support;
    no valid citation left -> not found.

    Passage ``[n]`` is ``passages[n - 1]``; ``allowed`` narrows the numbers an answer may cite (default
    all of 1..len(passages)). Markers naming anything else are removed from the text and counted. Then
    :func:`check_support` drops each sentence whose cited passages score below ``min_support`` (pass
    ``Settings.grounding_min_support``); a sentence citing nothing must be supported by the passages
    taken together.
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
    support = check_support(cleaned, passages, min_support=min_support, scorer=scorer)
    if support.dropped:
        notes.append(unsupported_note(support.dropped, min_support))
    cleaned = support.text
    unsupported = len(support.dropped)
    order: list[int] = []
    for n in parse_citations(cleaned):
        if n not in order:
            order.append(n)
    if not order and (require_citations or not cleaned):
        if not unsupported:
            notes.append(
                "the answer cited none of the passages it was given, so it was replaced by the not-found "
                "answer"
            )
        return Grounding(NOT_FOUND_ANSWER, [], len(dropped_numbers), notes, unsupported)
    citations = [passage_citation(n, passages[n - 1], _quote_for(cleaned, n, passages[n - 1])) for n in order]
    return Grounding(cleaned, citations, len(dropped_numbers), notes, unsupported)
