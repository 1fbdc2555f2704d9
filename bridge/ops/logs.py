# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Logging for the ``bridge`` and ``relay`` loggers: text or JSON lines on stderr.

Structured fields travel in ``extra={"fields": {...}}``::

    log.info("Connecting to the relay", extra={"fields": {"address": "relay:4000"}})

Text: ``2026-11-21T01:46:24.123Z<TAB>INFO<TAB>Connecting to the relay<TAB>{"address": ...}``.
Under journald (stderr is the stream ``JOURNAL_STREAM`` names), the syslog priority replaces
the timestamp, which the journal adds itself, on every line of a record (a traceback's too):
``<6>INFO<TAB>Connecting to the relay<TAB>{"address": ...}``, with ``<2>`` CRITICAL,
``<3>`` ERROR, ``<4>`` WARNING, ``<6>`` INFO, ``<7>`` DEBUG.

JSON, for log shippers (the same under journald): one object per line,
``{"ts": ..., "level": ..., "logger": ..., "event": ..., <fields>}``. Field names are stable;
an event has the fields that apply to it, and none replaces the first four:

==============  ===========================================================================
ts              time in UTC, ``2026-11-21T01:46:24.123Z``
level           ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``CRITICAL``
logger          ``bridge.agent.agent``, ``relay.relay``, ``relay.forward``, ...
event           the message: ``Bridge connected``, ``Connection closed``, ...
exc             the traceback, when there is one
bridge          the bridge's name (relay)
id              the bridge's ID (relay)
bridge_id       the bridge ID an agent presented, on a failed login (relay)
target          ``HOST:PORT`` a tunnel is for
stream          the tunnel's mux stream ID (agent)
address         ``HOST:PORT`` the event is about: the relay the agent dials, the address
                dialed for a target, a listener
proxy           ``HOST:PORT`` of the HTTP proxy the agent goes through
peer            the address of an agent connection (relay)
client          the address of a forward's or SOCKS client (relay)
bytes           bytes a tunnel carried both ways, when it closes
bytes_sent      bytes sent to the target, when a tunnel closes
bytes_received  bytes received from the target, when a tunnel closes
duration        seconds (to the millisecond) a tunnel or an agent session lasted
clean           whether both directions of a tunnel ended in EOF
reason          why a connection, tunnel or login ended or was refused
==============  ===========================================================================

Other fields name what they count or hold: ``agents``, ``signal``, ``open_streams``,
``drain_timeout``, ``cut``, ``finished``, ``failures``, ``limit``, ``fingerprint``, ``path``...

Every registered secret is redacted from every record before it is formatted, as a whole
value only: an occurrence inside a longer word, identifier, host name or number (``0`` in
``127.0.0.1``) is another value and is left alone. All state lives in the stdlib logging
configuration.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

LOGGERS = ("bridge", "relay")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
REDACTED = "[REDACTED]"
_HANDLER_NAME = "trio-bridge"
#: (lowest level, syslog priority) for journald, highest first; below INFO: 7 (debug).
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def parse_level(text: str) -> str:
    """A ``LOG_LEVEL`` value, case-insensitive -> its canonical name; ValueError otherwise."""
    level = text.strip().upper()
    if level not in LEVELS:
        raise ValueError(f"invalid log level {text!r}: use one of {', '.join(LEVELS)}")
    return level


def configure(
    level: str = "INFO",
    fmt: str = "text",
    env: Mapping[str, str] | None = None,
    *,
    context: Mapping[str, Any] | None = None,
) -> None:
    """Send the ``bridge`` and ``relay`` loggers to stderr at ``level`` in ``fmt``.

    ``env`` (default: ``os.environ``) tells whether stderr goes to journald. ``context``:
    fields added to every record (e.g. the ``worker`` of ``bridge-relay serve --workers``),
    after its own. Calling it again replaces the previous configuration.
    """
    level = parse_level(level)
    if fmt not in FORMATS:
        raise ValueError(f"invalid log format {fmt!r}: use one of {', '.join(FORMATS)}")
    journald = writes_to_journal(sys.stderr, os.environ if env is None else env)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter(journald=journald))
    handler.addFilter(_redactor())
    if context:
        handler.addFilter(_Context(dict(context)))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def writes_to_journal(stream: IO[str], env: Mapping[str, str]) -> bool:
    """Whether ``stream`` is the journal stream that ``JOURNAL_STREAM`` (``DEVICE:INODE``) names.

    systemd sets the variable for a service whose output goes to the journal; a process whose
    output was redirected inherits it too, hence the comparison with the stream itself.
    """
    try:
        device, inode = map(int, env.get("JOURNAL_STREAM", "").split(":"))
        stat = os.fstat(stream.fileno())
    except (ValueError, OSError):  # unset or malformed, or a stream with no file descriptor
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level: 2 (critical) to 7 (debug)."""
    return next((priority for level, priority in _PRIORITIES if levelno >= level), 7)


def printable(text: str) -> str:
    """`text` with every character that is not printable (control characters, escape
    sequences, line and paragraph separators, tabs) written as a Python escape (``\\x1b``,
    ``\\n``, ``\\u2028``): text a peer chose can neither drive a terminal nor forge a line
    or a field. Printable text comes back unchanged."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def register_secret(secret: str) -> None:
    """Redact ``secret`` from every later record of the ``bridge`` and ``relay`` loggers."""
    if secret:
        _redactor().secrets.add(secret)


#: What a secret may not touch to count as a whole value: a letter, digit, ``_`` or ``-``
#: (it would be part of a longer word or identifier), nor a ``.`` that joins it to one (a
#: host name, a number). A ``.`` that ends a sentence does not count.
_BEFORE = r"(?<![A-Za-z0-9_-])(?<![A-Za-z0-9_-][.])"
_AFTER = r"(?![A-Za-z0-9_-])(?![.][A-Za-z0-9_-])"


class SecretRedactor(logging.Filter):
    """Replaces registered secrets in the message, the fields and the traceback text: whole
    values only, never a fragment of another word or number."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()
        self._pattern: tuple[frozenset[str], re.Pattern[str] | None] = (frozenset(), None)

    def _compiled(self) -> re.Pattern[str] | None:
        secrets = frozenset(self.secrets)
        if secrets != self._pattern[0]:
            longest_first = sorted(secrets, key=len, reverse=True)
            alternatives = "|".join(map(re.escape, longest_first))
            pattern = re.compile(f"{_BEFORE}(?:{alternatives}){_AFTER}") if secrets else None
            self._pattern = (secrets, pattern)
        return self._pattern[1]

    def redact(self, value: Any) -> Any:
        """`value` with every registered secret replaced, recursively through dicts, lists and
        tuples; other objects become their redacted ``str``."""
        if isinstance(value, str):
            pattern = self._compiled()
            return value if pattern is None else pattern.sub(REDACTED, value)
        if isinstance(value, dict):
            return {self.redact(str(k)): self.redact(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact(v) for v in value]
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return self.redact(str(value))

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record's message, fields and traceback text in place (once per record); always
        keeps the record."""
        if not self.secrets or getattr(record, "redacted", False):
            return True
        record.msg = self.redact(record.getMessage())
        record.args = None
        if isinstance(fields := getattr(record, "fields", None), dict):
            record.__dict__["fields"] = self.redact(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        record.redacted = True
        return True


class _Context(logging.Filter):
    """Adds fixed fields to every record, after the record's own."""

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__["fields"] = {**_fields(record), **self.fields}
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
    """``<ts>\\t<LEVEL>\\t<message>[\\t<fields as JSON>]``, then any traceback.

    With ``journald``, ``<N>`` (the syslog priority) instead of ``<ts>``, on every line.
    """

    def __init__(self, *, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        """One line (with the traceback, if any, on the lines after): timestamp unless journald,
        level, message, then the fields as JSON; with journald, a priority prefix on every line."""
        parts = [record.levelname, printable(record.getMessage())]
        if not self.journald:
            parts.insert(0, _timestamp(record))
        if fields := _fields(record):
            parts.append(printable(json.dumps(fields, default=str, ensure_ascii=False)))
        text = "\t".join(parts)
        if exc := _exception_text(self, record):
            text += "\n" + exc
        if self.journald:
            prefix = f"<{syslog_priority(record.levelno)}>"
            text = "\n".join(prefix + line for line in text.split("\n"))
        return text


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, then the fields (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON object on one line."""
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
        text = json.dumps(entry, default=str, ensure_ascii=False)
        if text.isprintable():
            return text
        # JSON escapes C0 controls itself; the others (C1, line separators...) as \uXXXX too.
        return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)
