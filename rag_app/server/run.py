"""``serve()``: run the HTTP service under uvicorn (one process, or several workers)."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
from typing import Any

from rag_app.core.errors import InputError
from rag_app.core.settings import Settings

log = logging.getLogger("rag_app.server")

#: Environment variable through which ``serve`` hands its settings to worker processes.
SETTINGS_ENV = "RAG_SERVER_SETTINGS_JSON"
LOG_LEVEL_ENV = "RAG_SERVER_LOG_LEVEL"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only reaches this machine."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_bind(settings: Settings, host: str) -> bool:
    """Refuse a non-loopback ``host`` while no API key exists; return whether auth is on."""
    from rag_app.server.auth import list_keys

    keys = list_keys(settings)
    if not keys and not is_loopback(host):
        raise InputError(
            f"refusing to listen on {host}: no API keys exist ({settings.keys_file}), so the API would "
            "be open to anyone who can reach this host. Create a key first (`rag-app keys add --name NAME "
            "--sites SITE`), or bind to 127.0.0.1"
        )
    return bool(keys)


def app_from_env() -> Any:
    """App factory for uvicorn worker processes: settings come from ``$RAG_SERVER_SETTINGS_JSON``."""
    from rag_app.server.app import create_app
    from rag_app.server.logging import configure_logging

    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise RuntimeError(f"{SETTINGS_ENV} is not set; start workers through rag_app.server.run.serve()")
    level = os.environ.get(LOG_LEVEL_ENV)
    if level:  # set by serve(); unset, the embedding process keeps its own logging setup
        configure_logging(level.upper())
    return create_app(Settings(**json.loads(raw)))


def serve(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    *,
    log_level: str = "info",
) -> None:
    """Serve the API until interrupted. Blocks.

    ``host``/``port``/``workers`` default to ``settings.server_*``. Each worker loads and warms its own
    model set (embedder, index handles, reranker) and probes the LM before it accepts connections.
    Without API keys the host must be a loopback address (raises :class:`InputError` otherwise).
    """
    import uvicorn

    from rag_app.server.logging import configure_logging

    host = host or settings.server_host
    port = settings.server_port if port is None else port
    workers = workers or settings.server_workers
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    if not 0 <= port <= 65535:
        raise InputError(f"port must be between 0 and 65535, got {port}")
    auth_on = check_bind(settings, host)  # before anything else: a refused bind changes nothing
    configure_logging(log_level.upper())
    if auth_on:
        log.info("API key auth is ON (keys in %s)", settings.keys_file)
    else:
        log.warning(
            "API key auth is OFF: no keys in %s, so the server listens on loopback (%s) only; create a "
            "key with `rag-app keys add` before exposing it",
            settings.keys_file,
            host,
        )
    log.info("starting rag_app server on http://%s:%d with %d worker(s)", host, port, workers)
    common: dict[str, Any] = dict(
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    if workers == 1:
        from rag_app.server.app import create_app

        uvicorn.run(create_app(settings), **common)
        return
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    os.environ[LOG_LEVEL_ENV] = log_level
    uvicorn.run("rag_app.server.run:app_from_env", factory=True, workers=workers, **common)
