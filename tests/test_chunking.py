"""Chunks fit the embedder's input, overlap, respect sections, and have content-stable ids."""

from __future__ import annotations

from rag_app.core.types import Document, Section
from rag_app.ingest.chunking import embedding_text, iter_chunks
from rag_app.models.embeddings import Embedder


def _doc(text: str, **kw) -> Document:
    return Document(id="d1", title="A title", text=text, **kw)


def chunk_document(doc: Document, **kw) -> list:
    return list(iter_chunks(doc, **kw))


def test_long_text_is_split_within_budget_with_overlap(minilm: Embedder) -> None:
    text = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(200))
    chunks = chunk_document(
        _doc(text),
        site="s",
        collection="c",
        tokenizer=minilm,
        chunk_tokens=64,
        overlap=16,
        max_input_tokens=minilm.max_tokens,
    )
    assert len(chunks) > 5
    for chunk in chunks:
        assert len(minilm.token_spans(chunk.text)) <= 64
        assert len(minilm.token_spans(embedding_text(chunk))) + 2 <= minilm.max_tokens
    # consecutive chunks share text (the overlap), and together cover the start and end
    assert chunks[0].text.split()[-1] in chunks[1].text
    assert text.startswith(chunks[0].text[:40]) and text.endswith(chunks[-1].text[-40:])
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))


def test_budget_respects_model_input_limit(minilm: Embedder) -> None:
    text = "word " * 2000
    chunks = chunk_document(
        _doc(text),
        site="s",
        collection="c",
        tokenizer=minilm,
        chunk_tokens=4096,
        overlap=0,
        max_input_tokens=minilm.max_tokens,
    )
    assert all(len(minilm.token_spans(embedding_text(c))) + 2 <= minilm.max_tokens for c in chunks)


def test_sections_are_not_straddled_and_keep_heading_path(minilm: Embedder) -> None:
    doc = _doc(
        "x",
        sections=[
            Section(heading_path=["A"], text="alpha text"),
            Section(heading_path=["A", "B"], text="beta text"),
        ],
    )
    chunks = chunk_document(doc, site="s", collection="c", tokenizer=minilm)
    assert [(c.heading_path, c.text) for c in chunks] == [(["A"], "alpha text"), (["A", "B"], "beta text")]
    assert embedding_text(chunks[1]) == "A title > A > B\nbeta text"


def test_ids_are_stable_and_depend_on_content(minilm: Embedder) -> None:
    a = chunk_document(_doc("same text"), site="s", collection="c", tokenizer=minilm)
    b = chunk_document(_doc("same text"), site="s", collection="c", tokenizer=minilm)
    c = chunk_document(_doc("other text"), site="s", collection="c", tokenizer=minilm)
    assert a[0].id == b[0].id and a[0].doc_hash == b[0].doc_hash
    assert c[0].id != a[0].id and c[0].doc_hash != a[0].doc_hash
    twice = _doc("x", sections=[Section(heading_path=[], text="dup"), Section(heading_path=[], text="dup")])
    ids = [ch.id for ch in chunk_document(twice, site="s", collection="c", tokenizer=minilm)]
    assert len(set(ids)) == 2


def test_streamed_chunking_matches_whole_text_chunking(minilm: Embedder) -> None:
    text = "\n".join(f"Line {i}: the {'quick ' * (i % 5)}fox jumped; then it rested." for i in range(300))
    doc = _doc(text)
    kw = {"site": "s", "collection": "c", "tokenizer": minilm, "chunk_tokens": 48, "overlap": 12}
    whole = chunk_document(doc, **kw)
    for segment in (97, 500, 4000):  # tiny segments: many cuts mid-window and mid-sentence
        streamed = list(iter_chunks(doc, segment_chars=segment, **kw))
        assert [(c.id, c.text, c.chunk_index) for c in streamed] == [
            (c.id, c.text, c.chunk_index) for c in whole
        ], segment
    assert len(whole) > 10
