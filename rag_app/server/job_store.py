"""Ingest job records: one SQLite file, ``<data_dir>/jobs.sqlite``, shared by every worker and replica.

``POST .../documents`` answers 202 with a job id and runs the ingest in the background
(:mod:`rag_app.server.jobs`); ``GET /v1/jobs/{id}`` reads the record here. The record is in a file,
not in the process, because the status request may reach another worker process or another replica
than the one running the job (they share the data dir, as they share the index).

A record holds the job's status (queued -> running -> succeeded | failed), per-document results,
counts, timings and the process that runs it (``host:pid``). A job whose process died before it
finished (a crash, a redeploy) would stay "running" for ever; a status read on the same host notices
the process is gone and records the job as failed, with what to do. Finished jobs expire
``ttl_s`` after they finish (``ingest_job_ttl_s``): a read of an expired job is a "not found", and
every new job deletes the expired ones.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rag_app.core.settings import Settings
from rag_app.server.sqlite_file import SqliteFile, dumps, loads

#: The file name of the store under ``settings.data_dir``.
STORE_FILE = "jobs.sqlite"

JobStatus = Literal["queued", "running", "succeeded", "failed"]
FINISHED: tuple[JobStatus, ...] = ("succeeded", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ingest_jobs (
    job_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    collection TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    key_name TEXT,
    owner TEXT NOT NULL,
    inputs INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    documents_json TEXT,
    counts_json TEXT,
    timings_json TEXT,
    notes_json TEXT
);
CREATE INDEX IF NOT EXISTS ingest_jobs_finished ON ingest_jobs (finished_at);
"""


def this_process() -> str:
    """``host:pid`` of the calling process: who runs a job."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_gone(owner: str) -> bool:
    """True when ``owner`` is a process on this host that no longer exists (other hosts: unknown)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by another user
        return False
    return False


@dataclass(frozen=True)
class JobRecord:
    """One ingest job as stored. Times are unix seconds; ``documents`` are per-document results
    (``{"id", "status", "reason"?, "source"?}``), ``counts`` and ``timings`` the ingest's."""

    job_id: str
    site: str
    collection: str
    kind: str
    status: JobStatus
    key_name: str | None
    owner: str
    inputs: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    documents: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class JobStore:
    """The ingest job records in the SQLite file ``path``; finished ones kept ``ttl_s`` seconds."""

    def __init__(self, path: Path, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.db = SqliteFile(path, _SCHEMA)
        self.ttl_s = ttl_s

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        """The store of ``settings.data_dir`` with ``settings.ingest_job_ttl_s``."""
        return cls(settings.data_dir / STORE_FILE, settings.ingest_job_ttl_s)

    @property
    def path(self) -> Path:
        return self.db.path

    def create(
        self,
        site: str,
        collection: str,
        *,
        kind: str,
        inputs: int,
        key_name: str | None,
        now: float | None = None,
    ) -> JobRecord:
        """A new queued job run by this process (expired jobs are deleted first)."""
        now = time.time() if now is None else now
        record = JobRecord(
            job_id=uuid.uuid4().hex,
            site=site,
            collection=collection,
            kind=kind,
            status="queued",
            key_name=key_name,
            owner=this_process(),
            inputs=inputs,
            created_at=now,
        )
        with self.db.write(synchronous="NORMAL") as conn:
            conn.execute("DELETE FROM ingest_jobs WHERE finished_at < ?", (now - self.ttl_s,))
            conn.execute(
                "INSERT INTO ingest_jobs (job_id, site, collection, kind, status, key_name, owner, inputs,"
                " created_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
                (record.job_id, site, collection, kind, key_name, record.owner, inputs, now),
            )
        return record

    def start(self, job_id: str) -> None:
        with self.db.write(synchronous="NORMAL") as conn:
            conn.execute(
                "UPDATE ingest_jobs SET status = 'running', started_at = ? WHERE job_id = ?",
                (time.time(), job_id),
            )

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        documents: list[dict[str, Any]] | None = None,
        counts: dict[str, int] | None = None,
        timings: dict[str, float] | None = None,
        notes: list[str] | None = None,
        error: str | None = None,
    ) -> None:
        """Record the outcome (durably: a client polling for it must not see it revert on a crash).
        A job already finished keeps its first outcome."""
        if status not in FINISHED:
            raise ValueError(f"finish needs one of {FINISHED}, got {status!r}")
        with self.db.write(synchronous="FULL") as conn:
            conn.execute(
                "UPDATE ingest_jobs SET status = ?, finished_at = ?, error = ?, documents_json = ?,"
                " counts_json = ?, timings_json = ?, notes_json = ?"
                " WHERE job_id = ? AND status NOT IN ('succeeded', 'failed')",
                (
                    status,
                    time.time(),
                    error,
                    dumps(documents or []),
                    dumps(counts or {}),
                    dumps(timings or {}),
                    dumps(notes or []),
                    job_id,
                ),
            )

    def get(self, job_id: str, *, now: float | None = None) -> JobRecord | None:
        """The job, or None when unknown or expired. An unfinished job whose process is gone is
        recorded as failed here (see the module docstring)."""
        now = time.time() if now is None else now
        row = self.db.connect().execute("SELECT * FROM ingest_jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None or (row["finished_at"] is not None and row["finished_at"] < now - self.ttl_s):
            return None
        if row["status"] not in FINISHED and _process_gone(row["owner"]):
            self.finish(
                job_id,
                "failed",
                error=f"the server process that ran this job ({row['owner']}) stopped before it finished; "
                "each document is wholly old or wholly new: post the same documents again to finish "
                "(ingest is idempotent)",
            )
            return self.get(job_id, now=now)
        return JobRecord(
            job_id=row["job_id"],
            site=row["site"],
            collection=row["collection"],
            kind=row["kind"],
            status=row["status"],
            key_name=row["key_name"],
            owner=row["owner"],
            inputs=row["inputs"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            error=row["error"],
            documents=loads(row["documents_json"], []),
            counts=loads(row["counts_json"], {}),
            timings=loads(row["timings_json"], {}),
            notes=loads(row["notes_json"], []),
        )

    def close(self) -> None:
        self.db.close()
