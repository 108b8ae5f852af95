"""`dualseg tokens ...`: API tokens from the command line."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated

import typer

from backend.config import get_settings
from backend.migrations import run_migrations

tokens_app = typer.Typer(help="API tokens: create, list, revoke.", no_args_is_help=True)
app = typer.Typer()
app.add_typer(tokens_app, name="tokens")


def new_token(role: str, name: str, expires_days: float | None) -> str:
    """Create a token in the configured database and return its plain value."""
    from backend.db import session_scope
    from backend.security import create_token
    from backend.tables import Role

    s = get_settings()
    run_migrations()
    with session_scope(s.resolved_database_url) as session:
        token, _ = create_token(session, s.secret_key, name, Role(role),
                                timedelta(days=expires_days) if expires_days else None)
    return token


@tokens_app.command("create")
def tokens_create(
    role: Annotated[str, typer.Option(help="viewer | annotator | admin")] = "annotator",
    name: Annotated[str, typer.Option(help="who or what uses it (no patient data)")] = "cli",
    expires_days: Annotated[float | None, typer.Option(help="lifetime in days; default never")] = None,
) -> None:
    """Print a new bearer token (stdout holds only the token)."""
    if role not in ("viewer", "annotator", "admin"):
        typer.echo("error: --role must be viewer, annotator or admin", err=True)
        raise typer.Exit(2)
    typer.echo(new_token(role, name, expires_days))


@tokens_app.command("list")
def tokens_list() -> None:
    """List tokens (never their values)."""
    from sqlalchemy import select

    from backend.db import session_scope
    from backend.tables import ApiToken

    s = get_settings()
    run_migrations()
    with session_scope(s.resolved_database_url) as session:
        rows = session.scalars(select(ApiToken).order_by(ApiToken.created_at)).all()
        out = [{"id": r.id, "name": r.name, "role": r.role.value, "prefix": r.prefix,
                "expires_at": r.expires_at.isoformat() if r.expires_at else None,
                "revoked": r.revoked_at is not None} for r in rows]
    typer.echo(json.dumps(out, indent=1))


@tokens_app.command("revoke")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token by its id (see `dualseg tokens list`)."""
    from backend.db import session_scope
    from backend.errors import DomainError
    from backend.security import revoke

    s = get_settings()
    try:
        with session_scope(s.resolved_database_url) as session:
            revoke(session, token_id)
    except DomainError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"revoked {token_id}")
