"""Issue 13: the MCP tools (list_sites, search, ask) over stdio and streamable HTTP, with the real SDK.

The index is the session's sample index of all three sites (copied, so this module's API keys are its
own), the embedder the bundled MiniLM, the reranker the tiny test cross-encoder (so search really
reranks), no LM (answers are extractive). Over stdio the real ``rag-app mcp`` command runs as a child
process and ``mcp.ClientSession`` talks to it; over HTTP the real app (``create_app`` plus the ``/mcp``
endpoint) runs under uvicorn and the SDK's streamable HTTP client calls it with API keys.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from fastapi import FastAPI
from mcp import ClientSession, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult
from starlette.applications import Starlette
from starlette.routing import Mount
from typer.testing import CliRunner

from rag_app.cli import app as rag_app_cli
from rag_app.cli.mcp import register
from rag_app.core.settings import Settings
from rag_app.runtime import Runtime
from rag_app.server.app import create_app
from rag_app.server.auth import add_key
from rag_app.server.mcp_http import MCP_PATH, McpEndpoint
from tests.conftest import REPO_ROOT, make_test_settings
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(300)

QUESTION = "How much does Sage Daily cost?"
ASK = "How do I create an API key?"
#: ``rag-app mcp`` as the console script runs it (registered here until ``rag_app.cli`` does it).
LAUNCH = (
    "from rag_app.cli import app\n"
    "from rag_app.cli.mcp import register\n"
    "if 'mcp' not in [c.name for c in app.registered_commands]:\n"
    "    register(app)\n"
    "app()\n"
)


def with_mcp(api: FastAPI) -> Any:
    """``api`` with ``/mcp`` and the MCP session manager in its lifespan (unless create_app has it)."""
    if any(getattr(route, "path", None) == MCP_PATH for route in api.routes):
        return api
    endpoint = McpEndpoint(api.state.rag)
    api.router.routes.append(endpoint.route)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with api.router.lifespan_context(api), endpoint.running():
            yield

    return Starlette(routes=[Mount("/", app=api)], lifespan=lifespan)


def mcp_settings(data_dir: Path, tiny_path: Path) -> Settings:
    return make_test_settings(data_dir, reranker_model=str(tiny_path))


def offline_env(data_dir: Path, tiny_path: Path) -> dict[str, str]:
    return {
        "RAG_DATA_DIR": str(data_dir),
        "RAG_PROGRAMS_DIR": str(REPO_ROOT / "programs"),
        "RAG_LM_MODEL": "",
        "RAG_RERANKER_MODEL": str(tiny_path),
        "RAG_EMBEDDER_PRECISION": "float32",
        "PYTHONPATH": str(REPO_ROOT),
    }


def rerank_count(live: LiveServer, key: str) -> float:
    """How many rerank stage timings the server's metrics have recorded."""
    with live.client(headers={"Authorization": f"Bearer {key}"}) as http:
        text = http.get("/metrics").text
    match = re.search(r'^rag_stage_duration_seconds_count\{stage="rerank"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def error_text(result: CallToolResult) -> str:
    assert result.is_error, result.structured_content
    return " ".join(getattr(block, "text", "") for block in result.content)


# ============================================================================================ fixtures


@pytest.fixture(scope="module")
def data_dir(sample_index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("mcp") / "data"
    shutil.copytree(sample_index_dir, target, ignore=shutil.ignore_patterns("api_keys.json*"))
    return target


@pytest.fixture(scope="module")
def keys(data_dir: Path, tiny_path: Path) -> dict[str, str]:
    settings = mcp_settings(data_dir, tiny_path)
    return {
        "all": add_key(settings, "ide-all", ["*"]),
        "build": add_key(settings, "ide-build", ["builddaily"]),
    }


@pytest.fixture(scope="module")
def live(data_dir: Path, tiny_path: Path, keys: dict[str, str]) -> Iterator[LiveServer]:
    with LiveServer(with_mcp(create_app(mcp_settings(data_dir, tiny_path)))) as server:
        yield server


async def http_call(url: str, key: str | None, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """One MCP session over streamable HTTP: ``list_tools`` first, then each ``(tool, arguments)``."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as client,
        streamable_http_client(f"{url}{MCP_PATH}", http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        out: list[Any] = [await session.list_tools()]
        for name, arguments in calls:
            out.append(await session.call_tool(name, arguments))
        return out


# =============================================================================================== stdio


def test_stdio_server_lists_calls_and_refuses(data_dir: Path, tiny_path: Path) -> None:
    async def scenario() -> list[Any]:
        params = StdioServerParameters(
            command=sys.executable,
            args=["-c", LAUNCH, "mcp", "--site", "builddaily", "--site", "paiddaily"],
            env=offline_env(data_dir, tiny_path),
            cwd=str(REPO_ROOT),
        )
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            out: list[Any] = [await session.list_tools()]
            for name, arguments in [
                ("list_sites", {}),
                ("search", {"site": "builddaily", "query": QUESTION, "top_n": 3}),
                (
                    "search",
                    {"site": "paiddaily", "query": "gap up", "mode": "fts", "filters": {"tickers": ["NVDA"]}},
                ),
                ("ask", {"site": "builddaily", "program": "chat_bridge", "input": {"message": ASK}}),
                ("search", {"site": "sagedaily", "query": "the tower card"}),
                ("search", {"site": "builddaily", "query": QUESTION, "k": 0}),
                ("ask", {"site": "builddaily", "program": "chat_bridge", "input": {"message": 7}}),
            ]:
                out.append(await session.call_tool(name, arguments))
            return out

    tools, sites, search, fts, ask, other_site, bad_k, bad_input = anyio.run(scenario)

    by_name = {t.name: t for t in tools.tools}
    assert set(by_name) == {"list_sites", "search", "ask"}
    assert all(t.annotations and t.annotations.read_only_hint for t in tools.tools)
    assert by_name["search"].input_schema["properties"]["site"]["enum"] == ["builddaily", "paiddaily"]
    ask_schema = by_name["ask"].input_schema
    assert ask_schema["properties"]["site"]["enum"] == ["builddaily", "paiddaily"]
    assert {"builddaily.chat_bridge.Input", "paiddaily.tickers.Input"} <= set(ask_schema["$defs"])
    assert not any(name.startswith("sagedaily.") for name in ask_schema["$defs"])

    listed = structured(sites)["sites"]
    assert [s["site"] for s in listed] == ["builddaily", "paiddaily"]
    assert set(listed[1]["programs"]) == {"tickers", "catalysts"}

    found = structured(search)
    assert found["reranked"] is True and len(found["passages"]) == 3
    assert [c["index"] for c in found["citations"]] == [1, 2, 3]
    assert [c["passage_id"] for c in found["citations"]] == [p["id"] for p in found["passages"]]
    assert all(p["relevance"] is not None for p in found["passages"])
    assert "[1]" in search.content[0].text

    by_ticker = structured(fts)
    assert by_ticker["mode"] == "fts" and by_ticker["passages"]
    assert all("NVDA" in p["metadata"]["tickers"] for p in by_ticker["passages"])

    answer = structured(ask)
    assert answer["answer"] and answer["mode"] == "extractive"
    assert answer["citations"] and answer["passages"]
    ids = {p["id"] for p in answer["passages"]}
    assert all(c["passage_id"] in ids for c in answer["citations"])
    assert answer["output"]["answer"] == answer["answer"]

    refused = error_text(other_site)
    assert "serves only builddaily, paiddaily" in refused and "--site sagedaily" in refused
    assert "k" in error_text(bad_k) and "greater than or equal to 1" in error_text(bad_k)
    bad = error_text(bad_input)
    assert "invalid input for builddaily/chat_bridge" in bad and "message" in bad


def test_mcp_command_checks_its_sites_before_serving(data_dir: Path, tiny_path: Path) -> None:
    cli = rag_app_cli
    if "mcp" not in [c.name for c in cli.registered_commands]:
        register(cli)
    env = offline_env(data_dir, tiny_path)
    unknown = CliRunner().invoke(cli, ["mcp", "--site", "nosuchsite"], env=env)
    assert unknown.exit_code == 2
    assert "unknown site 'nosuchsite'" in unknown.output and "builddaily" in unknown.output
    missing = CliRunner().invoke(cli, ["mcp"], env=env)
    assert missing.exit_code == 2 and "--site" in missing.output


# ================================================================================================ HTTP


def test_http_tools_with_an_all_sites_key(live: LiveServer, keys: dict[str, str], data_dir: Path) -> None:
    ask_args = {"site": "paiddaily", "program": "tickers", "input": {"setup": "gap up then fade"}}
    before = rerank_count(live, keys["all"])
    tools, sites, search, ask = anyio.run(
        http_call,
        live.url,
        keys["all"],
        [
            ("list_sites", {}),
            ("search", {"site": "builddaily", "query": QUESTION, "k": 20, "top_n": 5}),
            ("ask", ask_args),
        ],
    )
    # The calls ran on the app's runtime: their rerank timings reached the server's metrics.
    assert rerank_count(live, keys["all"]) >= before + 2
    assert {t.name for t in tools.tools} == {"list_sites", "search", "ask"}
    tickers = tools.tools[2].input_schema["$defs"]["paiddaily.tickers.Input"]
    assert "Information Technology" in tickers["properties"]["sector"]["anyOf"][0]["enum"]
    assert [s["site"] for s in structured(sites)["sites"]] == ["builddaily", "paiddaily", "sagedaily"]

    # The same passages, in the same order, as POST /v1/search with the same key.
    body = {"site": "builddaily", "query": QUESTION, "k": 20, "top_n": 5}
    with live.client(headers={"Authorization": f"Bearer {keys['all']}"}) as http:
        reference = http.post("/v1/search", json=body)
        assert reference.status_code == 200, reference.text
    found = structured(search)
    assert [p["id"] for p in found["passages"]] == [p["id"] for p in reference.json()["passages"]]
    assert found["reranked"] is True

    answer = structured(ask)
    assert answer["site"] == "paiddaily" and answer["program"] == "tickers"
    assert answer["passages"] and all(p["site"] == "paiddaily" for p in answer["passages"])


def test_http_key_scope_and_bad_arguments(live: LiveServer, keys: dict[str, str]) -> None:
    _, sites, other, ask_other, bad_mode, bad_limit, unknown = anyio.run(
        http_call,
        live.url,
        keys["build"],
        [
            ("list_sites", {}),
            ("search", {"site": "paiddaily", "query": "gap up"}),
            ("ask", {"site": "paiddaily", "program": "tickers", "input": {"setup": "gap up"}}),
            ("search", {"site": "builddaily", "query": QUESTION, "mode": "semantic"}),
            (
                "ask",
                {"site": "builddaily", "program": "resources_search", "input": {"query": "sso", "limit": 99}},
            ),
            ("search", {"site": "nosuchsite", "query": QUESTION}),
        ],
    )
    assert [s["site"] for s in structured(sites)["sites"]] == ["builddaily"]
    for refused in (other, ask_other):
        text = error_text(refused)
        assert "this API key ('ide-build') may not use site 'paiddaily'" in text
        assert "scoped to: builddaily" in text
    assert "mode" in error_text(bad_mode) and "hybrid" in error_text(bad_mode)
    assert "invalid input for builddaily/resources_search: limit" in error_text(bad_limit)
    assert "unknown site 'nosuchsite'" in error_text(unknown)


def test_http_refuses_missing_and_wrong_keys(live: LiveServer) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream"}
    with live.client() as http:
        missing = http.post(MCP_PATH, json=initialize, headers=accept)
        wrong = http.post(MCP_PATH, json=initialize, headers={**accept, "Authorization": "Bearer rag-nope"})
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "unauthorized"
    assert "missing API key" in missing.json()["error"]["message"]
    with pytest.raises(BaseExceptionGroup) as failed:  # the SDK client gives up on the 401 too
        anyio.run(http_call, live.url, None, [])
    assert failed.value.subgroup(MCPError) is not None


def test_http_without_keys_answers_loopback_only(
    sample_index_dir: Path, tiny_path: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_index_dir, data, ignore=shutil.ignore_patterns("api_keys.json*"))
    settings = make_test_settings(data, reranker_model=str(tiny_path), sites={"builddaily": ["resources"]})
    with LiveServer(with_mcp(create_app(settings))) as server:
        tools, found = anyio.run(
            http_call, server.url, None, [("search", {"site": "builddaily", "query": QUESTION})]
        )
        with server.client() as http:
            rebound = http.post(
                MCP_PATH,
                headers={"Host": "evil.example", "Accept": "application/json, text/event-stream"},
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            )
            cross = http.post(
                MCP_PATH,
                headers={"Origin": "http://evil.example", "Accept": "application/json, text/event-stream"},
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            )
    assert len(tools.tools) == 3 and structured(found)["passages"]
    for response in (rebound, cross):
        assert response.status_code == 403, response.text
        assert "loopback" in response.json()["error"]["message"]


def test_search_tool_matches_the_runtime(
    data_dir: Path, tiny_path: Path, live: LiveServer, keys: dict[str, str]
) -> None:
    """The tool's passages are Runtime.search's (rerank=True), including filters and mode."""
    settings = mcp_settings(data_dir, tiny_path)
    args = {"query": "earnings beat", "mode": "hybrid", "filters": {"tickers": ["NVDA", "AMD"]}, "top_n": 4}
    expected = Runtime(settings).search(
        "paiddaily", args["query"], rerank=True, top_n=4, mode="hybrid", filters=args["filters"]
    )
    _, result = anyio.run(http_call, live.url, keys["all"], [("search", {"site": "paiddaily", **args})])
    found = structured(result)
    assert [p["id"] for p in found["passages"]] == [p["id"] for p in expected["passages"]]
    assert json.loads(json.dumps(found["passages"][0]["relevance"])) == pytest.approx(
        expected["passages"][0]["relevance"]
    )
