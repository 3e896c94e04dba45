"""Ray for one ingest: imported on demand, attached to (or started here), quiet, shut down only if ours.

Ray is an optional dependency (the ``ray`` extra): importing it here, at call time, keeps
``rag_app`` importable and the single-process engine working without it, and a missing install is
one line saying what to install. A Ray already initialised in this process (a notebook, a test
module, a job submitted to a cluster) is used as it is and left running; a Ray this module starts
(at ``ray_address``, or a local one using the machine's CPUs) is shut down when the ingest ends.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from rag_app.core.errors import RagError, ServiceUnavailableError
from rag_app.core.settings import Settings

#: Ray Data's execution-context switches this module sets for a run and restores after it.
_QUIET = ("enable_progress_bars", "print_on_execution_start", "enable_auto_log_stats")


class RayNotInstalledError(RagError):
    """``--engine ray`` was asked for but Ray Data (or pylance) is not installed."""


def require_ray() -> ModuleType:
    """The ``ray`` module with Ray Data and Lance importable, or an error saying what to install."""
    try:
        import lance  # noqa: F401  (the workers write Lance fragments)
        import ray
        import ray.data
    except ImportError as exc:
        raise RayNotInstalledError(
            f"--engine ray needs Ray Data and pylance, which are not installed ({exc}); install the "
            "extra with `pip install 'rag-app[ray]'`, or leave out --engine ray to ingest in this process"
        ) from exc
    return ray


@contextmanager
def ray_session(settings: Settings, *, progress: bool) -> Iterator[ModuleType]:
    """Ray for the duration of a ``with`` block; yields the ``ray`` module.

    ``progress``: Ray Data's progress bars and execution banners (a terminal); without it they are
    off and Ray Data logs warnings only, so a cron job's log holds the ingest's own lines.
    """
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        options = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        try:
            with warnings.catch_warnings():
                # Ray starts its processes with fork+exec; lance/lancedb warn on any fork, but the
                # children exec at once and never touch the parent's LanceDB state
                warnings.filterwarnings("ignore", message=".*fork", category=RuntimeWarning)
                warnings.filterwarnings("ignore", message=".*fork-safe", category=UserWarning)
                if settings.ray_address:
                    ray.init(address=settings.ray_address, **options)
                else:  # a local Ray over this machine's CPUs (Ray counts them, cgroup limits included)
                    ray.init(**options)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            where = settings.ray_address or "a local Ray"
            raise ServiceUnavailableError(
                f"could not start or reach Ray at {where} ({exc}); check RAG_RAY_ADDRESS (ray://head:10001), "
                "or unset it to start Ray on this machine"
            ) from exc
        started = True
    context = ray.data.DataContext.get_current()
    saved = {name: getattr(context, name) for name in _QUIET}
    data_log = logging.getLogger("ray.data")
    saved_level = data_log.level
    for name in _QUIET:
        setattr(context, name, progress)
    if not progress:
        data_log.setLevel(logging.WARNING)
    try:
        yield ray
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        data_log.setLevel(saved_level)
        if started:
            ray.shutdown()
