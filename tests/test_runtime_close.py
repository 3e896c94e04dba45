"""``Runtime.close`` releases what the runtime built (remote models' connections; its trace exporter)
and leaves what it was handed alone; a server's shutdown calls it (remote reranker on the TEI stand-in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from rag_app.core.settings import Settings
from rag_app.runtime import Runtime
from rag_app.server.app import create_app
from tests.conftest import make_test_settings


def remote_models(tmp_path: Path, url: str) -> Settings:
    return make_test_settings(
        tmp_path / "rag",
        sites={"builddaily": ["resources"]},
        hf_cache_dir=tmp_path / "empty-hf-cache",
        reranker_backend="remote",
        reranker_url=url,
        reranker_api="tei",
        reranker_model="tiny-ce",
        remote_retries=0,
    )


def test_close_releases_built_remote_models_but_not_handed_in_ones(tei: Any, tmp_path: Path) -> None:
    runtime = Runtime(remote_models(tmp_path, tei.url))
    built = runtime.reranker
    assert built.backend == "remote" and not built.client._client.is_closed  # type: ignore[attr-defined]
    runtime.close()
    assert built.client._client.is_closed  # type: ignore[attr-defined]

    handed = Runtime(remote_models(tmp_path, tei.url)).reranker
    borrower = Runtime(remote_models(tmp_path, tei.url), reranker=handed)
    borrower.close()
    assert not handed.client._client.is_closed  # type: ignore[attr-defined]


def test_server_shutdown_closes_its_runtime(tei: Any, tmp_path: Path) -> None:
    app = create_app(remote_models(tmp_path, tei.url))
    with TestClient(app):
        reranker = app.state.rag.runtime.reranker
        client = reranker.inner.client._client  # the gate's wrapped remote reranker
        assert not client.is_closed
    assert client.is_closed
