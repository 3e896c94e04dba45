"""What every ``rag-app`` command group shares: consoles, common options, error handling, output.

The error boundary lives here: expected failures (:class:`rag_app.core.errors.RagError`, bad settings)
become one line on stderr and a non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from rag_app.core.errors import InputError, LoaderError, RagError, validation_message
from rag_app.core.settings import Settings
from rag_app.ingest.loaders import read_text

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file (default ./rag.toml).")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (RAG_DATA_DIR).")]
SiteOpt = Annotated[str, typer.Option("--site", help="builddaily, paiddaily or sagedaily.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def quiet_libraries() -> None:
    """Model loading prints progress bars per weight file; the CLI shows its own progress instead."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def _error(message: str, code: int) -> typer.Exit:
    err_console.print("[red]error:[/red] ", end="", highlight=False)
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)  # messages may hold [brackets]
    return typer.Exit(code)


def handle_errors(func: F) -> F:
    """Turn expected failures into one clear line on stderr and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        quiet_libraries()
        try:
            return func(*args, **kwargs)
        except RagError as exc:
            raise _error(str(exc), exc.exit_code) from None
        except ValidationError as exc:
            raise _error(f"invalid setting {validation_message(exc)}", 2) from None
        except FileNotFoundError as exc:
            raise _error(str(exc), 2) from None

    return wrapper  # type: ignore[return-value]


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``--config`` (or ./rag.toml) and ``RAG_*``, with the command's flags on top."""
    return Settings.load(config, **overrides)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")


def note(text: str) -> None:
    err_console.print("[yellow]note:[/yellow] ", end="", highlight=False)
    err_console.print(text, highlight=False, soft_wrap=True, markup=False)


def print_report_files(files: Mapping[str, Path]) -> None:
    if files:
        console.print(
            "report: " + ", ".join(str(p) for p in files.values()),
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def search_filters(
    date_from: str | None, date_to: str | None, tickers: list[str] | None, tags: list[str] | None
) -> dict[str, Any] | None:
    """The ``--date-from/--date-to/--ticker/--tag`` options as a filters dict (``None`` when unset)."""
    raw = {"date_from": date_from, "date_to": date_to, "tickers": tickers or [], "tags": tags or []}
    raw = {k: v for k, v in raw.items() if v}
    return raw or None


def read_query_file(path: Path) -> list[str]:
    """Queries from a JSONL file (field ``query``); errors name the file and line."""
    if not path.is_file():
        raise InputError(f"query file not found: {path}")
    queries: list[str] = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoaderError(path, f"invalid JSON ({exc.msg})", line=number) from None
        if not isinstance(record, dict) or not isinstance(record.get("query"), str):
            raise LoaderError(path, "expected an object with a string field 'query'", line=number)
        queries.append(record["query"])
    if not queries:
        raise InputError(f"{path} holds no queries")
    return queries
