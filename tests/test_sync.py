"""`rag-app sync` and crash safety: a crash mid-run leaves every document wholly old or wholly new and
the validators of uncommitted items unadvanced; `rag-app sync` end to end over a rag.toml declaring a
folder, URL, sitemap and S3 source (loopback web site and moto S3 server), `rag-app ingest --url`."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rag_app.cli import app
from rag_app.core.errors import InputError
from rag_app.core.settings import Settings, SourceSpec
from rag_app.ingest.pipeline import chunk_fingerprint
from rag_app.ingest.sources.state import SourceState, state_path
from rag_app.ingest.sync import sync, sync_collection
from rag_app.models.embeddings import Embedder
from rag_app.store.vector_store import VectorStore, read_columns
from tests.conftest import set_offline_cli_env
from tests.doc_site import DOCS, DocSite, Page, SiteServer, build_site, render_page
from tests.moto_s3 import MotoS3

runner = CliRunner()
SITE, COLLECTION = "builddaily", "resources"


class CrashingEmbedder:
    """The real MiniLM, except that its ``crash_on``-th ``embed_documents`` call raises (a process
    dying mid-ingest, as far as the index can tell)."""

    def __init__(self, real: Embedder, crash_on: int) -> None:
        self.real, self.crash_on, self.calls = real, crash_on, 0
        self.model_id, self.max_tokens, self.dimension = real.model_id, real.max_tokens, real.dimension

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.real.token_spans(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        if self.calls == self.crash_on:
            raise RuntimeError("simulated crash while embedding")
        return self.real.embed_documents(texts)

    def embed_query(self, text: str) -> np.ndarray:
        return self.real.embed_query(text)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with MotoS3() as url:
        yield url


@pytest.fixture
def site() -> Iterator[DocSite]:
    content = build_site()
    with SiteServer(content):
        yield content


def _hashes_per_doc(settings: Settings) -> dict[str, set[str]]:
    table = VectorStore(settings).open_table(SITE, COLLECTION)
    out: dict[str, set[str]] = {}
    for row in read_columns(table, ["doc_id", "doc_hash"]).to_pylist():
        out.setdefault(row["doc_id"], set()).add(row["doc_hash"])
    return out


def test_a_crash_mid_sync_leaves_documents_whole_and_validators_unadvanced(
    settings: Settings, site: DocSite, tmp_path: Path, minilm: Embedder
) -> None:
    fast = settings.model_copy(update={"fetch_per_host_rps": 200.0})
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "env.md").write_text((DOCS / "environment-variables.md").read_text())
    urls = [site.page_url(p) for p in site.in_sitemap[:2]]
    specs = [
        SourceSpec(site=SITE, collection=COLLECTION, kind="folder", location=str(folder)),
        SourceSpec(site=SITE, collection=COLLECTION, kind="url", location=urls),
    ]
    assert sync_collection(fast, SITE, COLLECTION, specs, embedder=minilm).ok
    before = _hashes_per_doc(fast)
    path = state_path(fast, SITE, COLLECTION)
    fingerprint = chunk_fingerprint(fast, minilm)
    old_etag = SourceState.load(path, fingerprint).items[urls[0]].validators.etag

    # Editors change the file and both pages; a third page appears. The run dies while embedding
    # the URL source (the folder source's document was committed just before).
    (folder / "env.md").write_text((DOCS / "virtual-environments.md").read_text())
    for p, name in zip(site.in_sitemap[:2], ("newsletter.md", "contributing.md"), strict=True):
        site.pages[p] = Page(render_page(DOCS / name)[1])
    new_url = site.page_url(site.in_sitemap[2])
    crash = CrashingEmbedder(minilm, crash_on=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sync_collection(fast, SITE, COLLECTION, [specs[0], _urls(specs[1], [*urls, new_url])], embedder=crash)

    after = _hashes_per_doc(fast)
    assert all(len(h) == 1 for h in after.values())  # every document wholly one version
    assert after["env"] != before["env"]  # committed: wholly new
    assert after[urls[0]] == before[urls[0]] and after[urls[1]] == before[urls[1]]  # wholly old
    assert new_url not in after
    remembered = SourceState.load(path, fingerprint).items
    assert remembered[urls[0]].validators.etag == old_etag  # not advanced: fetched again next run
    assert new_url not in remembered

    rerun = sync_collection(
        fast, SITE, COLLECTION, [specs[0], _urls(specs[1], [*urls, new_url])], embedder=minilm
    )
    assert rerun.ok
    assert (rerun.sources[1].fetched, rerun.sources[1].updated, rerun.sources[1].added) == (3, 2, 1)
    assert rerun.sources[0].unchanged_documents == 1 and rerun.sources[0].chunks_written == 0


def _urls(spec: SourceSpec, urls: list[str]) -> SourceSpec:
    return spec.model_copy(update={"location": urls})


def test_sync_checks_what_it_is_asked_for(settings: Settings, minilm: Embedder) -> None:
    with pytest.raises(InputError, match=r"no sources declared.*\[\[sources\]\]"):
        sync(settings, embedder=minilm)
    with pytest.raises(InputError, match="unknown site 'nosuch'"):
        sync(settings, [], site="nosuch", embedder=minilm)
    with pytest.raises(InputError, match="--collection needs --site"):
        sync(settings, [], collection="canon", embedder=minilm)


def _toml(path: Path, data_dir: Path, folder: Path, site: DocSite, s3_endpoint: str, bucket: str) -> Path:
    lines = [
        f'data_dir = "{data_dir}"',
        "fetch_per_host_rps = 200.0",
        f's3_endpoint_url = "{s3_endpoint}"',
        's3_region = "us-east-1"',
        "",
        "[[sources]]",
        'site = "sagedaily"',
        'collection = "canon"',
        'kind = "folder"',
        f'location = "{folder}"',
        'include = ["*.md"]',
        "prune = true",
        "",
        "[[sources]]",
        'site = "builddaily"',
        'collection = "resources"',
        'kind = "url"',
        f'location = ["{site.page_url(site.in_sitemap[0])}", "{site.page_url("/docs/gone.html")}"]',
        "",
        "[[sources]]",
        'site = "paiddaily"',
        'collection = "tickers"',
        'kind = "sitemap"',
        f'location = "{site.page_url("/sitemap.xml")}"',
        "prune = true",
        "",
        "[[sources]]",
        'site = "paiddaily"',
        'collection = "catalysts"',
        'kind = "s3"',
        f'location = "s3://{bucket}/docs/"',
        "prune = true",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rag_app_sync_end_to_end(
    tmp_path: Path,
    site: DocSite,
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data_dir = tmp_path / "rag"
    set_offline_cli_env(monkeypatch, data_dir)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    folder = tmp_path / "canon"
    folder.mkdir()
    (folder / "links.md").write_text((DOCS / "external-links.md").read_text())
    (folder / "env.md").write_text((DOCS / "environment-variables.md").read_text())
    (folder / "skip.txt").write_text("not included by the glob\n")
    config = _toml(tmp_path / "rag.toml", data_dir, folder, site, s3_endpoint, "sync-e2e")
    settings = Settings.load(config)
    from rag_app.ingest.sources.s3 import s3_client

    client = s3_client(settings)
    client.create_bucket(Bucket="sync-e2e")
    client.put_object(Bucket="sync-e2e", Key="docs/mgmt.md", Body=(DOCS / "management.md").read_bytes())

    first = runner.invoke(app, ["sync", "--json", "--config", str(config)])
    assert first.exit_code == 1, first.output  # the 404 fails the run ...
    out = json.loads(first.stdout)
    by_name = {f"{c['site']}/{c['collection']}": c for c in out["collections"]}
    assert not out["ok"] and set(by_name) == {
        "sagedaily/canon",
        "builddaily/resources",
        "paiddaily/tickers",
        "paiddaily/catalysts",
    }
    url_source = by_name["builddaily/resources"]["sources"][0]
    assert url_source["failed"] == [
        {"uri": site.page_url("/docs/gone.html"), "reason": "HTTP 404 Not Found", "status": 404}
    ]
    assert url_source["added"] == 1  # ... and the rest is ingested
    assert by_name["sagedaily/canon"]["totals"]["added"] == 2
    assert by_name["paiddaily/tickers"]["totals"]["added"] == 4
    assert by_name["paiddaily/catalysts"]["totals"]["added"] == 1
    assert all(by_name[n]["ok"] for n in ("sagedaily/canon", "paiddaily/tickers", "paiddaily/catalysts"))

    # A second run of one site: nothing changed, nothing fetched, exit 0; a dry run writes nothing.
    (folder / "links.md").unlink()
    dry = runner.invoke(app, ["sync", "--site", "sagedaily", "--dry-run", "--config", str(config)])
    assert dry.exit_code == 0, dry.output
    assert "would remove links" in dry.stdout
    again = runner.invoke(app, ["sync", "--json", "--site", "paiddaily", "--config", str(config)])
    assert again.exit_code == 0, again.output
    totals = {c["collection"]: c["totals"] for c in json.loads(again.stdout)["collections"]}
    assert totals["tickers"]["unchanged"] == 4 and totals["tickers"]["fetched"] == 0
    assert totals["catalysts"]["unchanged"] == 1 and totals["catalysts"]["chunks_written"] == 0
    pruned = runner.invoke(
        app, ["sync", "--site", "sagedaily", "--collection", "canon", "--config", str(config)]
    )
    assert pruned.exit_code == 0 and "removed 1" in pruned.stdout

    # `rag-app ingest --url` shares the machinery: a 404 is reported and exits 1.
    one = runner.invoke(
        app,
        [
            "ingest",
            "--site",
            "builddaily",
            "--collection",
            "resources",
            "--url",
            site.page_url(site.in_sitemap[1]),
            "--url",
            site.page_url("/docs/gone.html"),
            "--config",
            str(config),
        ],
    )
    assert one.exit_code == 1 and "failed " + site.page_url("/docs/gone.html") in one.stdout
    assert "1 fetched" in one.stdout
