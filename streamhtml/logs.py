"""Logs: gunicorn's records and the app's as JSON lines (or text), and one line per request.

Everything goes to stdout, where Cloud Foundry's Loggregator collects it, in one shape, so a
log parser (`cf register-log-format APP json`) reads every line. The request line is an
observer of the request record (streamhtml/observe.py), written without going through
`logging`; the metrics are another observer, so they count whether or not lines are written.
"""

from __future__ import annotations

import logging
import os
import re
import time
from json.encoder import encode_basestring_ascii
from typing import Any

from gunicorn import glogging

from . import metrics, observe
from .settings import load_settings

TEXT_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
JSON_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"}

# The most one request line can take, in bytes with its newline, JSON or text, whatever the
# client sent: each of its six fields of client text is clipped to observe.MAX_LOGGED_BYTES
# once written, the message to twice that, and every other field is the app's own (an id it
# checked, a number, a route, an address). tests/test_request_line.py holds it to this.
MAX_REQUEST_LINE_BYTES = 4608
MAX_MESSAGE_BYTES = 2 * observe.MAX_LOGGED_BYTES

# A path may carry %0a once decoded: in a text line it would start a forged line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda match: f"\\x{ord(match[0]):02x}", text)


class TextFormatter(logging.Formatter):
    """logging's plain format, with control characters in the message shown escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class DropInvalidRequestWarnings(logging.Filter):
    """gunicorn's warning for a request it could not parse: the access line says it already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Invalid request from ip=")


def logconfig_dict(log_format: str, level: str, worker_logs_errors: bool = True) -> dict:
    """gunicorn's `logconfig_dict`: every logger to stdout, where Loggregator collects it.

    With StreamingWorker, which writes one access line for every request gunicorn refused,
    gunicorn's own warning for it is dropped (`worker_logs_errors`).
    """
    formatter: dict[str, Any]
    if log_format == "json":
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FORMAT,
            "rename_fields": JSON_RENAMES,
        }
    else:
        formatter = {"()": TextFormatter, "fmt": TEXT_FORMAT}
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stdout"}
    logger = {"handlers": ["stdout"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "filters": {"invalid_requests": {"()": DropInvalidRequestWarnings}},
        "handlers": {"stdout": handler},
        "root": {"level": "WARNING", "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {
                **logger,
                "level": level.upper(),
                "filters": ["invalid_requests"] if worker_logs_errors else [],
            },
            "gunicorn.access": {**logger, "level": "INFO"},
            "streamhtml": {**logger, "level": level.upper()},
        },
    }


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, with its text


def log_time(now: float) -> str:
    """The time as logging's asctime writes it, so request lines sort with the others."""
    global _second
    whole = int(now)
    second = _second
    if second[0] != whole:  # formatted once a second, not once a request
        second = _second = (whole, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(whole)))
    return f"{second[1]},{int(now % 1 * 1000):03d}"


def summary(record: observe.RequestRecord) -> str:
    query = f"?{record.query}" if record.query else ""
    queue = f" queue {record.queue_ms:.1f} ms" if record.queue_ms is not None else ""
    if record.error:
        queue += f" ({record.error})"
    text = (
        f"{record.method or '-'} {record.path or '-'}{query} {record.status} "
        f"{record.bytes_sent} bytes "
        f"{record.duration_ms:.1f} ms {record.outcome}{queue}"
    )
    return observe.clipped(text, MAX_MESSAGE_BYTES) or ""


def _text(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def _number(value: float | None) -> str:
    return "null" if value is None else repr(value)


def json_line(record: observe.RequestRecord, when: str, pid: int, instance_index: str | None):
    """The request line, exactly as json.dumps writes the dict of its fields, in this order,
    made by hand from json's own string encoder: json.dumps builds an encoder every call."""
    return (
        f'{{"time": {_text(when)}, "level": "INFO", "logger": "gunicorn.access", "pid": {pid}, '
        f'"message": {_text(summary(record))}, "request_id": {_text(record.request_id)}, '
        f'"method": {_text(record.method)}, "route": {_text(record.route)}, '
        f'"path": {_text(record.path)}, "query": {_text(record.query)}, '
        f'"status": {record.status!r}, "bytes_sent": {record.bytes_sent!r}, '
        f'"duration_ms": {_number(record.duration_ms)}, "outcome": {_text(record.outcome)}, '
        f'"queue_ms": {_number(record.queue_ms)}, "error": {_text(record.error)}, '
        f'"peer_addr": {_text(record.peer_addr)}, '
        f'"forwarded_for": {_text(record.forwarded_for)}, '
        f'"forwarded_trusted": {"true" if record.forwarded_trusted else "false"}, '
        f'"user_agent": {_text(record.user_agent)}, "instance_index": {_text(instance_index)}}}'
    )


class RequestLine:
    """Writes the one line per request, JSON or text, straight to stdout in one write."""

    def __init__(self, log_format: str, instance_index: str | None, fd: int = 1):
        self.json = log_format == "json"
        self.instance_index = instance_index
        self.fd = fd

    def __call__(self, record: observe.RequestRecord) -> None:
        now = time.time()
        if self.json:
            line = json_line(record, log_time(now), observe.process_id(), self.instance_index)
        else:
            line = (
                f"{log_time(now)} [{observe.process_id()}] [INFO] gunicorn.access: "
                f"{escape_controls(summary(record))}"
            )
        os.write(self.fd, (line + "\n").encode("utf-8", "backslashreplace"))


class RequestLogger(glogging.Logger):
    """gunicorn's logger; its access() is the one hook every answered request passes."""

    def setup(self, cfg):
        super().setup(cfg)
        settings = load_settings()
        self.trust = observe.ForwardedTrust(cfg)
        observe.watch("metrics", metrics.observe_request)
        line = RequestLine(settings.server.log_format, settings.instance.instance_index)
        observe.watch("request line", line if settings.server.log_requests == "on" else None)

    def access(self, resp, req, environ, request_time):
        try:
            record = observe.build_record(
                resp, req, environ, request_time.total_seconds(), self.trust
            )
        except Exception:
            self.exception("could not make the record of a request")
            return
        observe.publish(record)
