"""``/mcp``: the MCP tools (:mod:`rag_app.server.mcp_tools`) over streamable HTTP, on the API's app.

Same keys and site scoping as the HTTP routes: the bearer key is checked here (the request-context
middleware checks only ``/v1/`` paths), a key sees and may use only its sites, and every tool call runs
on the app's gated runtime under the ``request`` admission gate and the per-stage gates, with the
request deadline, exactly like ``POST /v1/search`` and ``/v1/programs``. Without keys (auth off, the
server then binds to loopback only) a request must also come from a loopback Host and Origin, so a web
page cannot reach the tools through DNS rebinding.

The transport is stateless with JSON responses: no session lives in a worker, so any worker of a
multi-worker server (or any replica behind a load balancer) answers any request.

Wiring (``create_app``)::

    mcp = McpEndpoint(state)                 # before the lifespan, which runs its session manager:
    ...  in the lifespan:   async with mcp.running(): yield
    app.router.routes.append(mcp.route)      # with the other routes
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from rag_app.core.errors import InputError, RagError
from rag_app.runtime import Runtime
from rag_app.server.auth import AuthError, KeyInfo
from rag_app.server.errors import ApiError, error_response, note_error, to_api_error
from rag_app.server.gates import RequestScope, request_scope_var
from rag_app.server.limits import ClientGone, DeadlineExceeded, Overloaded
from rag_app.server.mcp_tools import build_mcp_server
from rag_app.server.state import ServerState

T = TypeVar("T")
MCP_PATH = "/mcp"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
#: Time kept back from the request deadline for the reply, so a slow tool call ends as a tool error
#: rather than the middleware's 504.
_REPLY_MARGIN_S = 0.25


def _hostname(value: str) -> str:
    """``host[:port]`` or an origin URL -> the host name, lower case (IPv6 keeps its brackets)."""
    value = value.split("://", 1)[-1].split("/", 1)[0].lower()
    if value.startswith("["):
        return value.split("]", 1)[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class ServerToolHost:
    """The HTTP app's host for the tools: its keys, its programs, its gated runtime."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.settings = state.settings

    @property
    def runtime(self) -> Runtime:
        return self.state.runtime

    def programs(self) -> dict[str, list[str]]:
        return self.state.programs_index or self.runtime.programs()

    def _key(self, ctx: Context | None) -> KeyInfo | None:
        request = None if ctx is None else ctx.request_context.request
        return None if request is None else request.scope.get("state", {}).get("api_key")

    def sites_for(self, ctx: Context | None) -> list[str]:
        key = self._key(ctx)
        return [site for site in self.settings.sites if key is None or key.allows(site)]

    def check_site(self, ctx: Context, site: str) -> None:
        try:
            self.settings.check_sites([site])
        except InputError as exc:
            raise ToolError(str(exc)) from None
        key = self._key(ctx)
        if key is not None and not key.allows(site):
            raise ToolError(
                f"this API key ({key.name!r}) may not use site {site!r}; it is scoped to: "
                f"{', '.join(key.sites)}"
            )

    async def run(self, ctx: Context, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn`` under the ``request`` gate, its stages under theirs, bounded by the request deadline."""
        state = self.state
        deadline_s = state.settings.request_deadline_s
        outer = request_scope_var.get()  # the HTTP request's, when its context reached this task
        deadline = time.monotonic() + deadline_s
        if outer is not None and outer.deadline is not None:
            deadline = min(deadline, outer.deadline)
        scope = RequestScope(deadline=deadline, deadline_s=deadline_s)
        token = request_scope_var.set(scope)
        timings: dict[str, float] = {}
        try:
            with anyio.fail_after(max(0.0, deadline - time.monotonic() - _REPLY_MARGIN_S)):
                result = await state.runner.run("request", fn, *args, timings=timings, **kwargs)
        except TimeoutError:
            raise ToolError(
                f"the call did not finish within the request deadline of {deadline_s:g}s "
                "(request_deadline_s); retry, or narrow it (smaller k)"
            ) from None
        except (Overloaded, DeadlineExceeded, ClientGone, RagError) as exc:
            raise ToolError(str(exc)) from None
        finally:
            request_scope_var.reset(token)
        if scope.overloaded:  # a stage turned the call away and it degraded instead: report it
            raise ToolError(str(scope.overloaded[0]))
        own = result.get("timings") if isinstance(result, dict) else getattr(result, "timings", None)
        state.metrics.observe_timings({**timings, **(own or {})})
        return result


class McpEndpoint:
    """The ``/mcp`` ASGI endpoint of one app: key check, then the SDK's streamable HTTP transport."""

    def __init__(self, state: ServerState, path: str = MCP_PATH) -> None:
        self.state = state
        self.path = path
        self.server = build_mcp_server(ServerToolHost(state))
        self.sessions: StreamableHTTPSessionManager | None = None
        self.route = Route(path, endpoint=self, name="mcp")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Serve ``/mcp`` while this is entered: enter it in the app's lifespan.

        A session manager runs only once, so each lifespan (an app started twice, in tests) gets its
        own. The SDK's Starlette app is not used (this endpoint is a route of the API's app); building it
        creates the session manager that serves the requests.
        """
        self.server.streamable_http_app(
            streamable_http_path=self.path,
            json_response=True,
            stateless_http=True,
            # Host/Origin are checked here (only when auth is off); with a key, the key is the guard.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            max_request_body_size=self.state.settings.max_body_bytes,
        )
        sessions = self.server.session_manager
        async with sessions.run():
            self.sessions = sessions
            try:
                yield
            finally:
                self.sessions = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        try:
            key = self.state.keys.check(headers.get("authorization"))
        except AuthError as exc:
            error = to_api_error(exc)  # 401 with WWW-Authenticate: Bearer, as on /v1/
            assert error is not None
            await self._reply(error, scope, receive, send)
            return
        if key is None and not self._loopback(headers):
            await self._reply(
                ApiError(
                    403,
                    "forbidden",
                    "without API keys /mcp answers loopback clients only (Host and Origin on 127.0.0.1, "
                    "localhost or [::1]); create a key with `rag-app keys add` to serve others",
                ),
                scope,
                receive,
                send,
            )
            return
        if self.sessions is None:
            await self._reply(
                ApiError(
                    503,
                    "service_unavailable",
                    "the MCP endpoint is not running: the app's lifespan did not start it",
                ),
                scope,
                receive,
                send,
            )
            return
        scope.setdefault("state", {})["api_key"] = key
        await self.sessions.handle_request(scope, receive, send)

    @staticmethod
    def _loopback(headers: Headers) -> bool:
        host, origin = headers.get("host"), headers.get("origin")
        if host is None or _hostname(host) not in _LOOPBACK_HOSTS:
            return False
        return origin is None or _hostname(origin) in _LOOPBACK_HOSTS

    @staticmethod
    async def _reply(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
        note_error(scope, error.code)
        await error_response(error)(scope, receive, send)
