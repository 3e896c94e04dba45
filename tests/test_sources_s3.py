"""Object-storage sources against a loopback moto S3 server (a real S3 HTTP API on 127.0.0.1, started
by the fixture; fake credentials for boto3 only): listing under a prefix, globs, ETag skip without
download, changed objects replaced, deleted objects pruned, a failed listing reported."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from rag_app.core.settings import Settings, SourceSpec
from rag_app.ingest.sources.s3 import parse_s3_uri, s3_client
from rag_app.ingest.sync import sync_collection
from rag_app.models.embeddings import Embedder
from rag_app.store.vector_store import VectorStore
from tests.conftest import SHARED_DATA
from tests.moto_s3 import MotoS3

SITE, COLLECTION = "paiddaily", "catalysts"
BUCKET = "filings"
DOCS = SHARED_DATA / "fastapi_docs" / "pages"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (module-scoped: it takes a second to start)."""
    with MotoS3() as url:
        yield url


@pytest.fixture
def s3_settings(settings: Settings, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings pointing at the loopback endpoint; fake credentials in boto3's own environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return settings.model_copy(update={"s3_endpoint_url": s3_endpoint, "s3_region": "us-east-1"})


@pytest.fixture
def bucket(s3_settings: Settings, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh bucket of real content: Markdown and text pages, an image (not a document), and a
    page outside the prefix."""
    client = s3_client(s3_settings)
    name = f"{BUCKET}-{abs(hash(request.node.name)) % 10**8}"
    client.create_bucket(Bucket=name)
    put = client.put_object
    put(Bucket=name, Key="docs/env.md", Body=(DOCS / "environment-variables.md").read_bytes())
    put(Bucket=name, Key="docs/links.md", Body=(DOCS / "external-links.md").read_bytes())
    put(Bucket=name, Key="docs/team/management.txt", Body=(DOCS / "management.md").read_bytes())
    put(Bucket=name, Key="docs/logo.png", Body=b"\x89PNG\r\n\x1a\n")
    put(Bucket=name, Key="other/venv.md", Body=(DOCS / "virtual-environments.md").read_bytes())
    yield client, name


class GetCounter:
    """Counts GetObject calls a real boto3 client makes (through botocore's public event hooks)."""

    def __init__(self, client: Any) -> None:
        self.keys: list[str] = []
        client.meta.events.register("provide-client-params.s3.GetObject", self)

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        self.keys.append(params["Key"])


def _spec(name: str, **kw: Any) -> SourceSpec:
    return SourceSpec(site=SITE, collection=COLLECTION, kind="s3", location=f"s3://{name}/docs/", **kw)


def _ids(settings: Settings) -> set[str]:
    store = VectorStore(settings)
    table = store.open_table(SITE, COLLECTION)
    return set(store.doc_hashes(table)) if table is not None else set()


def test_prefix_is_listed_unchanged_objects_are_not_downloaded(
    s3_settings: Settings, bucket: Any, minilm: Embedder
) -> None:
    client, name = bucket
    counter = GetCounter(client)
    first = sync_collection(s3_settings, SITE, COLLECTION, [_spec(name)], embedder=minilm, s3_client=client)
    src = first.sources[0]
    assert first.ok and (src.fetched, src.added) == (3, 3)
    expected = {
        f"s3://{name}/docs/env.md",
        f"s3://{name}/docs/links.md",
        f"s3://{name}/docs/team/management.txt",
    }
    assert _ids(s3_settings) == expected
    assert sorted(counter.keys) == ["docs/env.md", "docs/links.md", "docs/team/management.txt"]

    counter.keys.clear()
    second = sync_collection(s3_settings, SITE, COLLECTION, [_spec(name)], embedder=minilm, s3_client=client)
    src = second.sources[0]
    assert (src.fetched, src.unchanged, src.chunks_written) == (0, 3, 0)
    assert counter.keys == []  # the listing's ETags were enough

    client.put_object(Bucket=name, Key="docs/links.md", Body=b"# Links\n\nA new list of FastAPI articles.\n")
    third = sync_collection(s3_settings, SITE, COLLECTION, [_spec(name)], embedder=minilm, s3_client=client)
    src = third.sources[0]
    assert (src.fetched, src.unchanged, src.updated) == (1, 2, 1)
    assert counter.keys == ["docs/links.md"]


def test_globs_and_prune_of_deleted_objects(s3_settings: Settings, bucket: Any, minilm: Embedder) -> None:
    client, name = bucket
    spec = _spec(name, prune=True, exclude=["team/*"])
    first = sync_collection(s3_settings, SITE, COLLECTION, [spec], embedder=minilm, s3_client=client)
    assert first.sources[0].added == 2
    client.delete_object(Bucket=name, Key="docs/env.md")
    second = sync_collection(s3_settings, SITE, COLLECTION, [spec], embedder=minilm, s3_client=client)
    assert second.ok and second.removed_ids == [f"s3://{name}/docs/env.md"]
    assert second.sources[0].removed == 1
    assert _ids(s3_settings) == {f"s3://{name}/docs/links.md"}


def test_a_failed_listing_is_reported_and_prunes_nothing(
    s3_settings: Settings, bucket: Any, minilm: Embedder
) -> None:
    client, name = bucket
    sync_collection(s3_settings, SITE, COLLECTION, [_spec(name)], embedder=minilm, s3_client=client)
    missing = SourceSpec(
        site=SITE, collection=COLLECTION, kind="s3", location="s3://no-such-bucket/x/", prune=True
    )
    report = sync_collection(s3_settings, SITE, COLLECTION, [missing], embedder=minilm)  # settings' client
    assert not report.ok and "listing failed" in (report.sources[0].error or "")
    assert "not pruned" in (report.prune_note or "") and len(_ids(s3_settings)) == 3


def test_s3_uri_parsing() -> None:
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        parse_s3_uri("https://bucket/a")
