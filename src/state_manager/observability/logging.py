"""Logging: JSON lines (or plain text for a console), each with the request ID when there is one."""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import re
import sys
from typing import Any

import orjson

from state_manager.settings import LogFormat

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# The ID (never the key) of the API key that authenticated the current HTTP request, for its access line:
# the request middleware sets a fresh holder, the authenticator fills it (a list, so that a dependency run
# in a copied context still reaches the middleware's).
request_key_var: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "request_key", default=None
)


def note_request_key(key_id: str) -> None:
    holder = request_key_var.get()
    if holder is not None:
        holder.append(key_id)


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-8s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = request_id_var.get()
        return f"{line} [request_id={request_id}]" if request_id else line


_KEY_IN_QUERY = re.compile(r"(api_key=)[^&\s\"']+")


class PlainMessage(logging.Filter):
    """Drops the terminal-coloured copy of the message that uvicorn attaches to its records."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


class RedactKeysInUrls(logging.Filter):
    """Browsers can only give a WebSocket its key in the query string (`/v1/ws?api_key=…`), and uvicorn
    logs each WebSocket's path with its query: the key never reaches the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "api_key=" in message:
            record.msg, record.args = _KEY_IN_QUERY.sub(r"\1[redacted]", message), ()
        return True


def configure(level: str, fmt: LogFormat) -> None:
    # No line names the source file, the thread or the process: collecting them anyway was a fifth of
    # each line's cost, and every request writes one (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactKeysInUrls())
    handler.setFormatter(JsonFormatter() if fmt is LogFormat.JSON else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The request middleware writes one access line per request; uvicorn's own would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
