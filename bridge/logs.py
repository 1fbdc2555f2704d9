# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Logging for the ``bridge`` and ``relay`` loggers: text or JSON lines on stderr.

Structured fields travel in ``extra={"fields": {...}}``::

    log.info("Connecting to bridge server", extra={"fields": {"address": "relay:4000"}})

Text: ``2026-11-21T01:46:24.123Z<TAB>INFO<TAB>Connecting to bridge server<TAB>{"address": ...}``.
JSON: ``{"ts": ..., "level": ..., "logger": ..., "event": ..., <fields>}``, one per line.

Every registered secret is redacted from every record before it is formatted. All state
lives in the stdlib logging configuration.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGERS = ("bridge", "relay")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
REDACTED = "[REDACTED]"
_HANDLER_NAME = "trio-bridge"


def parse_level(text: str) -> str:
    """A ``LOG_LEVEL`` value, case-insensitive -> its canonical name; ValueError otherwise."""
    level = text.strip().upper()
    if level not in LEVELS:
        raise ValueError(f"invalid log level {text!r}: use one of {', '.join(LEVELS)}")
    return level


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send the ``bridge`` and ``relay`` loggers to stderr at ``level`` in ``fmt``.

    Calling it again replaces the previous configuration.
    """
    level = parse_level(level)
    if fmt not in FORMATS:
        raise ValueError(f"invalid log format {fmt!r}: use one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_redactor())
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def register_secret(secret: str) -> None:
    """Redact ``secret`` from every later record of the ``bridge`` and ``relay`` loggers."""
    if secret:
        _redactor().secrets.add(secret)


class SecretRedactor(logging.Filter):
    """Replaces registered secrets in the message, the fields and the traceback text."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def redact(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {self.redact(str(k)): self.redact(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact(v) for v in value]
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return self.redact(str(value))

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets or getattr(record, "redacted", False):
            return True
        record.msg = self.redact(record.getMessage())
        record.args = None
        if isinstance(getattr(record, "fields", None), dict):
            record.fields = self.redact(record.fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        record.redacted = True
        return True


def _redactor() -> SecretRedactor:
    """The redactor, kept as a filter of the ``bridge`` and ``relay`` loggers.

    As a logger filter it also covers records logged on those two loggers when
    `configure` was not called (e.g. when embedded); the handler installed by `configure`
    applies it to their child loggers too.
    """
    loggers = [logging.getLogger(name) for name in LOGGERS]
    for f in loggers[0].filters:
        if isinstance(f, SecretRedactor):
            return f
    redactor = SecretRedactor()
    for logger in loggers:
        logger.addFilter(redactor)
    return redactor


def _timestamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    millis = int((record.created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or ""


class TextFormatter(logging.Formatter):
    """``<ts>\\t<LEVEL>\\t<message>[\\t<fields as JSON>]``, then any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.getMessage()]
        if fields := _fields(record):
            parts.append(json.dumps(fields, default=str, ensure_ascii=False))
        line = "\t".join(parts)
        if exc := _exception_text(self, record):
            line += "\n" + exc
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, then the fields (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, value)
        if exc := _exception_text(self, record):
            entry["exc"] = exc
        return json.dumps(entry, default=str, ensure_ascii=False)
