"""The one-call public API (``rag_app.ingest``, ``search``, ``ask``) over the real sample data."""

from __future__ import annotations

from pathlib import Path

import rag_app
from tests.conftest import SAMPLE_DATA, make_test_settings


def test_ingest_search_ask_in_one_call_each(tmp_path: Path) -> None:
    settings = make_test_settings(tmp_path / "rag")
    report = rag_app.ingest_files(
        settings, "builddaily", "resources", [SAMPLE_DATA / "builddaily" / "resources"], progress=False
    )
    assert report.added > 0 and report.chunks_written > 0
    found = rag_app.search(settings, "builddaily", "How much does Sage Daily cost?", k=5)
    assert found["mode"] == "hybrid" and len(found["passages"]) == 5 and found["reranked"] is False
    out = rag_app.ask(settings, "builddaily", "chat_bridge", "How much does Sage Daily cost?")
    assert out.mode == "extractive" and out.citations and out.passages
    assert isinstance(rag_app.Runtime(settings).settings, rag_app.Settings)
