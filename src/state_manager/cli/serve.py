"""`state-manager serve`: check the settings and the schema, then hand over to uvicorn."""

from __future__ import annotations

import asyncio
import logging.config
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Annotated, Any

import typer

from state_manager.cli.common import ensure_schema, load_settings, safe_url

if TYPE_CHECKING:
    from state_manager.settings import Settings

APP_FACTORY = "state_manager.app:create_app"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on. Default: HOST, else 127.0.0.1.")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port to listen on. Default: PORT, else 3005."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Worker processes; more than one shares metrics through PROMETHEUS_MULTIPROC_DIR "
            "(a fresh temporary directory unless you set one). Default: WORKERS, else 1.",
        ),
    ] = None,
) -> None:
    """Run the HTTP service.

    Settings are checked first (a wrong value stops the start, naming its variable). The embedded SQLite
    default migrates itself and, on its first run, writes an admin key to DATA_DIR/admin-key. PostgreSQL
    must have been migrated with `state-manager migrate`; the service refuses to start otherwise.
    """
    # Workers build their own Settings from the environment: the options have to travel through it.
    for variable, value in (("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            os.environ[variable] = str(value)
    settings = load_settings()
    logging.config.dictConfig(log_config(settings))
    logging.getLogger("state_manager.serve").info(
        "starting on %s:%s with %d worker(s), database %s",
        settings.host,
        settings.port,
        settings.workers,
        safe_url(settings.effective_database_url),
    )
    asyncio.run(_preflight(settings))

    metrics_dir = None
    if settings.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        metrics_dir = tempfile.mkdtemp(prefix="state-manager-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        import uvicorn

        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,  # the request middleware logs each request once, with its request ID
            log_config=log_config(settings),
            log_level=settings.log_level.lower(),
            server_header=False,
            # Compressing each frame for each subscriber cost more than everything else the event
            # fan-out does (docs/benchmarks.md, "Events"); the clients are services on the same network.
            ws_per_message_deflate=settings.ws_compression,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


async def _preflight(settings: Settings) -> None:
    from state_manager.db import open_database

    db = open_database(settings)
    try:
        await ensure_schema(settings, db)
    finally:
        await db.dispose()


def log_config(settings: Settings) -> dict[str, Any]:
    """uvicorn's own lines in the service's format, in the server process and in every worker."""
    from state_manager.settings import LogFormat

    formatter = "JsonFormatter" if settings.log_format is LogFormat.JSON else "ConsoleFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": f"state_manager.observability.logging.{formatter}"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        # Named by module path: each worker imports it. Not from the CLI package, which would bring the
        # whole CLI (typer, rich, every command) into every worker.
        "filters": {"plain": {"()": "state_manager.observability.logging.PlainMessage"}},
        "root": {"handlers": ["default"], "level": settings.log_level},
        "loggers": {
            # Filters on the loggers, not the handler: the app's lifespan replaces the handlers.
            "uvicorn": {"handlers": [], "propagate": True, "filters": ["plain"]},
            "uvicorn.error": {"handlers": [], "propagate": True, "filters": ["plain"]},
            "uvicorn.access": {"handlers": [], "propagate": False},
            "alembic.runtime.plugins": {"level": "WARNING"},  # one line per plugin on every start
        },
    }
