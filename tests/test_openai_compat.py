"""Issue 13: OpenAI-compatible chat (``/v1/chat/completions``, ``/v1/models``), spoken to by the real
``openai`` SDK (sync ``OpenAI``, async ``AsyncOpenAI``, streaming) against the real app under uvicorn.

The index is a copy of the session's sample index (so this module's API keys stay its own). Extractive
mode has no LM; LM mode runs the real LiteLLM ``ollama_chat`` path against the loopback Ollama
STAND-IN (``OllamaStandIn``, not Ollama), whose replies are in DSPy's ChatAdapter format.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from rag_app.models.embeddings import load_embedder
from rag_app.server.app import create_app
from rag_app.server.auth import add_key
from tests.conftest import make_test_settings
from tests.live_server import LiveServer
from tests.ollama_standin import OllamaStandIn, count_tokens, dspy_chat_reply, passage_number_containing
from tests.test_server import SlowEmbedderTestDouble, metric_value

pytestmark = pytest.mark.timeout(300)

MODEL = "builddaily/chat_bridge"
QUESTION = "How long can a Forge job run?"
CLAIM = "A single Forge job can run for at most 6 hours"


def ask(content: str = QUESTION) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def rag_of(obj: Any) -> dict[str, Any]:
    """The extra ``rag`` field of an SDK object (OpenAI's models keep unknown fields as extras)."""
    extra = obj.model_extra or {}
    assert "rag" in extra, obj
    return extra["rag"]


def check_evidence(text: str, rag: dict[str, Any]) -> None:
    """Every [n] in the answer numbers a passage in ``rag.passages``; citations point at them."""
    ids = [p["id"] for p in rag["passages"]]
    markers = {int(n) for n in re.findall(r"\[(\d+)\]", text)}
    assert markers and all(1 <= n <= len(ids) for n in markers), (text, len(ids))
    assert rag["citations"] and {c["index"] for c in rag["citations"]} <= markers
    for citation in rag["citations"]:
        assert citation["passage_id"] == ids[citation["index"] - 1]


# =========================================================================================== fixtures


@pytest.fixture(scope="module")
def index_copy(sample_index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("openai") / "data"
    shutil.copytree(sample_index_dir, target, ignore=shutil.ignore_patterns("api_keys.json*"))
    return target


@pytest.fixture(scope="module")
def keys(index_copy: Path) -> dict[str, str]:
    settings = make_test_settings(index_copy)
    return {
        "builddaily": add_key(settings, "sdk", ["builddaily"]),
        "paiddaily": add_key(settings, "other-site", ["paiddaily"]),
    }


@pytest.fixture(scope="module")
def live(index_copy: Path, keys: dict[str, str]) -> Iterator[LiveServer]:
    settings = make_test_settings(index_copy, max_history_turns=4, max_message_chars=500)
    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.fixture(scope="module")
def client(live: LiveServer, keys: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=keys["builddaily"], max_retries=0)


# ============================================================================================= models


def test_models_list_and_retrieve_are_scoped_to_the_key(
    live: LiveServer, client: openai.OpenAI, keys: dict[str, str]
) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "builddaily" and models.data[0].object == "model"
    assert client.models.retrieve(MODEL).id == MODEL  # the SDK percent-encodes the "/"

    other = openai.OpenAI(base_url=f"{live.url}/v1", api_key=keys["paiddaily"], max_retries=0)
    assert other.models.list().data == []
    with pytest.raises(openai.PermissionDeniedError) as denied:
        other.chat.completions.create(model=MODEL, messages=ask())  # type: ignore[arg-type]
    assert denied.value.status_code == 403 and "paiddaily" in denied.value.message


# ===================================================================================== extractive mode


def test_sync_completion_keeps_its_evidence(live: LiveServer, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
        ],
        temperature=0.2,
        max_tokens=64,
        user="test-user",
        seed=7,
        extra_body={"an_unknown_field": {"ignored": True}},
    )
    completion = raw.parse()
    rag = rag_of(completion)
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert completion.id == f"chatcmpl-{rag['request_id']}" == f"chatcmpl-{raw.headers['x-request-id']}"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert "6 hours" in choice.message.content
    check_evidence(choice.message.content, rag)
    assert rag["mode"] == "extractive" and rag["usage_source"] == "no_lm"
    assert completion.usage is not None and completion.usage.total_tokens == 0
    assert "accepted but not applied: seed" in rag["notes"]
    assert rag["timings"]["total_ms"] > 0


def test_history_maps_to_the_chat_program(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are the BuildDaily assistant."},
            {"role": "user", "content": "Tell me about Forge runners."},
            {"role": "assistant", "content": "Forge runs your CI jobs [1]."},
            {"role": "user", "content": "How long can a job run there?"},
        ],
    )
    assert "6 hours" in completion.choices[0].message.content


def test_async_client_and_streaming(live: LiveServer, keys: dict[str, str]) -> None:
    async def run() -> tuple[Any, list[Any]]:
        async with openai.AsyncOpenAI(
            base_url=f"{live.url}/v1", api_key=keys["builddaily"], max_retries=0
        ) as aclient:
            plain = await aclient.chat.completions.create(model=MODEL, messages=ask())  # type: ignore[arg-type]
            stream = await aclient.chat.completions.create(
                model=MODEL,
                messages=ask(),  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            return plain, [chunk async for chunk in stream]

    plain, chunks = asyncio.run(run())
    assert plain.choices[0].message.content and rag_of(plain)["mode"] == "extractive"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason == "stop")
    rag = rag_of(final)
    assert final.id == f"chatcmpl-{rag['request_id']}"
    assert text == rag["answer"] == plain.choices[0].message.content
    check_evidence(text, rag)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # include_usage: the last chunk


def test_sync_streaming_without_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=ask(), stream=True))  # type: ignore[arg-type]
    assert chunks[-1].choices[0].finish_reason == "stop" and "rag" in (chunks[-1].model_extra or {})
    assert all(c.usage is None for c in chunks)


# ============================================================================================== errors


def test_errors_have_openai_shape_and_sdk_exceptions(
    live: LiveServer, client: openai.OpenAI, keys: dict[str, str]
) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="builddaily/no_such_program", messages=ask())  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert MODEL in missing.value.message
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")

    bad = openai.OpenAI(base_url=f"{live.url}/v1", api_key="rag-not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        bad.chat.completions.create(model=MODEL, messages=ask())  # type: ignore[arg-type]
    assert unauthorized.value.status_code == 401
    assert unauthorized.value.message == "Error code: 401 - invalid API key"  # the SDK read our message
    assert unauthorized.value.body["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()

    with pytest.raises(openai.BadRequestError) as last_role:
        client.chat.completions.create(
            model=MODEL, messages=[*ask(), {"role": "assistant", "content": "Six hours."}]
        )
    assert last_role.value.param == "messages[1].role"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model=MODEL, messages=ask("x" * 501))  # type: ignore[arg-type]
    assert too_long.value.param == "messages[0].content" and "max_message_chars" in too_long.value.message
    with pytest.raises(openai.BadRequestError) as too_many:
        client.chat.completions.create(model=MODEL, messages=ask() * 6)  # type: ignore[arg-type]
    assert too_many.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as two_choices:
        client.chat.completions.create(model=MODEL, messages=ask(), n=2)  # type: ignore[arg-type]
    assert two_choices.value.param == "n"

    with httpx.Client(base_url=live.url, timeout=60) as http:
        auth = {"Authorization": f"Bearer {keys['builddaily']}"}
        r = http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": ask(), "temperature": "hot"},
            headers=auth,
        )
        assert r.status_code == 400
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code", "request_id"}
        assert error["type"] == "invalid_request_error" and error["param"] == "temperature"
        assert error["request_id"] == r.headers["x-request-id"]
        r = http.post("/v1/chat/completions", content=b"{not json", headers=auth)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        # the rest of the API keeps its own error shape
        r = http.post("/v1/search", json={"site": "builddaily", "query": "x"})
        assert r.status_code == 401 and set(r.json()["error"]) == {"code", "message", "request_id"}


def test_overload_503_and_deadline_504_reach_the_sdk(sample_index_dir: Path) -> None:
    """One embed slot, no queue, a 1.5 s deadline, and a TEST DOUBLE embedder that takes 3.5 s on
    "slowpoke": a second request is turned away (503 + Retry-After), the slow one runs out of time."""
    settings = make_test_settings(
        sample_index_dir,
        sites={"builddaily": ["resources"]},
        max_concurrency_embed=1,
        max_queue=0,
        request_deadline_s=1.5,
    )
    app = create_app(settings, embedder=SlowEmbedderTestDouble(load_embedder(settings), delay_s=3.5))
    with LiveServer(app) as server, server.client() as http:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused: auth is off", max_retries=0)
        slow: dict[str, Any] = {}

        def slow_request() -> None:
            try:
                client.chat.completions.create(model=MODEL, messages=ask("slowpoke: " + QUESTION))  # type: ignore[arg-type]
            except openai.APIStatusError as exc:
                slow["error"] = exc

        thread = threading.Thread(target=slow_request)
        thread.start()
        limit = time.monotonic() + 30
        while metric_value(http.get("/metrics").text, "rag_stage_inflight", stage="embed") != 1:
            assert time.monotonic() < limit, "the slow request never reached the embed stage"
            time.sleep(0.02)
        with pytest.raises(openai.InternalServerError) as busy:
            client.chat.completions.create(model=MODEL, messages=ask())  # type: ignore[arg-type]
        assert busy.value.status_code == 503 and int(busy.value.response.headers["retry-after"]) >= 1
        assert busy.value.code == "overloaded" and busy.value.body["type"] == "service_unavailable_error"  # type: ignore[index]
        thread.join(30)
        late = slow["error"]
        assert late.status_code == 504 and late.code == "deadline_exceeded"
        assert late.body["type"] == "timeout_error"  # type: ignore[index]


def test_openapi_declares_the_bearer_scheme(live: LiveServer) -> None:
    with httpx.Client(base_url=live.url, timeout=60) as http:
        document = http.get("/openapi.json").json()
        assert http.get("/docs").status_code == 200
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    paths = document["paths"]
    for path, method in [
        ("/v1/chat/completions", "post"),
        ("/v1/models", "get"),
        ("/v1/rerank", "post"),
        ("/v1/chat-bridge", "post"),
        ("/metrics", "get"),
    ]:
        assert paths[path][method]["security"] == [{"bearerAuth": []}], path  # keys exist: required
    assert "security" not in paths["/healthz"]["get"] and "security" not in paths["/readyz"]["get"]
    assert paths["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"
    }
    request = document["components"]["schemas"]["ChatCompletionRequest"]
    assert request["properties"]["model"]["enum"] == [MODEL]
    assert request["properties"]["messages"]["maxItems"] == 5


# ============================================================================================== LM mode


def test_lm_mode_through_the_ollama_standin(sample_index_dir: Path) -> None:
    """The real LiteLLM ollama_chat path: options reach the LM, usage comes back, tokens stream."""
    cited: list[int] = []

    def responder(request: dict[str, Any]) -> str:
        cited.append(passage_number_containing(request, CLAIM))
        return dspy_chat_reply(answer=f"{CLAIM} [{cited[-1]}].")

    with OllamaStandIn(chat_responder=responder) as ollama:
        settings = make_test_settings(
            sample_index_dir,
            lm_model="ollama_chat/llama3.2",
            lm_api_base=ollama.host,
            lm_cache=False,
            lm_retries=0,
            lm_timeout_s=20,
        )
        with LiveServer(create_app(settings)) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused: auth is off", max_retries=0)
            completion = client.chat.completions.create(
                model=MODEL,
                messages=ask(),
                temperature=0.3,
                max_tokens=77,  # type: ignore[arg-type]
            )
            reply = f"{CLAIM} [{cited[-1]}]."
            rag = rag_of(completion)
            assert rag["mode"] == "lm" and completion.choices[0].message.content == reply, rag["notes"]
            check_evidence(reply, rag)
            sent = ollama.requests_to("/api/chat")[-1]
            assert sent["options"]["temperature"] == 0.3 and sent["options"]["num_predict"] == 77
            usage = completion.usage
            assert rag["usage_source"] == "lm" and usage is not None
            assert usage.completion_tokens == count_tokens(dspy_chat_reply(answer=reply))
            assert (
                usage.prompt_tokens > 0
                and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
            )

            chunks = list(
                client.chat.completions.create(
                    model=MODEL,
                    messages=ask(),
                    stream=True,
                    stream_options={"include_usage": True},
                    temperature=0.5,  # type: ignore[arg-type]
                )
            )
            deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
            reply = f"{CLAIM} [{cited[-1]}]."
            assert len(deltas) > 3 and "".join(deltas) == reply  # token by token, as the LM wrote it
            final = rag_of(chunks[-2])
            assert final["answer"] == reply and final["mode"] == "lm" and final["usage_source"] == "lm"
            assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0  # type: ignore[union-attr]
            assert ollama.requests_to("/api/chat")[-1]["options"]["temperature"] == 0.5
