"""The ``rag-app`` command line (console script ``rag_app.cli:app``): thin Typer commands that parse,
call the library, and print.

This module builds the one :data:`app` and its sub-apps; each command group registers itself:

* :mod:`rag_app.cli.index`: ``ingest``, ``sync``, ``search``, ``stats``, ``maintain``;
* :mod:`rag_app.cli.answer`: ``demo``, ``ask``;
* :mod:`rag_app.cli.quality`: ``optimize``, ``eval retrieval``, ``eval answers``;
* :mod:`rag_app.cli.ops`: ``serve``, ``doctor``, ``keys add|list|revoke``, ``models pull``;
* :mod:`rag_app.cli.feedback`: ``feedback export``, ``feedback stats``;
* :mod:`rag_app.cli.mcp`: ``mcp`` (the MCP tools over stdio).

Options, output and the error boundary (a :class:`rag_app.core.errors.RagError` becomes one line on
stderr and a non-zero exit code) are shared through :mod:`rag_app.cli.common`.
"""

from __future__ import annotations

import typer

from rag_app.cli import answer, feedback, index, ops, quality
from rag_app.cli import mcp as mcp_command

__all__ = ["app"]

app = typer.Typer(
    help="Grounded-answer RAG: LanceDB top-20 retrieval, bge rerank to 5, DSPy site programs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="Model weights: download and pin (the only command that downloads).", no_args_is_help=True
)
eval_app = typer.Typer(help="Measure retrieval and answers.", no_args_is_help=True)
keys_app = typer.Typer(
    help="API keys for the HTTP server (stored hashed in the data dir).", no_args_is_help=True
)
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")
app.add_typer(keys_app, name="keys")

index.register(app)
answer.register(app)
quality.register(app, eval_app)
ops.register(app, keys_app, models_app)
feedback.register(app)
mcp_command.register(app)
