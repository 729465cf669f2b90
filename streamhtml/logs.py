"""Logging for gunicorn and the app: one line per request, as JSON (default) or plain text.

gunicorn's error log, its access log and the app's own records share one shape, so a log
parser (Cloud Foundry's `cf register-log-format APP json`) reads them all.
"""

from gunicorn import glogging

from . import metrics
from .live import STREAM_ENVIRON_KEY, LiveStream
from .observe import CLIENT_GONE, COMPLETE, REQUEST_ID_HEADER
from .settings import load_settings

TEXT_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"


def logconfig_dict(log_format: str, level: str) -> dict:
    """gunicorn's `logconfig_dict`: every logger to stdout, where Loggregator collects it."""
    if log_format == "json":
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FORMAT,
            "rename_fields": {
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "process": "pid",
            },
        }
    else:
        formatter = {"format": TEXT_FORMAT}
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stdout"}
    logger = {"handlers": ["stdout"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {"stdout": handler},
        "root": {"level": "WARNING", "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {**logger, "level": level.upper()},
            "gunicorn.access": {**logger, "level": "INFO"},
            "streamhtml": {**logger, "level": level.upper()},
        },
    }


def _header(headers, name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers:
        if key.lower() == lowered:
            return value
    return None


def _outcome(resp, environ) -> str:
    stream = environ.get(STREAM_ENVIRON_KEY)
    if isinstance(stream, LiveStream):
        return stream.settled_outcome()
    if resp.response_length is not None and resp.sent < resp.response_length:
        return CLIENT_GONE
    return COMPLETE


class RequestLogger(glogging.Logger):
    """gunicorn's logger, with its access line made the one structured record per request.

    It is also the one hook every request passes through with its final status, bytes and
    outcome, so it feeds the request metrics too.
    """

    def setup(self, cfg):
        super().setup(cfg)
        self.instance_index = load_settings().instance.instance_index

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        fields = {
            "request_id": _header(resp.headers, REQUEST_ID_HEADER)
            or environ.get("HTTP_X_VCAP_REQUEST_ID"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "query": environ.get("QUERY_STRING") or None,
            "status": resp.status_code,
            "bytes_sent": resp.sent,
            "duration_ms": round(request_time.total_seconds() * 1000.0, 1),
            "outcome": _outcome(resp, environ),
            "remote_addr": environ.get("HTTP_X_FORWARDED_FOR") or environ.get("REMOTE_ADDR"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "instance_index": self.instance_index,
        }
        try:
            metrics.observe_request(fields)
            self.access_log.info(
                "%s %s%s %s %d bytes %.1f ms %s",
                fields["method"],
                fields["path"],
                f"?{fields['query']}" if fields["query"] else "",
                fields["status"],
                fields["bytes_sent"],
                fields["duration_ms"],
                fields["outcome"],
                extra=fields,
            )
        except Exception:
            self.exception("could not log a request")
