"""``robots.txt``, honoured: fetched once per host and run, parsed by :mod:`urllib.robotparser`.

The rules follow the convention the standard library (and the big crawlers) use: a missing
``robots.txt`` (404 and other 4xx) allows everything, a 401/403 forbids everything, and a server
error or a network failure means "unknown": nothing on that host is fetched this run, and the pages
keep the documents they produced before (a transient outage must not prune a site).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

import httpx


@dataclass(frozen=True)
class RobotsVerdict:
    """``allowed``; else ``reason``, and ``unknown`` when robots.txt could not be read at all."""

    allowed: bool
    reason: str = ""
    unknown: bool = False


@dataclass
class _HostRules:
    parser: RobotFileParser | None
    unknown_reason: str = ""


class RobotsCache:
    """The parsed ``robots.txt`` of each host seen, fetched with ``get`` (the fetcher's rate-limited
    GET, so robots requests count against the host's rate like any other)."""

    def __init__(self, user_agent: str, get: Callable[[str], httpx.Response]) -> None:
        self.user_agent = user_agent
        self.get = get
        self.hosts: dict[str, _HostRules] = {}
        self.lock = threading.Lock()
        self.host_locks: dict[str, threading.Lock] = {}

    def check(self, url: str) -> RobotsVerdict:
        """May ``url`` be fetched? Fetches the host's robots.txt on first use (once per host)."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        with self.lock:
            host_lock = self.host_locks.setdefault(origin, threading.Lock())
        with host_lock:  # one robots.txt request per host, even with many pages in flight
            rules = self.hosts.get(origin)
            if rules is None:
                rules = self._load(origin)
                self.hosts[origin] = rules
        if rules.parser is None:
            return RobotsVerdict(False, rules.unknown_reason, unknown=True)
        if rules.parser.can_fetch(self.user_agent, url):
            return RobotsVerdict(True)
        return RobotsVerdict(False, f"disallowed by {origin}/robots.txt for user agent {self.user_agent!r}")

    def _load(self, origin: str) -> _HostRules:
        parser = RobotFileParser(f"{origin}/robots.txt")
        try:
            response = self.get(f"{origin}/robots.txt")
        except httpx.HTTPError as exc:
            return _HostRules(
                None, f"{origin}/robots.txt could not be fetched ({_describe(exc)}); retry later"
            )
        if response.status_code in (401, 403):
            parser.disallow_all = True
        elif 400 <= response.status_code < 500:
            parser.allow_all = True
        elif response.status_code >= 300:
            return _HostRules(
                None,
                f"{origin}/robots.txt answered HTTP {response.status_code}; nothing fetched, retry later",
            )
        else:
            parser.parse(response.text.splitlines())
        parser.modified()  # marks it read: can_fetch answers False for a parser never read
        return _HostRules(parser)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


__all__ = ["RobotsCache", "RobotsVerdict"]
