"""A loopback S3 server (moto's real S3 HTTP API) for object-storage tests: ``with MotoS3() as url:``.

Credentials are fake and reach boto3 through its own environment variables (set by the tests with
``monkeypatch``); the project's settings only carry the endpoint and region.
"""

from __future__ import annotations

import socket

from moto.server import ThreadedMotoServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoS3:
    """A moto S3 server on 127.0.0.1 and a free port, for the duration of a ``with`` block."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def __enter__(self) -> str:
        self.server.start()
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
