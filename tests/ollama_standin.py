"""A STAND-IN for the Ollama server, for tests.

This is NOT Ollama. The Ollama binary cannot be installed on the machines these tests run on, so this
module serves, on a loopback port, the subset of Ollama's HTTP API that rag_app uses, backed by
deterministic fake models:

* embedding models (``nomic-embed-text`` by default) return 768-d (configurable), L2-normalised vectors
  built from hashed, signed, lower-cased word unigrams, so texts that share words have a higher cosine
  similarity; good enough for retrieval tests, meaningless otherwise;
* chat models (``llama3.2`` by default) answer with whatever ``chat_responder(request_json)`` returns
  (a fixed string by default).

Endpoints: ``GET|HEAD /``, ``GET /api/version``, ``GET /api/tags``, ``GET /api/ps``, ``POST /api/show``,
``POST /api/embed``, ``POST /api/embeddings`` (legacy), ``POST /api/chat``, ``POST /api/generate``,
``POST /api/pull``, ``DELETE /api/delete``. The JSON shapes follow Ollama's (as read by the ``ollama``
Python client 0.6.x and by LiteLLM's ``ollama``/``ollama_chat`` providers); anything else answers
``404 page not found`` like Ollama's router does.

Test hooks: ``requests`` (every request seen), ``fail_next()`` (inject HTTP errors), ``delay_s`` (sleep
before answering, for timeout tests), ``chat_responder``, ``context_tokens``, ``add_model()`` /
``remove_model()``, and ``dead_host()`` for an address nothing listens on.

Usage::

    with OllamaStandIn() as srv:
        client = ollama.Client(host=srv.host)
        client.embed(model="nomic-embed-text", input=["a text"])

Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.loopback import LoopbackServer

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_REPLY",
    "OllamaStandIn",
    "count_tokens",
    "dead_host",
    "dspy_chat_reply",
    "fake_embedding",
    "normalize_model_name",
]

DEFAULT_REPLY = "This is a reply from the Ollama stand-in."

# name -> embedding dimensions, or None for a chat (completion) model.
DEFAULT_MODELS: dict[str, int | None] = {
    "nomic-embed-text": 768,
    "nomic-embed-text:latest": 768,
    "llama3.2": None,
    "llama3.2:latest": None,
}

VERSION = "0.0.0-standin"
CHAT_CONTEXT_TOKENS = 131072  # what /api/show reports for chat models (llama3.2's context)

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_WORD_RE = re.compile(r"\w+")
_EMPTY_TOKEN = "\x00<empty>"  # hashed in place of words when a text has none, so the vector is not zero
_BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
_REGISTRY_PREFIXES = ("registry.ollama.ai/library/", "registry.ollama.ai/")


# --------------------------------------------------------------------------------------------------------
# Pure helpers (usable without a server)
# --------------------------------------------------------------------------------------------------------


def normalize_model_name(name: str) -> str:
    """Ollama's name matching: case-insensitive, ``name`` == ``name:latest``, registry prefix optional."""
    n = name.strip().lower()
    for prefix in _REGISTRY_PREFIXES:
        if n.startswith(prefix):
            n = n[len(prefix) :]
            break
    if ":" not in n.rsplit("/", 1)[-1]:
        n += ":latest"
    return n


def count_tokens(text: str) -> int:
    """The stand-in's token count: ``\\w+|[^\\w\\s]`` matches (a word or one punctuation character)."""
    return len(_TOKEN_RE.findall(text))


@lru_cache(maxsize=65536)
def _bucket(word: str, dims: int) -> tuple[int, float]:
    digest = hashlib.sha256(word.encode("utf-8")).digest()
    index = int.from_bytes(digest[:8], "little") % dims
    sign = 1.0 if digest[8] & 1 else -1.0
    return index, sign


def _raw_vector(text: str, dims: int, max_tokens: int | None) -> tuple[list[float], int]:
    """Un-normalised hashed-unigram vector of ``text`` clipped to ``max_tokens`` tokens; its token count."""
    tokens = _TOKEN_RE.findall(text)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    words = [t.lower() for t in tokens if _WORD_RE.fullmatch(t)] or [_EMPTY_TOKEN]
    vec = [0.0] * dims
    for word in words:
        index, sign = _bucket(word, dims)
        vec[index] += sign
    if not any(vec):  # every word cancelled out: fall back to the sentinel so the norm is not zero
        index, sign = _bucket(_EMPTY_TOKEN, dims)
        vec[index] = sign
    return vec, len(tokens)


def _normalize(vec: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vec))
    return [x / norm for x in vec] if norm else vec


def fake_embedding(text: str, dims: int = 768, max_tokens: int | None = None) -> list[float]:
    """The vector the stand-in returns from ``/api/embed`` for ``text`` (L2-normalised)."""
    return _normalize(_raw_vector(text, dims, max_tokens)[0])


def dspy_chat_reply(**fields: Any) -> str:
    """A reply in DSPy's ChatAdapter format: ``[[ ## name ## ]]`` sections, then ``[[ ## completed ## ]]``.

    Handy as the return value of a ``chat_responder`` when the caller is a DSPy program.
    """
    parts = []
    for name, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"[[ ## {name} ## ]]\n{text}")
    parts.append("[[ ## completed ## ]]")
    return "\n\n".join(parts)


def passage_number_containing(request: Mapping[str, Any], words: str) -> int:
    """The ``[n]`` of the passage in a DSPy prompt (``[n] (title) «text»``) that shares most words with
    ``words``: lets a canned reply cite the passage that really supports it, as a grounded LM would."""
    prompt = request["messages"][-1]["content"]
    wanted = set(re.findall(r"\w+", words.lower()))
    best, best_overlap = 1, -1
    for number, text in re.findall(r"\[(\d+)\][^«]*«(.*?)»", prompt, flags=re.S):
        overlap = len(wanted & set(re.findall(r"\w+", text.lower())))
        if overlap > best_overlap:
            best, best_overlap = int(number), overlap
    return best


def dead_host() -> str:
    """``http://127.0.0.1:<port>`` for a port that was bound, then closed: connections are refused fast."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def default_chat_responder(request: Mapping[str, Any]) -> str:
    return DEFAULT_REPLY


def _now_rfc3339() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e9):09d}Z"


def _stream_pieces(text: str) -> list[str]:
    """Split a reply into word-sized pieces whose concatenation is the reply."""
    return [p for p in re.split(r"(?<=\s)(?=\S)", text) if p]


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------------


class _Model:
    __slots__ = ("dims", "modified_at", "name")

    def __init__(self, name: str, dims: int | None) -> None:
        self.name = name
        self.dims = dims
        self.modified_at = _now_rfc3339()

    @property
    def is_embedding(self) -> bool:
        return self.dims is not None

    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        if self.is_embedding:
            family, size, quant = "nomic-bert", "137M", "F16"
        else:
            family, size, quant = "llama", "3.2B", "Q4_K_M"
        return {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": size,
            "quantization_level": quant,
        }

    def size(self) -> int:
        return 274302450 if self.is_embedding else 2019393189


class OllamaStandIn(LoopbackServer):
    """A loopback HTTP server speaking Ollama's API with deterministic fake models (see the module doc).

    Args:
        models: name -> embedding dimensions (``None`` = chat model). Names match like Ollama's
            (``llama3.2`` is ``llama3.2:latest``). Default: :data:`DEFAULT_MODELS`.
        chat_responder: ``callable(request_json) -> str`` giving the assistant's text for ``/api/chat`` and
            ``/api/generate`` (generate requests carry ``prompt`` instead of ``messages``). An exception
            it raises becomes HTTP 500 ``{"error": str(exc)}``.
        context_tokens: embedding models' context length, in :func:`count_tokens` tokens.
        default_dims: dimensions of embedding models added by ``/api/pull``.
        pullable: names ``/api/pull`` may add (name -> dims or None). ``None``: any name; a name
            containing ``embed`` becomes an embedding model, anything else a chat model.
    """

    def __init__(
        self,
        models: Mapping[str, int | None] | None = None,
        *,
        chat_responder: Callable[[dict[str, Any]], str] | None = None,
        context_tokens: int = 2048,
        default_dims: int = 768,
        pullable: Mapping[str, int | None] | None = None,
    ) -> None:
        self.chat_responder: Callable[[dict[str, Any]], str] = chat_responder or default_chat_responder
        self.context_tokens = context_tokens
        self.default_dims = default_dims
        self.delay_s: float = 0.0
        self.pullable = dict(pullable) if pullable is not None else None
        self._lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        self._loaded: dict[str, str] = {}  # normalized name -> name as last requested
        self._requests: list[tuple[str, str, Any]] = []
        self._failures: list[list[Any]] = []  # [remaining, status, message, path or None]
        self._connections: set[socket.socket] = set()
        for name, dims in (DEFAULT_MODELS if models is None else models).items():
            self.add_model(name, dims)
        super().__init__(self._make_handler(), name="ollama-standin")
        self.host = self.url

    # ---- lifecycle -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop serving and free the port. Idempotent; wakes requests sleeping in ``delay_s``."""
        if self._closed.is_set():
            return
        super().close()
        with self._lock:  # drop keep-alive connections too, as a stopped server would
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __repr__(self) -> str:
        return f"OllamaStandIn(host={self.host!r}, models={sorted(self.models)!r})"

    # ---- test hooks ----------------------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, str, Any]]:
        """Every request received, in order, as ``(method, path, json_body)``: the live list.

        ``path`` excludes the query string; ``json_body`` is the parsed JSON, ``None`` when there was no
        body, or the raw text when the body was not JSON. Requests are recorded on arrival (before
        ``delay_s`` and ``fail_next``). Appends happen under a lock; take ``list(srv.requests)`` for a
        snapshot while requests are in flight, and ``srv.requests.clear()`` (or ``clear_requests()``)
        to reset.
        """
        return self._requests

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def requests_to(self, path: str) -> list[Any]:
        """The JSON bodies of the requests made to ``path``."""
        with self._lock:
            return [body for _, p, body in self._requests if p == path]

    def fail_next(
        self, n: int = 1, status: int = 503, error: str | None = None, path: str | None = None
    ) -> None:
        """Make the next ``n`` requests (to ``path`` only, if given) fail: ``status``, ``{"error": ...}``.

        Rules queue up: each request consumes the first rule that matches it.
        """
        if error is None:
            error = _BUSY_MESSAGE if status == 503 else f"ollama stand-in: injected failure (HTTP {status})"
        with self._lock:
            self._failures.append([n, status, error, path])

    @property
    def models(self) -> dict[str, int | None]:
        """Installed models: normalized name (``name:tag``) -> dims (``None`` = chat model)."""
        with self._lock:
            return {k: m.dims for k, m in self._models.items()}

    def add_model(self, name: str, dims: int | None) -> None:
        with self._lock:
            self._models[normalize_model_name(name)] = _Model(normalize_model_name(name), dims)

    def remove_model(self, name: str) -> bool:
        with self._lock:
            return self._models.pop(normalize_model_name(name), None) is not None

    # ---- internals -----------------------------------------------------------------------------------

    def _record(self, method: str, path: str, body: Any) -> None:
        with self._lock:
            self._requests.append((method, path, body))

    def _take_failure(self, path: str) -> tuple[int, str] | None:
        with self._lock:
            for rule in self._failures:
                remaining, status, message, only = rule
                if remaining > 0 and (only is None or only == path):
                    rule[0] -= 1
                    if rule[0] <= 0:
                        self._failures.remove(rule)
                    return status, message
        return None

    def _lookup(self, name: Any) -> _Model | None:
        if not isinstance(name, str) or not name:
            return None
        with self._lock:
            return self._models.get(normalize_model_name(name))

    def _require_model(self, body: Mapping[str, Any]) -> tuple[str, _Model]:
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise _HTTPError(400, "model is required")
        model = self._lookup(name)
        if model is None:
            raise _HTTPError(404, f'model "{name}" not found, try pulling it first')
        return name, model

    def _mark_loaded(self, name: str, keep_alive: Any) -> None:
        with self._lock:
            if keep_alive in (0, "0", "0s"):
                self._loaded.pop(normalize_model_name(name), None)
            else:
                self._loaded[normalize_model_name(name)] = name

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(_Handler):
            standin = server

        return Handler


class _Handler(BaseHTTPRequestHandler):
    standin: OllamaStandIn
    protocol_version = "HTTP/1.1"  # keep-alive, like Ollama; streams use chunked transfer encoding
    disable_nagle_algorithm = True  # headers and body go out in separate writes: avoid 40 ms ACK stalls
    server_version = "ollama-standin"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.standin._lock:
            self.standin._connections.add(self.connection)

    def finish(self) -> None:
        with self.standin._lock:
            self.standin._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    # ---- plumbing ------------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

    def _send_ndjson(self, parts: Iterable[Mapping[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for part in parts:
            line = json.dumps(part).encode() + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _dispatch(self) -> None:
        srv = self.standin
        path = self.path.split("?", 1)[0]
        raw = self._read_body()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        srv._record(self.command, path, body)
        if srv.delay_s > 0:
            srv._closed.wait(srv.delay_s)
        try:
            failure = srv._take_failure(path)
            if failure is not None:
                raise _HTTPError(*failure)
            route = _ROUTES.get((self.command, path)) or (
                _ROUTES.get(("GET", path)) if self.command == "HEAD" else None
            )
            if route is None:
                self._send(404, b"404 page not found", "text/plain")
                return
            if route.needs_body:
                if not raw:
                    raise _HTTPError(400, "missing request body")
                if not isinstance(body, dict):
                    raise _HTTPError(400, "invalid request body: expected a JSON object")
            route(self, body if isinstance(body, dict) else {})
        except _HTTPError as e:
            self._send_json(e.status, {"error": e.message})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug in a responder, say: report it like Ollama reports its 500s
            self._send_json(500, {"error": f"{type(e).__name__}: {e}"})

    do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = _dispatch

    # ---- endpoints -----------------------------------------------------------------------------------

    def root(self, body: dict[str, Any]) -> None:
        self._send(200, b"Ollama is running", "text/plain; charset=utf-8")

    def version(self, body: dict[str, Any]) -> None:
        self._send_json(200, {"version": VERSION})

    def tags(self, body: dict[str, Any]) -> None:
        srv = self.standin
        with srv._lock:
            models = list(srv._models.values())
        self._send_json(
            200,
            {
                "models": [
                    {
                        "name": m.name,
                        "model": m.name,
                        "modified_at": m.modified_at,
                        "size": m.size(),
                        "digest": m.digest(),
                        "details": m.details(),
                    }
                    for m in models
                ]
            },
        )

    def ps(self, body: dict[str, Any]) -> None:
        srv = self.standin
        with srv._lock:
            loaded = [(srv._models.get(k), k) for k in srv._loaded]
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 300))
        self._send_json(
            200,
            {
                "models": [
                    {
                        "name": name,
                        "model": name,
                        "size": m.size(),
                        "digest": m.digest(),
                        "details": m.details(),
                        "expires_at": expires,
                        "size_vram": m.size(),
                        "context_length": srv.context_tokens if m.is_embedding else CHAT_CONTEXT_TOKENS,
                    }
                    for m, name in loaded
                    if m is not None
                ]
            },
        )

    def show(self, body: dict[str, Any]) -> None:
        name = body.get("model") or body.get("name")  # LiteLLM sends {"name": ...}, the ollama client "model"
        if not isinstance(name, str) or not name:
            raise _HTTPError(400, "model is required")
        m = self.standin._lookup(name)
        if m is None:
            raise _HTTPError(404, f"model '{name}' not found")
        if m.is_embedding:
            arch = "nomic-bert"
            info = {
                "general.architecture": arch,
                f"{arch}.context_length": self.standin.context_tokens,
                f"{arch}.embedding_length": m.dims,
            }
            template, capabilities = "{{ .Prompt }}", ["embedding"]
        else:
            arch = "llama"
            info = {
                "general.architecture": arch,
                f"{arch}.context_length": CHAT_CONTEXT_TOKENS,
                f"{arch}.embedding_length": 3072,
            }
            template = "{{- if .Tools }}tools{{ end }}{{ .Prompt }}"
            capabilities = ["completion", "tools"]
        self._send_json(
            200,
            {
                "license": "stand-in",
                "modelfile": f"# Modelfile of the Ollama stand-in\nFROM {m.name}\n",
                "parameters": "",
                "template": template,
                "details": m.details(),
                "model_info": info,
                "capabilities": capabilities,
                "modified_at": m.modified_at,
            },
        )

    def _embed_inputs(self, body: dict[str, Any]) -> list[str]:
        value = body.get("input")
        if value is None:
            return []
        if isinstance(value, str):
            return [value] if value else []
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise _HTTPError(400, "invalid input type")

    def _context_limit(self, body: dict[str, Any]) -> int:
        limit = self.standin.context_tokens
        options = body.get("options")
        if isinstance(options, dict) and isinstance(options.get("num_ctx"), int) and options["num_ctx"] > 0:
            limit = min(limit, options["num_ctx"])
        return limit

    def embed(self, body: dict[str, Any]) -> None:
        start = time.perf_counter_ns()
        name, model = self.standin._require_model(body)
        if not model.is_embedding:
            raise _HTTPError(400, f'"{name}" does not support embeddings')
        texts = self._embed_inputs(body)
        truncate = body.get("truncate")
        truncate = True if truncate is None else bool(truncate)
        limit = self._context_limit(body)
        dims = body.get("dimensions")
        embeddings, total_tokens = [], 0
        for text in texts:
            if not truncate and count_tokens(text) > limit:
                raise _HTTPError(400, "the input length exceeds the context length")
            vec, n_tokens = _raw_vector(text, model.dims, limit)
            vec = _normalize(vec)
            if isinstance(dims, int) and 0 < dims < len(vec):
                vec = _normalize(vec[:dims])
            embeddings.append(vec)
            total_tokens += n_tokens
        self.standin._mark_loaded(name, body.get("keep_alive"))
        elapsed = time.perf_counter_ns() - start
        reply: dict[str, Any] = {"model": name, "embeddings": embeddings}
        if texts:
            reply.update(total_duration=elapsed, load_duration=0, prompt_eval_count=total_tokens)
        self._send_json(200, reply)

    def embeddings(self, body: dict[str, Any]) -> None:
        # Legacy endpoint: like Ollama's, it truncates silently and does NOT L2-normalise.
        name, model = self.standin._require_model(body)
        if not model.is_embedding:
            raise _HTTPError(400, f'"{name}" does not support embeddings')
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise _HTTPError(400, "invalid prompt type")
        self.standin._mark_loaded(name, body.get("keep_alive"))
        if not prompt:
            self._send_json(200, {"embedding": []})
            return
        vec, _ = _raw_vector(prompt, model.dims, self._context_limit(body))
        self._send_json(200, {"embedding": vec})

    def _respond(self, body: dict[str, Any], *, kind: str) -> None:
        """Shared by /api/chat (kind="chat") and /api/generate (kind="generate")."""
        start = time.perf_counter_ns()
        name, model = self.standin._require_model(body)
        if model.is_embedding:
            raise _HTTPError(400, f'"{name}" does not support {kind}')
        stream = body.get("stream")
        stream = True if stream is None else bool(stream)
        if kind == "chat":
            messages = body.get("messages") or []
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise _HTTPError(400, "invalid messages: expected a list of objects")
            prompt_texts = [m.get("content") or "" for m in messages]
            empty = not messages
        else:
            prompt_texts = [body.get("prompt") or "", body.get("system") or ""]
            empty = not body.get("prompt")

        def frame(text: str, **extra: Any) -> dict[str, Any]:
            out: dict[str, Any] = {"model": name, "created_at": _now_rfc3339()}
            if kind == "chat":
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            out.update(extra)
            return out

        keep_alive = body.get("keep_alive")
        if empty:  # Ollama just loads (or, with keep_alive 0, unloads) the model and answers at once
            self.standin._mark_loaded(name, keep_alive)
            reason = "unload" if keep_alive in (0, "0", "0s") else "load"
            done = frame("", done=True, done_reason=reason)
            if stream:
                self._send_ndjson([done])
            else:
                self._send_json(200, done)
            return

        reply = self.standin.chat_responder(json.loads(json.dumps(body)))
        if not isinstance(reply, str):
            raise TypeError(f"chat_responder returned {type(reply).__name__}, expected str")
        self.standin._mark_loaded(name, keep_alive)
        prompt_tokens = sum(count_tokens(t) for t in prompt_texts if isinstance(t, str))
        eval_tokens = count_tokens(reply)

        def done_frame(text: str) -> dict[str, Any]:
            total = time.perf_counter_ns() - start
            return frame(
                text,
                done=True,
                done_reason="stop",
                total_duration=total,
                load_duration=0,
                prompt_eval_count=prompt_tokens,
                prompt_eval_duration=total // 2,
                eval_count=eval_tokens,
                eval_duration=total - total // 2,
            )

        if stream:
            self._send_ndjson([*(frame(p, done=False) for p in _stream_pieces(reply)), done_frame("")])
        else:
            self._send_json(200, done_frame(reply))

    def chat(self, body: dict[str, Any]) -> None:
        self._respond(body, kind="chat")

    def generate(self, body: dict[str, Any]) -> None:
        self._respond(body, kind="generate")

    def pull(self, body: dict[str, Any]) -> None:
        srv = self.standin
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise _HTTPError(400, "model is required")
        stream = body.get("stream")
        stream = True if stream is None else bool(stream)
        dims: int | None
        if srv.pullable is None:
            dims = srv.default_dims if "embed" in name.lower() else None
        else:
            by_norm = {normalize_model_name(k): v for k, v in srv.pullable.items()}
            if normalize_model_name(name) not in by_norm:
                error = "pull model manifest: file does not exist"
                if stream:
                    self._send_ndjson([{"status": "pulling manifest"}, {"error": error}])
                    return
                raise _HTTPError(500, error)
            dims = by_norm[normalize_model_name(name)]
        if srv._lookup(name) is None:
            srv.add_model(name, dims)
        model = srv._lookup(name)
        assert model is not None
        digest = "sha256:" + model.digest()
        total = model.size()
        parts = [
            {"status": "pulling manifest"},
            {"status": f"pulling {model.digest()[:12]}", "digest": digest, "total": total, "completed": 0},
            {
                "status": f"pulling {model.digest()[:12]}",
                "digest": digest,
                "total": total,
                "completed": total,
            },
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        if stream:
            self._send_ndjson(parts)
        else:
            self._send_json(200, {"status": "success"})

    def delete(self, body: dict[str, Any]) -> None:
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise _HTTPError(400, "model is required")
        if not self.standin.remove_model(name):
            raise _HTTPError(404, f"model '{name}' not found")
        self._send(200, b"", "application/json; charset=utf-8")


class _Route:
    def __init__(self, fn: Callable[[_Handler, dict[str, Any]], None], needs_body: bool) -> None:
        self.fn = fn
        self.needs_body = needs_body

    def __call__(self, handler: _Handler, body: dict[str, Any]) -> None:
        self.fn(handler, body)


_ROUTES: dict[tuple[str, str], _Route] = {
    ("GET", "/"): _Route(_Handler.root, False),
    ("GET", "/api/version"): _Route(_Handler.version, False),
    ("GET", "/api/tags"): _Route(_Handler.tags, False),
    ("GET", "/api/ps"): _Route(_Handler.ps, False),
    ("POST", "/api/show"): _Route(_Handler.show, True),
    ("POST", "/api/embed"): _Route(_Handler.embed, True),
    ("POST", "/api/embeddings"): _Route(_Handler.embeddings, True),
    ("POST", "/api/chat"): _Route(_Handler.chat, True),
    ("POST", "/api/generate"): _Route(_Handler.generate, True),
    ("POST", "/api/pull"): _Route(_Handler.pull, True),
    ("DELETE", "/api/delete"): _Route(_Handler.delete, True),
}
