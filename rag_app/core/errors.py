"""Errors a user can act on. Each message says what failed, where, and how to fix it.

The CLI prints ``str(error)`` on one line and exits non-zero; the server maps them to 4xx/5xx JSON.
"""

from __future__ import annotations


class RagError(Exception):
    """Base class: a problem with input, configuration or an external service (not a bug)."""

    exit_code = 1


class InputError(RagError, ValueError):
    """Bad user input: an empty or oversized query, an unknown site, a bad filter."""

    exit_code = 2


class LoaderError(RagError):
    """A source file could not be read; names the file and, where it applies, the line."""

    exit_code = 3

    def __init__(self, path: object, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
        self.reason = message


class ModelNotAvailableError(RagError):
    """Model weights are not on this machine (not cached, and downloads are not done at run time)."""

    exit_code = 4


class EmbedderMismatchError(RagError):
    """A table was built with another embedder; mixing vector spaces would return garbage."""

    exit_code = 5


class ServiceUnavailableError(RagError):
    """An external service (the Ollama server, an LM endpoint) did not answer."""

    exit_code = 6


def validation_message(exc: Exception) -> str:
    """One line naming each failing field, for a pydantic ``ValidationError`` (or any error).

    pydantic's own ``str()`` spans lines and links to its docs: fine in a traceback, noise in a CLI
    message or a JSON error, where the user needs the field and the reason only.
    """
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for error in errors():
        where = ".".join(str(part) for part in error.get("loc", ())) or "value"
        message = str(error.get("msg", "invalid"))
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)
