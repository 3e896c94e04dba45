"""The one HTTP client of remote model servers (rerank and embedding servers: TEI, vLLM, Infinity,
Cohere-shaped APIs, another rag-app): timeouts, retries, a circuit breaker, bearer auth, clear errors.

Retries
    A timeout, a connection error, a 5xx or a 429 is retried ``retries`` times with exponential backoff
    and jitter (about 0.25 s, 0.5 s, 1 s ..., capped at 8 s; a ``Retry-After`` header, capped as well,
    wins): those are the faults that go away (a restart, a full queue). Any other 4xx is not retried: the
    same request would fail the same way (a wrong key, path or batch size), and the message says which
    setting to fix.

Circuit breaker
    ``circuit_failures`` consecutive failed requests (timeouts, connection errors, 5xx, 429, answers in
    the wrong shape) open the circuit: for ``circuit_reset_s`` every call fails at once, without a
    request, so a dead server costs a search nothing instead of ``(retries + 1) x timeout`` each time.
    Then one trial request goes through (half-open): success closes the circuit, failure opens it again.
    Any answer other than a 5xx/429 proves the server is up, so a 4xx counts as a success here. Every
    request's outcome is recorded, an unexpected exception included (a bug, a closed client): a trial
    that ended in one must not leave the circuit waiting on it for ever.

Errors
    Every failure of the server or the wire is a :class:`RemoteServerError` (an answer httpx cannot
    decode, such as a broken ``Content-Encoding``, included), so a caller's fallback covers them all;
    a 4xx refusal is its subclass :class:`RemoteRefusedError`, which says the server is up.

Secrets
    The API key travels only in the ``Authorization`` header. Messages name the endpoint with any
    ``user:password@`` removed, and any text a server echoes has the key masked.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from rag_app.core.errors import InputError, ServiceUnavailableError
from rag_app.core.settings import Settings

log = logging.getLogger("rag_app.models.remote")

T = TypeVar("T")

#: First backoff delay and its cap, in seconds (the jitter draws between half the delay and the delay).
BACKOFF_S = 0.25
BACKOFF_CAP_S = 8.0
#: Characters of a server's error body quoted in a message.
BODY_SNIPPET = 300


class RemoteServerError(ServiceUnavailableError):
    """A remote model server failed: unreachable, too slow, an error status, or the circuit is open.

    A :class:`~rag_app.core.errors.ServiceUnavailableError`: the CLI exits with code 6 and the HTTP
    server answers 503 ``service_unavailable``.
    """


class RemoteResponseError(RemoteServerError):
    """The server answered, but not in the shape its API promises (wrong count, bad index, not JSON)."""


class RemoteRefusedError(RemoteServerError):
    """The server answered a 4xx other than 429: it is up, the request or a setting is wrong (a key,
    the URL, the batch size). The circuit counts it as a success; a retry would fail the same way."""


class CircuitOpenError(RemoteServerError):
    """Too many consecutive failures: calls fail fast, without a request, until the reset time."""


def display_url(url: str) -> str:
    """``url`` without ``user:password@``: what messages and logs may show."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def endpoint_url(base_url: str, path: str) -> str:
    """``base_url`` + ``path``; a base that already ends with ``path`` (the full endpoint) is kept."""
    base = base_url.rstrip("/")
    return base if base.endswith(path) else base + path


def values_by_index(
    items: Any, n: int, key: str, check: Callable[[Any, int], T], *, counted: tuple[str, str]
) -> list[T]:
    """The ``key`` values of an answer's ``[{index, <key>}, ...]`` items in input order 0..n-1, each
    passed through ``check(value, index)``, which converts it or raises ``ValueError`` saying what is
    wrong with it.

    Batched model APIs (OpenAI embeddings, Cohere and TEI rerank) answer one item per input, tagged
    with its position, in any order. An answer that miscounts, repeats a position or names one out of
    range is refused (``TypeError``/``ValueError`` saying which), never guessed at: its vectors or
    scores would land on the wrong texts. ``counted`` names what the count message counts, e.g.
    ``("scores", "documents")`` for "4 scores for 5 documents".
    """
    if not isinstance(items, list):
        raise TypeError(f"expected a list of {{index, {key}}} objects, got {type(items).__name__}")
    if len(items) != n:
        raise ValueError(f"{len(items)} {counted[0]} for {n} {counted[1]}")
    values: list[Any] = [None] * n
    seen = [False] * n
    for item in items:
        index = item["index"]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            raise ValueError(f"index {index!r} is not a position 0..{n - 1} of the {n} {counted[1]}")
        if seen[index]:
            raise ValueError(f"index {index} appears twice")
        seen[index] = True
        values[index] = check(item[key], index)
    return values  # n distinct in-range indexes: every position filled


class CircuitBreaker:
    """Consecutive-failure circuit breaker (closed -> open -> one half-open trial); thread-safe."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = max(1, int(failures))
        self.reset_s = float(reset_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False
        self.last_error = ""

    @property
    def state(self) -> str:
        """``closed``, ``open`` (failing fast) or ``half-open`` (a trial may go, or is in flight)."""
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if self._trial or self._clock() - self._opened_at >= self.reset_s:
                return "half-open"
            return "open"

    def refusal(self) -> float | None:
        """``None`` when a request may go (closed, or this caller takes the half-open trial); otherwise
        the seconds until the next trial (0 while another caller's trial is in flight)."""
        with self._lock:
            if self._opened_at is None:
                return None
            left = self.reset_s - (self._clock() - self._opened_at)
            if left > 0:
                return left
            if self._trial:
                return 0.0
            self._trial = True
            return None

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial = False

    def failure(self, reason: str) -> None:
        with self._lock:
            self._failures += 1
            self.last_error = reason
            if self._trial or self._failures >= self.threshold:
                if self._opened_at is None or self._trial:
                    log.warning(
                        "circuit opened after %d consecutive failures (last: %s); failing fast for %.0fs",
                        self._failures,
                        reason,
                        self.reset_s,
                    )
                self._opened_at = self._clock()
                self._trial = False

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._failures


class _Outcome:
    """One request's outcome, recorded in the circuit once: the first of ``success``/``failure`` counts,
    so a generic handler may record a failure after a specific one without counting it twice."""

    def __init__(self, circuit: CircuitBreaker) -> None:
        self._circuit = circuit
        self._recorded = False

    def success(self) -> None:
        if not self._recorded:
            self._recorded = True
            self._circuit.success()

    def failure(self, reason: str) -> None:
        if not self._recorded:
            self._recorded = True
            self._circuit.failure(reason)


class RemoteHttpClient:
    """POSTs JSON to one model server with the module's timeout, retry, circuit and auth rules.

    ``what`` names the server in messages ("reranker server"); ``url_setting``/``key_setting`` name the
    settings a user fixes (``RAG_RERANKER_URL``, ``RAG_RERANKER_API_KEY``).
    """

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        url: str,
        *,
        api_key: str | None,
        what: str,
        url_setting: str,
        key_setting: str,
    ) -> RemoteHttpClient:
        """A client for the server at ``url`` with the ``RAG_REMOTE_*`` settings (timeout, retries,
        circuit breaker), which every remote model (reranker, embedder) shares."""
        return cls(
            url,
            what=what,
            url_setting=url_setting,
            key_setting=key_setting,
            api_key=api_key,
            timeout_s=settings.remote_timeout_s,
            retries=settings.remote_retries,
            circuit_failures=settings.remote_circuit_failures,
            circuit_reset_s=settings.remote_circuit_reset_s,
        )

    def __init__(
        self,
        base_url: str,
        *,
        what: str,
        url_setting: str,
        key_setting: str,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        retries: int = 2,
        circuit_failures: int = 5,
        circuit_reset_s: float = 30.0,
        backoff_s: float = BACKOFF_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise InputError(
                f"{what} URL {display_url(base_url or '')!r} is not an http(s) URL; set {url_setting} to the "
                "server's base URL, e.g. http://127.0.0.1:8080"
            )
        try:
            httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise InputError(
                f"{what} URL {display_url(base_url)!r} is not a valid URL ({exc}); set {url_setting} to the "
                "server's base URL, e.g. http://127.0.0.1:8080"
            ) from exc
        self.base_url = base_url
        self.shown_url = display_url(base_url)
        self.what = what
        self.url_setting = url_setting
        self.key_setting = key_setting
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.circuit = CircuitBreaker(circuit_failures, circuit_reset_s)
        self._api_key = api_key or None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout_s),
            headers=headers,
            transport=transport,
            follow_redirects=False,
        )

    # -- messages ---------------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _snippet(self, response: httpx.Response) -> str:
        text = " ".join(response.text.split())
        return self._redact(text[:BODY_SNIPPET] + ("..." if len(text) > BODY_SNIPPET else ""))

    def _refused_hint(self, response: httpx.Response) -> str:
        status = response.status_code
        if 300 <= status < 400:
            location = display_url(response.headers.get("location", "elsewhere"))
            return f"it redirects to {location}: set {self.url_setting} to the address it names"
        if status in (401, 403):
            if self._api_key:
                return f"check {self.key_setting}: the server does not accept that key"
            return f"the server wants a key: set {self.key_setting}"
        if status in (404, 405):
            return f"check {self.url_setting} (the base URL, without the endpoint path) and the API shape"
        if status in (413, 422):
            return (
                "the request may hold more texts than the server takes at once: lower RAG_REMOTE_BATCH_SIZE "
                "(TEI's default --max-client-batch-size is 32), or check the model name"
            )
        return "check the server's log"

    # -- requests ---------------------------------------------------------------------------------
    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        delay = min(BACKOFF_CAP_S, self.backoff_s * 2**attempt)
        delay = random.uniform(delay / 2, delay)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            with contextlib.suppress(ValueError):  # an HTTP date: keep the backoff
                delay = min(BACKOFF_CAP_S, max(0.0, float(retry_after)))
        return delay

    def post_json(self, path: str, body: dict[str, Any], parse: Callable[[Any], T]) -> T:
        """POST ``body`` to ``path`` and return ``parse(json answer)``.

        ``parse`` checks the answer's shape and raises ``ValueError``/``KeyError``/``TypeError``/
        ``IndexError`` with a message saying what is wrong; that becomes a :class:`RemoteResponseError`
        (not retried: a server that miscounts once will again), as does an answer httpx cannot decode.
        Raises :class:`CircuitOpenError`, :class:`RemoteRefusedError` (a 4xx) or
        :class:`RemoteServerError` (retries exhausted) otherwise. Any other exception (a bug) is raised
        as it is, after the circuit has recorded the attempt as a failure.
        """
        url = endpoint_url(self.base_url, path)
        shown = display_url(url)
        if self._client.is_closed:
            raise RemoteServerError(
                f"{self.what} {shown} cannot be asked: its client was closed (the runtime that owned it "
                "shut down); build a new one, e.g. restart the process"
            )
        last = ""
        attempts = 0
        for attempt in range(self.retries + 1):
            wait = self.circuit.refusal()
            if wait is not None:
                raise CircuitOpenError(self._circuit_message(shown, wait, last))
            attempts += 1
            outcome = _Outcome(self.circuit)
            try:
                response, last = self._send(url, body, shown, outcome)
                if response is not None:
                    status = response.status_code
                    if status < 300:
                        return self._parsed(response, parse, shown, outcome)
                    if status < 500 and status != 429:
                        message = (
                            f"{self.what} {shown} refused the request: HTTP {status} "
                            f"{self._snippet(response)}; {self._refused_hint(response)}"
                        )
                        outcome.success()  # it answered: the server is up, the request is wrong
                        raise RemoteRefusedError(message)
                    last = f"HTTP {status} {self._snippet(response)}"
                outcome.failure(last)
                if attempt < self.retries:
                    delay = self._delay(attempt, response)
                    log.warning(
                        "%s %s attempt %d/%d failed (%s); retrying in %.2fs",
                        self.what,
                        shown,
                        attempt + 1,
                        self.retries + 1,
                        last,
                        delay,
                    )
                    time.sleep(delay)
            except BaseException as exc:
                # Whatever ended the attempt, the circuit hears of it (a no-op when it already has):
                # a half-open trial that escaped unrecorded would leave every later call failing fast.
                outcome.failure(self._redact(f"unexpected {type(exc).__name__}: {exc}"))
                raise
        raise RemoteServerError(
            f"{self.what} {shown} failed after {attempts} attempt{'s' if attempts != 1 else ''}: {last}; "
            f"check that it runs and answers within RAG_REMOTE_TIMEOUT_S={self.timeout_s:g}, or point "
            f"{self.url_setting} at one that does"
        )

    def _send(
        self, url: str, body: dict[str, Any], shown: str, outcome: _Outcome
    ) -> tuple[httpx.Response | None, str]:
        """One POST: ``(response, "")``, or ``(None, reason)`` for a fault worth retrying (a timeout, a
        connection error); an answer httpx cannot read raises :class:`RemoteResponseError`."""
        try:
            return self._client.post(url, json=body), ""
        except httpx.TimeoutException as exc:
            return None, f"no answer within {self.timeout_s:g}s ({type(exc).__name__})"
        except httpx.TransportError as exc:
            return None, self._redact(f"connection failed ({type(exc).__name__}: {exc})")
        except httpx.HTTPError as exc:  # DecodingError (a broken Content-Encoding), TooManyRedirects
            reason = self._redact(f"{type(exc).__name__}: {exc}")
            outcome.failure(f"unreadable answer ({reason})")
            raise RemoteResponseError(
                f"{self.what} {shown} sent an answer that cannot be read ({reason}); check that "
                f"{self.url_setting} points at the model server itself, not at a proxy that rewrites its "
                "answers, and the server's log"
            ) from exc

    def _parsed(
        self, response: httpx.Response, parse: Callable[[Any], T], shown: str, outcome: _Outcome
    ) -> T:
        try:
            result = parse(response.json())
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            reason = self._redact(f"{type(exc).__name__}: {exc}")
            outcome.failure(f"bad answer ({reason})")
            raise RemoteResponseError(
                f"{self.what} {shown} answered HTTP {response.status_code} in an unexpected shape: {reason}; "
                "check that the server speaks the configured API"
            ) from exc
        outcome.success()
        return result

    def _circuit_message(self, shown: str, wait: float, last: str) -> str:
        when = f"for another {wait:.1f}s" if wait > 0 else "while a trial request is in flight"
        return (
            f"{self.what} {shown} is failing fast {when} (circuit open after "
            f"{self.circuit.threshold} consecutive failures; last: {last or self.circuit.last_error}); "
            "check the server, then calls resume on their own (RAG_REMOTE_CIRCUIT_RESET_S)"
        )

    def close(self) -> None:
        self._client.close()
