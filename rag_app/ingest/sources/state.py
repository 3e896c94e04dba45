"""What the last committed run of a collection's sources remembered: validators and document ids per item.

One small JSON file per collection, ``<data_dir>/sources/<site>__<collection>.json``, replaced
atomically (write a temporary file, fsync, rename), so a crash leaves the old file or the new one,
never half of one. :mod:`rag_app.ingest.sync` updates it only after the documents an item produced
are committed: a crash mid-run leaves the uncommitted items unremembered, and the next run fetches
them again.

The file also records the chunking fingerprint (embedder, chunk size, overlap) it was written
under: when that changes, every document must be re-embedded, so the remembered validators are
ignored and everything is fetched again (a 304 would otherwise keep the old vectors).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rag_app.core.errors import InputError
from rag_app.core.settings import Settings
from rag_app.ingest.sources.base import Known, Validators

FORMAT_VERSION = 1


def state_path(settings: Settings, site: str, collection: str) -> Path:
    """Where ``site``/``collection``'s source state lives."""
    return settings.data_dir / "sources" / f"{site}__{collection}.json"


class SourceState:
    """The remembered items of one collection (``uri`` -> :class:`Known`), loaded from and saved to
    ``path``. Not thread-safe: one sync of a collection at a time (saves happen under its writer lock)."""

    def __init__(self, path: Path, fingerprint: str, items: dict[str, Known] | None = None) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.items: dict[str, Known] = items or {}

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> SourceState:
        """The state at ``path``; empty when the file is missing or was written under another
        fingerprint. A corrupt file is an error naming it (delete it to fetch everything again)."""
        if not path.is_file():
            return cls(path, fingerprint)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("version") != FORMAT_VERSION or raw.get("fingerprint") != fingerprint:
                return cls(path, fingerprint)
            items = {uri: _known(value) for uri, value in raw.get("items", {}).items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise InputError(
                f"source state {path} is unreadable ({exc}); delete it and the next run fetches every "
                "item again (unchanged documents are still not re-embedded)"
            ) from None
        return cls(path, fingerprint, items)

    def known(self, present_ids: Iterable[str] | None = None) -> dict[str, Known]:
        """Every remembered item, by URI (a source looks up only the URIs it lists, so editing a
        source's URL list keeps what its other URLs remembered). With ``present_ids`` (the ids the
        table holds), an item whose documents are not all in the table is left out: fetched again."""
        present = None if present_ids is None else set(present_ids)
        return {
            uri: known
            for uri, known in self.items.items()
            if present is None or set(known.doc_ids) <= present
        }

    def owned_ids(self, source_key: str) -> set[str]:
        """Every document id ``source_key`` produced, as remembered."""
        return {d for known in self.items.values() if known.source == source_key for d in known.doc_ids}

    def update(self, entries: Mapping[str, Known], dropped: Iterable[str] = ()) -> None:
        """Remember ``entries`` (uri -> what its committed documents are) and forget ``dropped``."""
        for uri in dropped:
            self.items.pop(uri, None)
        self.items.update(entries)

    def save(self) -> None:
        """Write the file atomically (temporary file in the same folder, fsync, rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "items": {uri: _dump(known) for uri, known in sorted(self.items.items())},
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(body, handle, ensure_ascii=False, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _known(value: dict[str, Any]) -> Known:
    return Known(
        validators=Validators(value.get("etag"), value.get("last_modified"), value.get("version")),
        doc_ids=tuple(str(d) for d in value.get("doc_ids", [])),
        source=str(value.get("source", "")),
    )


def _dump(known: Known) -> dict[str, Any]:
    v = known.validators
    out: dict[str, Any] = {"source": known.source, "doc_ids": list(known.doc_ids)}
    out.update(
        {
            k: val
            for k, val in (("etag", v.etag), ("last_modified", v.last_modified), ("version", v.version))
            if val
        }
    )
    return out


__all__ = ["SourceState", "state_path"]
