"""Issue #12 (HTTP ingest): documents posted as JSON or uploaded as HTML/PDF/DOCX files, on a real
uvicorn server with real httpx, the real MiniLM embedder and LanceDB on disk, then searched, listed,
re-posted (unchanged), deleted; oversize bodies, bad files and job records.

The server runs without API keys (auth off, loopback only), where writes are allowed as reads are;
key scopes are tested in tests/test_key_scopes.py.
"""

from __future__ import annotations

import functools
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docx
import httpx
import pytest
from fpdf import FPDF

from rag_app.core.errors import ServiceUnavailableError
from rag_app.core.settings import Settings
from rag_app.core.types import Document
from rag_app.server.app import create_app
from rag_app.server.ingest_run import IngestInput
from rag_app.server.job_store import JobStore
from rag_app.server.jobs import IngestJobs
from rag_app.server.limits import Overloaded
from rag_app.store.vector_store import VectorStore
from tests.conftest import SHARED_DATA, make_test_settings
from tests.live_server import LiveServer

DOCS = "/v1/sites/builddaily/collections/resources/documents"
MAX_UPLOAD = 200_000


@pytest.fixture(scope="module")
def live_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # max_body_bytes above max_upload_bytes, so the route's own upload limit is what a large body meets
    return make_test_settings(
        tmp_path_factory.mktemp("http-ingest"), max_upload_bytes=MAX_UPLOAD, max_body_bytes=1_000_000
    )


@pytest.fixture(scope="module")
def live(live_settings: Settings, minilm: Any) -> Iterator[LiveServer]:
    with LiveServer(create_app(live_settings, embedder=minilm)) as server:
        yield server


@pytest.fixture
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c


def wait_for_job(client: httpx.Client, accepted: httpx.Response) -> dict[str, Any]:
    """Poll the job a 202 names until it finishes (bounded number of polls, no timing assertion)."""
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["status"] == "queued" and accepted.headers["location"] == body["status_url"]
    for _ in range(1200):
        job = client.get(body["status_url"]).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {body['job_id']} did not finish: {job}")


def search_ids(client: httpx.Client, query: str, site: str = "builddaily") -> list[str]:
    reply = client.post("/v1/search", json={"site": site, "query": query, "k": 5, "top_n": 5})
    assert reply.status_code == 200, reply.text
    return [p["doc_id"] for p in reply.json()["passages"]]


def statuses(job: dict[str, Any]) -> dict[str | None, str]:
    return {d["id"] if d["id"] is not None else d["file"]: d["status"] for d in job["documents"]}


def fastapi_page(name: str) -> str:
    return (SHARED_DATA / "fastapi_docs" / "pages" / name).read_text(encoding="utf-8")


def financebench_page(index: int = 0) -> dict[str, Any]:
    with (SHARED_DATA / "financebench" / "corpus.jsonl").open(encoding="utf-8") as handle:
        for n, line in enumerate(handle):
            if n == index:
                return json.loads(line)
    raise AssertionError("FinanceBench corpus too short")


def html_from_markdown(markdown: str, title: str) -> bytes:
    """A web page around a docs page: navigation and footer boilerplate, the page's paragraphs as <p>."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", markdown) if p.strip() and not p.startswith("```")]
    body = "".join(f"<p>{p.replace('<', '&lt;')}</p>" for p in paragraphs[:12])
    return (
        f"<html><head><title>{title}</title></head><body><nav>Home | Docs | Pricing</nav>"
        f"<main><h1>{title}</h1>{body}</main><footer>(c) builddaily</footer></body></html>"
    ).encode()


def pdf_bytes(text: str) -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=10)
    pdf.multi_cell(0, 5, text.encode("latin-1", "replace").decode("latin-1"))
    return bytes(pdf.output())


def docx_bytes(heading: str, paragraphs: list[str]) -> bytes:
    document = docx.Document()
    document.add_heading(heading, level=1)
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------- JSON documents


def test_json_ingest_is_searchable_idempotent_and_updatable(client: httpx.Client) -> None:
    doc = {
        "id": "sso-okta",
        "title": "Configure SSO with Okta",
        "text": "To configure single sign-on with Okta, open the admin console, choose Security, then "
        "SAML applications, and paste the metadata URL from Okta.",
        "tags": ["SSO"],
        "date": "2025-03-01",
        "metadata": {"team": "identity"},
    }
    job = wait_for_job(client, client.post(DOCS, json={"documents": [doc]}))
    assert job["status"] == "succeeded", job
    assert statuses(job) == {"sso-okta": "added"}
    assert job["counts"]["added"] == 1 and job["counts"]["chunks_written"] >= 1
    assert {"queued_ms", "parse_ms", "ingest_ms", "total_ms"} <= set(job["timings"])
    assert job["kind"] == "json" and job["inputs"] == 1 and job["finished_at"] is not None
    assert search_ids(client, "How do I set up Okta single sign-on?")[0] == "sso-okta"

    again = wait_for_job(client, client.post(DOCS, json={"documents": [doc]}))
    assert statuses(again) == {"sso-okta": "unchanged"}
    assert again["counts"]["chunks_written"] == 0

    changed = {**doc, "text": doc["text"] + " Okta groups map to builddaily roles."}
    third = wait_for_job(client, client.post(DOCS, json={"documents": [changed]}))
    assert statuses(third) == {"sso-okta": "updated"}

    listed = client.get(DOCS, params={"limit": 1000}).json()
    row = next(d for d in listed["documents"] if d["id"] == "sso-okta")
    assert row["title"] == "Configure SSO with Okta" and row["chunks"] >= 1 and row["date"] == "2025-03-01"
    assert row["source"] == "api://builddaily/resources/sso-okta" and len(row["hash"]) == 40


def test_json_body_errors_name_the_field(client: httpx.Client) -> None:
    dup = {"documents": [{"id": "a", "text": "one"}, {"id": "a", "text": "two"}]}
    reply = client.post(DOCS, json=dup)
    assert reply.status_code == 422 and reply.json()["error"]["field"] == "documents[1].id"
    reply = client.post(DOCS, json={"documents": [{"id": "b", "text": "x", "tickers": "NVDA"}]})
    assert reply.status_code == 422 and reply.json()["error"]["field"] == "documents[0].tickers"
    reply = client.post(DOCS, json={"documents": [{"id": "c", "text": "   "}]})
    assert reply.status_code == 422 and reply.json()["error"]["field"] == "documents[0].text"
    reply = client.post(DOCS, content=b"id,text\n1,x\n", headers={"content-type": "text/csv"})
    assert reply.status_code == 415 and "multipart/form-data" in reply.json()["error"]["message"]
    reply = client.post(
        "/v1/sites/builddaily/collections/nope/documents", json={"documents": [dup["documents"][0]]}
    )
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "unknown_collection"
    reply = client.get("/v1/jobs/0123456789abcdef")
    assert reply.status_code == 404 and "ingest_job_ttl_s" in reply.json()["error"]["message"]


# ----------------------------------------------------------------------------------- uploads


def test_upload_html_pdf_and_docx(client: httpx.Client) -> None:
    page = financebench_page(0)
    files = [
        (
            "files",
            ("guides/cors.html", html_from_markdown(fastapi_page("tutorial/cors.md"), "CORS"), "text/html"),
        ),
        ("files", ("3m-cash-flow.pdf", pdf_bytes(page["text"][:2500]), "application/pdf")),
        (
            "files",
            (
                "key-rotation.docx",
                docx_bytes("Rotating API keys", ["Rotate every builddaily API key every ninety days."]),
                "application/octet-stream",  # sniffed from the bytes and the suffix
            ),
        ),
    ]
    job = wait_for_job(client, client.post(DOCS, files=files))
    assert job["status"] == "succeeded", job
    assert job["kind"] == "upload" and job["inputs"] == 3
    assert statuses(job) == {"guides/cors": "added", "3m-cash-flow": "added", "key-rotation": "added"}
    assert {d["file"] for d in job["documents"]} == {
        "guides/cors.html",
        "3m-cash-flow.pdf",
        "key-rotation.docx",
    }

    assert "key-rotation" in search_ids(client, "how often should API keys be rotated")
    assert "3m-cash-flow" in search_ids(client, "3M cash flows from operating activities net income")
    assert "guides/cors" in search_ids(client, "CORS cross-origin resource sharing allowed origins")
    listed = {d["id"]: d for d in client.get(DOCS, params={"limit": 1000}).json()["documents"]}
    assert listed["3m-cash-flow"]["chunks"] >= 1 and listed["3m-cash-flow"]["source"] == "3m-cash-flow.pdf"

    again = wait_for_job(client, client.post(DOCS, files=files))
    assert set(statuses(again).values()) == {"unchanged"}


def test_a_bad_file_fails_the_job_and_writes_nothing(client: httpx.Client) -> None:
    files = [
        (
            "files",
            (
                "good-note.md",
                b"# Billing\n\nInvoices are emailed on the first of the month.\n",
                "text/markdown",
            ),
        ),
        ("files", ("broken.pdf", b"%PDF-1.7 this is not really a PDF", "application/pdf")),
    ]
    job = wait_for_job(client, client.post(DOCS, files=files))
    assert job["status"] == "failed" and "nothing was written" in job["error"]
    by_file = {d["file"]: d for d in job["documents"]}
    assert by_file["broken.pdf"]["status"] == "failed" and "broken.pdf" in by_file["broken.pdf"]["reason"]
    assert (
        by_file["good-note.md"]["status"] == "failed" and "not written" in by_file["good-note.md"]["reason"]
    )
    ids = {d["id"] for d in client.get(DOCS, params={"limit": 1000}).json()["documents"]}
    assert "good-note" not in ids

    skipped = wait_for_job(client, client.post(DOCS, files=files, params={"on_error": "skip"}))
    assert skipped["status"] == "succeeded"
    assert statuses(skipped) == {"broken.pdf": "failed", "good-note": "added"}
    assert skipped["counts"]["failed"] == 1 and skipped["counts"]["added"] == 1


def test_oversize_upload_is_413_and_writes_nothing(client: httpx.Client) -> None:
    before = client.get(DOCS).json()["total"]
    big = b"word " * (MAX_UPLOAD // 5 + 10)
    reply = client.post(DOCS, files=[("files", ("big.txt", big, "text/plain"))])
    assert reply.status_code == 413
    error = reply.json()["error"]
    assert error["code"] == "body_too_large" and "max_upload_bytes" in error["message"]
    reply = client.post(DOCS, json={"documents": [{"id": "big", "text": big.decode()}]})
    assert reply.status_code == 413
    assert client.get(DOCS).json()["total"] == before


def test_upload_needs_files_with_names(client: httpx.Client) -> None:
    reply = client.post(DOCS, data={"note": "hello"}, files=[("files", ("a.txt", b"text", "text/plain"))])
    assert reply.status_code == 422 and reply.json()["error"]["field"] == "note"
    reply = client.post(DOCS, files=[("files", ("", b"text", "text/plain"))])
    assert reply.status_code == 422 and reply.json()["error"]["field"] == "files[0]"


# ----------------------------------------------------------------------------------- list and delete


def test_delete_removes_a_document_from_search(client: httpx.Client, live_settings: Settings) -> None:
    doc = {
        "id": "refund-policy",
        "title": "Refunds",
        "text": "Refunds for annual plans are prorated to the day when a customer cancels in thirty days.",
    }
    wait_for_job(client, client.post(DOCS, json={"documents": [doc]}))
    assert "refund-policy" in search_ids(client, "prorated refund for an annual plan")

    reply = client.delete(f"{DOCS}/refund-policy")
    assert reply.status_code == 200, reply.text
    assert reply.json()["chunks_removed"] >= 1
    assert "refund-policy" not in search_ids(client, "prorated refund for an annual plan")
    assert "refund-policy" not in {
        d["id"] for d in client.get(DOCS, params={"limit": 1000}).json()["documents"]
    }
    doc_table = VectorStore(live_settings).db.open_table("builddaily__resources__docs")  # derived rows too
    assert doc_table.count_rows("doc_id = 'refund-policy'") == 0
    again = client.delete(f"{DOCS}/refund-policy")
    assert again.status_code == 404 and again.json()["error"]["code"] == "unknown_document"


def test_delete_takes_ids_with_slashes(client: httpx.Client) -> None:
    doc = {"id": "guides/setup/first-steps", "text": "Create a workspace, then invite your team by email."}
    wait_for_job(client, client.post(DOCS, json={"documents": [doc]}))
    reply = client.delete(f"{DOCS}/guides/setup/first-steps")
    assert reply.status_code == 200 and reply.json()["id"] == "guides/setup/first-steps"


def test_listing_pages_by_id(client: httpx.Client) -> None:
    path = "/v1/sites/sagedaily/collections/canon/documents"
    assert client.get(path).json() == {
        "site": "sagedaily",
        "collection": "canon",
        "total": 0,
        "limit": 100,
        "offset": 0,
        "documents": [],
    }
    docs = [
        {"id": f"card-{n:02d}", "text": f"Card number {n} speaks of journeys and change."} for n in range(7)
    ]
    job = wait_for_job(client, client.post(path, json={"documents": docs}))
    assert job["counts"]["added"] == 7
    page = client.get(path, params={"limit": 3, "offset": 3}).json()
    assert page["total"] == 7 and [d["id"] for d in page["documents"]] == ["card-03", "card-04", "card-05"]
    assert all(d["chunks"] == 1 and d["updated"] for d in page["documents"])  # when it was written
    assert client.get(path, params={"limit": 0}).status_code == 422


# ----------------------------------------------------------------------------------- job records


def test_job_records_are_shared_through_the_data_dir_and_expire(
    live_settings: Settings, client: httpx.Client
) -> None:
    job = wait_for_job(
        client, client.post(DOCS, json={"documents": [{"id": "ttl-doc", "text": "Kept a while."}]})
    )
    other_replica = JobStore.from_settings(live_settings)  # another process reading the same data dir
    record = other_replica.get(job["job_id"])
    assert record is not None and record.status == "succeeded"
    assert record.documents == [{"id": "ttl-doc", "status": "added"}]
    assert record.finished_at is not None
    later = record.finished_at + live_settings.ingest_job_ttl_s + 1
    assert other_replica.get(job["job_id"], now=later) is None
    expired_store = JobStore(Path(other_replica.path), ttl_s=1.0)
    assert expired_store.create("builddaily", "resources", kind="json", inputs=1, key_name=None, now=later)
    assert expired_store.get(job["job_id"]) is None  # creating a job deleted the expired one


def test_a_job_whose_process_died_reads_as_failed(live_settings: Settings) -> None:
    store = JobStore.from_settings(live_settings)
    record = store.create("builddaily", "resources", kind="json", inputs=1, key_name=None)
    conn = store.db.connect()
    conn.execute(
        "UPDATE ingest_jobs SET status = 'running', owner = ? WHERE job_id = ?",
        (f"{record.owner.rsplit(':', 1)[0]}:999999999", record.job_id),
    )
    dead = store.get(record.job_id)
    assert (
        dead is not None and dead.status == "failed" and "post the same documents again" in (dead.error or "")
    )


def test_the_job_queue_is_bounded_and_closing_fails_jobs_that_never_ran(tmp_path: Path, minilm: Any) -> None:
    """One worker, one queue slot: a third job is a 503 (Overloaded); closing lets the running job
    finish and records the queued one as failed. The collection's writer lock, held here, keeps the
    first job running (waiting for it) while the others are submitted."""
    settings = make_test_settings(tmp_path / "rag", ingest_job_workers=1, max_queue=1)
    jobs = IngestJobs(settings, lambda site: minilm)
    doc = Document(id="queued-doc", text="Queued while another writer holds the collection.")
    submit = functools.partial(IngestInput, "builddaily", "resources", [doc])
    lock = VectorStore(settings).writer("builddaily", "resources")
    lock.__enter__()
    try:
        running = jobs.submit(submit(), key_name=None)
        for _ in range(1200):
            if jobs.get(running.job_id).status == "running":  # type: ignore[union-attr]
                break
            time.sleep(0.05)
        queued = jobs.submit(submit(), key_name=None)
        with pytest.raises(Overloaded, match="ingest stage at capacity"):
            jobs.submit(submit(), key_name=None)
        closer = threading.Thread(target=jobs.close)
        closer.start()
        for _ in range(1200):  # close() refuses new jobs at once, then waits for the running one
            try:
                jobs.submit(submit(), key_name=None)
            except ServiceUnavailableError:
                break
            except Overloaded:
                time.sleep(0.05)
    finally:
        lock.__exit__(None, None, None)
    closer.join(120)
    store = JobStore.from_settings(settings)
    assert store.get(running.job_id).status == "succeeded"  # type: ignore[union-attr]
    never = store.get(queued.job_id)
    assert (
        never is not None
        and never.status == "failed"
        and "stopped before this job ran" in (never.error or "")
    )


def test_an_upload_may_exceed_max_body_bytes_up_to_max_upload_bytes(tmp_path: Path, minilm: Any) -> None:
    settings = make_test_settings(tmp_path / "rag", max_body_bytes=64 * 1024, max_upload_bytes=400_000)
    text = " ".join(f"Paragraph {n} of the long handbook about invoices." for n in range(5000))[:300_000]
    with LiveServer(create_app(settings, embedder=minilm)) as server, server.client() as client:
        job = wait_for_job(
            client, client.post(DOCS, files=[("files", ("handbook.txt", text.encode(), "text/plain"))])
        )
        assert job["status"] == "succeeded" and statuses(job) == {"handbook": "added"}
        too_big = client.post(DOCS, files=[("files", ("big.txt", b"x" * 500_000, "text/plain"))])
        assert too_big.status_code == 413 and "max_upload_bytes" in too_big.json()["error"]["message"]
        search = client.post("/v1/search", json={"site": "builddaily", "query": "x" * 70_000})
        assert search.status_code == 413 and "max_body_bytes" in search.json()["error"]["message"]
