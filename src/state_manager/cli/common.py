"""What every command shares: settings that fail in one line, consoles, and a database ready for use.

Heavy imports (SQLAlchemy, the services) happen inside the functions so that `--help` stays fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from pydantic import BaseModel

    from state_manager.db import Database
    from state_manager.settings import Settings

T = TypeVar("T")
M = TypeVar("M", bound="BaseModel")

# Results go to stdout, everything else (notes, errors) to stderr, so that output can be piped.
# soft_wrap keeps one message on one line whatever the terminal width.
# Piped output is not cut to 80 columns (COLUMNS still wins when set).
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200)
err = Console(stderr=True, soft_wrap=True)

EXIT_FAILED = 1
EXIT_USAGE = 2  # also what click uses for a bad option

JsonOption = typer.Option("--json", help="Print JSON instead of a table, for scripts.")


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def cli_actor() -> str:
    """Who the audit log says acted, for commands that change data: `cli:<login name>`."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "cli"


def note(message: str) -> None:
    err.print(f"[dim]{escape(message)}[/]")


def load_settings() -> Settings:
    """Settings from the environment and `.env`; a wrong value stops here, naming its variable."""
    from pydantic import ValidationError

    from state_manager.messages import media_urls
    from state_manager.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            variable = "_".join(str(part) for part in error["loc"]).upper() or "settings"
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{variable}: {message}")
        plural = "s" if len(problems) > 1 else ""
        fail(f"invalid setting{plural} {'; '.join(problems)}", EXIT_USAGE)
    media_urls.configure(settings.media_url_policy)  # `replay` records media URLs as the servers do
    return settings


def safe_url(url: str) -> str:
    """A database URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://…"


async def ensure_schema(settings: Settings, db: Database) -> None:
    """The embedded default migrates itself; PostgreSQL must be at head already (exit 1 otherwise)."""
    from sqlalchemy.exc import DBAPIError

    from state_manager.errors import StateManagerError
    from state_manager.startup import SchemaNotReady, prepare_schema

    try:
        await prepare_schema(settings, db)
    except SchemaNotReady as exc:
        fail(str(exc))
    except (DBAPIError, OSError, StateManagerError) as exc:
        fail(f"cannot use the database {safe_url(settings.effective_database_url)}: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    text = str(getattr(cause, "orig", None) or cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


def with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run `work` against a database whose schema is ready; service errors become one-line messages."""
    from pydantic import ValidationError
    from sqlalchemy.exc import DBAPIError

    from state_manager.db import open_database
    from state_manager.errors import StateManagerError

    async def run() -> T:
        db = open_database(settings)
        try:
            await ensure_schema(settings, db)
            return await work(db)
        except StateManagerError as exc:
            cause = f" ({_reason(exc)})" if exc.__cause__ is not None else ""
            fail(f"{exc.detail}{cause}")
        except ValidationError as exc:
            fail("; ".join(_field_message(error) for error in exc.errors()), EXIT_USAGE)
        except (DBAPIError, OSError) as exc:
            fail(f"database error on {safe_url(settings.effective_database_url)}: {_reason(exc)}")
        finally:
            await db.dispose()

    return asyncio.run(run())


def build(model: type[M], **values: Any) -> M:
    """Validate command-line input with the API's own schema; a bad value is a usage error (exit 2)."""
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as exc:
        fail("; ".join(_field_message(error) for error in exc.errors()), EXIT_USAGE)


def _field_message(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"])
    return f"{field}: {str(error['msg']).removeprefix('Value error, ')}"


def print_json(data: BaseModel | Sequence[BaseModel]) -> None:
    if isinstance(data, Sequence):
        payload: Any = [item.model_dump(mode="json") for item in data]
    else:
        payload = data.model_dump(mode="json")
    typer.echo(json.dumps(payload, indent=2))


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, whole: Sequence[str] = ("ID",)
) -> None:
    """A table on stdout; the `whole` columns (IDs, times) are never broken across lines."""
    cells = [["—" if value is None else escape(str(value)) for value in row] for row in rows]
    table = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        if column in whole:
            width = max([len(column), *(len(row[index]) for row in cells)])
            table.add_column(column, no_wrap=True, min_width=width)
        else:
            table.add_column(column, overflow="fold")
    for row in cells:
        table.add_row(*row)
    out.print(table)


def when(moment: Any) -> str | None:
    """A datetime as `YYYY-MM-DD HH:MMZ` (UTC) for tables."""
    return None if moment is None else moment.strftime("%Y-%m-%d %H:%MZ")


def day(moment: Any) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%d")
