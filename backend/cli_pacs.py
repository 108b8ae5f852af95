"""`dualseg scp` (DICOM C-STORE listener) and `dualseg pacs ...` (DICOMweb checks, correction poll)."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

from backend.config import get_settings

pacs_app = typer.Typer(help="PACS (DICOMweb): check the connection, poll for corrected SEGs.",
                       no_args_is_help=True)
app = typer.Typer()
app.add_typer(pacs_app, name="pacs")


@app.command()
def scp(
    port: Annotated[int | None, typer.Option(help="listen port (DUALSEG_SCP_PORT)")] = None,
    host: Annotated[str | None, typer.Option(help="listen address (DUALSEG_SCP_HOST)")] = None,
    ae_title: Annotated[str | None, typer.Option(help="our AE title (DUALSEG_SCP_AE_TITLE)")] = None,
    stable_s: Annotated[float | None, typer.Option(help="seconds without a new instance before a series "
                                                   "is segmented (DUALSEG_SCP_STABLE_S)")] = None,
) -> None:
    """Run the DICOM C-STORE SCP: received series become cases + segmentation jobs; answers C-ECHO."""
    from worker.scp import run_scp

    s = get_settings()
    update = {k: v for k, v in {"scp_port": port, "scp_host": host, "scp_ae_title": ae_title,
                                "scp_stable_s": stable_s}.items() if v is not None}
    settings = s.model_copy(update=update) if update else s
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    run_scp(settings)


@pacs_app.command("check")
def pacs_check() -> None:
    """Show the DICOMweb roots and run one QIDO-RS query against the PACS (exit 1 when it fails)."""
    from backend.errors import DomainError
    from backend.pacs.client import PacsClient

    s = get_settings()
    try:
        client = PacsClient(s)
        try:
            client.ping()
        finally:
            client.close()
    except DomainError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    roots = client.roots
    typer.echo(f"DICOMweb PACS reachable (auth {s.pacs_auth}): QIDO {roots.qido} · WADO {roots.wado} · "
               f"STOW {roots.stow}")


@pacs_app.command("poll")
def pacs_poll() -> None:
    """Import corrected SEGs from the PACS now (what the beat poll does every pacs_poll_interval_s)."""
    from backend.errors import DomainError
    from backend.migrations import run_migrations
    from backend.pacs.imports import poll
    from backend.storage import ArtifactStore

    s = get_settings()
    run_migrations()
    try:
        result = poll(s, ArtifactStore(s.resolved_storage_dir))
    except DomainError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(result.as_dict(), indent=1))
