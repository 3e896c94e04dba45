"""The one checkpoint of the optimize commands: an append-only JSONL of finished work, so that an
interrupted run (Ctrl-C, a crash, a killed process) loses nothing finished and a rerun skips it.

Each line is one JSON record carrying the ``key`` of the run it belongs to (:func:`checkpoint_key` of
everything that changes the result) and, for the program optimizer, the ``stage`` it finished
(``before``, ``compiled``, ``after``); the retrieval-configuration search writes one record per trial
without a stage. Records are only ever appended (and flushed) while a run works, so a kill can at worst
cut the last line short: unreadable lines are ignored when reading and left out when rewriting.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Checkpoint", "checkpoint_key"]


def checkpoint_key(parts: Any) -> str:
    """The SHA-256 of ``parts`` as sorted JSON: equal inputs give equal keys across runs."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class Checkpoint:
    """The JSONL file at ``path`` (created on the first :meth:`add`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self, key: str | None = None, stage: str | None = None) -> list[dict[str, Any]]:
        """Readable records in file order, those of ``key`` (and ``stage``) when given."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if not isinstance(record, dict):
                continue
            if key is not None and record.get("key") != key:
                continue
            if stage is not None and record.get("stage") != stage:
                continue
            out.append(record)
        return out

    def find(self, key: str, stage: str | None = None) -> dict[str, Any] | None:
        """The latest record of ``key`` (and ``stage``), or ``None``."""
        found = self.records(key, stage)
        return found[-1] if found else None

    def add(self, key: str, *, stage: str | None = None, **values: Any) -> None:
        """Append one record and flush it, so that it survives a kill right after."""
        record = ({"stage": stage} if stage is not None else {}) | {"key": key, **values}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()

    def drop(self, key: str, stages: Sequence[str] | None = None) -> None:
        """Remove the records of ``key`` (only those of ``stages`` when given); no records left, no file."""
        kept = [
            r
            for r in self.records()
            if not (r.get("key") == key and (stages is None or r.get("stage") in stages))
        ]
        if not kept:
            self.path.unlink(missing_ok=True)
            return
        self.path.write_text("".join(json.dumps(r, default=str) + "\n" for r in kept), encoding="utf-8")
