"""The training-pairs file: one JSON object a line, ``{"qid", "query", "passage", "label", "doc_id",
"split"}`` (plus an optional ``rank``: the passage's 1-based place in the site's retrieval list).

Why a file between mining and training: mining needs the site's store and retriever (rag_app, LanceDB),
training needs only torch; the file is what travels to a GPU machine, and its sha256 is the data hash
on the model card. Stdlib only, for the same reason.

``split`` is ``train`` or ``dev``; :func:`split_of` decides it from the sha256 of the query text, so a
query lands in the same split on every machine and every rerun, whatever order the labels came in.
Dev rows of a query are its retrieval candidates (``rank`` set), which is what a reranker re-orders;
train rows add the positive documents' other chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["PairRow", "PairsFileError", "by_query", "file_sha256", "read_pairs", "split_of", "write_pairs"]

SPLITS = ("train", "dev")


class PairsFileError(ValueError):
    """A pairs file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class PairRow:
    """One (query, passage) pair with its label; ``rank`` is None for a passage retrieval did not return."""

    qid: str
    query: str
    passage: str
    label: int
    doc_id: str
    split: str
    rank: int | None = None

    def to_json(self) -> dict[str, object]:
        row = asdict(self)
        if row["rank"] is None:
            del row["rank"]
        return row


def split_of(query: str, dev_fraction: float = 0.2) -> str:
    """``"dev"`` for about ``dev_fraction`` of queries, chosen by the sha256 of the stripped query text."""
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    digest = hashlib.sha256(query.strip().encode("utf-8")).digest()
    return "dev" if int.from_bytes(digest[:8], "big") / 2**64 < dev_fraction else "train"


def _row(path: Path, number: int, obj: object) -> PairRow:
    def bad(why: str) -> PairsFileError:
        return PairsFileError(f"{path}, line {number}: {why}")

    if not isinstance(obj, dict):
        raise bad(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("qid", "query", "passage", "label", "doc_id", "split") if k not in obj]
    if missing:
        raise bad(f"missing field(s) {missing}")
    unknown = sorted(set(obj) - {"qid", "query", "passage", "label", "doc_id", "split", "rank"})
    if unknown:
        raise bad(f"unknown field(s) {unknown}")
    for key in ("qid", "query", "passage", "doc_id"):
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise bad(f"{key!r} must be a non-empty string")
    if obj["label"] not in (0, 1) or isinstance(obj["label"], bool):
        raise bad(f"'label' must be 0 or 1, got {obj['label']!r}")
    if obj["split"] not in SPLITS:
        raise bad(f"'split' must be 'train' or 'dev', got {obj['split']!r}")
    rank = obj.get("rank")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise bad(f"'rank' must be a positive integer, got {rank!r}")
    return PairRow(obj["qid"], obj["query"], obj["passage"], obj["label"], obj["doc_id"], obj["split"], rank)


def read_pairs(path: str | Path) -> list[PairRow]:
    """Every row of a pairs file, checked; an error naming the file and line for the first bad one."""
    path = Path(path)
    if not path.is_file():
        raise PairsFileError(
            f"{path}: pairs file not found (write one with `rag-app optimize ... --pairs-only`)"
        )
    rows: list[PairRow] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise PairsFileError(f"{path}, line {number}: not valid UTF-8") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PairsFileError(f"{path}, line {number}: invalid JSON: {exc.msg}") from None
            rows.append(_row(path, number, obj))
    if not rows:
        raise PairsFileError(f"{path}: no pairs (the file is empty)")
    return rows


def write_pairs(path: str | Path, rows: Iterable[PairRow]) -> int:
    """Write ``rows`` atomically (a temporary file renamed over ``path``); the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def file_sha256(path: str | Path) -> str:
    """sha256 hex of a file's bytes (the data hash a model card records)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def by_query(rows: Sequence[PairRow], split: str) -> dict[str, list[PairRow]]:
    """qid -> that query's rows of ``split``, in file order."""
    grouped: dict[str, list[PairRow]] = {}
    for row in rows:
        if row.split == split:
            grouped.setdefault(row.qid, []).append(row)
    return grouped
