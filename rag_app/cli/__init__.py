"""The ``rag-app`` command line: thin Typer commands that parse, call the library, and print."""

from rag_app.cli.commands import app

__all__ = ["app"]
