"""``rag-app mcp``: the MCP tools (:mod:`rag_app.server.mcp_tools`) over stdio, for IDE agents.

An IDE starts this command as a child process and speaks MCP on its stdin/stdout (the SDK moves
everything else written to stdout, by us or by a library, to stderr). It serves only the sites named
with ``--site`` (``'*'``: all): one local user, so the site list plays the part an API key's scope
plays over HTTP. Models load in the background from the start, so the first call does not wait for
all of them; calls run in worker threads on one :class:`~rag_app.runtime.Runtime`.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import typer

from rag_app.cli.common import ConfigOpt, DataDirOpt, handle_errors, load_settings
from rag_app.core.errors import InputError, RagError
from rag_app.core.settings import Settings

__all__ = ["LocalToolHost", "register", "served_sites"]

T = TypeVar("T")
ALL_SITES = "*"
log = logging.getLogger("rag_app.server.mcp")


class LocalToolHost:
    """The stdio server's tool host: one runtime, the sites named at start, work in a thread."""

    def __init__(self, runtime: Any, sites: Sequence[str]) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.sites = [s for s in runtime.settings.sites if s in set(sites)]

    def programs(self) -> dict[str, list[str]]:
        return {s: names for s, names in self.runtime.programs().items() if s in self.sites}

    def sites_for(self, ctx: Any) -> list[str]:
        return list(self.sites)

    def check_site(self, ctx: Any, site: str) -> None:
        from mcp.server.mcpserver.exceptions import ToolError

        try:
            self.settings.check_sites([site])
        except InputError as exc:
            raise ToolError(str(exc)) from None
        if site not in self.sites:
            raise ToolError(
                f"this MCP server serves only {', '.join(self.sites)} (its --site list); start it with "
                f"`rag-app mcp --site {site}` to use site {site!r}"
            )

    async def run(self, ctx: Any, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        import anyio.to_thread
        from mcp.server.mcpserver.exceptions import ToolError

        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
        except RagError as exc:
            raise ToolError(str(exc)) from None


def served_sites(settings: Settings, wanted: Sequence[str]) -> list[str]:
    """The ``--site`` values checked against the configured sites (``'*'`` = all of them)."""
    known = list(settings.sites)
    wanted = [s.strip() for s in wanted if s and s.strip()]
    if not wanted:
        raise InputError(
            f"name the sites this MCP server may serve: --site SITE (repeatable) or --site '{ALL_SITES}'; "
            f"known sites: {', '.join(sorted(known))}"
        )
    if ALL_SITES in wanted:
        return list(known)
    settings.check_sites(wanted)
    return [s for s in known if s in wanted]


def _warm(runtime: Any) -> None:
    """Load the embedder and reranker now, so the agent's first call does not pay for it."""
    try:
        runtime.embedder.embed_query("warm-up query")
        _ = runtime.reranker
    except Exception as exc:  # the tool call that needs the model reports it to the agent
        log.warning("model warm-up failed (%s: %s); tool calls will report it", type(exc).__name__, exc)


@handle_errors
def mcp_command(
    site: Annotated[
        list[str],
        typer.Option("--site", help="A site to serve (repeatable), or '*' for all of them."),
    ],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    warm: Annotated[bool, typer.Option("--warm/--no-warm", help="Load models at start.")] = True,
) -> None:
    """Serve the read-only MCP tools (list_sites, search, ask) on stdin/stdout, for IDE agents."""
    import anyio

    from rag_app.runtime import Runtime
    from rag_app.server.mcp_tools import build_mcp_server

    settings = load_settings(config, data_dir=data_dir)
    sites = served_sites(settings, site)
    runtime = Runtime(settings)
    server = build_mcp_server(LocalToolHost(runtime, sites))
    if warm:
        threading.Thread(target=_warm, args=(runtime,), name="mcp-warm-up", daemon=True).start()
    anyio.run(server.run_stdio_async)


def register(app: typer.Typer) -> None:
    """Add ``rag-app mcp`` to ``app``."""
    app.command("mcp")(mcp_command)
