# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0

import json
import logging
import os
import re
import sys

import pytest

from bridge.ops import logs

LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\t(?P<level>[A-Z]+)\t(?P<rest>.*)")


@pytest.fixture
def configured():
    """Restores the bridge and relay loggers after a test configured them."""
    saved = {
        name: (logger.handlers[:], logger.filters[:], logger.level, logger.propagate)
        for name in logs.LOGGERS
        for logger in [logging.getLogger(name)]
    }
    yield
    for name, (handlers, filters, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.filters[:] = handlers, filters
        logger.setLevel(level)
        logger.propagate = propagate


def lines(capsys):
    return capsys.readouterr().err.splitlines()


def test_text_format(configured, capsys):
    logs.configure("INFO")
    log = logging.getLogger("bridge.agent")
    log.info("Connecting to the relay", extra={"fields": {"address": "127.0.0.1:4000"}})
    log.info("Handling incoming proxy connections")
    log.debug("hidden")
    first, second = lines(capsys)
    assert first.split("\t")[1:] == [
        "INFO",
        "Connecting to the relay",
        '{"address": "127.0.0.1:4000"}',
    ]
    assert LINE.fullmatch(first)
    assert second.split("\t")[1:] == ["INFO", "Handling incoming proxy connections"]


def test_relay_logger_and_reconfigure(configured, capsys):
    logs.configure("debug")
    logs.configure("warning")  # replaces, does not add a second handler
    logging.getLogger("relay.serve").warning("Host not in allowed hosts list: %s", "db:5432")
    logging.getLogger("relay").info("hidden")
    (line,) = lines(capsys)
    assert LINE.fullmatch(line)["rest"] == "Host not in allowed hosts list: db:5432"


def test_json_format(configured, capsys):
    logs.configure("DEBUG", "json")
    log = logging.getLogger("bridge.agent")
    log.debug("Connection closed", extra={"fields": {"stream": 3, "bytes": 10, "event": "clobber"}})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    records = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    assert list(records[0]) == ["ts", "level", "logger", "event", "stream", "bytes"]
    assert records[0]["event"] == "Connection closed" and records[0]["level"] == "DEBUG"
    assert records[0]["logger"] == "bridge.agent" and records[0]["stream"] == 3
    assert records[1]["event"] == "failed" and "RuntimeError: boom" in records[1]["exc"]


@pytest.mark.parametrize("level", ["debug", "Info", "WARNING", "error"])
def test_levels(level):
    assert logs.parse_level(level) == level.upper()


@pytest.mark.parametrize("level", ["", "verbose", "CRITICAL", "10"])
def test_bad_level(level):
    with pytest.raises(ValueError, match="use one of DEBUG, INFO, WARNING, ERROR"):
        logs.parse_level(level)
    with pytest.raises(ValueError):
        logs.configure(level)


def test_bad_format():
    with pytest.raises(ValueError, match="text, json"):
        logs.configure("INFO", "yaml")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_registered_secret_is_redacted_everywhere(configured, capsys, fmt):
    secret = "Zm9vYmFyLXNlY3JldC12YWx1ZQ"
    logs.configure("DEBUG", fmt)
    logs.register_secret(secret)
    log = logging.getLogger("bridge.agent")
    log.debug("secret %s in args", secret)
    log.info(
        f"secret {secret} in message",
        extra={"fields": {"secret": secret, "nested": [{"k": secret}]}},
    )
    try:
        raise ValueError(f"bad {secret}")
    except ValueError:
        log.error("failed", exc_info=True)
    logging.getLogger("relay").warning(secret)
    err = capsys.readouterr().err
    assert secret not in err
    assert err.count(logs.REDACTED) == 6


def test_redaction_without_configure(configured, caplog):
    logs.register_secret("another-secret-value")
    with caplog.at_level(logging.DEBUG, logger="bridge"):
        logging.getLogger("bridge").warning("leak another-secret-value")
    assert "another-secret-value" not in caplog.text


@pytest.fixture
def journal(monkeypatch, tmp_path):
    """Called in the test (pytest sets its own stderr for the call): makes stderr a file and
    returns its path and an environment whose JOURNAL_STREAM names it."""
    path = tmp_path / "journal"
    with path.open("w", buffering=1) as stream:

        def redirect():
            monkeypatch.setattr(sys, "stderr", stream)
            stat = os.fstat(stream.fileno())
            return path, {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}

        yield redirect


def test_journald_text_has_priorities_and_no_timestamp(configured, journal):
    path, env = journal()
    logs.configure("DEBUG", "text", env)
    log = logging.getLogger("relay.relay")
    log.debug("debug")
    log.info("Bridge connected", extra={"fields": {"bridge": "prod"}})
    log.warning("warning")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("error")
    log.critical("critical")
    lines = path.read_text().splitlines()
    assert lines[:4] == [
        "<7>DEBUG\tdebug",
        '<6>INFO\tBridge connected\t{"bridge": "prod"}',
        "<4>WARNING\twarning",
        "<3>ERROR\terror",
    ]
    assert lines[-1] == "<2>CRITICAL\tcritical"
    traceback = lines[4:-1]
    assert traceback[0] == "<3>Traceback (most recent call last):"
    assert traceback[-1] == "<3>RuntimeError: boom"
    assert all(line.startswith("<3>") for line in traceback)


@pytest.mark.parametrize("value", ["8:12345", "", "garbage", "1:2:3"])
def test_journal_stream_naming_another_stream_is_ignored(configured, journal, value):
    path, _ = journal()
    logs.configure("INFO", "text", {"JOURNAL_STREAM": value})
    logging.getLogger("bridge").info("plain")
    assert LINE.fullmatch(path.read_text().rstrip("\n"))


def test_journald_json_is_unchanged(configured, journal):
    path, env = journal()
    logs.configure("INFO", "json", env)
    logging.getLogger("bridge.agent").warning("Refused", extra={"fields": {"stream": 1}})
    record = json.loads(path.read_text())
    assert list(record) == ["ts", "level", "logger", "event", "stream"]


def test_configure_reads_os_environ_by_default(configured, journal, monkeypatch):
    path, env = journal()
    monkeypatch.setenv("JOURNAL_STREAM", env["JOURNAL_STREAM"])
    logs.configure("INFO")
    logging.getLogger("bridge").info("journald")
    assert path.read_text() == "<6>INFO\tjournald\n"


def test_no_journal_without_a_file_descriptor(capsys):
    assert not logs.writes_to_journal(sys.stderr, {"JOURNAL_STREAM": "8:12345"})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:4000 port 10 id 0db4-0", "127.0.0.1:4000 port 10 id 0db4-0"),
        ("secret=0, then 0.", "secret=[REDACTED], then [REDACTED]."),
        ('{"password": "0"}', '{"password": "[REDACTED]"}'),
        ("http://user:0@proxy:3128", "http://user:[REDACTED]@proxy:3128"),
    ],
)
def test_redaction_replaces_whole_values_only(text, expected):
    redactor = logs.SecretRedactor()
    redactor.secrets.add("0")
    assert redactor.redact(text) == expected
