"""What has to be true before the service takes requests, shared by `serve` and the app's lifespan."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from state_manager.db import Database
from state_manager.db.migrate import head_revision, upgrade_to_head_async
from state_manager.db.postgres import APP_ROLE
from state_manager.settings import AuthMode, Settings
from state_manager.tenants import service as tenants

log = logging.getLogger("state_manager.startup")


class SchemaNotReady(RuntimeError):
    pass


async def prepare_schema(settings: Settings, db: Database) -> None:
    """The embedded default migrates itself; PostgreSQL must have been migrated by an operator."""
    if settings.is_embedded_database:
        if await db.schema_revision() != head_revision():
            await upgrade_to_head_async(settings.effective_database_url)
        return
    try:
        current = await db.schema_revision()
    except DBAPIError as exc:
        if not _missing_app_role(exc):
            raise
        # The first migration creates the role the service works as: this cluster was never migrated.
        current = None
    head = head_revision()
    if current != head:
        raise SchemaNotReady(
            f"the database schema is at revision {current or 'none'}, this release needs {head}: "
            "run `state-manager migrate` first"
        )
    for warning in await db.configuration_warnings():
        log.warning(warning)


def _missing_app_role(exc: DBAPIError) -> bool:
    text = str(exc.orig)
    return APP_ROLE in text and "does not exist" in text


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)


async def first_run(settings: Settings, db: Database) -> None:
    """On the embedded default: a default tenant, and an admin key written to a file only the user reads."""
    if settings.auth_mode is AuthMode.DISABLED:
        log.warning(
            "AUTH_MODE=disabled: every request is accepted without a key and acts as an administrator. "
            "Never run like this where anyone else can reach the port."
        )
    if not settings.is_embedded_database:
        return
    async with db.transaction(None) as conn:
        result = await tenants.bootstrap_default_tenant(conn, settings.default_tenant_id)
    if result.admin_key is not None:
        _write_secret(settings.admin_key_file, result.admin_key)
        log.warning(
            "first run: created tenant %r and an admin API key; the key is in %s (readable by you only)",
            result.tenant_id,
            settings.admin_key_file.resolve(),
        )
