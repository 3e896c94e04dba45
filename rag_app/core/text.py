"""Words and sentences of passage text, for matching questions to passages without a model.

The extractive answer, the citation check and the site programs (product and card matching) all
compare text the same way: content words, lightly stemmed, with stop words dropped (:func:`terms`),
over sentences cut from Markdown-ish passage text (:func:`split_sentences`). Everything here is
deterministic, so the same question and passages always give the same answer. Text addressed to an
assistant (:func:`looks_like_instruction`) is recognised here, so that no quoting code repeats it.
"""

from __future__ import annotations

import re
import string

__all__ = [
    "STOPWORDS",
    "WITHHELD",
    "count_words",
    "looks_like_instruction",
    "split_sentences",
    "terms",
    "withhold_instructions",
]

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’._-]*[A-Za-z0-9]|[A-Za-z0-9]")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"”')\]]*\s+(?=[\"“(\[]?[A-Z0-9$£€])")
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+")
_STOPWORD_TEXT = """
    a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers how i if in into is it its itself just me more most much my no nor not now of
    off on once only or other our ours out over own same she should so some such than that the their
    theirs them then there these they this those through to too under until up very was we were what when
    where which while who whom why will with would you your yours tell know want please get there's
    what's it's i'm can't don't doesn't
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_INSTRUCTION_LIKE = re.compile(
    r"\b(ignore|disregard|forget|override)\b[^.!?\n]{0,60}\b(instructions?|prompts?|rules|guidelines|"
    r"context|above|previous|prior)\b"
    r"|\bsystem prompt\b"
    r"|\byou are now\b"
    r"|\b(reply|respond|answer|output)\s+"
    r"(only\s+(with|by saying)|(with\s+|by saying\s+)?(only|exactly|just)\b"
    r"(?!\s+(if|when|once|after|to|within|for)\b))",
    re.IGNORECASE,
)
#: What the LM is shown instead of a withheld sentence (see :func:`withhold_instructions`).
WITHHELD = "[withheld: text that reads as instructions to an assistant]"


def _stem(word: str) -> str:
    """A light, deterministic suffix stripper, enough to match launch/launched/launches and
    price/priced/pricing (both sides of a comparison go through it, so consistency is what counts)."""
    word = word.lower().strip("'’.-_")
    for suffix in ("'s", "’s"):
        if word.endswith(suffix):
            word = word[: -len(suffix)]
    if not word.isalpha() or len(word) <= 3:
        return word
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            word = word[: -len(suffix)]
            if len(word) > 4 and word[-1] == word[-2] and word[-1] not in "lsz":
                word = word[:-1]  # shipped -> ship, planned -> plan
            elif suffix == "ed" and word.endswith("i"):
                word = word[:-1] + "y"  # implied -> imply
            break
    if len(word) > 4 and word.endswith("e"):
        word = word[:-1]
    return word


def terms(text: str) -> list[str]:
    """Lower-cased, lightly stemmed content words (stop words dropped), in order."""
    out = []
    for match in _WORD.finditer(text):
        raw = match.group(0).lower()
        if raw in STOPWORDS:
            continue
        stem = _stem(raw)
        if stem and stem not in STOPWORDS:
            out.append(stem)
    return out


def split_sentences(text: str) -> list[str]:
    """Sentences of a passage: per line (bullets unwrapped, headings and blank lines dropped), then at
    sentence ends. Markdown emphasis markers are removed."""
    sentences: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("```") or set(line) <= set("-=|: "):
            continue
        line = _BULLET.sub("", line).replace("**", "").replace("__", "")
        for piece in _SENTENCE_BREAK.split(line):
            piece = piece.strip()
            if len(piece) >= 3 and _WORD.search(piece):
                sentences.append(piece)
    return sentences


def looks_like_instruction(sentence: str) -> bool:
    """True for text addressed to an assistant ("ignore previous instructions", "reply only with ...",
    "you are now", "system prompt"), the one prompt-injection detector of the project.

    Such sentences are commands planted in a document, not facts about it: the extractive answer never
    quotes them, the LM is never shown them (:func:`withhold_instructions`) and they never count as
    support for an answer. Plain "respond with" is not enough ("Respond with any 2xx status" is a fact
    in a webhook guide); it takes "only", "exactly" or "just" to read as a command.
    """
    return bool(_INSTRUCTION_LIKE.search(sentence))


def withhold_instructions(text: str, placeholder: str = WITHHELD) -> tuple[str, int]:
    """``text`` with every sentence that :func:`looks_like_instruction` replaced by ``placeholder``
    (everything else kept byte for byte), and how many were replaced.

    Prompts call this before an LM sees passage text (a planted command it never reads cannot be
    obeyed), and the support check calls it with ``placeholder=""`` so that a planted command's words
    never count as evidence for an answer.
    """
    count = 0
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        start = 0
        for piece_end, next_start in [
            *((m.start(), m.end()) for m in _SENTENCE_BREAK.finditer(line)),
            (len(line), len(line)),
        ]:
            piece = line[start:piece_end]
            if looks_like_instruction(piece):
                count += 1
                bullet = _BULLET.match(piece)
                lead = bullet.group(0) if bullet else piece[: len(piece) - len(piece.lstrip())]
                out.append(lead + placeholder + piece[len(piece.rstrip()) :])
            else:
                out.append(piece)
            out.append(line[piece_end:next_start])
            start = next_start
    return "".join(out), count


def count_words(text: str) -> int:
    """How many words ``text`` has (numbers and contractions count as words)."""
    return len(_WORD.findall(text))


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace.

    Same order of steps as the official SQuAD evaluation script, so EM/F1 match published numbers.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())
