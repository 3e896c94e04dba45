"""API keys: the keys file (hashed, salted, 0600, atomic), bearer checks, site scopes, loopback-only
without keys; plus the real app under uvicorn with keys on (401/403, open health endpoints).

The index holds three BuildDaily pages (enough to answer); ``paiddaily`` is configured but not
ingested, so it serves as the "other site" for scope checks (and keeps /readyz at 503, which is
checked too). The reranker falls back to retrieval order (its model is deliberately missing).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rag_app.core.errors import InputError
from rag_app.core.settings import Settings
from rag_app.ingest.pipeline import ingest_paths
from rag_app.server import serve
from rag_app.server.app import create_app
from rag_app.server.auth import AuthError, KeyChecker, add_key, list_keys, revoke_key
from rag_app.server.run import SETTINGS_ENV, app_from_env, check_bind, is_loopback
from tests.live_server import LiveServer

REPO_ROOT = Path(__file__).resolve().parents[1]
RESOURCES = REPO_ROOT / "data" / "builddaily" / "resources"
PAGES = [RESOURCES / "guides" / "api-keys.md", RESOURCES / "guides" / "sso.md", RESOURCES / "pricing.md"]

pytestmark = pytest.mark.timeout(300)


def make_settings(root: Path) -> Settings:
    return Settings(
        data_dir=root / "rag",
        programs_dir=REPO_ROOT / "programs",
        sites={"builddaily": ["resources"], "paiddaily": ["tickers", "catalysts"]},
        lm_model=None,
        reranker_model=str(root / "deliberately-missing-cross-encoder"),
        reranker_revision=None,
        reranker_on_missing="fallback",
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


# =========================================================================================== keys file


def test_add_list_revoke(settings: Settings) -> None:
    key = add_key(settings, "chat-frontend", ["builddaily"])
    assert key.startswith("rag-") and len(key) > 50
    path = settings.keys_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert key not in text and key.split("-", 2)[2] not in text  # the secret is never stored
    (entry,) = json.loads(text)["keys"]
    assert entry["hash"] == hashlib.sha256(bytes.fromhex(entry["salt"]) + key.encode()).hexdigest()
    assert {"name", "sites", "salt", "hash", "created_at"} <= set(entry)

    other = add_key(settings, "ops", ["*"])
    assert other != key
    infos = list_keys(settings)
    assert [(i.name, i.sites) for i in infos] == [("chat-frontend", ("builddaily",)), ("ops", ("*",))]
    assert dt.datetime.fromisoformat(infos[0].created_at).tzinfo is not None
    salts = [e["salt"] for e in json.loads(path.read_text())["keys"]]
    assert len(set(salts)) == 2

    with pytest.raises(InputError, match="already exists"):
        add_key(settings, "chat-frontend", ["builddaily"])
    with pytest.raises(InputError, match="unknown site"):
        add_key(settings, "x", ["nowhere"])
    with pytest.raises(InputError, match="at least one site"):
        add_key(settings, "x", [])
    with pytest.raises(InputError, match="key name"):
        add_key(settings, "bad name!", ["builddaily"])

    assert revoke_key(settings, "chat-frontend").name == "chat-frontend"
    assert [i.name for i in list_keys(settings)] == ["ops"]
    with pytest.raises(InputError, match="no API key named"):
        revoke_key(settings, "chat-frontend")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    leftovers = {p.name for p in path.parent.iterdir()} - {"api_keys.json", "api_keys.json.lock", "lancedb"}
    assert not leftovers, leftovers  # no temp files from the atomic writes


def test_concurrent_adds_lose_nothing(settings: Settings) -> None:
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            add_key(settings, f"k{i}", ["builddaily"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(i.name for i in list_keys(settings)) == [f"k{i}" for i in range(8)]


def test_key_checker(settings: Settings) -> None:
    checker = KeyChecker(settings)
    assert checker.required is False and checker.check(None) is None  # no keys: auth off
    key = add_key(settings, "bot", ["builddaily"])
    assert checker.required is True  # picked up from disk
    assert checker.check(f"Bearer {key}").name == "bot"
    assert checker.check(f"bearer   {key}  ").name == "bot"
    for header in (
        None,
        "",
        "Bearer",
        f"Basic {key}",
        f"Bearer {key}x",
        f"Bearer {key[:-1]}",
        "Bearer rag-nope",
    ):
        with pytest.raises(AuthError) as info:
            checker.check(header)
        assert info.value.status == 401
    bot = checker.check(f"Bearer {key}")
    assert bot is not None and bot.allows("builddaily") and not bot.allows("paiddaily")  # 403: routes
    revoke_key(settings, "bot")
    with pytest.raises(AuthError):
        checker.check(f"Bearer {key}")
    assert checker.required is True  # once on, auth stays on even with every key revoked
    with pytest.raises(AuthError):
        checker.check(None)


# ========================================================================================= binding


def test_loopback_detection() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.1.2.3", "192.168.0.7", "host.invalid"):
        assert not is_loopback(host), host


def test_serve_refuses_public_host_without_keys(settings: Settings) -> None:
    with pytest.raises(InputError, match="no API keys exist") as info:
        serve(settings, host="0.0.0.0", port=0)
    assert "127.0.0.1" in str(info.value) and "keys add" in str(info.value)
    assert check_bind(settings, "127.0.0.1") is False  # loopback is fine, auth off
    add_key(settings, "edge", ["*"])
    assert check_bind(settings, "0.0.0.0") is True  # with a key, any interface


def test_app_factory_for_workers(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTINGS_ENV, settings.model_dump_json())
    monkeypatch.delenv("RAG_SERVER_LOG_LEVEL", raising=False)
    app = app_from_env()
    assert app.state.rag.settings == settings
    monkeypatch.delenv(SETTINGS_ENV)
    with pytest.raises(RuntimeError, match=SETTINGS_ENV):
        app_from_env()


# ============================================================================================ live


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = make_settings(tmp_path_factory.mktemp("auth"))
    ingest_paths(settings, "builddaily", "resources", PAGES, progress=False)
    return settings


@pytest.fixture(scope="module")
def keys(module_settings: Settings) -> dict[str, str]:
    return {
        "builddaily": add_key(module_settings, "builddaily-bot", ["builddaily"]),
        "all": add_key(module_settings, "ops", ["*"]),
    }


@pytest.fixture(scope="module")
def live(module_settings: Settings, keys: dict[str, str]) -> Iterator[LiveServer]:
    with LiveServer(create_app(module_settings)) as server:
        yield server


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


SEARCH = {"site": "builddaily", "query": "how do I rotate an API key"}


def test_open_endpoints_need_no_key(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/docs").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    r = client.get("/readyz")  # open; 503 because paiddaily has no index yet
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["index"]["ok"] is False and "paiddaily" in checks["index"]["error"]
    assert checks["reranker"]["available"] is False and checks["reranker"]["ok"] is True


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer rag-0123456789ab-wrong"},
        {"Authorization": "Token abc"},
    ],
)
def test_missing_or_wrong_key_is_401(client: httpx.Client, headers: dict[str, str]) -> None:
    for method, path, body in [
        ("POST", "/v1/search", SEARCH),
        ("POST", "/v1/chat-bridge", {"messages": []}),
        ("POST", "/v1/programs/builddaily/resources_search", {"query": "sso"}),
        ("GET", "/v1/programs", None),
        ("GET", "/metrics", None),
    ]:
        r = client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (path, r.text)
        error = r.json()["error"]
        assert error["code"] == "unauthorized" and error["request_id"] == r.headers["x-request-id"]
        assert r.headers["www-authenticate"] == "Bearer"


def test_right_key_and_site_scopes(client: httpx.Client, keys: dict[str, str]) -> None:
    bd, everything = bearer(keys["builddaily"]), bearer(keys["all"])
    r = client.post("/v1/search", json=SEARCH, headers=bd)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["passages"] and body["reranked"] is False and body["notes"]  # fallback reranker says so
    assert all(p["rerank_score"] is None for p in body["passages"])
    r = client.post(
        "/v1/chat-bridge",
        json={"messages": [{"role": "user", "content": "How do I rotate keys?"}]},
        headers=bd,
    )
    assert r.status_code == 200 and r.json()["answer"]
    metrics = client.get("/metrics", headers=bd)
    assert metrics.status_code == 200
    # requests refused before routing are still counted under their route template
    assert 'rag_http_requests_total{method="POST",route="/v1/search",status="401"}' in metrics.text
    assert 'rag_errors_total{code="unauthorized"}' in metrics.text
    assert client.get("/v1/programs", headers=bd).json() == {
        "programs": {"builddaily": ["chat_bridge", "resources_search"]}
    }
    assert set(client.get("/v1/programs", headers=everything).json()["programs"]) == {
        "builddaily",
        "paiddaily",
    }

    # a key scoped to builddaily may not touch paiddaily: 403, on every route that names a site
    forbidden = [
        ("/v1/search", {"site": "paiddaily", "query": "earnings"}),
        ("/v1/chat-bridge", {"site": "paiddaily", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/programs/paiddaily/tickers", {"setup": "breakout"}),
    ]
    for path, payload in forbidden:
        r = client.post(path, json=payload, headers=bd)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["code"] == "forbidden" and "paiddaily" in r.json()["error"]["message"]
    r = client.post("/v1/search", json={"site": "paiddaily", "query": "earnings"}, headers=everything)
    assert r.status_code == 200 and r.json()["passages"] == []  # allowed; nothing ingested there


def test_keys_added_and_revoked_while_running(client: httpx.Client, module_settings: Settings) -> None:
    temp = add_key(module_settings, "temporary", ["builddaily"])
    assert client.post("/v1/search", json=SEARCH, headers=bearer(temp)).status_code == 200
    revoke_key(module_settings, "temporary")
    r = client.post("/v1/search", json=SEARCH, headers=bearer(temp))
    assert r.status_code == 401


def test_without_keys_auth_is_off_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, module_settings: Settings
) -> None:
    settings = module_settings.model_copy(
        update={"data_dir": tmp_path / "rag", "sites": {"builddaily": ["resources"]}}
    )
    ingest_paths(settings, "builddaily", "resources", PAGES[:1], progress=False)
    with (
        caplog.at_level(logging.INFO, logger="rag_app.server"),
        LiveServer(create_app(settings)) as server,
        server.client() as c,
    ):
        assert c.post("/v1/search", json=SEARCH).status_code == 200
        assert c.get("/readyz").status_code == 200
    messages = [r.getMessage() for r in caplog.records if r.name == "rag_app.server"]
    assert any("auth is OFF" in m for m in messages), messages
