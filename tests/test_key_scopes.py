"""Issue #12 (HTTP ingest): API keys gain scopes (read, write). Writes (POST and DELETE documents) need
a key with the write scope for the site (403 otherwise); reads stay as they were; key files written
before scopes existed load as read-only. The server is a real uvicorn with real httpx calls.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from rag_app.cli import app as cli_app
from rag_app.core.errors import InputError
from rag_app.core.settings import Settings
from rag_app.server.app import create_app
from rag_app.server.auth import KeyChecker, KeyStoreError, add_key, list_keys
from tests.conftest import make_test_settings
from tests.live_server import LiveServer

DOCS = "/v1/sites/builddaily/collections/resources/documents"
runner = CliRunner()


def write_pre_scope_key_file(path: Path, name: str, sites: list[str]) -> str:
    """A keys file exactly as the code before scopes wrote it (no ``scopes`` field); returns the key."""
    key_id = secrets.token_hex(6)
    key = f"rag-{key_id}-{secrets.token_urlsafe(32)}"
    salt = secrets.token_bytes(16)
    entry = {
        "name": name,
        "sites": sites,
        "key_id": key_id,
        "salt": salt.hex(),
        "hash": hashlib.sha256(salt + key.encode()).hexdigest(),
        "algorithm": "sha256(salt+key)",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "keys": [entry]}, indent=2) + "\n", encoding="utf-8")
    return key


# ----------------------------------------------------------------------------------- the keys file


def test_old_key_files_load_as_read_only(tmp_path: Path) -> None:
    settings = make_test_settings(tmp_path / "rag")
    key = write_pre_scope_key_file(settings.keys_file, "legacy-bot", ["builddaily"])
    [info] = list_keys(settings)
    assert info.scopes == ("read",)
    checked = KeyChecker(settings).check(f"Bearer {key}")
    assert checked is not None and checked.allows("builddaily") and not checked.can_write("builddaily")


def test_scopes_are_checked_and_write_includes_read(tmp_path: Path) -> None:
    settings = make_test_settings(tmp_path / "rag")
    add_key(settings, "reader", ["builddaily"])
    add_key(settings, "editor", ["builddaily"], ["write"])
    add_key(settings, "ops", ["*"], ["READ", "write"])
    assert {k.name: k.scopes for k in list_keys(settings)} == {
        "reader": ("read",),
        "editor": ("read", "write"),
        "ops": ("read", "write"),
    }
    with pytest.raises(InputError, match=r"unknown scope.*'admin'.*read, write"):
        add_key(settings, "boss", ["builddaily"], ["read", "admin"])
    with pytest.raises(InputError, match="no scope given"):
        add_key(settings, "none", ["builddaily"], [" "])
    assert "boss" not in {k.name for k in list_keys(settings)}

    raw = json.loads(settings.keys_file.read_text())
    raw["keys"][0]["scopes"] = ["read", "sudo"]  # a hand-edited file is refused, never widened
    settings.keys_file.write_text(json.dumps(raw))
    with pytest.raises(KeyStoreError, match=r"key entry 0 is malformed.*sudo"):
        list_keys(settings)


def test_keys_cli_takes_scopes(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "rag")]
    added = runner.invoke(
        cli_app, ["keys", "add", "--name", "cms", "--sites", "builddaily", "--scopes", "read,write", *data]
    )
    assert added.exit_code == 0, added.output
    assert added.stdout.strip().splitlines()[-1].startswith("rag-")
    assert (
        runner.invoke(cli_app, ["keys", "add", "--name", "chat", "--sites", "builddaily", *data]).exit_code
        == 0
    )
    listed = json.loads(runner.invoke(cli_app, ["keys", "list", "--json", *data]).stdout)
    assert [(k["name"], k["scopes"]) for k in listed] == [("cms", ["read", "write"]), ("chat", ["read"])]
    text = runner.invoke(cli_app, ["keys", "list", *data]).stdout
    assert "scopes=read,write" in text and re.search(r"chat\s+sites=builddaily\s+scopes=read\s", text)
    bad = runner.invoke(
        cli_app, ["keys", "add", "--name", "x", "--sites", "builddaily", "--scopes", "delete", *data]
    )
    assert bad.exit_code == 2 and "unknown scope(s) 'delete'" in bad.output


# ----------------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, minilm: Any
) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    settings: Settings = make_test_settings(tmp_path_factory.mktemp("key-scopes"))
    keys = {"legacy": write_pre_scope_key_file(settings.keys_file, "legacy", ["builddaily"])}
    keys["reader"] = add_key(settings, "reader", ["builddaily"])
    keys["writer"] = add_key(settings, "writer", ["builddaily"], ["read", "write"])
    keys["paid-writer"] = add_key(settings, "paid-writer", ["paiddaily"], ["write"])
    with LiveServer(create_app(settings, embedder=minilm)) as server:
        yield server, keys


def call(server: LiveServer, key: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with server.client(headers=headers) as client:
        return client.request(method, path, **kwargs)


DOC = {"documents": [{"id": "scoped-doc", "text": "Only editors may add this page to the index."}]}


def test_writes_need_the_write_scope_for_the_site(keyed: tuple[LiveServer, dict[str, str]]) -> None:
    server, keys = keyed
    assert call(server, None, "POST", DOCS, json=DOC).status_code == 401
    for name in ("reader", "legacy"):
        reply = call(server, keys[name], "POST", DOCS, json=DOC)
        assert reply.status_code == 403, reply.text
        error = reply.json()["error"]
        assert error["code"] == "forbidden" and "read-only" in error["message"]
        assert "--scopes read,write" in error["message"]
        assert call(server, keys[name], "DELETE", f"{DOCS}/scoped-doc").status_code == 403
        assert call(server, keys[name], "GET", DOCS).status_code == 200  # reads stay as they were
    other = call(server, keys["paid-writer"], "POST", DOCS, json=DOC)
    assert other.status_code == 403 and "may not use site 'builddaily'" in other.json()["error"]["message"]
    files = [("files", ("page.md", b"# Page\n\nText.\n", "text/markdown"))]
    assert call(server, keys["reader"], "POST", DOCS, files=files).status_code == 403
    assert call(server, None, "GET", DOCS).status_code == 401


def test_a_write_key_ingests_and_deletes(keyed: tuple[LiveServer, dict[str, str]]) -> None:
    server, keys = keyed
    accepted = call(server, keys["writer"], "POST", DOCS, json=DOC)
    assert accepted.status_code == 202, accepted.text
    status_url = accepted.json()["status_url"]
    for _ in range(1200):
        job = call(server, keys["reader"], "GET", status_url).json()  # a reader of the site may poll it
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.05)
    assert job["status"] == "succeeded" and job["documents"] == [
        {"id": "scoped-doc", "status": "added", "file": None, "reason": None}
    ]
    assert call(server, keys["paid-writer"], "GET", status_url).status_code == 403  # another site's job
    listed = call(server, keys["legacy"], "GET", DOCS).json()
    assert [d["id"] for d in listed["documents"]] == ["scoped-doc"]
    deleted = call(server, keys["writer"], "DELETE", f"{DOCS}/scoped-doc")
    assert deleted.status_code == 200 and deleted.json()["chunks_removed"] >= 1
    assert call(server, keys["reader"], "GET", DOCS).json()["total"] == 0
