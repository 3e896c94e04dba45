"""Documents -> Chunks: token-aware windows with overlap, and ids that depend only on content.

Sizes are counted with the embedder's own tokenizer, so a "256-token" chunk really fits the model
instead of being silently truncated at embed time. A chunk never straddles two sections (headings,
PDF pages) and tries to end at a sentence or line break. Ids are hashes of (document id, heading
path, text), so re-ingesting the same files produces the same ids and adds nothing.

Every chunk records where it lies in ``Document.text`` so a site can highlight the evidence:
``doc.text[chunk.start_char:chunk.end_char] == chunk.text`` exactly (a chunk is its window with the
surrounding white space stripped, and a section is a slice of the text), and, for a PDF, its page.

Chunking streams: a text is tokenized in segments of :data:`SEGMENT_CHARS` characters cut at
whitespace, and windows are cut from a bounded buffer of token spans, so a 50 MB document never has
all its token offsets in memory at once (a Python list of ~12M offset tuples is gigabytes). Cutting
at whitespace keeps the spans identical to whole-text tokenization for whitespace-pre-tokenized
vocabularies (BERT WordPiece: MiniLM, nomic-embed-text), so chunks do not depend on the segment size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Protocol

from rag_app.core.types import Chunk, Document, Section

#: Tokens kept free for special tokens ([CLS]/[SEP]) when fitting a chunk to the model input.
SPECIAL_TOKENS_RESERVE = 2
#: A window shorter than this (in tokens) is never produced by the budget arithmetic.
MIN_BODY_TOKENS = 32
_SENTENCE_END = (".", "!", "?", ";", ":")
#: Characters tokenized at a time; tokens of a segment are dropped once every window past them is cut.
SEGMENT_CHARS = 200_000


class Tokenizer(Protocol):
    """What chunking needs from the embedder's tokenizer: character spans of tokens."""

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...


def chunk_header(title: str, heading_path: list[str]) -> str:
    """The context line embedded (and full-text indexed) with every chunk of a section."""
    parts = [title.strip()] if title.strip() else []
    parts += [h for h in heading_path if h.strip() and h.strip() != title.strip()]
    return " > ".join(parts)


def embedding_text(chunk: Chunk) -> str:
    """What the embedder and the full-text index see for a chunk: header, then body."""
    header = chunk_header(chunk.title, chunk.heading_path)
    return f"{header}\n{chunk.text}" if header else chunk.text


def document_hash(doc: Document, fingerprint: str = "") -> str:
    """Hash of everything that shapes a document's chunks; ``fingerprint`` adds the chunking config."""
    payload = doc.model_dump(mode="json")
    payload["_fingerprint"] = fingerprint
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def has_text(doc: Document) -> bool:
    """Whether ``doc`` would produce any chunk (an empty file produces none and is skipped)."""
    return any(s.text.strip() for s in _sections(doc))


def _sections(doc: Document) -> list[Section]:
    return doc.sections or [Section(heading_path=[], text=doc.text)]


def iter_chunks(
    doc: Document,
    *,
    site: str,
    collection: str,
    tokenizer: Tokenizer,
    chunk_tokens: int = 256,
    overlap: int = 32,
    max_input_tokens: int | None = None,
    fingerprint: str = "",
    segment_chars: int = SEGMENT_CHARS,
) -> Iterator[Chunk]:
    """Split ``doc`` into chunks of at most ``chunk_tokens`` tokens, ``overlap`` tokens shared, as a stream.

    ``max_input_tokens`` is the embedder's input limit: the header line and special tokens are
    subtracted from it so header + body always fit. Streaming keeps memory bounded however large
    the document (ingest embeds while it chunks).
    """
    doc_hash = document_hash(doc, fingerprint)
    seen: dict[bytes, int] = {}  # digest of (doc, heading path, text) -> occurrences so far
    index = 0
    cursor = 0  # where the next section is looked for in doc.text (sections come in text order)
    for section in _sections(doc):
        base = section_offset(doc.text, section, cursor)
        if base is not None:
            cursor = base + len(section.text)
        header = chunk_header(doc.title, section.heading_path)
        budget = chunk_tokens
        if max_input_tokens:
            header_tokens = len(tokenizer.token_spans(header)) + 1 if header else 0
            budget = min(budget, max_input_tokens - header_tokens - SPECIAL_TOKENS_RESERVE)
        budget = max(budget, MIN_BODY_TOKENS)
        spans = iter_piece_spans(
            section.text, tokenizer, budget, min(overlap, budget // 2), segment_chars=segment_chars
        )
        for start, end in spans:
            piece = section.text[start:end]
            key = f"{doc.id}\x00{json.dumps(section.heading_path)}\x00{piece}"
            digest = hashlib.sha1(key.encode()).digest()
            occurrence = seen.get(digest, 0)
            seen[digest] = occurrence + 1
            chunk_id = hashlib.sha1(f"{key}\x00{occurrence}".encode()).hexdigest()[:24]
            yield Chunk(
                id=chunk_id,
                doc_id=doc.id,
                doc_hash=doc_hash,
                site=site,
                collection=collection,
                chunk_index=index,
                text=piece,
                title=doc.title,
                source=doc.source,
                heading_path=section.heading_path,
                date=doc.date,
                tickers=doc.tickers,
                tags=doc.tags,
                metadata=doc.metadata,
                start_char=None if base is None else base + start,
                end_char=None if base is None else base + end,
                page_start=section.page,
                page_end=section.page,
            )
            index += 1


def section_offset(text: str, section: Section, cursor: int = 0) -> int | None:
    """Where ``section`` lies in the document ``text``: its recorded ``start`` when that is right,
    else its first occurrence at or after ``cursor``; None when the text does not contain it (a
    hand-built Document whose sections are not slices of its text): its chunks then have no offsets."""
    if section.start is not None and text.startswith(section.text, section.start):
        return section.start
    found = text.find(section.text, cursor)
    if found < 0 and cursor:
        found = text.find(section.text)
    return found if found >= 0 else None


def iter_pieces(
    text: str, tokenizer: Tokenizer, budget: int, overlap: int, *, segment_chars: int = SEGMENT_CHARS
) -> Iterator[str]:
    """The chunk texts of :func:`iter_piece_spans` (``text[start:end]`` for each span)."""
    for start, end in iter_piece_spans(text, tokenizer, budget, overlap, segment_chars=segment_chars):
        yield text[start:end]


def iter_piece_spans(
    text: str, tokenizer: Tokenizer, budget: int, overlap: int, *, segment_chars: int = SEGMENT_CHARS
) -> Iterator[tuple[int, int]]:
    """(start, end) offsets in ``text`` of windows of at most ``budget`` tokens, preferring to end at a
    sentence break. ``text[start:end]`` is the chunk text: the window with its surrounding white space
    stripped (never empty), so offsets point at exactly the characters the chunk holds.

    Windows are cut from a bounded buffer of token spans that always holds the window being cut plus
    one token of look-ahead (what the sentence-break rule reads), so they are exactly the windows of
    tokenizing the whole text at once.
    """
    lead = len(text) - len(text.lstrip())
    text = text.strip()
    if not text:
        return
    source = iter_token_spans(text, tokenizer, segment_chars)
    spans: list[tuple[int, int]] = []
    done = False

    def fill(n: int) -> None:
        nonlocal done
        while not done and len(spans) < n:
            more = next(source, None)
            if more is None:
                done = True
            else:
                spans.extend(more)

    fill(budget + 1)
    if done and len(spans) <= budget:
        yield lead, lead + len(text)
        return
    start = 0
    while start < len(spans):
        fill(start + budget + 1)
        end = min(start + budget, len(spans))
        last = done and end >= len(spans)
        if not last:
            end = _sentence_break(text, spans, start, end)
        a, b = spans[start][0], spans[end - 1][1]
        window = text[a:b]
        stripped = window.strip()
        if stripped:
            a += len(window) - len(window.lstrip())
            yield lead + a, lead + a + len(stripped)
        if last:
            break
        start = max(end - overlap, start + 1)
        if start > max(4 * budget, len(spans) // 2):  # drop spans no window reaches again (amortised)
            del spans[:start]
            start = 0


def iter_token_spans(
    text: str, tokenizer: Tokenizer, segment_chars: int = SEGMENT_CHARS
) -> Iterator[list[tuple[int, int]]]:
    """Token spans of ``text`` (offsets into ``text``), one list per segment cut at whitespace."""
    pos = 0
    while pos < len(text):
        end = min(pos + segment_chars, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", pos, end), text.rfind("\n", pos, end))
            end = cut + 1 if cut > pos else end
        yield [(pos + a, pos + b) for a, b in tokenizer.token_spans(text[pos:end])]
        pos = end


def _sentence_break(text: str, spans: list[tuple[int, int]], start: int, end: int) -> int:
    """Move ``end`` back to just after a sentence end or line break in the window's last 40%."""
    floor = start + max(1, int((end - start) * 0.6))
    for i in range(end - 1, floor - 1, -1):
        token = text[spans[i][0] : spans[i][1]]
        gap = text[spans[i][1] : spans[i + 1][0]] if i + 1 < len(spans) else ""
        if token.endswith(_SENTENCE_END) or "\n" in gap:
            return i + 1
    return end
