"""The background ingest jobs of one server worker: a bounded pool, with records others can read.

``POST /v1/sites/{site}/collections/{collection}/documents`` checks and reads the request, then hands
the work to :meth:`IngestJobs.submit` and answers 202 with the job id at once: parsing PDFs and
embedding thousands of chunks takes far longer than a request's deadline. At most
``ingest_job_workers`` jobs run at once (each one embeds through the server's gated embedder, so
ingest shares the embed stage with queries instead of starving them); up to ``max_queue`` more wait,
and beyond that a POST is a 503 with ``Retry-After`` (an upload waiting in the queue holds its files
on disk, not in memory).

Each job's record lives in :class:`~rag_app.server.job_store.JobStore` (SQLite in the data dir), so
``GET /v1/jobs/{id}`` answers from any worker or replica. Stopping the server lets running jobs
finish and records the queued ones as failed (with what to do), so no record says "queued" for ever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rag_app.core.errors import ServiceUnavailableError
from rag_app.core.settings import Settings
from rag_app.models.embeddings import Embedder
from rag_app.server.ingest_run import IngestInput, JobOutcome, run_ingest
from rag_app.server.job_store import JobRecord, JobStore
from rag_app.server.limits import Overloaded

log = logging.getLogger("rag_app.server.jobs")

#: Seconds a client is told to wait (Retry-After) when the job queue is full.
RETRY_AFTER_S = 5


class IngestJobs:
    """A pool of ``settings.ingest_job_workers`` threads running ingest jobs, and their records.

    ``embedder(site)`` returns the embedder to write a site with (the server runtime's: the site's
    activated fine-tuned embedder, else the configured one).
    """

    def __init__(
        self, settings: Settings, embedder: Callable[[str], Embedder], store: JobStore | None = None
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.store = store or JobStore.from_settings(settings)
        self.workers = settings.ingest_job_workers
        self.max_waiting = settings.max_queue
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ingest-job")
        self._lock = threading.Lock()
        self._unfinished: dict[str, IngestInput] = {}
        self._closed = False

    def submit(self, job: IngestInput, *, key_name: str | None) -> JobRecord:
        """Queue ``job``; its record (status ``queued``). Overloaded (503) when the queue is full."""
        with self._lock:
            if self._closed:
                raise ServiceUnavailableError("the server is shutting down; post the documents again shortly")
            if len(self._unfinished) >= self.workers + self.max_waiting:
                raise Overloaded("ingest", RETRY_AFTER_S)
            record = self.store.create(
                job.site, job.collection, kind=job.kind, inputs=job.inputs, key_name=key_name
            )
            self._unfinished[record.job_id] = job
            self._pool.submit(self._run, record)
        log.info(
            "ingest job queued",
            extra={
                "job_id": record.job_id,
                "site": job.site,
                "collection": job.collection,
                "inputs": job.inputs,
            },
        )
        return record

    def _run(self, record: JobRecord) -> None:
        job = self._unfinished[record.job_id]
        started = time.time()
        try:
            self.store.start(record.job_id)
            outcome = run_ingest(self.settings, self.embedder(job.site), job)
        except Exception as exc:  # a bug: the record still ends, and says where to look
            log.exception("ingest job %s failed unexpectedly", record.job_id)
            outcome = JobOutcome(
                "failed",
                [],
                {},
                error=f"internal error ({type(exc).__name__}); the job id is in the server log",
            )
        finally:
            job.close()
        timings = {
            "queued_ms": round((started - record.created_at) * 1000, 1),
            **outcome.timings,
            "total_ms": round((time.time() - record.created_at) * 1000, 1),
        }
        self.store.finish(
            record.job_id,
            outcome.status,
            documents=outcome.documents,
            counts=outcome.counts,
            timings=timings,
            notes=outcome.notes,
            error=outcome.error,
        )
        with self._lock:
            self._unfinished.pop(record.job_id, None)
        log.info(
            "ingest job %s",
            outcome.status,
            extra={
                "job_id": record.job_id,
                "counts": outcome.counts,
                "timings": timings,
                "error": outcome.error,
            },
        )

    def get(self, job_id: str) -> JobRecord | None:
        """The job's record (from any process sharing the data dir), or None when unknown or expired."""
        return self.store.get(job_id)

    def close(self) -> None:
        """Let running jobs finish; record the jobs that never started as failed."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            left = dict(self._unfinished)
            self._unfinished.clear()
        for job_id, job in left.items():
            job.close()
            self.store.finish(
                job_id,
                "failed",
                error="the server stopped before this job ran; nothing was written: post the documents again",
            )
        self.store.close()
