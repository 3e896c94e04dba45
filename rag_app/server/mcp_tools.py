"""The MCP tools (``list_sites``, ``search``, ``ask``): one definition for the stdio and HTTP servers.

IDE agents reach the same retrieval and site programs as HTTP clients, through the Model Context
Protocol. The tools are read-only and thin: they check the site against what the caller may use, run
the :class:`~rag_app.runtime.Runtime` off the event loop and return structured results (passages with
their citations) plus a readable text block. What differs between transports lives behind
:class:`ToolHost`: which sites a call may use and how blocking work runs (the stdio server: a thread;
the HTTP server: its gated runtime under admission and stage limits, :mod:`rag_app.server.mcp_http`).

``ask`` publishes each program's own ``Input`` schema (plus the server's rules for it, as on
``POST /v1/programs/{site}/{program}``) and validates the ``input`` against it strictly before running.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, Protocol, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from rag_app.answering.extractive import passage_citation
from rag_app.answering.registry import program_class
from rag_app.core.errors import RagError, validation_message
from rag_app.core.settings import SearchMode, Settings
from rag_app.core.types import Citation, Passage, SearchFilters
from rag_app.runtime import Runtime
from rag_app.server.program_rules import PROGRAM_INPUT_RULES, check_program_rules, program_input_schema
from rag_app.server.schemas import parse_body

log = logging.getLogger("rag_app.server.mcp")
T = TypeVar("T")
_REF = "#/$defs/{model}"
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True)


class SiteInfo(BaseModel):
    site: str
    collections: list[str]
    programs: dict[str, str] = Field(description="Program name -> what it does (call it with ask).")


class SitesResult(BaseModel):
    sites: list[SiteInfo]
    search_modes: list[str]


class SearchResult(BaseModel):
    site: str
    collection: str | None = None
    query: str
    mode: str
    reranked: bool = Field(description="False when the reranker is unavailable and retrieval order was kept.")
    passages: list[Passage] = Field(description="Best first; [n] in the text is passages[n-1].")
    citations: list[Citation] = Field(description="One per passage, index n for passages[n-1].")
    notes: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict, description="Milliseconds per stage.")


class AskResult(BaseModel):
    site: str
    program: str
    answer: str
    mode: str = Field(description="lm, or extractive (no LM reachable: sentences quoted from passages).")
    citations: list[Citation] = Field(description="[n] in the answer is passages[n-1].")
    passages: list[Passage]
    notes: list[str] = Field(default_factory=list)
    output: dict[str, Any] = Field(description="The program's whole typed Output.")


def _passage_lines(passages: Sequence[Passage]) -> list[str]:
    lines = []
    for n, p in enumerate(passages, start=1):
        score = f" relevance {p.relevance:.3f}" if p.relevance is not None else f" score {p.score:.3f}"
        lines.append(f"[{n}] {p.title or p.doc_id} ({p.source or p.doc_id};{score})\n{p.text}")
    return lines


def search_text(result: SearchResult) -> str:
    head = f"{len(result.passages)} passages from {result.site} ({result.mode}"
    head += ", reranked)" if result.reranked else ", retrieval order)"
    return "\n\n".join([head, *_passage_lines(result.passages), *(f"note: {n}" for n in result.notes)])


def ask_text(result: AskResult) -> str:
    sources = [f"[{c.index}] {c.title or c.doc_id} ({c.source or c.doc_id})" for c in result.citations]
    parts = [result.answer, "Sources:\n" + "\n".join(sources) if sources else ""]
    return "\n\n".join([p for p in parts if p] + [f"note: {n}" for n in result.notes])


class ToolHost(Protocol):
    """What the tools need from the process serving them."""

    settings: Settings
    runtime: Runtime

    def programs(self) -> dict[str, list[str]]:
        """site -> program names this server serves (all sites, before any key scoping)."""
        ...

    def sites_for(self, ctx: Context | None) -> list[str]:
        """The sites this call may use (the HTTP key's scope; the stdio server's ``--site`` list); with
        ``ctx=None``, every site this server serves."""
        ...

    def check_site(self, ctx: Context, site: str) -> None:
        """Raise :class:`ToolError` (saying what to do) unless this call may use ``site``."""
        ...

    async def run(self, ctx: Context, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` off the event loop; library errors become :class:`ToolError`."""
        ...


def _program_description(settings: Settings, site: str, name: str) -> str:
    doc = (program_class(settings, site, name).__doc__ or "").strip()
    return doc.split("\n\n")[0].replace("\n", " ")


def ask_input_schema(settings: Settings, programs: dict[str, list[str]]) -> dict[str, Any]:
    """The ``ask`` tool's arguments schema: ``input`` is the chosen program's ``Input`` (one ``$defs``
    entry per program, tied to its ``site``/``program`` by ``if``/``then``)."""
    defs: dict[str, Any] = {}
    branches: list[dict[str, Any]] = []
    for site, names in programs.items():
        for name in names:
            model = program_class(settings, site, name).Input
            schema, nested = program_input_schema(model, PROGRAM_INPUT_RULES.get((site, name)), _REF)
            for key, value in nested.items():
                if defs.setdefault(key, value) != value:
                    raise RuntimeError(f"two different program input schemas named {key!r}")
            ref = f"{site}.{name}.Input"
            defs[ref] = {**schema, "title": ref}
            when = {"site": {"const": site}, "program": {"const": name}}
            branches.append(
                {
                    "if": {"properties": when, "required": ["site", "program"]},
                    "then": {"properties": {"input": {"$ref": f"#/$defs/{ref}"}}},
                }
            )
    listing = "; ".join(f"{site}: {', '.join(names)}" for site, names in programs.items()) or "none"
    schema: dict[str, Any] = {
        "type": "object",
        "title": "askArguments",
        "properties": {
            "site": {"type": "string", "enum": sorted(programs), "description": "The site."},
            "program": {
                "type": "string",
                "enum": sorted({n for names in programs.values() for n in names}),
                "description": f"The site's program ({listing}).",
            },
            "input": {
                "type": "object",
                "description": "The program's Input: the $defs entry named '<site>.<program>.Input'.",
            },
        },
        "required": ["site", "program", "input"],
        "additionalProperties": False,
    }
    if branches:
        schema["properties"]["input"]["anyOf"] = [b["then"]["properties"]["input"] for b in branches]
        schema["allOf"] = branches
        schema["$defs"] = defs
    return schema


def _with_site_enum(tool: Tool, sites: Sequence[str]) -> Tool:
    params = json.loads(json.dumps(tool.parameters))
    params["properties"]["site"]["enum"] = sorted(sites)
    return tool.model_copy(update={"parameters": params})


def _citations(passages: Sequence[Passage]) -> list[Citation]:
    return [passage_citation(i, p, "") for i, p in enumerate(passages, start=1)]


def build_tools(host: ToolHost) -> list[Tool]:
    """The three tools over ``host`` (their schemas name this server's sites and programs)."""
    settings = host.settings

    async def list_sites(ctx: Context) -> Annotated[CallToolResult, SitesResult]:
        """The sites you may search and ask here, with their collections and site programs."""
        programs = host.programs()
        infos = [
            SiteInfo(
                site=site,
                collections=list(settings.sites[site]),
                programs={n: _program_description(settings, site, n) for n in programs.get(site, [])},
            )
            for site in host.sites_for(ctx)
        ]
        result = SitesResult(sites=infos, search_modes=["vector", "fts", "hybrid"])
        text = "\n".join(
            f"{i.site}: collections {', '.join(i.collections)}; programs {', '.join(i.programs) or 'none'}"
            for i in infos
        )
        return CallToolResult(
            content=[TextContent(type="text", text=text or "no sites")],
            structured_content=result.model_dump(mode="json"),
        )

    async def search(
        ctx: Context,
        site: Annotated[str, Field(description="The site to search (see list_sites).")],
        query: Annotated[str, Field(min_length=1, description="What to look for, in plain words.")],
        k: Annotated[int | None, Field(ge=1, le=1000, description="Candidates (default 20).")] = None,
        mode: Annotated[SearchMode | None, Field(description="vector, fts or hybrid.")] = None,
        filters: Annotated[SearchFilters | None, Field(description="Dates, tickers, tags, doc ids.")] = None,
        collection: Annotated[str | None, Field(description="One collection (default all).")] = None,
        top_n: Annotated[int | None, Field(ge=1, le=100, description="Passages kept (default 5).")] = None,
    ) -> Annotated[CallToolResult, SearchResult]:
        """Retrieve the top k passages of a site and rerank them to the best top_n (no LM). Each passage
        carries its text, title, source and scores; cite them by their [n] index."""
        host.check_site(ctx, site)
        if collection is not None and collection not in settings.sites[site]:
            raise ToolError(
                f"site {site!r} has no collection {collection!r}; its collections: "
                f"{', '.join(settings.sites[site])}"
            )
        top = top_n if top_n is not None else settings.rerank_top_n
        if k is not None:
            top = min(top, k)
        found = await host.run(
            ctx,
            _search,
            host,
            site,
            query.strip(),
            collection=collection,
            k=k,
            mode=mode,
            top_n=top,
            filters=filters.model_dump(mode="json", exclude_defaults=True) if filters else None,
        )
        passages = [Passage.model_validate(p) for p in found["passages"]]
        result = SearchResult(
            site=site,
            collection=collection,
            query=found["query"],
            mode=str(found["mode"]),
            reranked=found["reranked"],
            passages=passages,
            citations=_citations(passages),
            notes=found["notes"],
            timings=found["timings"],
        )
        return CallToolResult(
            content=[TextContent(type="text", text=search_text(result))],
            structured_content=result.model_dump(mode="json"),
        )

    async def ask(
        ctx: Context,
        site: Annotated[str, Field(description="The site (see list_sites).")],
        program: Annotated[str, Field(description="The site's program (see list_sites).")],
        input: Annotated[dict[str, Any], Field(description="The program's Input (see the schema).")],
    ) -> Annotated[CallToolResult, AskResult]:
        """Run a site program on its typed input: a grounded answer from the site's passages, with
        numbered citations ([n] refers to passages[n-1]) and the program's full typed output."""
        host.check_site(ctx, site)
        known = host.programs().get(site, [])
        if program not in known:
            raise ToolError(
                f"site {site!r} has no program {program!r}; its programs: {', '.join(known) or 'none'}"
            )
        try:
            model = program_class(settings, site, program).Input
            inputs = parse_body(model, json.dumps(input).encode())
        except RagError as exc:
            raise ToolError(str(exc)) from None
        except ValidationError as exc:
            raise ToolError(f"invalid input for {site}/{program}: {validation_message(exc)}") from None
        errors = check_program_rules(inputs, PROGRAM_INPUT_RULES.get((site, program)))
        if errors:
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
            raise ToolError(f"invalid input for {site}/{program}: {detail}")
        output = await host.run(ctx, _run_program, host, site, program, inputs)
        result = AskResult(
            site=site,
            program=program,
            answer=output.answer,
            mode=output.mode,
            citations=output.citations,
            passages=output.passages,
            notes=output.notes,
            output=output.model_dump(mode="json"),
        )
        return CallToolResult(
            content=[TextContent(type="text", text=ask_text(result))],
            structured_content=result.model_dump(mode="json"),
        )

    sites = host.sites_for(None)
    tools = [Tool.from_function(list_sites, title="List sites", annotations=READ_ONLY)]
    search_tool = Tool.from_function(search, title="Search a site", annotations=READ_ONLY)
    tools.append(_with_site_enum(search_tool, sites))
    ask_tool = Tool.from_function(ask, title="Ask a site program", annotations=READ_ONLY)
    try:
        schema = ask_input_schema(settings, {s: n for s, n in host.programs().items() if s in sites})
    except Exception as exc:  # ask still answers (with the error); the listing problem is logged
        log.warning("cannot build the ask tool's input schemas: %s: %s", type(exc).__name__, exc)
    else:
        ask_tool = ask_tool.model_copy(update={"parameters": schema})
    tools.append(ask_tool)
    return tools


def _run_program(host: ToolHost, site: str, program: str, inputs: BaseModel) -> Any:
    return host.runtime.program(site, program).run(inputs)


def _search(host: ToolHost, site: str, query: str, **kwargs: Any) -> dict[str, Any]:
    return host.runtime.search(site, query, rerank=True, **kwargs)


@contextlib.contextmanager
def _keep_root_logging() -> Iterator[None]:
    """MCPServer() calls ``logging.basicConfig`` (a rich handler at INFO) when the root logger has no
    handler; a temporary NullHandler leaves the process's logging configuration as it was."""
    root = logging.getLogger()
    null = logging.NullHandler()
    root.addHandler(null)
    try:
        yield
    finally:
        root.removeHandler(null)


def build_mcp_server(host: ToolHost) -> MCPServer:
    """An MCP server with the read-only tools over ``host``."""
    with _keep_root_logging():
        return MCPServer(
            "rag-app",
            title="rag_app: grounded answers over the sites' content",
            instructions=(
                "Call list_sites first. search returns ranked passages with [n] citations; ask runs a site "
                "program on its typed input and returns a grounded answer citing those passages."
            ),
            version="0.1.0",
            tools=build_tools(host),
            log_level="WARNING",
        )
