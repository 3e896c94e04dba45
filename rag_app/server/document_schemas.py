"""Bodies of the document routes (HTTP ingest, listing, delete) and of ``GET /v1/jobs/{id}``.

A JSON ingest body is ``{"documents": [{id, text, title?, source?, date?, tickers?, tags?, metadata?}]}``:
the fields of a JSONL record, mapped to documents by the same code as a JSONL file
(:func:`rag_app.ingest.loaders.tabular.record_to_document`: ISO dates, upper-case tickers, lower-case
tags, the same metadata), so search filters treat posted and file-ingested documents alike.
Parsed strictly (:func:`rag_app.server.schemas.parse_body`): ``"tickers": "NVDA"`` is a 422, not a list.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rag_app.server.schemas import NOT_BLANK, is_blank
from rag_app.server.uploads import FILES_FIELD, MAX_FILES, MAX_NAME_CHARS

MAX_ID_CHARS = MAX_NAME_CHARS


def _not_blank(value: str) -> str:
    if is_blank(value):
        raise ValueError("is blank")
    return value


class DocumentIn(BaseModel):
    """One document to index; `id` decides what a later post replaces (same id, new content)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=MAX_ID_CHARS, json_schema_extra={"pattern": NOT_BLANK})
    text: str = Field(
        min_length=1, description="The text to index; not blank.", json_schema_extra={"pattern": NOT_BLANK}
    )
    title: str = ""
    source: str = Field(
        "", description="URL or path shown with passages; default `api://SITE/COLLECTION/ID`."
    )
    date: dt.date | None = Field(None, description="Published or modified date (ISO), for date filters.")
    tickers: list[str] = Field(default_factory=list, description="Stored upper-case.")
    tags: list[str] = Field(default_factory=list, description="Stored lower-case.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Any further fields, kept with the document."
    )

    _id_not_blank = field_validator("id")(_not_blank)
    _text_not_blank = field_validator("text")(_not_blank)


class DocumentsRequest(BaseModel):
    """Documents to add or replace in one collection; ids must be unique within the request."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "documents": [
                        {
                            "id": "pricing-2025",
                            "title": "Pricing",
                            "text": "Sage Daily costs $12 a month.",
                            "tags": ["pricing"],
                        }
                    ]
                }
            ]
        },
    )

    documents: list[DocumentIn] = Field(min_length=1)


def documents_body(max_upload_bytes: int) -> dict[str, Any]:
    """The route's OpenAPI ``requestBody``: JSON documents or multipart files (schemas inline)."""
    json_schema = DocumentsRequest.model_json_schema(mode="validation")
    defs = json_schema.pop("$defs")
    json_schema["properties"]["documents"]["items"] = defs["DocumentIn"]
    files = {
        "type": "object",
        "properties": {
            FILES_FIELD: {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_FILES,
                "items": {"type": "string", "format": "binary"},
                "description": "One part per file, each with a filename (the document id is the filename "
                "less its suffix). HTML, PDF, DOCX, Markdown, text, JSONL or CSV: the format is sniffed from "
                "the part's Content-Type, the filename's suffix or the bytes.",
            }
        },
        "required": [FILES_FIELD],
        "additionalProperties": False,
    }
    return {
        "required": True,
        "description": f"At most {max_upload_bytes:,} bytes (max_upload_bytes; 413 otherwise).",
        "content": {"application/json": {"schema": json_schema}, "multipart/form-data": {"schema": files}},
    }


class JobAccepted(BaseModel):
    """The job that will ingest the posted documents; poll `status_url` for its outcome."""

    job_id: str
    status: Literal["queued"] = "queued"
    status_url: str = Field(description="GET it for the job's status and per-document results.")


DocumentStatus = Literal["added", "updated", "unchanged", "skipped", "failed"]


class DocumentResult(BaseModel):
    id: str | None = Field(description="The document id; null for a file that could not be read.")
    status: DocumentStatus = Field(description="skipped: no text to index; failed: see reason.")
    file: str | None = Field(None, description="The uploaded file it came from.")
    reason: str | None = None


class JobResponse(BaseModel):
    """An ingest job: queued -> running -> succeeded | failed, with per-document results once finished."""

    job_id: str
    site: str
    collection: str
    kind: Literal["json", "upload"]
    status: Literal["queued", "running", "succeeded", "failed"]
    inputs: int = Field(description="Documents (JSON) or files (upload) received.")
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    error: str | None = Field(None, description="Why the job failed, and what to do.")
    documents: list[DocumentResult] = Field(default_factory=list)
    counts: dict[str, int] = Field(
        default_factory=dict, description="added, updated, unchanged, skipped, failed, chunks_written."
    )
    timings: dict[str, float] = Field(
        default_factory=dict, description="Milliseconds: queued, parse, ingest, total."
    )
    notes: list[str] = Field(default_factory=list)


class DocumentSummary(BaseModel):
    id: str
    title: str
    source: str
    hash: str = Field(
        description="Content hash: changes when the document's text, metadata or chunking does."
    )
    chunks: int
    date: dt.date | None = Field(description="The document's own date (published/modified), if it has one.")
    updated: dt.datetime | None = Field(
        description="When the document's chunks were last written (null for collections indexed before "
        "schema 2)."
    )


class DocumentList(BaseModel):
    site: str
    collection: str
    total: int = Field(description="Documents in the collection.")
    limit: int
    offset: int
    documents: list[DocumentSummary] = Field(description="Ordered by id.")


class DocumentDeleted(BaseModel):
    site: str
    collection: str
    id: str
    chunks_removed: int
