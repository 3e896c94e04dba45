"""Answers made of the passages' own sentences, for when there is no LM or the LM call fails.

A program must still answer, with citations, when Ollama is stopped, no LM is configured or the LM
errs: :func:`extractive_answer` quotes the sentences that best match the question, each followed by
its ``[n]`` marker, and never quotes text that reads as instructions to an assistant. It is
deterministic, so tests and evaluations of the fallback are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from rag_app.answering.not_found import NOT_FOUND_ANSWER
from rag_app.core.text import count_words, looks_like_instruction, split_sentences, terms
from rag_app.core.types import Citation, Passage

__all__ = [
    "MIN_SENTENCE_WORDS",
    "ExtractiveAnswer",
    "best_sentence",
    "cite_sentence",
    "extractive_answer",
    "passage_citation",
]

#: Sentences with fewer words ("No.", "Yes.") are never quoted on their own.
MIN_SENTENCE_WORDS = 3


class ExtractiveAnswer(NamedTuple):
    answer: str
    citations: list[Citation]
    skipped_instructions: int = 0
    sentences: tuple[str, ...] = ()


def _idf(sentence_terms: Sequence[set[str]]) -> Callable[[str], float]:
    total = len(sentence_terms) or 1
    df: dict[str, int] = {}
    for ts in sentence_terms:
        for t in ts:
            df[t] = df.get(t, 0) + 1
    return lambda t: math.log(1.0 + total / (1 + df.get(t, 0)))


def cite_sentence(sentence: str, n: int | Iterable[int]) -> str:
    """``sentence`` with the ``[n]`` marker(s) put before its final punctuation."""
    marks = "".join(f"[{i}]" for i in ([n] if isinstance(n, int) else n))
    sentence = sentence.rstrip()
    if sentence and sentence[-1] in ".!?":
        return f"{sentence[:-1]} {marks}{sentence[-1]}"
    return f"{sentence} {marks}"


def passage_citation(n: int, passage: Passage, quote: str) -> Citation:
    """The citation ``[n]`` of ``passage``, quoting ``quote`` from it.

    Its offsets say where to highlight in the source document: the quote's own characters when the
    quote is a verbatim part of the passage (``start_char``/``end_char`` then frame exactly it), else
    the whole passage's; its pages are the passage's. Null when the passage has no offsets.
    """
    start, end = passage.start_char, passage.end_char
    at = passage.text.find(quote) if quote else -1
    if start is not None and at >= 0:
        start, end = start + at, start + at + len(quote)
    return Citation(
        index=n,
        passage_id=passage.id,
        doc_id=passage.doc_id,
        title=passage.title,
        source=passage.source,
        quote=quote,
        start_char=start,
        end_char=end,
        page_start=passage.page_start,
        page_end=passage.page_end,
    )


def extractive_answer(
    question: str,
    passages: Sequence[Passage],
    max_sentences: int = 3,
    *,
    numbers: Sequence[int] | None = None,
    exclude: Callable[[str], bool] | None = None,
    min_coverage: float = 0.2,
) -> ExtractiveAnswer:
    """The best question-matching sentences of ``passages``, each followed by its ``[n]`` marker.

    Deterministic. A sentence scores the idf-weighted sum of the question's content words it contains
    (idf over all candidate sentences, so words every sentence shares count little); title and heading
    words of its passage add a quarter weight. Sentences matching less than ``min_coverage`` of the
    question's total weight are not answers, nor are sentences whose only matches are words of their
    passage's title or headings (they restate the topic: "Sage ..." on the Sage page) unless the question
    has no other words; with none left the answer is :data:`NOT_FOUND_ANSWER`.
    Ties go to the earlier passage, then the earlier sentence. Sentences that read as instructions
    (:func:`looks_like_instruction`) or that ``exclude`` rejects are never used. ``numbers`` gives each
    passage's citation number (default 1..n). Selected sentences are shown best first.
    """
    numbers = list(numbers) if numbers is not None else list(range(1, len(passages) + 1))
    q_terms = set(terms(question))
    candidates: list[tuple[int, int, str, set[str], set[str]]] = []  # (pi, si, sentence, terms, context)
    skipped = 0
    for pi, passage in enumerate(passages):
        context = set(terms(" ".join([passage.title, *passage.heading_path])))
        for si, sentence in enumerate(split_sentences(passage.text)):
            if count_words(sentence) < MIN_SENTENCE_WORDS:
                continue
            if looks_like_instruction(sentence):
                skipped += 1
                continue
            if exclude is not None and exclude(sentence):
                continue
            candidates.append((pi, si, sentence, set(terms(sentence)), context))
    if not q_terms or not candidates:
        return ExtractiveAnswer(NOT_FOUND_ANSWER, [], skipped)
    idf = _idf([c[3] for c in candidates])
    total = sum(idf(t) for t in q_terms)
    scored: list[tuple[float, int, int, str]] = []
    for pi, si, sentence, s_terms, context in candidates:
        hit = q_terms & s_terms
        if not hit or (q_terms - context and not hit - context):
            continue
        own = sum(idf(t) for t in hit)
        if own < min_coverage * total:
            continue
        bonus = 0.25 * sum(idf(t) for t in (q_terms & context) - hit)
        scored.append((own + bonus, pi, si, sentence))
    if not scored:
        return ExtractiveAnswer(NOT_FOUND_ANSWER, [], skipped)
    scored.sort(key=lambda x: (-x[0], x[1], x[2]))
    chosen: list[tuple[int, str]] = []
    seen: set[str] = set()
    for _, pi, _, sentence in scored:
        key = " ".join(sentence.lower().split())
        if key in seen:
            continue
        seen.add(key)
        chosen.append((pi, sentence))
        if len(chosen) >= max_sentences:
            break
    quotes: dict[int, list[str]] = {}
    for pi, sentence in chosen:
        quotes.setdefault(pi, []).append(sentence)
    answer = " ".join(cite_sentence(sentence, numbers[pi]) for pi, sentence in chosen)
    citations = sorted(
        (passage_citation(numbers[pi], passages[pi], " ".join(qs)) for pi, qs in quotes.items()),
        key=lambda c: c.index,
    )
    return ExtractiveAnswer(answer, citations, skipped, tuple(sentence for _, sentence in chosen))


def best_sentence(query: str, passage: Passage, exclude: Callable[[str], bool] | None = None) -> str:
    """The sentence of ``passage`` that best matches ``query`` (its first usable sentence if none does)."""
    result = extractive_answer(query, [passage], 1, numbers=[1], exclude=exclude, min_coverage=0.0)
    if result.citations:
        return result.citations[0].quote
    usable = [
        s
        for s in split_sentences(passage.text)
        if count_words(s) >= MIN_SENTENCE_WORDS
        and not looks_like_instruction(s)
        and not (exclude and exclude(s))
    ]
    return usable[0] if usable else ""
