"""Proves the Ollama stand-in speaks Ollama's protocol, by driving it with the real clients.

The clients are the installed ``ollama`` package, ``httpx`` and LiteLLM's ``ollama_chat`` provider. The
server is a stand-in (see ``tests/ollama_standin.py``): the Ollama binary cannot be installed here.
"""

from __future__ import annotations

import json
import math
import os
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

import httpx
import ollama
import pytest

try:  # tests/ may or may not be a package
    from tests.ollama_standin import (
        DEFAULT_REPLY,
        OllamaStandIn,
        count_tokens,
        dead_host,
        dspy_chat_reply,
        fake_embedding,
        normalize_model_name,
    )
except ImportError:
    from ollama_standin import (  # type: ignore[no-redef]
        DEFAULT_REPLY,
        OllamaStandIn,
        count_tokens,
        dead_host,
        dspy_chat_reply,
        fake_embedding,
        normalize_model_name,
    )

pytestmark = pytest.mark.timeout(30)

EMBED = "nomic-embed-text"
CHAT = "llama3.2"


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def srv():
    with OllamaStandIn() as server:
        yield server


@pytest.fixture
def client(srv):
    srv.requests.clear()
    with ollama.Client(host=srv.host, timeout=5) as c:
        yield c


# ---- plain HTTP -------------------------------------------------------------------------------------


def test_root_version_and_unknown_path(srv):
    r = httpx.get(srv.host + "/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert httpx.head(srv.host + "/").status_code == 200
    assert httpx.get(srv.host + "/api/version").json() == {"version": "0.0.0-standin"}
    r = httpx.post(srv.host + "/api/nope", json={})
    assert r.status_code == 404 and r.text == "404 page not found"
    r = httpx.post(srv.host + "/api/embed", content=b"")
    assert r.status_code == 400 and r.json() == {"error": "missing request body"}


def test_model_name_matching():
    assert normalize_model_name("llama3.2") == "llama3.2:latest"
    assert normalize_model_name("Llama3.2:latest") == "llama3.2:latest"
    assert normalize_model_name("registry.ollama.ai/library/llama3.2") == "llama3.2:latest"
    assert normalize_model_name("llama3.2:1b") == "llama3.2:1b"
    assert count_tokens("Hello, world!") == 4


# ---- /api/embed -------------------------------------------------------------------------------------


def test_embed_shapes_and_determinism(srv, client):
    texts = ["The cat sat on the mat.", "Quantum chromodynamics", ""]
    r1 = client.embed(model=EMBED, input=texts)
    r2 = client.embed(model=f"{EMBED}:latest", input=texts)
    assert r1.model == EMBED and r2.model == f"{EMBED}:latest"  # echoed as sent, like Ollama
    assert len(r1.embeddings) == 3
    assert all(len(v) == 768 for v in r1.embeddings)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-9) for v in r1.embeddings)
    assert [list(v) for v in r1.embeddings] == [list(v) for v in r2.embeddings]
    assert list(r1.embeddings[0]) == fake_embedding(texts[0])
    assert r1.prompt_eval_count == sum(count_tokens(t) for t in texts)
    assert r1.total_duration is not None and r1.total_duration >= 0

    single = client.embed(model=EMBED, input=texts[0])
    assert [list(v) for v in single.embeddings] == [list(r1.embeddings[0])]
    assert client.embed(model=EMBED, input="").embeddings == []  # Ollama: empty string -> no embeddings

    assert srv.requests_to("/api/embed")[0] == {"model": EMBED, "input": texts}


def test_embed_dimensions_and_configurable_dims():
    with OllamaStandIn(models={"tiny-embed": 64}) as small, ollama.Client(host=small.host) as c:
        assert len(c.embed(model="tiny-embed", input="hello").embeddings[0]) == 64
        v = c.embed(model="tiny-embed", input="hello world", dimensions=16).embeddings[0]
        assert len(v) == 16 and math.isclose(math.fsum(x * x for x in v), 1.0)
        with pytest.raises(ollama.ResponseError) as e:
            c.embed(model=EMBED, input="x")  # not configured on this server
        assert e.value.status_code == 404


def test_similar_texts_are_closer(client):
    docs = [
        "How do I reset my account password?",
        "Steps to reset a forgotten password for your account",
        "The 1998 harvest yielded unusually sweet grapes in Bordeaux.",
    ]
    q, similar, unrelated = client.embed(model=EMBED, input=docs).embeddings
    assert cosine(q, similar) > cosine(q, unrelated) + 0.2
    assert cosine(q, similar) > 0.3


def test_truncate(srv, client):
    long_text = " ".join(f"w{i}" for i in range(srv.context_tokens + 50))
    head = " ".join(f"w{i}" for i in range(srv.context_tokens))
    # truncate defaults to true: the first context_tokens tokens are embedded
    r = client.embed(model=EMBED, input=long_text)
    assert list(r.embeddings[0]) == fake_embedding(head)
    assert r.prompt_eval_count == srv.context_tokens
    assert list(client.embed(model=EMBED, input=long_text, truncate=True).embeddings[0]) == fake_embedding(
        head
    )

    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model=EMBED, input=["short", long_text], truncate=False)
    assert e.value.status_code == 400
    assert e.value.error == "the input length exceeds the context length"
    # at the limit is fine
    assert len(client.embed(model=EMBED, input=head, truncate=False).embeddings) == 1


def test_unknown_model_and_wrong_kind(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model="no-such-model", input="x")
    assert e.value.status_code == 404
    assert e.value.error == 'model "no-such-model" not found, try pulling it first'
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model=CHAT, input="x")
    assert e.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=EMBED, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 400 and "does not support chat" in e.value.error


def test_legacy_embeddings(client):
    r = client.embeddings(model=EMBED, prompt="the cat sat")
    assert len(r.embedding) == 768
    unit = [x / math.sqrt(math.fsum(y * y for y in r.embedding)) for x in r.embedding]
    assert unit == pytest.approx(fake_embedding("the cat sat"))
    assert client.embeddings(model=EMBED, prompt="").embedding == []


# ---- failures, delays, dead hosts -----------------------------------------------------------------------


def test_fail_next(srv, client):
    srv.fail_next(2, status=503)
    for _ in range(2):
        with pytest.raises(ollama.ResponseError) as e:
            client.embed(model=EMBED, input="x")
        assert e.value.status_code == 503
        assert "server busy" in e.value.error
    assert len(client.embed(model=EMBED, input="x").embeddings) == 1  # healed

    srv.fail_next(1, status=500, error="boom", path="/api/chat")
    assert client.list().models  # other paths unaffected
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=CHAT, messages=[{"role": "user", "content": "hi"}])
    assert (e.value.status_code, e.value.error) == (500, "boom")
    assert [p for _, p, _ in srv.requests] == ["/api/embed"] * 3 + ["/api/tags", "/api/chat"]


def test_delay_causes_client_timeout():
    with OllamaStandIn() as srv:  # own server: the delayed request must not outlive it into other tests
        srv.delay_s = 1.0
        start = time.monotonic()
        with ollama.Client(host=srv.host, timeout=0.2) as c, pytest.raises(httpx.TimeoutException):
            c.embed(model=EMBED, input="x")
        assert time.monotonic() - start < 0.9
        assert srv.requests == [("POST", "/api/embed", {"model": EMBED, "input": "x"})]
        srv.delay_s = 0.0
        with ollama.Client(host=srv.host, timeout=2) as c:
            assert c.embed(model=EMBED, input="x").embeddings


def test_dead_host_fails_fast():
    host = dead_host()
    start = time.monotonic()
    with ollama.Client(host=host, timeout=5) as c, pytest.raises(ConnectionError):
        c.embed(model=EMBED, input="x")  # the client turns httpx.ConnectError into ConnectionError
    with pytest.raises(httpx.ConnectError):
        httpx.get(host + "/api/version", timeout=5)
    assert time.monotonic() - start < 2


def test_close_is_idempotent_and_frees_port():
    srv = OllamaStandIn()
    host = srv.host
    srv.close()
    srv.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(host + "/", timeout=2)


# ---- chat / generate --------------------------------------------------------------------------------


def test_chat_non_streaming_default_reply(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    r = client.chat(model=CHAT, messages=messages)
    assert r.message.role == "assistant" and r.message.content == DEFAULT_REPLY
    assert r.done is True and r.done_reason == "stop" and r.model == CHAT
    assert r.prompt_eval_count == count_tokens("Be brief.") + count_tokens("Hello there")
    assert r.eval_count == count_tokens(DEFAULT_REPLY)
    assert r.created_at and r.created_at.endswith("Z")


def test_chat_responder_and_streaming():
    seen = []

    def responder(req):
        seen.append(req)
        return "You said: " + req["messages"][-1]["content"]

    with OllamaStandIn(chat_responder=responder) as srv, ollama.Client(host=srv.host) as c:
        parts = list(
            c.chat(model=f"{CHAT}:latest", messages=[{"role": "user", "content": "ping pong"}], stream=True)
        )
        assert len(parts) >= 3
        assert all(not p.done for p in parts[:-1]) and parts[-1].done is True
        assert parts[-1].done_reason == "stop" and parts[-1].eval_count == count_tokens("You said: ping pong")
        assert "".join(p.message.content or "" for p in parts) == "You said: ping pong"
        assert seen[0]["stream"] is True and seen[0]["model"] == f"{CHAT}:latest"

        # raw HTTP: stream defaults to true, NDJSON content type
        with httpx.stream(
            "POST",
            srv.host + "/api/chat",
            json={"model": CHAT, "messages": [{"role": "user", "content": "a"}]},
        ) as r:
            assert r.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert lines[-1]["done"] is True and "".join(x["message"]["content"] for x in lines) == "You said: a"

        # format / options reach the responder untouched
        c.chat(
            model=CHAT, messages=[{"role": "user", "content": "j"}], format="json", options={"temperature": 0}
        )
        assert seen[-1]["format"] == "json" and seen[-1]["options"] == {"temperature": 0}


def test_chat_responder_error_is_http_500():
    def responder(req):
        raise RuntimeError("responder exploded")

    with OllamaStandIn(chat_responder=responder) as srv, ollama.Client(host=srv.host) as c:
        with pytest.raises(ollama.ResponseError) as e:
            c.chat(model=CHAT, messages=[{"role": "user", "content": "x"}])
        assert e.value.status_code == 500 and "responder exploded" in e.value.error


def test_chat_without_messages_loads_model(client):
    r = client.chat(model=CHAT, messages=[])
    assert r.done and r.done_reason == "load" and r.message.content == ""
    assert any(m.model == f"{CHAT}:latest" for m in client.ps().models)


def test_generate(client):
    r = client.generate(model=CHAT, prompt="Say hi")
    assert r.response == DEFAULT_REPLY and r.done and r.done_reason == "stop"
    parts = list(client.generate(model=CHAT, prompt="Say hi", stream=True))
    assert "".join(p.response or "" for p in parts) == DEFAULT_REPLY and parts[-1].done


# ---- models -----------------------------------------------------------------------------------------


def test_list_show_pull_delete():
    with OllamaStandIn() as srv, ollama.Client(host=srv.host) as c:
        names = sorted(m.model for m in c.list().models)
        assert names == ["llama3.2:latest", "nomic-embed-text:latest"]
        raw = httpx.get(srv.host + "/api/tags").json()["models"]
        assert {"name", "model", "size", "digest", "details", "modified_at"} <= set(raw[0])
        assert raw[0]["name"] == raw[0]["model"]

        shown = c.show(EMBED)
        assert shown.capabilities == ["embedding"]
        assert shown.modelinfo["nomic-bert.embedding_length"] == 768
        assert c.show(CHAT).capabilities == ["completion", "tools"]
        with pytest.raises(ollama.ResponseError) as e:
            c.show("missing")
        assert e.value.status_code == 404

        progress = list(c.pull("mxbai-embed-large", stream=True))
        statuses = [p.status for p in progress]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        assert any(p.total and p.completed == p.total for p in progress)
        assert c.pull("qwen2.5:0.5b").status == "success"
        assert srv.models["mxbai-embed-large:latest"] == 768 and srv.models["qwen2.5:0.5b"] is None
        assert len(c.embed(model="mxbai-embed-large", input="x").embeddings[0]) == 768
        assert c.chat(model="qwen2.5:0.5b", messages=[{"role": "user", "content": "x"}]).message.content

        assert c.delete("qwen2.5:0.5b").status == "success"
        assert "qwen2.5:0.5b" not in srv.models


def test_pull_restricted():
    with OllamaStandIn(models={}, pullable={EMBED: 768}) as srv, ollama.Client(host=srv.host) as c:
        assert c.list().models == []
        with pytest.raises(ollama.ResponseError):
            list(c.pull("unknown-model", stream=True))
        with pytest.raises(ollama.ResponseError) as e:
            c.pull("unknown-model")
        assert e.value.status_code == 500
        assert c.pull(EMBED).status == "success"
        assert [m.model for m in c.list().models] == [f"{EMBED}:latest"]


# ---- LiteLLM ----------------------------------------------------------------------------------------


def test_litellm_ollama_chat():
    litellm = pytest.importorskip("litellm")
    answer = dspy_chat_reply(answer="Paris")
    with OllamaStandIn(chat_responder=lambda req: answer) as srv:
        resp = litellm.completion(
            model="ollama_chat/llama3.2",
            api_base=srv.host,
            messages=[{"role": "user", "content": "Capital of France?"}],
            temperature=0,
            max_tokens=20,
        )
        assert resp.choices[0].message.content == answer
        assert resp.usage.completion_tokens == count_tokens(answer)
        chat_bodies = srv.requests_to("/api/chat")
        assert len(chat_bodies) == 1
        body = chat_bodies[0]
        assert body["model"] == "llama3.2" and body["stream"] is False
        # LiteLLM adds "images": [] to every message and maps max_tokens to options.num_predict
        assert [(m["role"], m["content"]) for m in body["messages"]] == [("user", "Capital of France?")]
        assert body["options"] == {"temperature": 0, "num_predict": 20}
        # ...and looks the model up afterwards (cost / model info) with the legacy {"name": ...} body
        deadline = time.monotonic() + 2
        while not srv.requests_to("/api/show") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.requests_to("/api/show")[0] == {"name": "llama3.2"}

        chunks = list(
            litellm.completion(
                model="ollama_chat/llama3.2",
                api_base=srv.host,
                messages=[{"role": "user", "content": "again"}],
                stream=True,
            )
        )
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == answer
