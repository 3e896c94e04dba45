"""The operations commands: ``rag-app serve``, ``keys add|list|revoke``, ``doctor`` and ``models pull``.

Running the HTTP server and managing its keys (:mod:`rag_app.server`), checking what this machine can
run and fetching model weights (:mod:`rag_app.cli.doctor`).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from rag_app.cli.common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    console,
    err_console,
    handle_errors,
    load_settings,
    print_json,
)

__all__ = ["register"]


@handle_errors
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default 8080).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes.")] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run the HTTP API with uvicorn; models load and warm before the server reports ready."""
    from rag_app.server.run import serve as run_server

    run_server(load_settings(config, data_dir=data_dir), host, port, workers, log_level=log_level)


@handle_errors
def keys_add(
    name: Annotated[str, typer.Option("--name", help="A name for the key (e.g. the calling site).")],
    sites: Annotated[str, typer.Option("--sites", help="Comma-separated sites the key may use, or '*'.")],
    scopes: Annotated[
        str,
        typer.Option(
            "--scopes",
            help="Comma-separated: read (search, ask, list documents), write (add and delete documents "
            "over HTTP; includes read).",
        ),
    ] = "read",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from rag_app.server.auth import add_key

    key = add_key(
        load_settings(config, data_dir=data_dir),
        name,
        [s.strip() for s in sites.split(",") if s.strip()],
        scopes.split(","),
    )
    err_console.print(f"created key {name!r}; it is shown once, store it now:")
    sys.stdout.write(key + "\n")


@handle_errors
def keys_list(config: ConfigOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Key names, their sites, scopes and creation dates (never the keys)."""
    from rag_app.server.auth import list_keys

    keys = list_keys(load_settings(config, data_dir=data_dir))
    if as_json:
        print_json(
            [
                {"name": k.name, "sites": list(k.sites), "scopes": list(k.scopes), "created_at": k.created_at}
                for k in keys
            ]
        )
        return
    for k in keys:
        console.print(
            f"{k.name}\tsites={','.join(k.sites)}\tscopes={','.join(k.scopes)}\tcreated={k.created_at}",
            highlight=False,
        )
    if not keys:
        console.print("no keys: the server runs without auth and binds to loopback only")


@handle_errors
def keys_revoke(
    name: Annotated[str, typer.Argument(help="Name of the key to revoke.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke a key by name; requests with it get 401 from then on."""
    from rag_app.server.auth import revoke_key

    revoke_key(load_settings(config, data_dir=data_dir), name)
    console.print(f"revoked {name!r}")


@handle_errors
def doctor(config: ConfigOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Which backends are reachable (Ollama, hub cache, bundled models) and which settings will use."""
    from rag_app.cli.doctor import run_checks

    settings = load_settings(config, data_dir=data_dir)
    checks = run_checks(settings)
    if as_json:
        print_json(checks)
        return
    table = Table(title="rag-app doctor")
    for col in ("component", "status", "detail"):
        table.add_column(col, overflow="fold")
    for check in checks:
        colour = {"ok": "green", "missing": "yellow", "unreachable": "yellow", "error": "red"}.get(
            check["status"], "white"
        )
        table.add_row(check["component"], f"[{colour}]{check['status']}[/{colour}]", check["detail"])
    console.print(table)


@handle_errors
def models_pull(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Download and pin every configured hub model (and `ollama pull` Ollama models). Needs network."""
    from rag_app.cli.doctor import pull_models

    settings = load_settings(config, data_dir=data_dir)
    for line in pull_models(settings):
        console.print(line, highlight=False, soft_wrap=True)


def register(app: typer.Typer, keys_app: typer.Typer, models_app: typer.Typer) -> None:
    """Add ``serve`` and ``doctor`` to ``app``, ``add|list|revoke`` to ``keys_app`` and ``pull`` to
    ``models_app``."""
    app.command()(serve)
    app.command()(doctor)
    keys_app.command("add")(keys_add)
    keys_app.command("list")(keys_list)
    keys_app.command("revoke")(keys_revoke)
    models_app.command("pull")(models_pull)
