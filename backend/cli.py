"""The `dualseg` command, assembled in one place from the sub-CLIs.

Each ``backend/cli_*.py`` module is its own Typer app and imports nothing of this one; here they are
merged (``add_typer`` without a name keeps their commands and groups at the top level):

- ``cli_server``: migrate, api, worker, beat, serve
- ``cli_admin``: tokens create | list | revoke
- ``cli_models``: models list | import | export | promote | rollback
- ``cli_pacs``: scp, pacs check | poll
- ``cli_ml``: phantoms, train, evaluate, predict, reference

Heavy imports (torch, models, worker) happen inside the commands that need them.
"""

from __future__ import annotations

import typer

from backend import cli_admin, cli_ml, cli_models, cli_pacs, cli_server

app = typer.Typer(
    help="dualseg: segmentation + voxelwise uncertainty server, trainer and tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for _sub in (cli_server.app, cli_admin.app, cli_models.app, cli_pacs.app, cli_ml.app):
    app.add_typer(_sub)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
