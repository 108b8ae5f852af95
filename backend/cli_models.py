"""`dualseg models ...`: the model registry from the command line (torch-free)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from backend.config import get_settings
from backend.migrations import run_migrations

models_app = typer.Typer(help="Model registry: list, import, export, promote, rollback.",
                         no_args_is_help=True)
app = typer.Typer()
app.add_typer(models_app, name="models")


def _session():  # type: ignore[no-untyped-def]
    from backend.db import session_scope

    s = get_settings()
    run_migrations()
    return session_scope(s.resolved_database_url)


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List registered model versions (newest first)."""
    from backend.services import registry

    with _session() as session:
        rows = [{"version": m.version, "state": m.state.value, "name": m.card.get("name"),
                 "parent": m.parent_version, "created_at": m.created_at.isoformat(),
                 "dice": (m.metrics or {}).get("dice")} for m in registry.list_versions(session)]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        typer.echo("no model registered")
    for r in rows:
        typer.echo(f"{r['version']:<28} {r['state']:<10} {r['name'] or '':<24} parent={r['parent'] or '-'}")


@models_app.command("import")
def models_import(
    path: Annotated[Path, typer.Argument(exists=True, help="package folder or .zip")],
    activate: Annotated[bool, typer.Option(help="make it the active model")] = False,
) -> None:
    """Validate a model package (card + hash, nothing pickled) and register it."""
    from backend.errors import DomainError
    from backend.services import registry

    try:
        with _session() as session:
            mv = registry.import_package(session, get_settings(), path, activate=activate)
            typer.echo(f"imported {mv.version} ({mv.state.value})")
    except DomainError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc


@models_app.command("export")
def models_export(version: str, out: Annotated[Path, typer.Argument(help="destination .zip")]) -> None:
    """Write a registered version as a .zip package."""
    from backend.services import registry

    with _session() as session:
        src = Path(registry.get_version(session, version).path)
    base = out.with_suffix("") if out.suffix == ".zip" else out
    made = shutil.make_archive(str(base), "zip", root_dir=src)
    typer.echo(made)


@models_app.command("promote")
def models_promote(version: str) -> None:
    """Make VERSION the active model (the previous one is retired)."""
    from backend.services import registry

    with _session() as session:
        registry.promote(session, version)
    typer.echo(f"{version} is now active")


@models_app.command("rollback")
def models_rollback() -> None:
    """Re-activate the previously active version."""
    from backend.errors import DomainError
    from backend.services import registry

    try:
        with _session() as session:
            active, retired = registry.rollback(session)
            typer.echo(f"{active.version} is active again ({retired.version} retired)")
    except DomainError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
