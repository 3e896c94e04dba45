"""The contract every site program follows: its typed output, its two entry points, its services.

Site programs live in ``programs/<site>.py`` (outside the library, next to their saved states in
``programs/<site>/<program>.json``; :mod:`rag_app.answering.registry` finds them), so a site team edits
prompts and filters without touching ``rag_app``.

A program has two entry points on purpose:
- ``forward(**inputs) -> dspy.Prediction``: the DSPy idiom, what optimizers and evaluators call;
- ``run(inputs: Input) -> Output``: typed pydantic in and out, what the CLI and HTTP server call, so
  callers never parse prose.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import dspy
from pydantic import BaseModel, Field

from rag_app.core.errors import InputError
from rag_app.core.settings import Settings
from rag_app.core.types import Citation, Passage

log = logging.getLogger("rag_app.answering")

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


class ProgramServices(Protocol):
    """What a program needs from its host: shared pipelines and the LM for a call.

    :class:`rag_app.runtime.Runtime` implements it, so programs built by the CLI, the server and the
    evaluators share the runtime's models (and, in the server, its per-stage gates).
    """

    def pipeline(self, site: str, collection: str | None = None) -> Any: ...

    def lm(self) -> tuple[Any, str | None]: ...


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


def state_path(settings: Settings, site: str, program: str) -> Path:
    """Where the optimized state of ``site``/``program`` lives: ``programs/<site>/<program>.json``."""
    return settings.programs_dir / site / f"{program}.json"


def load_saved_state(module: dspy.Module, path: Path) -> str | None:
    """Load ``path`` into ``module`` when it exists; the path loaded, or ``None``."""
    if not path.is_file():
        return None
    try:
        module.load(str(path))
    except Exception as exc:
        raise InputError(
            f"{path}: cannot load the saved program state ({type(exc).__name__}: {exc}); "
            "re-run the optimizer or delete the file"
        ) from exc
    log.info("loaded optimized program state %s", path)
    return str(path)
