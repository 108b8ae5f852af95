"""`dualseg migrate | api | worker | beat | serve`: the server processes and the database schema.

Heavy imports (uvicorn, worker, torch) happen inside the commands that need them.
"""

from __future__ import annotations

from typing import Annotated

import typer

from backend.config import get_settings
from backend.migrations import alembic_config, run_migrations

app = typer.Typer()


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
    down: Annotated[bool, typer.Option(help="downgrade to REVISION instead")] = False,
) -> None:
    """Apply database migrations (alembic upgrade head)."""
    from alembic import command

    if down:
        command.downgrade(alembic_config(), revision)
    else:
        run_migrations(revision=revision)
    typer.echo(f"database at {'downgraded' if down else 'upgraded'} to {revision}")


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="bind address (DUALSEG_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (DUALSEG_PORT)")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Run the HTTP API (production process; no worker inside)."""
    import uvicorn

    s = get_settings()
    uvicorn.run(
        "backend.main:create_app",
        factory=True,
        host=host or s.host,
        port=port or s.port,
        workers=workers,
        log_level=s.log_level.lower(),
        timeout_graceful_shutdown=10,
    )


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="comma-separated queues")] = "inference,training",
    pool: Annotated[str, typer.Option(help="solo | prefork | threads")] = "solo",
    concurrency: Annotated[int, typer.Option(help="processes/threads (1 per GPU)")] = 1,
    beat: Annotated[bool, typer.Option(help="also run the beat scheduler (if no other beat holds the "
                                            "deployment's scheduler lock)")] = False,
    name: Annotated[str | None, typer.Option(help="Celery node name (default dualseg-POOL@%h); give "
                                                  "each worker on one host its own")] = None,
) -> None:
    """Run a Celery worker consuming QUEUES (production: one per GPU for `inference`).

    At start-up, before it consumes, it re-queues the jobs of workers that are gone; then a heartbeat
    thread keeps its `workers` row and the leases of what it holds fresh (DUALSEG_HEARTBEAT_S)."""
    from worker import liveness
    from worker.app import create_worker_app

    s = get_settings()
    celery_app = create_worker_app(s)
    liveness.install(celery_app, s)
    argv = ["worker", "-Q", queues, "-P", pool, "-c", str(concurrency), "--loglevel", s.log_level,
            "--without-gossip", "--without-mingle", "-n", name or f"dualseg-{pool}@%h"]
    if beat:
        from worker.beat_lock import BeatLock

        lock = BeatLock(s)
        if lock.acquire_or_wait(block=False):  # held by this process (and its beat child) until exit
            lock.watch()
            argv += ["-B", "-s", str(s.data_path / "celerybeat-schedule")]
    celery_app.worker_main(argv)


@app.command("beat")
def beat_cmd() -> None:
    """Run the beat scheduler (stuck-job sweeper, scheduled retraining). Exactly one per deployment: a
    second one logs that another holds the scheduler lock and stands by until it is free."""
    import logging

    from worker.app import create_worker_app
    from worker.beat_lock import BeatLock

    s = get_settings()
    logging.basicConfig(level=s.log_level, format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s")
    celery_app = create_worker_app(s)  # before waiting: a standby takes over without start-up work
    lock = BeatLock(s)
    lock.acquire_or_wait(retry_s=min(5.0, float(s.sweep_interval_s)))
    lock.watch()
    celery_app.start(["beat", "-s", str(s.data_path / "celerybeat-schedule"), "--loglevel", s.log_level])


@app.command()
def serve(
    ready_timeout: Annotated[float, typer.Option(help="seconds to wait for the API")] = 120.0,
) -> None:
    """Embedded mode: migrate, re-queue what a previous run's worker left running, then run the API, one
    worker (solo pool) and beat as children."""
    from backend.supervisor import Supervisor, python_child

    s = get_settings()
    s.ensure_dirs()
    typer.echo(f"dualseg: data in {s.data_path}")
    run_migrations()
    from backend.services.bootstrap import bootstrap_embedded

    for line in bootstrap_embedded(s):
        typer.echo(line)
    from backend.broker import make_celery, send
    from backend.db import session_scope
    from backend.services.workers import recover

    with session_scope(s.resolved_database_url) as session:  # before the new worker consumes
        resend = recover(session, s)
    client = make_celery(s)
    for task, item_id, queue in resend:
        send(client, task, item_id, queue)
    if resend:
        typer.echo(f"re-queued {len(resend)} job(s) left running by the previous worker")
    queues = f"{s.queue_inference},{s.queue_training}"
    sup = Supervisor(
        [python_child("api"), python_child("worker", "--queues", queues, "--pool", "solo"),
         python_child("beat")],
        echo=typer.echo,
    )
    base = f"http://{s.host}:{s.port}"

    def announce() -> None:
        if sup.wait_http(f"{base}/healthz", ready_timeout):
            typer.echo(f"dualseg is up at {base}  (API docs: {base}/docs, health: {base}/readyz)")
            if s.auth_enabled:
                from backend.cli_admin import new_token

                token = new_token("admin", "dualseg serve (start-up admin token)", expires_days=7)
                typer.echo(f"admin token (valid 7 days; more with `dualseg tokens create`): {token}")
                typer.echo(f'  curl -H "Authorization: Bearer {token}" {base}/api/v1/cases')
            else:
                typer.echo("authentication is off (embedded mode, loopback only); Ctrl-C stops everything")

    code = sup.run(on_ready=announce)
    raise typer.Exit(code)
