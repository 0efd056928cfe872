"""Logging setup, applied only by the CLI (the library just logs): one line per event, to stderr.

Two formats (`LOG_FORMAT`): `text`, for people (`2026-11-24T10:00:00.123-03:00 INFO tickvault.recorder
message`), and `json`, one object per line for log shippers (`{"ts": ..., "level": ..., "logger": ...,
"msg": ..., "exc": ...}`). Either way an event is exactly one line: a traceback is folded into it
(`text`: its lines joined by " | "), so a line-based collector never splits one event in two.
"""

from __future__ import annotations

import logging.config
from datetime import datetime
from typing import Any

import msgspec


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    parts = []
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts)


class LineFormatter(logging.Formatter):
    """`time LEVEL logger message`, with any traceback folded into the same line."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name} {record.getMessage()}"
        extra = _exception_text(self, record)
        if extra:
            line = f"{line} | {extra}"
        return line.replace("\r\n", " | ").replace("\n", " | ")


class JsonFormatter(logging.Formatter):
    """One JSON object per event: ts, level, logger, msg, and exc when there is a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "thread": record.threadName,
        }
        extra = _exception_text(self, record)
        if extra:
            event["exc"] = extra
        return msgspec.json.encode(event).decode()  # JSON escapes newlines: still one line


def logging_config(level: str = "INFO", fmt: str = "text") -> dict[str, Any]:
    formatter = JsonFormatter if fmt == "json" else LineFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": formatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr"},
        },
        "loggers": {"tickvault": {"handlers": ["stderr"], "level": level, "propagate": False}},
    }


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    logging.config.dictConfig(logging_config(level, fmt))
