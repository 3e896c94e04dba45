"""Documents -> Chunks: token-aware windows with overlap, and ids that depend only on content.

Sizes are counted with the embedder's own tokenizer, so a "256-token" chunk really fits the model
instead of being silently truncated at embed time. A chunk never straddles two Markdown sections and
tries to end at a sentence or line break. Ids are hashes of (document id, heading path, text), so
re-ingesting the same files produces the same ids and adds nothing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Protocol

from rag_app.types import Chunk, Document, Section

#: Tokens kept free for special tokens ([CLS]/[SEP]) when fitting a chunk to the model input.
SPECIAL_TOKENS_RESERVE = 2
#: A window shorter than this (in tokens) is never produced by the budget arithmetic.
MIN_BODY_TOKENS = 32
_SENTENCE_END = (".", "!", "?", ";", ":")


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


def chunk_document(
    doc: Document,
    *,
    site: str,
    collection: str,
    tokenizer: Tokenizer,
    chunk_tokens: int = 256,
    overlap: int = 32,
    max_input_tokens: int | None = None,
    fingerprint: str = "",
) -> list[Chunk]:
    """Split ``doc`` into chunks of at most ``chunk_tokens`` tokens, ``overlap`` tokens shared.

    ``max_input_tokens`` is the embedder's input limit: the header line and special tokens are
    subtracted from it so header + body always fit.
    """
    doc_hash = document_hash(doc, fingerprint)
    sections = doc.sections or [Section(heading_path=[], text=doc.text)]
    chunks: list[Chunk] = []
    seen: dict[str, int] = {}
    for section in sections:
        header = chunk_header(doc.title, section.heading_path)
        budget = chunk_tokens
        if max_input_tokens:
            header_tokens = len(tokenizer.token_spans(header)) + 1 if header else 0
            budget = min(budget, max_input_tokens - header_tokens - SPECIAL_TOKENS_RESERVE)
        budget = max(budget, MIN_BODY_TOKENS)
        for piece in split_tokens(section.text, tokenizer, budget, min(overlap, budget // 2)):
            key = f"{doc.id}\x00{json.dumps(section.heading_path)}\x00{piece}"
            occurrence = seen.get(key, 0)
            seen[key] = occurrence + 1
            chunk_id = hashlib.sha1(f"{key}\x00{occurrence}".encode()).hexdigest()[:24]
            chunks.append(
                Chunk(
                    id=chunk_id,
                    doc_id=doc.id,
                    doc_hash=doc_hash,
                    site=site,
                    collection=collection,
                    chunk_index=len(chunks),
                    text=piece,
                    title=doc.title,
                    source=doc.source,
                    heading_path=section.heading_path,
                    date=doc.date,
                    tickers=doc.tickers,
                    tags=doc.tags,
                    metadata=doc.metadata,
                )
            )
    return chunks


def split_tokens(text: str, tokenizer: Tokenizer, budget: int, overlap: int) -> list[str]:
    """Windows of at most ``budget`` tokens over ``text``, preferring to end at a sentence break."""
    text = text.strip()
    if not text:
        return []
    spans = tokenizer.token_spans(text)
    if len(spans) <= budget:
        return [text]
    pieces: list[str] = []
    start = 0
    while start < len(spans):
        end = min(start + budget, len(spans))
        if end < len(spans):
            end = _sentence_break(text, spans, start, end)
        pieces.append(text[spans[start][0] : spans[end - 1][1]].strip())
        if end >= len(spans):
            break
        start = max(end - overlap, start + 1)
    return [p for p in pieces if p]


def _sentence_break(text: str, spans: list[tuple[int, int]], start: int, end: int) -> int:
    """Move ``end`` back to just after a sentence end or line break in the window's last 40%."""
    floor = start + max(1, int((end - start) * 0.6))
    for i in range(end - 1, floor - 1, -1):
        token = text[spans[i][0] : spans[i][1]]
        gap = text[spans[i][1] : spans[i + 1][0]] if i + 1 < len(spans) else ""
        if token.endswith(_SENTENCE_END) or "\n" in gap:
            return i + 1
    return end
