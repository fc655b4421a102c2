"""Logs, one line per event, with the request id of the request being served: JSON lines
for collectors, or short human-readable lines for a person at a terminal.

Standard-library loggers (uvicorn, alembic) go through the same renderer, so the whole
process writes one format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog
from structlog.types import EventDict

# `auto`: console lines when stderr is a terminal, JSON lines otherwise (a pipe, a file,
# journald, a container runtime's log collector).
LogFormat = Literal["auto", "json", "console"]
# Which requests the access log records (`trustd.api.middleware.QUIET_PATHS`).
AccessLog = Literal["all", "default", "off"]


def resolve_format(fmt: LogFormat, stream: TextIO | None = None) -> Literal["json", "console"]:
    """The format `auto` means for *stream* (stderr by default)."""
    if fmt != "auto":
        return fmt
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "json"


def _concise(_logger: Any, _method: str, event: EventDict) -> EventDict:
    """On a terminal: an access-log event as one short line (`GET /v1/entries 200 4.2 ms`;
    the JSON form keeps the fields apart for queries), uvicorn's lines under `uvicorn`."""
    if event.get("logger") == "uvicorn.error":
        # uvicorn's start and stop lines come from its "error" logger; they are not errors.
        event["logger"] = "uvicorn"
    elif event.get("logger") == "trustd.access" and event.get("event") == "request":
        method, path = event.pop("method", "?"), event.pop("path", "?")
        status, ms = event.pop("status", "?"), event.pop("ms", "?")
        event["event"] = f"{method} {path} {status} {ms} ms"
    return event


def configure_logging(level: str = "info", fmt: LogFormat = "json") -> None:
    numeric = logging.getLevelName(level.upper())
    stream = sys.stderr
    console = resolve_format(fmt, stream) == "console"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        # A person reads the time of day; collectors want the instant, in UTC.
        structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False)
        if console
        else structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: list[structlog.types.Processor]
    if console:
        renderer = [
            _concise,
            structlog.dev.ConsoleRenderer(
                colors=stream.isatty(),
                # Plain: rich's tracebacks print each frame's local variables, and those
                # can hold keys and tokens.
                exception_formatter=structlog.dev.plain_traceback,
                sort_keys=False,
                pad_event_to=0,
                pad_level=False,
            ),
        ]
    else:
        renderer = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # httpx logs every outbound request at info (each agent sync, each ACME validation
    # fetch with its token in the URL); trustd logs the events that matter itself, and
    # httpx speaks again at debug.
    logging.getLogger("httpx").setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        # Filtering in the bound logger drops disabled levels before any processor runs: the
        # access log costs nothing when the level is above info.
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )


def hold_info(held: bool) -> None:
    """While *held*, only warnings and errors are written: the progress of startup is told by
    the command's own lines and the banner, which info events (each migration alembic
    applies) would otherwise interleave. Lifted once the banner is out."""
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING if held else logging.NOTSET)
