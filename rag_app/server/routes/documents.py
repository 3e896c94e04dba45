"""HTTP ingest: add, list and delete a collection's documents; ``GET /v1/jobs/{id}`` for ingest jobs.

``POST /v1/sites/{site}/collections/{collection}/documents`` takes JSON documents or uploaded files (up
to ``max_upload_bytes``), queues an ingest job (:mod:`rag_app.server.jobs`) and answers 202 with its
id; ``GET /v1/jobs/{id}`` gives its status and per-document results. ``GET .../documents`` lists what
the collection holds; ``DELETE .../documents/{id}`` removes one document (all its chunks, one commit,
under the collection's writer lock).

Writes need a key with the ``write`` scope for the site (403 otherwise:
:func:`~rag_app.server.auth.check_write`); with auth off (no keys: loopback only) they are open, as
reads are. Errors are the one error body.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Query, Request, Response
from pydantic import ValidationError

from rag_app.core.errors import LoaderError
from rag_app.core.types import Document
from rag_app.ingest.loaders import OnError
from rag_app.ingest.loaders.tabular import record_to_document
from rag_app.server.auth import check_write
from rag_app.server.document_schemas import (
    DocumentDeleted,
    DocumentList,
    DocumentsRequest,
    DocumentSummary,
    JobAccepted,
    JobResponse,
    documents_body,
)
from rag_app.server.errors import ApiError, validation_error
from rag_app.server.ingest_run import IngestInput
from rag_app.server.job_store import JobRecord
from rag_app.server.jobs import IngestJobs
from rag_app.server.routes.shared import api_key, authorize, check_site
from rag_app.server.schemas import ERROR_RESPONSES, parse_body
from rag_app.server.state import ServerState
from rag_app.server.uploads import read_bounded, read_files
from rag_app.store.schema import table_name
from rag_app.store.sql import sql_str

DOCUMENTS_PATH = "/v1/sites/{site}/collections/{collection}/documents"
MAX_PAGE = 1000


def check_collection(state: ServerState, site: str, collection: str) -> None:
    """404 for an unknown site or collection (naming the known ones)."""
    check_site(state, site)
    known = state.settings.sites[site]
    if collection not in known:
        raise ApiError(
            404,
            "unknown_collection",
            f"site {site!r} has no collection {collection!r}; its collections: {', '.join(known)}",
        )


def to_documents(body: DocumentsRequest, site: str, collection: str) -> list[Document]:
    """The posted records as Documents, mapped as JSONL records are; 422 naming the bad one."""
    seen: dict[str, int] = {}
    documents = []
    for i, item in enumerate(body.documents):
        where = f"documents[{i}]"
        if item.id in seen:
            raise ApiError(
                422,
                "invalid_request",
                f"{where}.id: {item.id!r} repeats documents[{seen[item.id]}].id",
                field=f"{where}.id",
            )
        seen[item.id] = i
        record = item.model_dump()
        try:
            documents.append(
                record_to_document(
                    record, path=where, line=None, source=f"api://{site}/{collection}/{item.id}"
                )
            )
        except LoaderError as exc:
            raise ApiError(422, "invalid_request", str(exc), field=where) from None
    return documents


async def read_ingest(
    request: Request, state: ServerState, site: str, collection: str, on_error: OnError
) -> IngestInput:
    """The request's documents (JSON) or files (multipart), size-bounded; 415 for any other body."""
    limit = state.settings.max_upload_bytes
    media = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        try:
            body = parse_body(DocumentsRequest, await read_bounded(request, limit))
        except ValidationError as exc:
            raise validation_error(exc.errors(include_url=False), skip_first=False) from None
        return IngestInput(
            site, collection, documents=to_documents(body, site, collection), on_error=on_error
        )
    if media == "multipart/form-data":
        return IngestInput(site, collection, uploads=await read_files(request, limit), on_error=on_error)
    raise ApiError(
        415,
        "unsupported_media_type",
        f"Content-Type {media or '(none)'!r} is not accepted here: send application/json "
        '({"documents": [...]}) or multipart/form-data with one "files" part per file',
    )


def job_response(record: JobRecord) -> JobResponse:
    def when(ts: float | None) -> dt.datetime | None:
        return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC)

    return JobResponse(
        job_id=record.job_id,
        site=record.site,
        collection=record.collection,
        kind=record.kind,  # type: ignore[arg-type]
        status=record.status,
        inputs=record.inputs,
        created_at=when(record.created_at),  # type: ignore[arg-type]
        started_at=when(record.started_at),
        finished_at=when(record.finished_at),
        error=record.error,
        documents=record.documents,  # type: ignore[arg-type]
        counts=record.counts,
        timings=record.timings,
        notes=record.notes,
    )


def list_page(state: ServerState, site: str, collection: str, limit: int, offset: int) -> DocumentList:
    from rag_app.store.vector_store import VectorStore

    store = VectorStore(state.settings)
    table = store.open_table(site, collection)
    total, docs = store.list_documents(table, limit=limit, offset=offset) if table is not None else (0, [])
    return DocumentList(
        site=site,
        collection=collection,
        total=total,
        limit=limit,
        offset=offset,
        documents=[
            DocumentSummary(
                id=d.doc_id,
                title=d.title,
                source=d.source,
                hash=d.doc_hash,
                chunks=d.chunks,
                date=d.date,
                updated=d.updated,
            )
            for d in docs
        ],
    )


def delete_document(state: ServerState, site: str, collection: str, doc_id: str) -> int:
    """Remove every chunk of ``doc_id`` in one commit under the writer lock, then its derived rows
    (indexes, the document table) as an ingest's removals do; 404 when absent."""
    from rag_app.store.vector_store import VectorStore

    store = VectorStore(state.settings)
    with store.writer(site, collection):
        table = store.open_table(site, collection)
        chunks = table.count_rows(f"doc_id = {sql_str(doc_id)}") if table is not None else 0
        if not chunks:
            raise ApiError(
                404,
                "unknown_document",
                f"no document {doc_id!r} in {table_name(site, collection)} (GET {DOCUMENTS_PATH} lists them)",
            )
        store.delete_documents(table, [doc_id])
        store.refresh_indexes(table, changed=True, removed=[doc_id])
    return chunks


def documents_router(state: ServerState) -> APIRouter:
    """The document and job routes, with the worker's ingest job pool (closed with the app)."""
    jobs = IngestJobs(state.settings, state.runtime.embedder_for)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.to_thread(jobs.close)

    router = APIRouter(tags=["documents"], lifespan=lifespan)
    sites = state.settings.sites
    # the configured names, documented (a name outside them is a 404 naming the known ones)
    every_collection = sorted({c for collections in sites.values() for c in collections})
    site_param = Path(description="A configured site.", json_schema_extra={"enum": sorted(sites)})
    collection_param = Path(
        description="A collection of the site.", json_schema_extra={"enum": every_collection}
    )
    not_found = ERROR_RESPONSES[404] | {"description": "Unknown site, collection, document or job"}

    @router.post(
        DOCUMENTS_PATH,
        status_code=202,
        response_model=JobAccepted,
        responses={
            **ERROR_RESPONSES,
            404: not_found,
            415: ERROR_RESPONSES[400] | {"description": "Not JSON nor multipart"},
        },
        summary="Add or replace documents (JSON, or HTML/PDF/DOCX/Markdown/text/JSONL/CSV files) in a job",
        openapi_extra={"requestBody": documents_body(state.settings.max_upload_bytes)},
    )
    async def post_documents(
        request: Request,
        response: Response,
        site: str = site_param,
        collection: str = collection_param,
        on_error: Annotated[
            OnError,
            Query(
                description="stop: one unreadable file fails the job, nothing written; skip: index the rest."
            ),
        ] = "stop",
    ) -> JobAccepted:
        """Queue an ingest of the posted documents; 202 with the job id. Re-posting unchanged documents
        is cheap (they are reported `unchanged`). Needs a key with the `write` scope for the site."""
        check_collection(state, site, collection)
        key = api_key(request)
        check_write(key, site)
        job = await read_ingest(request, state, site, collection, on_error)
        try:
            record = await asyncio.to_thread(jobs.submit, job, key_name=getattr(key, "name", None))
        except BaseException:
            job.close()
            raise
        status_url = f"/v1/jobs/{record.job_id}"
        response.headers["Location"] = status_url
        return JobAccepted(job_id=record.job_id, status_url=status_url)

    @router.get(
        DOCUMENTS_PATH,
        response_model=DocumentList,
        responses={**ERROR_RESPONSES, 404: not_found},
        summary="List a collection's documents (id, title, source, hash, chunk count), by id",
    )
    async def get_documents(
        request: Request,
        site: str = site_param,
        collection: str = collection_param,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> DocumentList:
        check_collection(state, site, collection)
        authorize(request, site)
        return await asyncio.to_thread(list_page, state, site, collection, limit, offset)

    @router.delete(
        DOCUMENTS_PATH + "/{doc_id:path}",
        response_model=DocumentDeleted,
        responses={**ERROR_RESPONSES, 404: not_found},
        summary="Delete one document (all its chunks, one commit)",
    )
    async def delete(
        request: Request, doc_id: str, site: str = site_param, collection: str = collection_param
    ) -> DocumentDeleted:
        """Needs a key with the `write` scope for the site; 404 when the collection has no such document."""
        check_collection(state, site, collection)
        check_write(api_key(request), site)
        chunks = await asyncio.to_thread(delete_document, state, site, collection, doc_id)
        return DocumentDeleted(site=site, collection=collection, id=doc_id, chunks_removed=chunks)

    @router.get(
        "/v1/jobs/{job_id}",
        response_model=JobResponse,
        responses={**ERROR_RESPONSES, 404: not_found},
        summary="An ingest job's status, per-document results, counts and timings",
    )
    async def get_job(request: Request, job_id: str) -> JobResponse:
        record = await asyncio.to_thread(jobs.get, job_id)
        if record is None:
            ttl = state.settings.ingest_job_ttl_s
            raise ApiError(
                404,
                "unknown_job",
                f"no ingest job {job_id!r}: unknown, or finished more than {ttl:g}s ago (ingest_job_ttl_s)",
            )
        authorize(request, record.site)
        return job_response(record)

    return router
