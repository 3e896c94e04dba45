"""Finding the site programs: ``programs/<site>.py`` files, loaded by path.

Each file exposes ``PROGRAMS: dict[str, type[SiteProgram]]``. Programs are loaded from
``settings.programs_dir``, not imported as a package, so a deployment can point at its own folder.
A file is executed once per process (Python's module table keeps it), like any import.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import threading
from types import ModuleType

from rag_app.answering.program import SiteProgram
from rag_app.core.errors import InputError
from rag_app.core.settings import Settings

_IMPORT_LOCK = threading.Lock()


def site_module(settings: Settings, site: str) -> ModuleType:
    """Import ``programs/<site>.py`` by path (once per path and process)."""
    settings.collections_for(site)  # the one site check: names the known sites
    path = (settings.programs_dir / f"{site}.py").resolve()
    if not path.is_file():
        raise InputError(f"no programs for site {site!r}: {path} does not exist (RAG_PROGRAMS_DIR)")
    name = f"rag_site_programs_{site}_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    with _IMPORT_LOCK:
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        return module


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
