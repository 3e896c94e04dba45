"""HTML, PDF, DOCX and text encodings, through the real parsers on real files; format detection.

The files are made here from the shared data (``tests/format_samples.py``): FastAPI docs pages
rendered into HTML inside a site's boilerplate, FinanceBench filing pages written to PDF with fpdf2,
Word files written with python-docx, an image-only ("scanned") PDF, and text in other encodings.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import docx
import pytest
from fpdf import FPDF
from PIL import Image, ImageDraw

from rag_app.core.errors import LoaderError
from rag_app.core.types import Document
from rag_app.ingest.loaders import SUPPORTED_SUFFIXES, detect_format, load_bytes, load_paths
from tests.conftest import SHARED_DATA
from tests.format_samples import (
    FOOTER,
    NAV,
    fastapi_page,
    fastapi_pages,
    financebench_filings,
    render_html_page,
    squash,
    text_pdf,
)


def _one(result_docs: list[Document]) -> Document:
    assert len(result_docs) == 1, result_docs
    return result_docs[0]


def _assert_sections_are_slices(doc: Document) -> None:
    for section in doc.sections:
        assert section.start is not None
        assert doc.text[section.start : section.start + len(section.text)] == section.text


# ============================================================================== format detection


@pytest.mark.parametrize(
    ("name", "content_type", "data", "expected"),
    [
        ("https://x.example/page", "text/html; charset=utf-8", b"hello", "html"),
        ("report", "application/pdf", b"%PDF-1.7", "pdf"),
        ("notes.md", "text/plain", b"# hi", "markdown"),  # servers send .md as text/plain
        ("rows.csv", "text/plain; charset=utf-8", b"id,text", "csv"),
        ("page.php", "text/plain", b"<html>", "text"),  # a specific type wins over the bytes
        ("bucket/key.pdf", "binary/octet-stream", b"%PDF-1.4", "pdf"),  # generic type: the suffix
        ("bucket/key", "application/octet-stream", b"%PDF-1.4 ...", "pdf"),  # no suffix: the bytes
        ("upload", None, b"  <!DOCTYPE html><html><body>x", "html"),
        ("upload", None, b"just words", "text"),
        ("https://x.example/a.html?v=2#top", None, b"x", "html"),
    ],
)
def test_format_is_chosen_by_type_then_suffix_then_bytes(
    name: str, content_type: str | None, data: bytes, expected: str
) -> None:
    assert detect_format(name, content_type, data) == expected


def test_docx_is_sniffed_from_its_zip_and_doc_id_and_source_are_recorded() -> None:
    data = _docx_bytes()
    assert detect_format("object-key", "application/octet-stream", data) == "docx"
    doc = _one(
        load_bytes(
            data, name="object-key", source="s3://bucket/object-key", doc_id="s3://bucket/object-key"
        ).documents
    )
    assert (doc.id, doc.source, doc.title) == (
        "s3://bucket/object-key",
        "s3://bucket/object-key",
        "Field Guide",
    )


def test_load_bytes_ids_sources_limits_and_records() -> None:
    doc = _one(load_bytes(b"---\nid: own\n---\n# T\n\nBody.", name="guides/start.md").documents)
    assert doc.id == "own"  # the file's own id, when the caller gives none
    doc = _one(load_bytes(b"---\nid: own\n---\n# T\n\nBody.", name="start.md", doc_id="forced").documents)
    assert (doc.id, doc.source) == ("forced", "start.md")
    doc = _one(load_bytes(b"Plain body text.", name="guides/start.txt").documents)
    assert doc.id == "guides/start"
    rows = b'{"id": "a", "text": "x"}\n{"id": "b"}\n{"id": "c", "text": "z", "url": "https://c"}\n'
    result = load_bytes(rows, name="up.jsonl", source="upload:up.jsonl", on_error="skip")
    assert [(d.id, d.source) for d in result.documents] == [("a", "upload:up.jsonl"), ("c", "https://c")]
    assert len(result.errors) == 1 and "up.jsonl:2" in str(result.errors[0])
    with pytest.raises(LoaderError, match=r"big\.txt: content is 11 bytes, over the limit of 10"):
        load_bytes(b"x" * 11, name="big.txt", max_bytes=10)
    assert load_bytes(b"x" * 11, name="big.txt", max_bytes=10, on_error="skip").errors


def test_every_new_suffix_is_walked_in_folders(tmp_path: Path) -> None:
    assert {".html", ".htm", ".pdf", ".docx"} <= SUPPORTED_SUFFIXES
    (tmp_path / "a.docx").write_bytes(_docx_bytes())
    (tmp_path / "b.html").write_text(
        "<html><body><article><h1>B</h1><p>Bee page body text here.</p></article></body></html>"
    )
    (tmp_path / "c.pdf").write_bytes(text_pdf(["Cee page one.", "Cee page two."]))
    docs = load_paths([tmp_path]).documents
    assert [d.id for d in docs] == ["a", "b", "c"]


# ============================================================================================ HTML


@pytest.fixture(scope="module")
def rendered_pages() -> list:
    siblings = [title for title, _ in fastapi_pages(SHARED_DATA, limit=15)]
    names = ("tutorial/first-steps.md", "tutorial/query-params.md", "tutorial/path-params.md")
    pages = [fastapi_page(SHARED_DATA, name) for name in names]
    return [render_html_page(md, title=title, siblings=siblings) for title, md in pages]


def test_html_keeps_main_content_and_drops_boilerplate(rendered_pages: list) -> None:
    for page in rendered_pages:
        doc = _one(
            load_bytes(page.html.encode(), name=f"https://docs.builddaily.example/{page.title}").documents
        )
        text = squash(doc.text)
        body_words = sum(len(b.split()) for b in page.body_blocks)
        kept = sum(len(b.split()) for b in page.body_blocks if b in text)
        assert kept / body_words >= 0.95, (page.title, kept, body_words)
        leaked = [
            b for b in page.boilerplate_blocks if b in text and not any(b in x for x in page.body_blocks)
        ]
        assert leaked == [], (page.title, leaked)
        assert FOOTER not in text and "gtag" not in text and "Contact sales" not in text
        assert doc.title == page.title
        assert doc.metadata["canonical_url"].startswith("https://docs.builddaily.example/")
        assert (doc.metadata["published"], doc.metadata["modified"]) == ("2024-02-03", "2024-05-06")
        assert doc.date == dt.date(2024, 2, 3)
        assert all(s.heading_path and s.heading_path[0] == page.title for s in doc.sections)
        assert any(len(s.heading_path) == 2 for s in doc.sections)  # "## ..." sections keep their path
        _assert_sections_are_slices(doc)


def test_html_tables_are_text_rows_and_navigation_pages_fail_clearly() -> None:
    html = (
        "<html><head><title>Plans</title></head><body><nav>"
        + " ".join(f"<a href='/{n}'>{n}</a>" for n in NAV)
        + "</nav><article><h1>Plans</h1><p>Every plan includes the core features and email support.</p>"
        "<table><tr><th>Plan</th><th>Price</th></tr><tr><td>Team</td><td>$19</td></tr>"
        "<tr><td>Business</td><td>$49</td></tr></table></article></body></html>"
    )
    doc = _one(load_bytes(html.encode(), name="plans.html").documents)
    assert "Plan | Price\nTeam | $19\nBusiness | $49" in doc.text
    with pytest.raises(LoaderError, match=r"empty\.html: no main content"):
        load_bytes(b"<html><head><script>x()</script></head><body></body></html>", name="empty.html")


def test_html_charset_from_http_header_meta_or_bom() -> None:
    body = (
        "<html><body><article><h1>Café</h1>"
        "<p>Crème brûlée costs 5 €uro at the café on the corner.</p></article></body></html>"
    )
    latin = body.replace("€", "E").encode("latin-1")
    doc = _one(load_bytes(latin, name="a.html", content_type="text/html; charset=ISO-8859-1").documents)
    assert "Crème brûlée" in doc.text
    meta = latin.replace(b"<html>", b'<html><head><meta charset="iso-8859-1"></head>')
    assert "Crème brûlée" in _one(load_bytes(meta, name="b.html").documents).text
    with pytest.raises(LoaderError, match=r"c\.html.*not valid UTF-8.*byte 0xe9 at offset \d+"):
        load_bytes(latin, name="c.html")
    utf16 = "\ufeff".encode("utf-16-le") + body.encode("utf-16-le")
    assert "5 €uro" in _one(load_bytes(utf16, name="d.html").documents).text


# ============================================================================================= PDF


@pytest.fixture(scope="module")
def filing() -> tuple[str, list]:
    filings = financebench_filings(SHARED_DATA)
    name = next(n for n, pages in filings.items() if len(pages) >= 3)
    return name, filings[name]


def test_pdf_text_per_page_with_page_numbers(filing: tuple[str, list]) -> None:
    name, pages = filing
    doc = _one(load_bytes(text_pdf([p.text for p in pages], title=name), name=f"{name}.pdf").documents)
    assert doc.title == name and doc.metadata["pages"] == len(pages)
    assert [s.page for s in doc.sections] == list(range(1, len(pages) + 1))
    for section, page in zip(doc.sections, pages, strict=True):
        words = set(page.text.split()) - {"$", "%"}
        found = set(section.text.replace(" | ", " ").split())
        assert len(words & found) / len(words) > 0.97, page.page_id
    _assert_sections_are_slices(doc)


def test_pdf_tables_come_out_as_rows() -> None:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=10)
    pdf.cell(0, 8, "Segment results (millions)", new_x="LMARGIN", new_y="NEXT")
    with pdf.table() as table:
        for cells in [["Segment", "2022", "2021"], ["Safety and Industrial", "11,604", "12,267"]]:
            row = table.row()
            for cell in cells:
                row.cell(cell)
    doc = _one(load_bytes(bytes(pdf.output()), name="segments.pdf").documents)
    assert "Segment | 2022 | 2021\nSafety and Industrial | 11,604 | 12,267" in doc.text


def _scanned_pdf() -> bytes:
    image = Image.new("RGB", (600, 200), "white")
    ImageDraw.Draw(image).text((20, 80), "Quarterly revenue rose 12 percent", fill="black")
    png = io.BytesIO()
    image.save(png, format="PNG")
    pdf = FPDF()
    pdf.add_page()
    pdf.image(png, x=10, y=10, w=180)
    return bytes(pdf.output())


def test_scanned_pdf_is_a_clear_skip_never_an_empty_document(tmp_path: Path) -> None:
    data = _scanned_pdf()
    with pytest.raises(LoaderError, match=r"scan\.pdf: no text layer \(scanned\?\)"):
        load_bytes(data, name="scan.pdf")
    skipped = load_bytes(data, name="scan.pdf", on_error="skip")
    assert skipped.documents == [] and "no text layer (scanned?)" in str(skipped.errors[0])
    (tmp_path / "scan.pdf").write_bytes(data)
    (tmp_path / "ok.txt").write_text("A real text file.")
    result = load_paths([tmp_path], on_error="skip")
    assert [d.id for d in result.documents] == ["ok"]
    assert "no text layer (scanned?)" in str(result.errors[0])
    with pytest.raises(LoaderError, match="no text layer"):
        load_paths([tmp_path])


def test_damaged_pdf_is_an_error_naming_the_file() -> None:
    with pytest.raises(LoaderError, match=r"broken\.pdf: not a readable PDF"):
        load_bytes(b"%PDF-1.7\n1 0 obj <<>> garbage", name="broken.pdf")


# ============================================================================================ DOCX


def _docx_bytes() -> bytes:
    document = docx.Document()
    document.core_properties.author = "Sage Editors"
    document.add_paragraph("Field Guide", style="Title")
    document.add_paragraph("How to read the cards, from the canon.")
    document.add_heading("Major Arcana", level=1)
    document.add_paragraph("The Fool stands for beginnings and spontaneity.")
    document.add_heading("The Magician", level=2)
    document.add_paragraph("The Magician stands for will and skill.")
    table = document.add_table(rows=2, cols=2)
    for r, cells in enumerate([["Card", "Meaning"], ["The Tower", "sudden change"]]):
        for c, text in enumerate(cells):
            table.cell(r, c).text = text
    document.add_heading("Minor Arcana", level=1)
    document.add_paragraph("Four suits of fourteen cards.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_docx_headings_are_paths_and_tables_rows() -> None:
    doc = _one(load_bytes(_docx_bytes(), name="guide.docx").documents)
    assert doc.title == "Field Guide" and doc.metadata["author"] == "Sage Editors"
    assert [(s.heading_path, s.text) for s in doc.sections] == [
        ([], "How to read the cards, from the canon."),
        (["Major Arcana"], "The Fool stands for beginnings and spontaneity."),
        (
            ["Major Arcana", "The Magician"],
            "The Magician stands for will and skill.\n\nCard | Meaning\nThe Tower | sudden change",
        ),
        (["Minor Arcana"], "Four suits of fourteen cards."),
    ]
    _assert_sections_are_slices(doc)
    with pytest.raises(LoaderError, match=r"bad\.docx: not a readable \.docx"):
        load_bytes(b"PK\x03\x04 not really a zip", name="bad.docx")


# ======================================================================================= encodings


@pytest.mark.parametrize("suffix", [".md", ".txt", ".csv", ".jsonl"])
def test_undeclared_non_utf8_names_file_and_byte_offset(tmp_path: Path, suffix: str) -> None:
    content = {
        ".md": "# Café\n\nCrème.",
        ".txt": "Café\nCrème.",
        ".csv": "id,text\n1,Crème",
        ".jsonl": '{"id": "1", "text": "Crème"}',
    }[suffix]
    path = tmp_path / f"latin{suffix}"
    data = content.encode("latin-1")
    path.write_bytes(data)
    offset = next(i for i, byte in enumerate(data) if byte > 127)
    with pytest.raises(LoaderError, match=rf"latin\{suffix}:\d+: not valid UTF-8.* at offset {offset}\)"):
        load_paths([path])
    assert load_paths([path], on_error="skip").errors  # reported, not fatal, under skip


def test_declared_charset_and_boms_decode_text_formats() -> None:
    text = "id,text\n1,Crème brûlée\n"
    doc = _one(
        load_bytes(
            text.encode("cp1252"), name="r.csv", content_type="text/csv; charset=windows-1252"
        ).documents
    )
    assert doc.text == "Crème brûlée"
    doc = _one(load_bytes(b"\xef\xbb\xbf# Caf\xc3\xa9\n\nBody.", name="bom.md").documents)
    assert doc.title == "Café"
    doc = _one(load_bytes("Zoë's notes".encode("utf-16"), name="notes.txt").documents)  # BOM included
    assert doc.text == "Zoë's notes"
    with pytest.raises(LoaderError, match=r"x\.txt: unknown character encoding 'klingon'"):
        load_bytes(b"abc", name="x.txt", content_type="text/plain; charset=klingon")
