"""The answer log and the feedback on it: one SQLite file, ``<data_dir>/feedback.sqlite``.

Every answer the server gives (chat-bridge, JSON or streamed, and every site program) is recorded here
under its request id: the program's input, the passages shown, the answer and its citations. A caller
later rates the answer by that id (``POST /v1/feedback``); the feedback row keeps its own copy of the
question, passages and answer, so it stays exportable as an eval row (:mod:`rag_app.server.feedback_export`)
after the answer itself has expired.

Why SQLite rather than a LanceDB table: this is a small transactional key-value workload (insert one
row per answer, look one up by id, replace one feedback row), written concurrently by every server
worker process. SQLite in WAL mode gives exactly that: readers never block the writer, writers of
several processes serialize on the database lock (``busy_timeout`` makes them wait, not fail), and a
primary key makes "one feedback row per request id" a database guarantee. LanceDB appends a new table
version per write (one per answer would need constant compaction) and has no uniqueness constraint
or row-level replace.

Durability: feedback is committed with ``synchronous=FULL`` (on disk when the 200 goes out); answers
with ``NORMAL``, which in WAL mode survives a crash of the process (a power loss may lose the last
few, which then cannot be rated) and costs no fsync per answer.

Expiry: an answer older than ``ttl_days`` no longer takes feedback (410). Expiry is applied on write:
each recorded answer first blanks the content of answers past their TTL (keeping a tombstone with the
id, site and time, so a late feedback post gets 410 rather than 404) and deletes tombstones older than
a second TTL. Feedback rows are not expired: they are the collected training data.

Each thread keeps its own connection (reopened after a fork), so one store serves a worker's threads.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from rag_app.core.settings import Settings
from rag_app.server.feedback_records import FeedbackRecord, LoggedAnswer, ProgramStats, is_gold
from rag_app.server.sqlite_file import SqliteFile, Synchronous
from rag_app.server.sqlite_file import dumps as _dumps
from rag_app.server.sqlite_file import loads as _loads

__all__ = ["STORE_FILE", "FeedbackRecord", "FeedbackStore", "LoggedAnswer", "ProgramStats", "is_gold"]

#: The file name of the store under ``settings.data_dir``.
STORE_FILE = "feedback.sqlite"
_DAY_S = 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    request_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    program TEXT NOT NULL,
    collection TEXT,
    created_at REAL NOT NULL,
    expired INTEGER NOT NULL DEFAULT 0,
    question TEXT,
    question_field TEXT,
    inputs_json TEXT,
    filters_json TEXT,
    passages_json TEXT,
    answer TEXT,
    citations_json TEXT,
    mode TEXT
);
CREATE INDEX IF NOT EXISTS answers_live ON answers (expired, created_at);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    program TEXT NOT NULL,
    rating INTEGER NOT NULL CHECK (rating IN (1, -1)),
    comment TEXT,
    correct_passage_ids_json TEXT NOT NULL,
    corrected_answer TEXT,
    relevant_ids_json TEXT NOT NULL,
    gold INTEGER NOT NULL,
    rated_at REAL NOT NULL,
    answer_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_site ON feedback (site, rated_at);
"""


class FeedbackStore:
    """The answer log and feedback table in the SQLite file ``path`` (created on first use)."""

    def __init__(self, path: Path, ttl_days: float) -> None:
        if ttl_days <= 0:
            raise ValueError(f"ttl_days must be positive, got {ttl_days}")
        self.path = Path(path)
        self.ttl_s = ttl_days * _DAY_S
        self.db = SqliteFile(self.path, _SCHEMA)

    @classmethod
    def from_settings(cls, settings: Settings) -> FeedbackStore:
        """The store of ``settings.data_dir`` with ``settings.feedback_ttl_days``."""
        return cls(settings.data_dir / STORE_FILE, settings.feedback_ttl_days)

    # ------------------------------------------------------------------------------ connections
    def _connect(self) -> sqlite3.Connection:
        return self.db.connect()

    def _write(self, *, synchronous: Synchronous) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self.db.write(synchronous=synchronous)

    def close(self) -> None:
        """Close the calling thread's connection (others close with their threads)."""
        self.db.close()

    # ------------------------------------------------------------------------------ answers
    def record_answer(self, answer: LoggedAnswer) -> bool:
        """Log ``answer`` (expiring old ones first). A repeated request id (a client's ``X-Request-ID``)
        replaces the logged answer of the same site; an id already used by another site is kept as
        it is (returns False), so one site's caller cannot overwrite another site's answers."""
        with self._write(synchronous="NORMAL") as conn:
            self._purge(conn, answer.created_at)
            row = conn.execute(
                "SELECT site FROM answers WHERE request_id = ?", (answer.request_id,)
            ).fetchone()
            if row is not None and row[0] != answer.site:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO answers (request_id, site, program, collection, created_at, expired,"
                " question, question_field, inputs_json, filters_json, passages_json, answer,"
                " citations_json, mode) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    answer.request_id,
                    answer.site,
                    answer.program,
                    answer.collection,
                    answer.created_at,
                    answer.question,
                    answer.question_field,
                    _dumps(answer.inputs),
                    _dumps(answer.filters),
                    _dumps(answer.passages),
                    answer.answer,
                    _dumps(answer.citations),
                    answer.mode,
                ),
            )
        return True

    def answer(self, request_id: str, *, now: float | None = None) -> LoggedAnswer | None:
        """The logged answer of ``request_id`` (``expired`` set once past the TTL), or None."""
        row = self._connect().execute("SELECT * FROM answers WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            return None
        now = time.time() if now is None else now
        return LoggedAnswer(
            request_id=row["request_id"],
            site=row["site"],
            program=row["program"],
            collection=row["collection"],
            created_at=row["created_at"],
            question=row["question"] or "",
            question_field=row["question_field"],
            inputs=_loads(row["inputs_json"], {}),
            filters=_loads(row["filters_json"], {}),
            passages=_loads(row["passages_json"], []),
            answer=row["answer"] or "",
            citations=_loads(row["citations_json"], []),
            mode=row["mode"] or "",
            expired=bool(row["expired"]) or row["created_at"] < now - self.ttl_s,
        )

    def _purge(self, conn: sqlite3.Connection, now: float) -> None:
        cutoff = now - self.ttl_s
        conn.execute(
            "UPDATE answers SET expired = 1, question = NULL, inputs_json = NULL, filters_json = NULL,"
            " passages_json = NULL, answer = NULL, citations_json = NULL"
            " WHERE expired = 0 AND created_at < ?",
            (cutoff,),
        )
        conn.execute("DELETE FROM answers WHERE expired = 1 AND created_at < ?", (cutoff - self.ttl_s,))

    def purge(self, *, now: float | None = None) -> None:
        """Expire answers past the TTL now (recording an answer does this too)."""
        with self._write(synchronous="NORMAL") as conn:
            self._purge(conn, time.time() if now is None else now)

    # ------------------------------------------------------------------------------ feedback
    def put_feedback(self, record: FeedbackRecord) -> FeedbackRecord:
        """Store ``record``, replacing any earlier feedback on the same request id (one row per id)."""
        with self._write(synchronous="FULL") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO feedback (request_id, site, program, rating, comment,"
                " correct_passage_ids_json, corrected_answer, relevant_ids_json, gold, rated_at, answer_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.answer.request_id,
                    record.answer.site,
                    record.answer.program,
                    record.rating,
                    record.comment,
                    _dumps(record.correct_passage_ids),
                    record.corrected_answer,
                    _dumps(record.relevant_ids),
                    int(record.gold),
                    record.rated_at,
                    _dumps(record.answer.to_json()),
                ),
            )
        return record

    def feedback(
        self, *, site: str | None = None, since: float | None = None, request_id: str | None = None
    ) -> list[FeedbackRecord]:
        """Feedback rows (oldest rating first), of one site, rated at or after ``since`` (unix time)."""
        where, args = _where(site=site, since=since, request_id=request_id)
        rows = (
            self._connect()
            .execute(
                "SELECT rating, comment, correct_passage_ids_json, corrected_answer, relevant_ids_json,"
                f" rated_at, answer_json FROM feedback {where} ORDER BY rated_at, request_id",
                args,
            )
            .fetchall()
        )
        return [
            FeedbackRecord(
                answer=LoggedAnswer(**json.loads(answer)),
                rating=rating,
                comment=comment,
                correct_passage_ids=json.loads(passage_ids),
                corrected_answer=corrected,
                relevant_ids=json.loads(relevant),
                rated_at=rated_at,
            )
            for rating, comment, passage_ids, corrected, relevant, rated_at, answer in rows
        ]

    def stats(self, *, site: str | None = None, now: float | None = None) -> list[ProgramStats]:
        """Per site program: live answers, ratings (+1 / -1) and gold rows, sorted by site and program."""
        now = time.time() if now is None else now
        where, args = _where(site=site)
        live_where = (where + " AND" if where else "WHERE") + " expired = 0 AND created_at >= ?"
        conn = self._connect()
        conn.execute("BEGIN")  # one snapshot for both counts
        try:
            answers = conn.execute(
                f"SELECT site, program, COUNT(*) FROM answers {live_where} GROUP BY site, program",
                (*args, now - self.ttl_s),
            ).fetchall()
            rated = conn.execute(
                "SELECT site, program, COUNT(*), SUM(rating = 1), SUM(rating = -1), SUM(gold)"
                f" FROM feedback {where} GROUP BY site, program",
                args,
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        counts: dict[tuple[str, str], list[int]] = {}
        for s, p, n in answers:
            counts.setdefault((s, p), [0, 0, 0, 0, 0])[0] = n
        for s, p, n, up, down, gold in rated:
            counts.setdefault((s, p), [0, 0, 0, 0, 0])[1:] = [n, up or 0, down or 0, gold or 0]
        return [ProgramStats(s, p, *values) for (s, p), values in sorted(counts.items())]


def _where(**conditions: Any) -> tuple[str, tuple[Any, ...]]:
    columns = {"site": "site = ?", "since": "rated_at >= ?", "request_id": "request_id = ?"}
    parts = [(columns[name], value) for name, value in conditions.items() if value is not None]
    clause = " AND ".join(text for text, _ in parts)
    return (f"WHERE {clause}" if parts else ""), tuple(value for _, value in parts)
