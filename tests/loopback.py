"""A loopback HTTP server serving from a thread: the plumbing the test stand-ins (TEI, Ollama) share.

Each stand-in is its routes and test hooks; binding a free 127.0.0.1 port, serving from a daemon
thread, and stopping (port freed, handlers sleeping on ``_closed`` woken) is this base class's, so
the stand-ins start and stop the same way.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LoopbackServer:
    """A ``ThreadingHTTPServer`` on a free loopback port, serving ``handler`` from a daemon thread.

    A stand-in calls ``super().__init__`` last in its own ``__init__``, once the state its handler
    reads is in place. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler], *, name: str) -> None:
        self._closed = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, name=name, daemon=True
        )
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and free the port; wakes handlers waiting on ``_closed``. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._httpd.shutdown()
        self._httpd.server_close()
