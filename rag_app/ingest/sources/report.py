"""What a sync (or a source ingest) did, per source and per collection, as counts and per-item reasons.

The JSON form (:meth:`SyncReport.as_dict`) is what ``rag-app sync --json`` prints for a cron job's
log; :attr:`SyncReport.ok` decides its exit code: false when any source could not be read, any item
failed (a 404, a timeout, an unparseable file) or a prune was refused. Items ``robots.txt`` forbids
are reported as skipped, not failed (the site owner decided it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SourceReport:
    """One source's run. ``fetched``/``unchanged`` count items (downloaded or read / not downloaded:
    304, same ETag, same lastmod); ``added``/``updated``/``unchanged_documents``/``removed`` count
    documents."""

    kind: str
    location: str
    fetched: int = 0
    unchanged: int = 0
    added: int = 0
    updated: int = 0
    unchanged_documents: int = 0
    removed: int = 0
    chunks_written: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    redirects: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed

    def fail(self, uri: str, reason: str, status: int | None = None) -> None:
        entry: dict[str, Any] = {"uri": uri, "reason": reason}
        if status is not None:
            entry["status"] = status
        self.failed.append(entry)


@dataclass
class CollectionReport:
    """All sources of one ``site``/``collection`` and the prune that followed them."""

    site: str
    collection: str
    dry_run: bool = False
    sources: list[SourceReport] = field(default_factory=list)
    pruned: bool = False
    prune_note: str | None = None
    removed_ids: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and all(s.ok for s in self.sources)

    def totals(self) -> dict[str, int]:
        keys = (
            "fetched",
            "unchanged",
            "added",
            "updated",
            "unchanged_documents",
            "removed",
            "chunks_written",
        )
        out = {k: sum(getattr(s, k) for s in self.sources) for k in keys}
        out["removed"] = len(self.removed_ids)
        out["failed"] = sum(len(s.failed) for s in self.sources) + sum(1 for s in self.sources if s.error)
        return out

    def summary(self) -> str:
        t = self.totals()
        head = f"{self.site}/{self.collection}" + (" (dry run, nothing written)" if self.dry_run else "")
        verb = "would add" if self.dry_run else "added"
        return (
            f"{head}: {t['fetched']} fetched, {t['unchanged']} unchanged (not fetched); documents: "
            f"{verb} {t['added']}, updated {t['updated']}, {t['unchanged_documents']} same, "
            f"removed {t['removed']}; {t['chunks_written']} chunks written; {t['failed']} failed"
        )


@dataclass
class SyncReport:
    """Every collection a sync touched; ``ok`` is the exit status's source of truth."""

    collections: list[CollectionReport] = field(default_factory=list)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.collections)

    def lines(self) -> list[str]:
        """The human summary: a line per collection, then one per failed, skipped or redirected item."""
        out: list[str] = []
        for c in self.collections:
            out.append(c.summary())
            if c.error:
                out.append(f"  error: {c.error}")
            if c.prune_note:
                out.append(f"  {c.prune_note}")
            out += [f"  would remove {d}" for d in c.removed_ids if c.dry_run]
            for s in c.sources:
                if s.error:
                    out.append(f"  {s.kind} {s.location}: {s.error}")
                out += [f"  failed {f['uri']}: {f['reason']}" for f in s.failed]
                out += [f"  skipped {f['uri']}: {f['reason']}" for f in s.skipped]
                out += [f"  redirected {r['url']} -> {r['to']}" for r in s.redirects]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "collections": [
                {
                    **asdict(c),
                    "ok": c.ok,
                    "totals": c.totals(),
                    "sources": [{**asdict(s), "ok": s.ok} for s in c.sources],
                }
                for c in self.collections
            ],
        }


__all__ = ["CollectionReport", "SourceReport", "SyncReport"]
