"""Structured logs: one JSON object per line, carrying the request id of the request being served.

When the request is traced (:mod:`rag_app.core.tracing`), each line also carries its ``trace_id`` and
``span_id``, so a log line leads to its trace in the collector and back.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import sys
import traceback
import uuid
from typing import Any

from opentelemetry import trace

#: The id of the request this task or thread works for ("-" outside requests).
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("rag_request_id", default="-")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
_LOGGERS = ("rag_app", "uvicorn", "uvicorn.error")


def new_request_id(candidate: str | None = None) -> str:
    """``candidate`` (a client's ``X-Request-ID``) when it is short and plain, else a fresh id."""
    if candidate and _REQUEST_ID_RE.match(candidate):
        return candidate
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id", "trace_id"?, "span_id"?, ...extra fields,
    "exc"?}`` on one line (the trace fields only inside a traced request)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = trace.format_trace_id(span.trace_id)
            entry["span_id"] = trace.format_span_id(span.span_id)
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str | int = "INFO", stream: Any = None) -> None:
    """Send the service's and uvicorn's logs to ``stream`` (stderr) as JSON lines. Idempotent."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._rag_json = True  # type: ignore[attr-defined]
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not getattr(h, "_rag_json", False)]
        if name == "uvicorn.error":
            logger.propagate = True  # goes through "uvicorn"
            continue
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
