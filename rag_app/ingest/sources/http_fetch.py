"""Polite, incremental HTTP fetching for the URL and sitemap sources (httpx, threads).

Polite: at most ``fetch_concurrency`` requests in flight, at most ``fetch_per_host_rps`` request
starts per second to any one host, the configured user agent, ``robots.txt`` honoured on every hop
of a redirect. Incremental: the ETag and Last-Modified a page was last committed with go back as
``If-None-Match``/``If-Modified-Since``, so an unchanged page answers ``304`` with no body and costs
neither bandwidth nor parsing. Robust: timeouts, connection errors, 429 and 5xx are retried
``fetch_retries`` times with exponential backoff (``Retry-After`` honoured, capped); every other
outcome (a 404, a redirect loop, a body over ``max_document_bytes``) is a per-URL result, never an
exception, so one bad page never stops a run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx

from rag_app.core.settings import Settings
from rag_app.ingest.sources.base import Validators
from rag_app.ingest.sources.robots import RobotsCache

#: Redirect hops followed before a URL is reported as a redirect loop.
MAX_REDIRECTS = 10
#: Longest wait a ``Retry-After`` header can impose on one retry.
MAX_RETRY_AFTER_S = 30.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
GONE_STATUSES = frozenset({404, 410})


@dataclass(frozen=True)
class FetchResult:
    """One URL's outcome. Exactly one of: ``data`` (fetched), ``not_modified``, ``disallowed``, or
    ``error`` (with ``status`` when the server answered, and ``gone`` for 404/410)."""

    url: str
    final_url: str
    status: int | None = None
    data: bytes | None = None
    content_type: str | None = None
    validators: Validators = field(default_factory=Validators)
    redirects: tuple[str, ...] = ()
    not_modified: bool = False
    disallowed: bool = False
    error: str | None = None
    gone: bool = False


class HostRate:
    """At most ``rps`` request starts per second per host (slots booked under a lock, slept outside)."""

    def __init__(self, rps: float) -> None:
        self.interval = 1.0 / rps
        self.next_at: dict[str, float] = {}
        self.lock = threading.Lock()

    def wait(self, url: str) -> None:
        host = urlsplit(url).netloc
        with self.lock:
            now = time.monotonic()
            at = max(now, self.next_at.get(host, now))
            self.next_at[host] = at + self.interval
        if at > now:
            time.sleep(at - now)


class HttpFetcher:
    """Fetches URLs under the settings' politeness rules; ``with HttpFetcher(settings) as f:``.

    ``backoff_s`` is the first retry's wait (doubling after); ``max_bytes`` defaults to
    ``max_document_bytes``. ``transport`` replaces httpx's network transport (for a proxy or mount).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        backoff_s: float = 0.5,
        max_bytes: int | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.backoff_s = backoff_s
        self.max_bytes = max_bytes if max_bytes is not None else settings.max_document_bytes
        self.client = httpx.Client(
            timeout=settings.fetch_timeout_s,
            follow_redirects=False,
            headers={"User-Agent": settings.fetch_user_agent},
            limits=httpx.Limits(max_connections=settings.fetch_concurrency * 2),
            transport=transport,
        )
        self.rate = HostRate(settings.fetch_per_host_rps)
        self.robots = RobotsCache(settings.fetch_user_agent, self._get_robots)

    def __enter__(self) -> HttpFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def fetch_many(self, requests: Iterable[tuple[str, Validators | None]]) -> Iterator[FetchResult]:
        """Fetch each ``(url, remembered validators)``, ``fetch_concurrency`` at a time; results in
        completion order."""
        with ThreadPoolExecutor(self.settings.fetch_concurrency, thread_name_prefix="fetch") as pool:
            futures = [pool.submit(self.fetch, url, known) for url, known in requests]
            for future in as_completed(futures):
                yield future.result()

    def fetch(self, url: str, known: Validators | None = None) -> FetchResult:
        """One URL, following redirects (each hop checked against robots.txt), conditionally when
        ``known`` holds validators."""
        headers = _conditional_headers(known)
        hops: list[str] = []
        current = url
        while True:
            verdict = self.robots.check(current)
            if not verdict.allowed:
                if verdict.unknown:
                    return FetchResult(url, current, error=verdict.reason, redirects=tuple(hops))
                return FetchResult(url, current, disallowed=True, error=verdict.reason, redirects=tuple(hops))
            try:
                result = self._request(url, current, headers, tuple(hops))
            except _Redirect as redirect:
                hops.append(current)
                if len(hops) > MAX_REDIRECTS:
                    return FetchResult(
                        url,
                        current,
                        error=f"more than {MAX_REDIRECTS} redirects (a loop?)",
                        redirects=tuple(hops),
                    )
                current = redirect.location
                continue
            return result

    def get(self, url: str) -> httpx.Response:
        """A plain rate-limited GET with retries (sitemaps): redirects followed, errors raised."""
        response = self._send(url, {}, follow=True)
        response.raise_for_status()
        return response

    # ------------------------------------------------------------------------------------ internals
    def _get_robots(self, url: str) -> httpx.Response:
        return self._send(url, {}, follow=True)

    def _request(self, url: str, current: str, headers: dict[str, str], hops: tuple[str, ...]) -> FetchResult:
        try:
            response = self._send(current, headers, follow=False, stream=True)
        except httpx.HTTPError as exc:
            return FetchResult(url, current, error=_describe(exc), redirects=hops)
        try:
            status = response.status_code
            if status in (301, 302, 303, 307, 308) and "location" in response.headers:
                raise _Redirect(urljoin(current, response.headers["location"]))
            if status == 304:
                return FetchResult(
                    url,
                    current,
                    status,
                    not_modified=True,
                    validators=_validators(response, headers),
                    redirects=hops,
                )
            if status >= 400:
                reason = f"HTTP {status} {response.reason_phrase}".strip()
                return FetchResult(
                    url, current, status, error=reason, gone=status in GONE_STATUSES, redirects=hops
                )
            data = self._read_body(response)
            if data is None:
                limit = f"body over the limit of {self.max_bytes:,} bytes (RAG_MAX_DOCUMENT_BYTES)"
                return FetchResult(url, current, status, error=limit, redirects=hops)
            return FetchResult(
                url,
                current,
                status,
                data=data,
                content_type=response.headers.get("content-type"),
                validators=_validators(response),
                redirects=hops,
            )
        except httpx.HTTPError as exc:  # the body broke off mid-read
            return FetchResult(url, current, error=_describe(exc), redirects=hops)
        finally:
            response.close()

    def _read_body(self, response: httpx.Response) -> bytes | None:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            return None
        parts: list[bytes] = []
        size = 0
        for piece in response.iter_bytes():
            size += len(piece)
            if size > self.max_bytes:
                return None
            parts.append(piece)
        return b"".join(parts)

    def _send(
        self, url: str, headers: dict[str, str], *, follow: bool, stream: bool = False
    ) -> httpx.Response:
        """GET under the host's rate, retrying transport errors, 429 and 5xx with backoff."""
        attempt = 0
        while True:
            self.rate.wait(url)
            request = self.client.build_request("GET", url, headers=headers)
            try:
                response = self.client.send(request, stream=stream, follow_redirects=follow)
            except httpx.TransportError:
                if attempt >= self.settings.fetch_retries:
                    raise
                time.sleep(self._delay(attempt, None))
                attempt += 1
                continue
            if response.status_code not in RETRY_STATUSES or attempt >= self.settings.fetch_retries:
                return response
            response.close()
            time.sleep(self._delay(attempt, response))
            attempt += 1

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        wait = self.backoff_s * (2**attempt)
        after = response.headers.get("retry-after", "") if response is not None else ""
        if after.strip().isdigit():
            wait = max(wait, min(float(after), MAX_RETRY_AFTER_S))
        return wait


class _Redirect(Exception):  # control flow inside fetch(), never escapes it
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _conditional_headers(known: Validators | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if known is not None and known.etag:
        headers["If-None-Match"] = known.etag
    if known is not None and known.last_modified:
        headers["If-Modified-Since"] = known.last_modified
    return headers


def _validators(response: httpx.Response, sent: dict[str, str] | None = None) -> Validators:
    """The response's validators; a 304 may omit them, so the ones sent are kept."""
    sent = sent or {}
    return Validators(
        etag=response.headers.get("etag") or sent.get("If-None-Match"),
        last_modified=response.headers.get("last-modified") or sent.get("If-Modified-Since"),
    )


__all__ = ["FetchResult", "HostRate", "HttpFetcher"]
