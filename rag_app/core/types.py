"""Plain typed data shared by every stage: Document -> Chunk -> Passage -> Citation.

Pydantic models, so the CLI, the HTTP server and saved reports serialise them the same way.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """A part of a document under one heading path; chunks never straddle two sections.

    ``start`` is where ``text`` begins in the document's ``text`` (loaders that slice the document set
    it; without it chunking finds the section there); ``page`` is the 1-based page it is on (PDFs).
    """

    heading_path: list[str] = Field(default_factory=list)
    text: str
    start: int | None = Field(None, ge=0, description="Offset of the section in Document.text.")
    page: int | None = Field(None, ge=1, description="1-based page number (PDFs); null otherwise.")


class Span(BaseModel):
    """Where a piece of text lies in its document: character offsets into ``Document.text`` (what the
    loader extracted; ``text[start_char:end_char]`` is the piece) and, for PDFs, its first and last page.
    Null when unknown (a table written before offsets existed, or a section not found in the text)."""

    start_char: int | None = Field(None, description="Offset of the first character in the document text.")
    end_char: int | None = Field(None, description="Offset just past the last character (exclusive).")
    page_start: int | None = Field(None, description="1-based page the text starts on (PDFs only).")
    page_end: int | None = Field(None, description="1-based page the text ends on (PDFs only).")


class Document(BaseModel):
    """One source document as a loader produced it (a page, a corpus row, a CSV line)."""

    id: str
    text: str
    title: str = ""
    source: str = Field("", description="File path or URL the document came from.")
    heading_path: list[str] = Field(default_factory=list)
    date: dt.date | None = None
    tickers: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    sections: list[Section] = Field(
        default_factory=list,
        description="Sections (Markdown/HTML/DOCX headings, PDF pages); empty means the whole text is one.",
    )


class Chunk(Span):
    """A token-bounded piece of a document: the unit that is embedded, stored and retrieved."""

    id: str = Field(description="Stable id derived from the document id and the chunk's content.")
    doc_id: str
    doc_hash: str = Field(
        description="Hash of the whole document: tells unchanged from updated on re-ingest."
    )
    site: str
    collection: str
    chunk_index: int
    text: str
    title: str = ""
    source: str = ""
    heading_path: list[str] = Field(default_factory=list)
    date: dt.date | None = None
    tickers: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchFilters(BaseModel):
    """Metadata prefilters applied inside the store, before ranking."""

    model_config = ConfigDict(extra="forbid")

    date_from: dt.date | None = None
    date_to: dt.date | None = None
    tickers: list[str] = Field(default_factory=list, description="Match passages tagged with any of these.")
    tags: list[str] = Field(default_factory=list, description="Match passages tagged with any of these.")
    doc_ids: list[str] = Field(default_factory=list, description="Restrict to these documents.")

    def is_empty(self) -> bool:
        return not (self.date_from or self.date_to or self.tickers or self.tags or self.doc_ids)


class Passage(Span):
    """A retrieved chunk with its scores, as handed to rerankers, programs and callers.

    ``score`` is the score of the last stage that ordered the list (retrieval, or rerank when
    ``reranked`` is true). ``retrieval_rank``/``retrieval_score`` always keep the first stage's view.
    """

    id: str
    doc_id: str
    text: str
    title: str = ""
    score: float
    site: str = ""
    collection: str = ""
    source: str = ""
    heading_path: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    retrieval_rank: int = Field(0, description="1-based rank in the retrieval list.")
    retrieval_score: float = 0.0
    rerank_score: float | None = Field(None, description="Raw cross-encoder logit; compare within one model.")
    relevance: float | None = Field(None, description="sigmoid(rerank_score) in float64, 0-1.")
    reranked: bool = False


class Citation(Span):
    """A numbered reference in an answer (``[1]``) resolved to the passage it names."""

    index: int = Field(ge=1)
    passage_id: str
    doc_id: str
    title: str = ""
    source: str = ""
    quote: str = Field("", description="The passage sentence(s) that support the claim, when known.")
