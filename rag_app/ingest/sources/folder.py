"""A folder source: every supported file under a folder, recursively, filtered by include/exclude globs.

Folders are read whole each run, like ``rag-app ingest PATH`` always did: reading and hashing a local
file is cheap, and the content-hash diff of the pipeline is what makes an unchanged file cost no
embedding. What this walk adds is robustness for a cron job: symbolic links to folders are followed
but a link back into its own ancestry (a loop) or to a folder already walked is reported instead of
recursing forever or loading the same files twice, and a file that cannot be read (permissions, a
dangling link) is a per-file failure instead of a crash.

Document ids are those ``rag-app ingest FOLDER`` gives (the path under the folder, without suffix),
so the two commands keep one set of documents.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from rag_app.ingest.loaders import SUPPORTED_SUFFIXES
from rag_app.ingest.loaders import is_beir_dir as _is_beir_dir
from rag_app.ingest.sources.base import (
    Failure,
    GlobFilter,
    Known,
    SourceError,
    SourceEvent,
    SourceItem,
)


class FolderSource:
    """The files under ``root`` (or ``root`` itself when it is a file) that pass ``globs``."""

    def __init__(self, root: Path | str, globs: GlobFilter | None = None) -> None:
        self.root = Path(root)
        self.globs = globs or GlobFilter()
        self.key = f"folder:{self.root}"

    def scan(self, known: Mapping[str, Known]) -> Iterator[SourceEvent]:
        """One :class:`SourceItem` per file (read later, by path); unreadable ones as failures.

        ``known`` is not needed to skip anything (files are re-read); files that vanished are simply
        absent, which is what lets a prune remove them.
        """
        if not self.root.exists():
            raise SourceError(f"folder source {self.root}: no such file or directory; fix the path")
        if self.root.is_file():
            yield self._item(self.root, self.root.parent)
            return
        if _is_beir_dir(self.root):
            yield self._item(self.root / "corpus.jsonl", self.root)
            return
        yield from self._walk()

    def _item(self, path: Path, root: Path) -> SourceEvent:
        uri = str(path)
        if not os.access(path, os.R_OK) or not path.exists():
            why = "dangling symbolic link" if path.is_symlink() and not path.exists() else "permission denied"
            return Failure(uri, f"cannot read the file ({why}); fix it, or leave it out with --exclude")
        return SourceItem(uri=uri, name=path.name, source=uri, path=path, root=root)

    def _walk(self) -> Iterator[SourceEvent]:
        root = self.root
        seen: dict[tuple[int, int], str] = {}
        stack: list[tuple[Path, tuple[tuple[int, int], ...]]] = [(root, ())]
        while stack:
            folder, ancestors = stack.pop()
            try:
                info = folder.stat()
            except OSError as exc:
                yield Failure(str(folder), f"cannot read the folder ({exc.strerror})")
                continue
            ident = (info.st_dev, info.st_ino)
            if ident in ancestors:
                yield Failure(
                    str(folder),
                    f"symbolic link loop: {folder} leads back to {seen.get(ident, '?')}; not followed",
                )
                continue
            if ident in seen:
                yield Failure(str(folder), f"links to {seen[ident]}, already read; not read twice")
                continue
            seen[ident] = str(folder)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                yield Failure(str(folder), f"cannot list the folder ({exc.strerror}); check its permissions")
                continue
            subfolders: list[Path] = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                rel = path.relative_to(root).as_posix()
                if _is_dir(entry):
                    subfolders.append(path)
                    continue
                if path.suffix.lower() not in SUPPORTED_SUFFIXES or not self.globs.accepts(rel):
                    continue
                yield self._item(path, root)
            # Depth first, in name order: push in reverse so the first name is walked first.
            for sub in reversed(subfolders):
                stack.append((sub, (*ancestors, ident)))


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows links: a linked folder is walked (loops are caught above)
    except OSError:
        return False


__all__ = ["FolderSource"]
