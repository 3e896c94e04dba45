"""The HTTP service over the site programs: ``create_app(settings)`` and ``serve(settings, ...)``.

API keys: :func:`rag_app.server.auth.add_key`, :func:`~rag_app.server.auth.list_keys`,
:func:`~rag_app.server.auth.revoke_key`. Heavy imports (FastAPI, models) happen on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from rag_app.core.settings import Settings

__all__ = ["add_key", "create_app", "list_keys", "revoke_key", "serve"]


def create_app(settings: Settings, **kwargs: Any) -> FastAPI:
    from rag_app.server.app import create_app as _create_app

    return _create_app(settings, **kwargs)


def serve(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    **kwargs: Any,
) -> None:
    from rag_app.server.run import serve as _serve

    _serve(settings, host, port, workers, **kwargs)


def __getattr__(name: str) -> Any:
    if name in {"add_key", "list_keys", "revoke_key"}:
        from rag_app.server import auth

        return getattr(auth, name)
    raise AttributeError(name)
