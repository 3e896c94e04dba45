"""Issue #10: request bodies are checked as the OpenAPI schema says, and the schema says what is checked.

The real app under uvicorn (``LiveServer``) over the session's sample index (all sites, no LM), with
small limits (3 earlier turns, 200 characters a message, 300 a query) so the limits are cheap to hit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag_app.server.app import create_app
from rag_app.server.program_rules import SECTORS
from rag_app.server.schemas import NOT_BLANK, is_blank
from tests.conftest import SAMPLE_DATA, make_test_settings
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def client(sample_index_dir: Path) -> Iterator[httpx.Client]:
    settings = make_test_settings(
        sample_index_dir, max_history_turns=3, max_message_chars=200, max_query_chars=300
    )
    with LiveServer(create_app(settings)) as server, server.client() as c:
        yield c


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and "Traceback" not in response.text, body
    assert {"code", "message", "request_id"} <= set(body["error"])
    return body["error"]


def turns(n: int, last: str = "How do webhooks retry?") -> list[dict[str, str]]:
    """``n`` earlier messages (alternating user / assistant), then the user's question."""
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": f"turn {i}"} for i in range(n)] + [
        {"role": "user", "content": last}
    ]


def test_history_turns_are_limited(client: httpx.Client) -> None:
    r = client.post("/v1/chat-bridge", json={"messages": turns(3)})
    assert r.status_code == 200, r.text
    r = client.post("/v1/chat-bridge", json={"messages": turns(4)})
    assert r.status_code == 422, r.text
    error = error_of(r)
    assert error["code"] == "too_many_messages" and error["field"] == "messages"
    assert "max_history_turns" in error["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/search", {"site": "builddaily", "query": "q" * 301}),
        ("/v1/programs/builddaily/resources_search", {"query": "q" * 301}),
    ],
)
def test_an_over_long_query_is_the_library_rule_on_every_route(
    client: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    """Issue #11: the query limit has one home (the library's ``check_query``) and one status: its
    ``InputError`` is a 400 ``invalid_input`` on ``/v1/search`` as on the program routes. The schema
    publishes the limit (maxLength) too."""
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    error = error_of(r)
    assert error["code"] == "invalid_input" and "300" in error["message"], error
    schema = client.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]
    assert schema["properties"]["query"]["maxLength"] == 300


def test_every_message_is_limited_in_characters(client: httpx.Client) -> None:
    messages = turns(2)
    messages[1]["content"] = "x" * 201
    r = client.post("/v1/chat-bridge", json={"messages": messages})
    assert r.status_code == 422
    error = error_of(r)
    assert error["code"] == "message_too_long" and error["field"] == "messages[1].content"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/chat-bridge", {"messages": turns(0), "stream": 0}, "stream"),
        ("/v1/search", {"site": "builddaily", "query": "sso", "k": True}, "k"),
        (
            "/v1/search",
            {"site": "builddaily", "query": "sso", "filters": {"date_from": 0}},
            "filters.date_from",
        ),
        ("/v1/programs/builddaily/resources_search", {"query": "sso", "limit": True}, "limit"),
        ("/v1/programs/builddaily/resources_search", {"query": "sso", "limit": "3"}, "limit"),
        ("/v1/programs/paiddaily/tickers", {"setup": "beat", "date_from": 0}, "date_from"),
        ("/v1/programs/paiddaily/catalysts", {"description": "gap", "limit": False}, "limit"),
    ],
)
def test_json_types_are_strict(client: httpx.Client, path: str, body: dict[str, Any], field: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert error_of(r)["field"] == field


def test_strict_types_still_read_iso_dates(client: httpx.Client) -> None:
    r = client.post(
        "/v1/programs/paiddaily/catalysts",
        json={"description": "gap down after a regulator grounds a product", "date_from": "2024-01-01"},
    )
    assert r.status_code == 200, r.text


def test_unknown_sector_is_a_422_naming_the_field(client: httpx.Client) -> None:
    r = client.post("/v1/programs/paiddaily/tickers", json={"setup": "beat", "sector": "Crypto"})
    assert r.status_code == 422, r.text
    error = error_of(r)
    assert error["field"] == "sector" and "Information Technology" in error["message"]
    r = client.post(
        "/v1/programs/paiddaily/tickers", json={"setup": "strong beat", "sector": "Information Technology"}
    )
    assert r.status_code == 200, r.text


def test_the_schema_states_the_rules(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]

    def body_schema(path: str) -> dict[str, Any]:
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        return schemas[ref.rsplit("/", 1)[1]]

    chat = body_schema("/v1/chat-bridge")
    assert chat["properties"]["messages"]["maxItems"] == 4
    assert chat["properties"]["stream"]["type"] == "boolean"
    assert schemas["ChatMessage"]["properties"]["content"]["maxLength"] == 200
    assert schemas["ChatMessage"]["properties"]["content"]["pattern"] == NOT_BLANK
    responses = doc["paths"]["/v1/chat-bridge"]["post"]["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= set(responses)
    assert "passages" in responses["text/event-stream"]["schema"]["description"]

    tickers = body_schema("/v1/programs/paiddaily/tickers")
    sector = next(b for b in tickers["properties"]["sector"]["anyOf"] if b.get("type") == "string")
    assert sector["enum"] == list(SECTORS)
    assert "date_from" in tickers["description"]
    assert tickers["properties"]["setup"]["pattern"] == NOT_BLANK
    reading = body_schema("/v1/programs/sagedaily/reading")
    assert {tuple(branch["required"]) for branch in reading["anyOf"]} == {
        ("cards",),
        ("transits",),
        ("question",),
    }


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/chat-bridge", {"messages": [{"role": "user", "content": "\u3000\x1f"}]}, "messages[0].content"),
        ("/v1/programs/builddaily/chat_bridge", {"message": " \u00a0"}, "message"),
        ("/v1/programs/sagedaily/reading", {"cards": [" "], "question": "  "}, None),
        (
            "/v1/programs/paiddaily/tickers",
            {"setup": "beat", "date_from": "2024-05-01", "date_to": "2024-01-01"},
            None,
        ),
    ],
)
def test_rejections_the_schema_announces(
    client: httpx.Client, path: str, body: dict[str, Any], field: str | None
) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert error_of(r).get("field") == field


def test_blank_rule_matches_python_white_space() -> None:
    """The published pattern treats as blank exactly what ``str.strip()`` strips."""
    import re
    import sys

    pattern = re.compile(NOT_BLANK)
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        assert (pattern.search(char) is None) == char.isspace(), hex(code)
        assert is_blank(char) == (char.strip() == "")


def test_sectors_are_the_sample_data_sectors() -> None:
    found = set()
    for path in SAMPLE_DATA.glob("paiddaily*/**/*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                sector = record.get("sector") or record.get("metadata", {}).get("sector")
                if sector:
                    found.add(sector)
    assert found == set(SECTORS)
