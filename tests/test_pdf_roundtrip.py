"""FinanceBench questions answered from PDFs retrieve as well as from the text pages, with the right pages.

The filings' pages (shared FinanceBench sample) are written to PDFs with fpdf2, one PDF per filing and
one corpus page per PDF page, then read back by the PDF loader and ingested with the real MiniLM
embedder; the same pages are ingested as plain text documents. Each question's top 5 distinct pages
(hybrid search) are compared with its qrels: recall@5 from the PDFs must be within 0.02 of recall@5
from the text, and every retrieved PDF chunk must come from the page its ``page_start`` names. A
slice of the filings (:func:`_slice`) keeps the test small: both ingests embed every page once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag_app.core.settings import Settings
from rag_app.core.types import Document, Passage
from rag_app.ingest.loaders import load_bytes
from rag_app.ingest.pipeline import ingest_documents
from rag_app.models.embeddings import Embedder
from rag_app.store.vector_store import VectorStore
from tests.conftest import SHARED_DATA
from tests.format_samples import FilingPage, financebench_filings, text_pdf

pytestmark = pytest.mark.timeout(300)

#: Questions kept: the filings with the most questions per character of text are taken until their
#: questions reach this many (about 50 pages, a quarter of the sample: both ingests embed every page).
QUESTIONS = 30
K = 5
SITE = "paiddaily"


def _questions(pages: set[str]) -> dict[str, tuple[str, set[str]]]:
    """question id -> (question text, relevant page ids), for questions answered within ``pages``."""
    root = SHARED_DATA / "financebench"
    relevant: dict[str, set[str]] = {}
    for line in (root / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, page_id, _ = line.split("\t")
        relevant.setdefault(qid, set()).add(page_id)
    texts = {}
    for line in (root / "queries.jsonl").read_text().splitlines():
        row = json.loads(line)
        texts[row["_id"]] = row["text"]
    return {q: (texts[q], rel) for q, rel in sorted(relevant.items()) if rel <= pages}


def _slice() -> dict[str, list[FilingPage]]:
    """The filings with the most questions per character, until they answer :data:`QUESTIONS`; the
    densest filing of 3 or more pages comes first, so page numbers are told apart within a PDF."""
    filings = financebench_filings(SHARED_DATA)

    def density(name: str) -> float:
        ids = {p.page_id for p in filings[name]}
        return len(_questions(ids)) / sum(len(p.text) for p in filings[name])

    order = sorted(filings, key=lambda n: (-density(n), n))
    order.insert(0, order.pop(next(i for i, n in enumerate(order) if len(filings[n]) >= 3)))
    chosen: dict[str, list[FilingPage]] = {}
    for name in order:
        chosen[name] = filings[name]
        if len(_questions({p.page_id for f in chosen.values() for p in f})) >= QUESTIONS:
            break
    return chosen


def _top_pages(passages: list[Passage], page_of: dict[tuple[str, int | None], str]) -> list[str]:
    """The first ``K`` distinct pages of a ranked chunk list."""
    seen: list[str] = []
    for p in passages:
        page = page_of[(p.doc_id, p.page_start)]
        if page not in seen:
            seen.append(page)
    return seen[:K]


def _recall(found: dict[str, list[str]], questions: dict[str, tuple[str, set[str]]]) -> float:
    return sum(len(set(found[q]) & rel) / len(rel) for q, (_, rel) in questions.items()) / len(questions)


def test_pdf_retrieval_matches_text_and_pages_are_right(tmp_path: Path, minilm: Embedder) -> None:
    filings = _slice()
    pages = {p.page_id: p for filing in filings.values() for p in filing}
    questions = _questions(set(pages))
    assert len(questions) >= QUESTIONS and max(len(f) for f in filings.values()) >= 3

    text_docs = [Document(id=p.page_id, title=p.doc_name, text=p.text) for p in pages.values()]
    pdf_docs = []
    for name, filing in filings.items():
        [doc] = load_bytes(text_pdf([p.text for p in filing], title=name), name=f"{name}.pdf").documents
        assert doc.id == name and doc.title == name
        pdf_docs.append(doc)
    page_of: dict[tuple[str, int | None], str] = {(p.page_id, None): p.page_id for p in pages.values()}
    for name, filing in filings.items():
        page_of.update({(name, number): p.page_id for number, p in enumerate(filing, start=1)})

    settings = Settings(data_dir=tmp_path / "rag")
    for collection, docs in (("tickers", text_docs), ("catalysts", pdf_docs)):
        report = ingest_documents(settings, SITE, collection, docs, embedder=minilm, progress=False)
        assert report.added == len(docs)
    store = VectorStore(settings)
    found: dict[str, dict[str, list[str]]] = {"tickers": {}, "catalysts": {}}
    pdf_hits: list[Passage] = []
    for qid, (text, _) in questions.items():
        vector = minilm.embed_query(text)
        for collection in found:
            hits = store.search(
                SITE,
                [collection],
                mode="hybrid",
                k=4 * K,
                query_text=text,
                query_vector=vector,
                model_id=minilm.model_id,
            )
            found[collection][qid] = _top_pages(hits, page_of)
            if collection == "catalysts":
                pdf_hits += hits[:K]

    text_recall, pdf_recall = _recall(found["tickers"], questions), _recall(found["catalysts"], questions)
    assert text_recall > 0.3, text_recall  # the baseline really retrieves
    assert abs(pdf_recall - text_recall) <= 0.02, (pdf_recall, text_recall)

    by_id = {d.id: d for d in pdf_docs}
    for hit in pdf_hits:
        assert hit.page_start is not None and hit.page_start == hit.page_end
        assert by_id[hit.doc_id].text[hit.start_char : hit.end_char] == hit.text
        source_page = pages[page_of[(hit.doc_id, hit.page_start)]]
        words = [w for w in hit.text.split() if w != "|"]
        on_page = set(source_page.text.split())
        assert sum(w in on_page for w in words) / len(words) > 0.95, (hit.doc_id, hit.page_start)
