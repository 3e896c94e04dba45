"""Every chunk knows where it is in its document, and passages and citations carry it to callers.

The rule asserted throughout: ``doc.text[chunk.start_char:chunk.end_char] == chunk.text`` exactly (a
chunk is its token window with the surrounding white space stripped; the offsets frame the stripped
text), ``page_start``/``page_end`` are the PDF page of the chunk and null for every other format.
Tables written by schema 1 (no offset columns) stay readable and writable.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from rag_app.answering.extractive import passage_citation
from rag_app.core.settings import Settings
from rag_app.core.types import Chunk, Document, Passage, Section
from rag_app.ingest.chunking import iter_chunks
from rag_app.ingest.loaders import load_bytes, load_paths
from rag_app.ingest.pipeline import ingest_documents
from rag_app.models.embeddings import Embedder
from rag_app.server.app import create_app
from rag_app.store.schema import META_SCHEMA, OFFSET_COLUMNS, chunk_schema, table_name
from rag_app.store.vector_store import VectorStore
from tests.conftest import SAMPLE_DATA, SHARED_DATA, make_test_settings
from tests.format_samples import fastapi_page, financebench_filings, render_html_page, text_pdf
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(300)


def _chunks(doc: Document, embedder: Embedder, **kw: object) -> list[Chunk]:
    options: dict = {"chunk_tokens": 48, "overlap": 8, **kw}
    return list(iter_chunks(doc, site="s", collection="c", tokenizer=embedder, **options))


def _assert_exact(doc: Document, chunks: list[Chunk]) -> None:
    assert chunks
    for chunk in chunks:
        assert chunk.start_char is not None and chunk.end_char is not None, chunk
        assert doc.text[chunk.start_char : chunk.end_char] == chunk.text
        assert chunk.text == chunk.text.strip() and chunk.text


def test_offsets_are_exact_in_every_format(minilm: Embedder) -> None:
    markdown = (
        "  \r\n# Guide\r\n\r\nInstall it.  Then run it.\r\n\r\n## Config\r\n\r\n" + "Set a value. " * 80
    )
    title, page_md = fastapi_page(SHARED_DATA, "tutorial/query-params.md")
    filing = next(iter(financebench_filings(SHARED_DATA).values()))
    docs = [
        load_bytes(markdown.encode(), name="guide.md").documents[0],
        load_bytes(render_html_page(page_md, title=title).html.encode(), name="q.html").documents[0],
        load_bytes(b'{"id": "r", "text": "  padded record text.  " }', name="r.jsonl").documents[0],
        load_bytes(("word " * 900).encode(), name="long.txt").documents[0],
    ]
    for doc in docs:
        chunks = _chunks(doc, minilm)
        _assert_exact(doc, chunks)
        assert all(c.page_start is None and c.page_end is None for c in chunks)
    assert len(_chunks(docs[-1], minilm)) > 10  # many overlapping windows, all exact
    # streaming in small segments cuts the same windows at the same offsets
    streamed = _chunks(docs[-1], minilm, segment_chars=300)
    assert [(c.start_char, c.end_char) for c in streamed] == [
        (c.start_char, c.end_char) for c in _chunks(docs[-1], minilm)
    ]
    pdf = load_bytes(text_pdf([p.text for p in filing]), name="f.pdf").documents[0]
    chunks = _chunks(pdf, minilm)
    _assert_exact(pdf, chunks)
    assert {c.page_start for c in chunks} == set(range(1, len(filing) + 1))
    for chunk in chunks:
        assert chunk.page_start == chunk.page_end  # a chunk never spans pages
        section = next(s for s in pdf.sections if s.page == chunk.page_start)
        assert section.start <= chunk.start_char and chunk.end_char <= section.start + len(section.text)


def test_sections_not_in_the_text_get_null_offsets(minilm: Embedder) -> None:
    doc = Document(
        id="d",
        text="Alpha part. Beta part.",
        sections=[
            Section(text="Beta part.", start=0),  # a wrong start: found in the text anyway
            Section(text="Gamma is nowhere in the text."),
        ],
    )
    beta, gamma = _chunks(doc, minilm)
    assert (beta.start_char, beta.end_char) == (12, 22)
    assert (gamma.start_char, gamma.end_char) == (None, None)


def test_citation_frames_its_quote_or_its_passage() -> None:
    passage = Passage(
        id="p", doc_id="d", text="First claim. Second claim.", score=1.0, start_char=100, end_char=126
    )
    cited = passage_citation(1, passage, "Second claim.")
    assert (cited.start_char, cited.end_char) == (113, 126)
    assert (passage_citation(1, passage, "not verbatim").start_char, cited.page_start) == (100, None)
    bare = passage_citation(1, Passage(id="p", doc_id="d", text="x", score=1.0), "x")
    assert (bare.start_char, bare.end_char) == (None, None)


# ======================================================================================= storage


def _schema_v1(dimension: int, model_id: str) -> pa.Schema:
    """The chunk schema as version 1 wrote it: no offset columns."""
    new = chunk_schema(dimension, model_id)
    fields = [f for f in new if f.name not in OFFSET_COLUMNS]
    return pa.schema(fields, metadata={**new.metadata, META_SCHEMA: b"1"})


DOCS = [
    Document(id="a", title="Webhooks", text="Webhooks retry five times with exponential backoff."),
    Document(id="b", title="Tokens", text="Cache tokens are created in the Forge settings page."),
]


def test_schema_1_tables_stay_readable_and_writable(tmp_path: Path, minilm: Embedder) -> None:
    settings = Settings(data_dir=tmp_path / "rag")
    store = VectorStore(settings)
    store.db.create_table(
        table_name("builddaily", "resources"), schema=_schema_v1(minilm.dimension, minilm.model_id)
    )
    ingest_documents(settings, "builddaily", "resources", DOCS, embedder=minilm, progress=False)
    changed = [DOCS[0], DOCS[1].model_copy(update={"text": "Cache tokens live in Forge settings."})]
    report = ingest_documents(settings, "builddaily", "resources", changed, embedder=minilm, progress=False)
    assert (report.updated, report.unchanged) == (1, 1)
    table = store.open_table("builddaily", "resources")
    assert not set(OFFSET_COLUMNS) & set(table.schema.names)  # written in its own shape
    assert table.schema.metadata[META_SCHEMA] == b"1"
    for mode in ("vector", "fts", "hybrid"):
        hits = _search(store, minilm, "cache tokens Forge", mode)
        assert hits[0].doc_id == "b" and hits[0].text == "Cache tokens live in Forge settings."
        assert all(h.start_char is None and h.page_start is None for h in hits)


def test_new_tables_store_and_return_offsets(tmp_path: Path, minilm: Embedder) -> None:
    settings = Settings(data_dir=tmp_path / "rag")
    filing = next(iter(financebench_filings(SHARED_DATA).values()))
    pdf = load_bytes(text_pdf([p.text for p in filing]), name="filing.pdf").documents[0]
    ingest_documents(settings, "paiddaily", "catalysts", [pdf, *DOCS], embedder=minilm, progress=False)
    store = VectorStore(settings)
    assert store.open_table("paiddaily", "catalysts").schema.metadata[META_SCHEMA] == b"2"
    hits = _search(store, minilm, filing[-1].text[:200], "hybrid", site="paiddaily", collection="catalysts")
    top = hits[0]
    assert top.doc_id == "filing" and top.page_start == top.page_end == len(filing)
    assert pdf.text[top.start_char : top.end_char] == top.text
    webhook = _search(store, minilm, "webhooks retry", "fts", site="paiddaily", collection="catalysts")[0]
    assert (webhook.start_char, webhook.end_char, webhook.page_start) == (0, len(DOCS[0].text), None)


def _search(
    store: VectorStore,
    embedder: Embedder,
    query: str,
    mode: str,
    site: str = "builddaily",
    collection: str = "resources",
) -> list[Passage]:
    return store.search(
        site,
        [collection],
        mode=mode,  # type: ignore[arg-type]
        k=5,
        query_text=query,
        query_vector=embedder.embed_query(query),
        model_id=embedder.model_id,
    )


# ========================================================================================== HTTP


@pytest.fixture(scope="module")
def client(sample_index_dir: Path) -> Iterator[httpx.Client]:
    with LiveServer(create_app(make_test_settings(sample_index_dir))) as server, server.client() as c:
        yield c


@pytest.fixture(scope="module")
def resource_texts() -> dict[str, str]:
    return {d.id: d.text for d in load_paths([SAMPLE_DATA / "builddaily" / "resources"]).documents}


def test_search_passages_carry_offsets(client: httpx.Client, resource_texts: dict[str, str]) -> None:
    r = client.post("/v1/search", json={"site": "builddaily", "query": "rotate an API key", "top_n": 5})
    assert r.status_code == 200, r.text
    passages = r.json()["passages"]
    assert passages
    for p in passages:
        assert {"start_char", "end_char", "page_start", "page_end"} <= set(p)
        text = resource_texts[p["doc_id"]]
        assert text[p["start_char"] : p["end_char"]] == p["text"]
        assert p["page_start"] is None and p["page_end"] is None


def test_answer_citations_carry_offsets(client: httpx.Client, resource_texts: dict[str, str]) -> None:
    question = "How do I move our CI from Jenkins to Forge runners?"
    r = client.post("/v1/chat-bridge", json={"messages": [{"role": "user", "content": question}]})
    assert r.status_code == 200, r.text
    citations = r.json()["citations"]
    assert citations
    for c in citations:
        highlighted = resource_texts[c["doc_id"]][c["start_char"] : c["end_char"]]
        assert highlighted == c["quote"] or c["quote"] in " ".join(highlighted.split())
