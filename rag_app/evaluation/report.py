"""Evaluation reports: one JSON/Markdown/PNG bundle per run, with the provenance to reproduce it.

A metric without the commit, settings, model revisions and dataset hash that produced it cannot be
compared with the next run, so :class:`EvalReport` carries them next to the numbers.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from rag_app.core.settings import Settings

#: The project root (holds ``pyproject.toml`` in a source checkout); ``git rev-parse`` runs here.
PROJECT_DIR = Path(__file__).resolve().parents[2]
_SECRET_KEY = re.compile(r"(^|_)(api_key|key|secret|password|token)$", re.IGNORECASE)
_REDACTED = "***"


def git_commit(project_dir: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the project, or None when it is not a git checkout or git is missing.

    Provenance is best effort: an installed package or a tarball has no commit, and that must never
    stop an evaluation from being written.
    """
    cwd = Path(project_dir) if project_dir is not None else PROJECT_DIR
    # GIT_DIR/GIT_WORK_TREE would point git at another repository than the one in cwd.
    env = {k: v for k, v in os.environ.items() if k not in {"GIT_DIR", "GIT_WORK_TREE"}}
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    if result.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit):
        return None
    return commit


def redact_secrets(values: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``values`` with API keys, secrets and passwords replaced, at any depth.

    Reports are shared and committed; the settings they record must not carry credentials.
    """
    redacted: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            redacted[key] = redact_secrets(value)
        elif value is not None and _SECRET_KEY.search(str(key)):
            redacted[key] = _REDACTED
        else:
            redacted[key] = value
    return redacted


def settings_snapshot(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-ready values, secrets redacted, for :attr:`EvalReport.settings`."""
    return redact_secrets(settings.model_dump(mode="json"))


def models_from_settings(settings: Settings) -> dict[str, str | None]:
    """Model ids and pinned revisions that decide the scores, for :attr:`EvalReport.models`."""
    return {
        "embedder_backend": settings.embedder_backend,
        "embedder": settings.resolved_embedder_model,
        "embedder_revision": settings.embedder_revision,
        "reranker": settings.reranker_model,
        "reranker_revision": settings.reranker_revision,
        "reranker_backend": settings.reranker_backend,
        "lm": settings.lm_model,
    }


class DatasetInfo(BaseModel):
    """Which data a report was computed on."""

    name: str
    path: str
    hash: str = Field(description="dataset_hash() of the files: sha256 hex.")
    n_queries: int = Field(ge=0)


class ReportRow(BaseModel):
    """One configuration's averaged metrics (None: undefined for every query, e.g. no citations)."""

    config: str
    metrics: dict[str, float | None]


class EvalReport(BaseModel):
    """Metrics of one or more configurations on one dataset, with their provenance."""

    title: str
    created_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    git_commit: str | None = Field(default_factory=git_commit)
    settings: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, Any] = Field(default_factory=dict)
    dataset: DatasetInfo | None = None
    rows: list[ReportRow] = Field(default_factory=list)

    @field_validator("settings")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        return redact_secrets(value)


# --- rendering -----------------------------------------------------------------------------------


def _as_rows(rows: Sequence[ReportRow | Mapping[str, Any]]) -> list[ReportRow]:
    return [row if isinstance(row, ReportRow) else ReportRow.model_validate(row) for row in rows]


def _metric_names(rows: Sequence[ReportRow]) -> list[str]:
    """Metric columns in first-seen order, so the table follows the order metrics were computed in."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row.metrics))
    return list(names)


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def format_table(rows: Sequence[ReportRow | Mapping[str, Any]]) -> str:
    """Plain aligned text: one line per configuration, one column per metric, 3 decimals."""
    parsed = _as_rows(rows)
    names = _metric_names(parsed)
    header = ["config", *names]
    body = [[row.config, *(_fmt(row.metrics.get(name)) for name in names)] for row in parsed]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(header), "  ".join("-" * width for width in widths), *map(line, body)])


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_markdown(report: EvalReport) -> str:
    """The report as Markdown: title, provenance lines, the metrics table, then the settings."""
    rows = report.rows
    names = _metric_names(rows)
    lines = [f"# {report.title}", ""]
    lines.append(f"- Created: {report.created_at.isoformat(timespec='seconds')}")
    lines.append(f"- Git commit: `{report.git_commit}`" if report.git_commit else "- Git commit: unknown")
    if report.dataset is not None:
        ds = report.dataset
        lines.append(f"- Dataset: {ds.name} (`{ds.path}`), {ds.n_queries} queries, sha256 `{ds.hash}`")
    for key, value in report.models.items():
        lines.append(f"- Model {key}: `{value}`")
    lines += ["", "| config | " + " | ".join(_md_cell(n) for n in names) + " |"]
    lines.append("|---|" + "---:|" * len(names))
    for row in rows:
        cells = [_fmt(row.metrics.get(name)) for name in names]
        lines.append(f"| {_md_cell(row.config)} | " + " | ".join(cells) + " |")
    if report.settings:
        lines += [
            "",
            "## Settings",
            "",
            "```json",
            json.dumps(report.settings, indent=2, sort_keys=True),
            "```",
        ]
    return "\n".join(lines) + "\n"


def plot_report(report: EvalReport, path: Path) -> None:
    """Grouped bar chart: one group per metric, one bar per configuration (Agg, no display needed).

    Uses the object-oriented Figure/Agg API rather than pyplot, so it neither needs a display nor
    changes the global backend of a process that imports this module. Imported here because
    matplotlib costs most of a second and only report writing needs it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = report.rows
    names = _metric_names(rows)
    width_in = min(16.0, max(6.0, 1.0 + 0.9 * len(names) * max(1, len(rows)) ** 0.5))
    fig = Figure(figsize=(width_in, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(rows))
    values_seen: list[float] = []
    for index, row in enumerate(rows):
        values = [row.metrics.get(name) for name in names]
        heights = [math.nan if v is None else v for v in values]
        values_seen += [h for h in heights if not math.isnan(h)]
        offsets = [i - 0.4 + width * (index + 0.5) for i in range(len(names))]
        bars = ax.bar(offsets, heights, width=width, label=row.config)
        if len(rows) * len(names) <= 40:
            ax.bar_label(
                bars, labels=[_fmt(v) if v is not None else "" for v in values], fontsize=7, padding=2
            )
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xlabel("metric")
    ax.set_ylabel("score (mean over queries)")
    if values_seen and all(0.0 <= v <= 1.0 for v in values_seen):
        ax.set_ylim(0.0, 1.08)
    ax.set_title(report.title)
    ax.legend(title="configuration", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, format="png", dpi=120)


def write_report(report: EvalReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.png`` into ``out_dir`` (created if missing).

    Returns the paths keyed ``json``, ``md`` and ``png``. A report without rows is refused: an empty
    table almost always means the evaluation loop skipped everything.
    """
    if not report.rows:
        raise ValueError(f"report {report.title!r} has no rows to write")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    paths["json"].write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    paths["md"].write_text(format_markdown(report), encoding="utf-8")
    plot_report(report, paths["png"])
    return paths


def load_report(path: str | Path) -> EvalReport:
    """Read a ``report.json`` back, e.g. to compare a new run with a saved one."""
    return EvalReport.model_validate_json(Path(path).read_text(encoding="utf-8"))
