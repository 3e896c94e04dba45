"""The contract every site program follows, and how programs are found.

Site programs live in ``programs/<site>.py`` (outside the library, next to their saved states in
``programs/<site>/<program>.json``), so a site team edits prompts and filters without touching
``rag_app``. Each file exposes ``PROGRAMS: dict[str, type[SiteProgram]]``. Programs are loaded by
path from ``settings.programs_dir``; nothing imports ``programs`` as a package.

A program has two entry points on purpose:
- ``forward(**inputs) -> dspy.Prediction``: the DSPy idiom, what optimizers and evaluators call;
- ``run(inputs: Input) -> Output``: typed pydantic in and out, what the CLI and HTTP server call, so
  callers never parse prose.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from typing import Any, ClassVar, Literal

import dspy
from pydantic import BaseModel, Field

from rag_app.errors import InputError
from rag_app.settings import Settings
from rag_app.types import Citation, Passage

AnswerMode = Literal["lm", "extractive"]


class ProgramOutput(BaseModel):
    """Fields every program returns; programs subclass it to add typed results."""

    answer: str
    citations: list[Citation] = Field(default_factory=list)
    passages: list[Passage] = Field(default_factory=list)
    mode: AnswerMode = "extractive"
    timings: dict[str, float] = Field(default_factory=dict, description="Milliseconds per stage.")
    state: str | None = Field(None, description="Saved optimized state the program loaded, if any.")
    notes: list[str] = Field(default_factory=list, description="Degradations and dropped citations.")


class SiteProgram(dspy.Module):
    """Base class of site programs. Subclasses set the class variables and implement both methods."""

    site: ClassVar[str]
    name: ClassVar[str]
    Input: ClassVar[type[BaseModel]]
    Output: ClassVar[type[ProgramOutput]]

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def run(self, inputs: BaseModel) -> ProgramOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def run_dict(self, payload: dict[str, Any]) -> ProgramOutput:
        """Validate a JSON payload against ``Input`` (pydantic errors name the field), then run."""
        return self.run(self.Input.model_validate(payload))


_MODULES: dict[str, Any] = {}
_LOCK = threading.Lock()


def site_module(settings: Settings, site: str) -> Any:
    """Import ``programs/<site>.py`` by path (once per path)."""
    if site not in settings.sites:
        raise InputError(f"unknown site {site!r}; known sites: {', '.join(sorted(settings.sites))}")
    path = (settings.programs_dir / f"{site}.py").resolve()
    if not path.is_file():
        raise InputError(f"no programs for site {site!r}: {path} does not exist (RAG_PROGRAMS_DIR)")
    key = str(path)
    with _LOCK:
        if key not in _MODULES:
            name = f"rag_site_programs_{site}"
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            _MODULES[key] = module
        return _MODULES[key]


def program_class(settings: Settings, site: str, program: str) -> type[SiteProgram]:
    programs: dict[str, type[SiteProgram]] = site_module(settings, site).PROGRAMS
    if program not in programs:
        raise InputError(
            f"unknown program {program!r} for site {site!r}; known: {', '.join(sorted(programs))}"
        )
    return programs[program]


def list_programs(settings: Settings) -> dict[str, list[str]]:
    """site -> program names, for help texts and the server's validation."""
    return {
        site: sorted(site_module(settings, site).PROGRAMS)
        for site in sorted(settings.sites)
        if (settings.programs_dir / f"{site}.py").is_file()
    }
