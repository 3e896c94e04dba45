"""A reranker served over HTTP (``reranker_backend="remote"``): Hugging Face TEI, Infinity, vLLM, Cohere,
or another rag-app's ``/v1/rerank``.

Wire shapes (``reranker_api``)
    ``cohere``: ``POST {reranker_url}/v1/rerank {model, query, documents, top_n, return_documents}`` ->
    ``{results: [{index, relevance_score}]}`` (Cohere, Infinity, vLLM, and rag-app's own route).
    ``tei``: ``POST {reranker_url}/rerank {query, texts, raw_scores: true, truncate: true}`` ->
    ``[{index, score}]`` (text-embeddings-inference).

Scores
    The :class:`~rag_app.models.rerank.base.Reranker` protocol ranks by logit and reports
    ``relevance = sigmoid(logit)``. TEI is asked for raw scores, which are the model's logits: the same
    numbers the in-process cross-encoder gives. A Cohere-shaped server answers a 0-1
    ``relevance_score``; it is kept as ``relevance`` and mapped back to ``rerank_score =
    logit(relevance_score)``, which is exactly the model's logit for servers that send
    ``sigmoid(logit)`` (rag-app, TEI without raw scores, vLLM and Infinity with bge rerankers) and an
    order-preserving stand-in otherwise (Cohere's hosted models). Near 1 float64 resolves ``1 - p``
    coarsely, so logits above about 20 come back slightly off (still in order), and a score that rounds
    to 0 or 1 maps to about -708 or +37: saturated documents tie and keep retrieval order. A relevance_score
    outside 0-1 is refused as a wrong answer rather than guessed at. Scores from one server are comparable
    across its answers, not with another model's.

Batching and checks
    Candidates go out in requests of at most ``remote_batch_size`` texts (TEI refuses more than its
    ``--max-client-batch-size``, 32 by default), each distinct text once, repeated pairs from the score
    cache. Every answer must give each index of its batch exactly once with a finite score; anything else
    is a :class:`~rag_app.models.remote_http.RemoteResponseError`.

When the server is down
    Timeouts, connection errors, 5xx and 429 are retried with backoff, then the circuit breaker fails calls
    fast (:mod:`rag_app.models.remote_http`). What a failed call does follows ``reranker_on_missing``:
    ``fail`` raises (a :class:`~rag_app.core.errors.ServiceUnavailableError`: CLI exit 6, HTTP 503);
    ``fallback`` keeps the retrieval order for that call (passages ``reranked=False``). A server that
    failed (a timeout, a connection error, a 5xx, 429 or unreadable answer) is reported
    :attr:`RemoteReranker.available` ``False``, with the reason in :meth:`~RemoteReranker.describe`
    (what :func:`~rag_app.models.rerank.base.unavailable_note` shows the user), until a call gets an
    answer again or the circuit's reset time (``remote_circuit_reset_s``) has passed, and for as long as
    the circuit is open; callers keep calling meanwhile (the circuit, not this flag, decides whether a
    request goes). A 4xx refusal (a wrong key, a batch over the server's limit) proves the server is up:
    it falls back or raises the same way, is logged, and leaves the reranker available.
    :meth:`~RemoteReranker.score` has no fallback: there is no score to give, so it always raises.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rag_app.core.errors import InputError
from rag_app.core.settings import Settings
from rag_app.core.types import Passage
from rag_app.models.remote_http import (
    RemoteHttpClient,
    RemoteRefusedError,
    RemoteServerError,
    values_by_index,
)
from rag_app.models.rerank.base import LOGGER_NAME, check_top_n
from rag_app.models.rerank.cache import ScoreCache
from rag_app.models.rerank.fallback import retrieval_order
from rag_app.models.rerank.scoring import cached_scores, ranked_passages, text_digest

logger = logging.getLogger(LOGGER_NAME)

#: Endpoint path of each wire shape, appended to ``reranker_url``.
PATHS = {"cohere": "/v1/rerank", "tei": "/rerank"}
#: The largest probability below 1 in float64: ``logit`` of it is about 36.7, not infinite.
_ALMOST_ONE = 1.0 - 2.0**-53


def logit_from_relevance(relevance: Any) -> np.ndarray:
    """The inverse of :func:`~rag_app.models.rerank.base.relevance_from_logits` (float64), finite at
    0 and 1 (clipped to the nearest representable probabilities)."""
    p = np.clip(np.asarray(relevance, dtype=np.float64), np.finfo(np.float64).tiny, _ALMOST_ONE)
    return np.log(p) - np.log1p(-p)


def _finite_score(key: str) -> Callable[[Any, int], float]:
    """The check of one score of a rerank answer (:func:`values_by_index`): a finite number."""

    def check(score: Any, index: int) -> float:
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise ValueError(f"{key} {score!r} of index {index} is not a finite number")
        return float(score)

    return check


def _scores_by_index(items: Any, n: int, score_key: str) -> list[float]:
    """``[{index, <score_key>}]`` -> one finite score per index 0..n-1; ``ValueError`` saying what is
    wrong otherwise (count, index range, a repeated index, a non-finite score)."""
    return values_by_index(items, n, score_key, _finite_score(score_key), counted=("scores", "documents"))


def parse_cohere(n: int) -> Callable[[Any], np.ndarray]:
    """Parser of a Cohere-shaped answer for ``n`` documents: logits (see the module doc on scores)."""

    def parse(data: Any) -> np.ndarray:
        scores = _scores_by_index(data["results"], n, "relevance_score")
        outside = [s for s in scores if not 0.0 <= s <= 1.0]
        if outside:
            raise ValueError(
                f"relevance_score {outside[0]!r} is outside 0-1, which the Cohere rerank shape promises; "
                "for a server answering raw logits use reranker_api=tei if it speaks TEI's /rerank"
            )
        return logit_from_relevance(scores)

    return parse


def parse_tei(n: int) -> Callable[[Any], np.ndarray]:
    """Parser of a TEI ``/rerank`` answer (asked with ``raw_scores``) for ``n`` texts: the logits."""

    def parse(data: Any) -> np.ndarray:
        return np.asarray(_scores_by_index(data, n, "score"), dtype=np.float64)

    return parse


class RemoteReranker:
    """A :class:`~rag_app.models.rerank.base.Reranker` whose model runs on a rerank server.

    Build it through :func:`rag_app.models.rerank.load_reranker` with ``reranker_backend="remote"``.
    Nothing is requested at construction: a server that starts later is fine, and a server that is down
    costs what ``reranker_on_missing`` says per call (module doc). Thread-safe; copies are the same
    instance (one client, cache and circuit), like the in-process reranker's.
    """

    backend = "remote"

    def __init__(
        self,
        client: RemoteHttpClient,
        *,
        api: str = "cohere",
        model: str = "",
        batch_size: int = 64,
        on_missing: str = "fail",
        cache: ScoreCache | None = None,
        cache_size: int = 8192,
    ) -> None:
        if api not in PATHS:
            raise InputError(f"unknown reranker_api {api!r}; use one of {', '.join(PATHS)}")
        self.api = api
        self.model_id = model
        self.batch_size = max(1, int(batch_size))
        self.on_missing = on_missing
        self.client = client
        self.url = self.client.shown_url
        self._cache = cache if cache is not None else ScoreCache(cache_size)
        self._lock = threading.Lock()
        self.pairs_scored = 0
        self.requests = 0
        #: (monotonic time, reason) of the last failed call, until a call succeeds.
        self._down: tuple[float, str] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, cache: ScoreCache | None = None) -> RemoteReranker:
        if not settings.reranker_url:
            raise InputError(
                "reranker_backend=remote needs the server's base URL: set RAG_RERANKER_URL "
                "(e.g. http://127.0.0.1:8080 for TEI or another rag-app)"
            )
        client = RemoteHttpClient.from_settings(
            settings,
            settings.reranker_url,
            api_key=settings.reranker_api_key,
            what="reranker server",
            url_setting="RAG_RERANKER_URL",
            key_setting="RAG_RERANKER_API_KEY",
        )
        return cls(
            client,
            api=settings.reranker_api,
            model=settings.reranker_model,
            batch_size=settings.remote_batch_size,
            on_missing=settings.reranker_on_missing,
            cache=cache,
            cache_size=settings.rerank_cache_size,
        )

    # -- availability -----------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """False while the circuit is open, and from a call the server failed until a call gets an answer
        or the circuit's reset time has passed. Not a gate: the pipeline and ``/v1/rerank`` call anyway,
        and the circuit decides whether a request goes."""
        if self.client.circuit.state == "open":
            return False
        with self._lock:
            down = self._down
        return down is None or time.monotonic() - down[0] >= self.client.circuit.reset_s

    def _mark(self, error: RemoteServerError | None) -> None:
        """Record a call's outcome: ``None`` (an answer, a 4xx refusal included) or the server's failure."""
        with self._lock:
            was_down, self._down = self._down, (None if error is None else (time.monotonic(), str(error)))
        if error is not None and was_down is None:
            logger.warning("remote reranker %s failed: %s", self.url, error)
        elif error is None and was_down is not None:
            logger.info("remote reranker %s answers again", self.url)

    # -- scoring ----------------------------------------------------------------------------------
    def _request(self, query: str, texts: list[str]) -> np.ndarray:
        n = len(texts)
        if self.api == "tei":
            body: dict[str, Any] = {"query": query, "texts": texts, "raw_scores": True, "truncate": True}
            parse = parse_tei(n)
        else:
            body = {"model": self.model_id, "query": query, "documents": texts, "top_n": n}
            body["return_documents"] = False
            parse = parse_cohere(n)
        logits = self.client.post_json(PATHS[self.api], body, parse)
        with self._lock:
            self.requests += 1
            self.pairs_scored += n
        return logits

    def _predict(self, query: str, texts: list[str]) -> np.ndarray:
        """Logits of ``texts``, ``batch_size`` texts per request, in input order."""
        parts = [
            self._request(query, texts[i : i + self.batch_size])
            for i in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)

    def _cache_key(self, query: str) -> Callable[[str], tuple[str, ...]]:
        return lambda text: ("remote", self.api, self.url, self.model_id, query, text_digest(text))

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Logits (float64, input order) from the server; duplicates and cached pairs sent once or not at
        all. Raises :class:`~rag_app.models.remote_http.RemoteServerError` when the server fails."""
        try:
            logits = cached_scores(
                passages, self._cache, self._cache_key(query), lambda t: self._predict(query, t)
            )
        except RemoteRefusedError as exc:
            self._mark(None)  # it answered: up, but this request or a setting is wrong
            logger.warning("remote reranker %s refused a request: %s", self.url, exc)
            raise
        except RemoteServerError as exc:
            self._mark(exc)
            raise
        self._mark(None)
        return logits

    def rerank(self, query: str, passages: Sequence[Passage], top_n: int | None = None) -> list[Passage]:
        """All ``passages`` scored by the server, best first, cut to ``top_n`` (the protocol's copies, as
        the in-process reranker makes them). A failed server: see ``reranker_on_missing`` (module doc)."""
        passages = list(passages)
        top_n = check_top_n(top_n, len(passages))
        if not passages:
            return []
        try:
            logits = self.score(query, [p.text for p in passages])
        except RemoteServerError:
            if self.on_missing != "fallback":
                raise
            return retrieval_order(passages, top_n)
        return ranked_passages(passages, logits, top_n)

    def cache_stats(self) -> dict[str, int]:
        """Score-cache counters plus the pairs sent and requests made (``batches``)."""
        with self._lock:
            work = {"pairs_scored": self.pairs_scored, "batches": self.requests}
        return {**self._cache.stats(), **work}

    def describe(self) -> str:
        with self._lock:
            down = self._down
        where = f"remote {self.api} server {self.url}"
        if down is not None and not self.available:
            return f"unavailable ({self.model_id} at {where}), keeping retrieval order: {down[1]}"
        client = self.client
        return (
            f"{self.model_id} [{where}] timeout={client.timeout_s:g}s retries={client.retries} "
            f"batch_size={self.batch_size} circuit={client.circuit.state}"
        )

    def close(self) -> None:
        self.client.close()

    def __copy__(self) -> RemoteReranker:
        return self  # DSPy optimisers copy programs: share the client, cache and circuit, as the model

    def __deepcopy__(self, memo: dict[int, Any]) -> RemoteReranker:
        return self

    def __repr__(self) -> str:
        return f"RemoteReranker({self.describe()})"
