"""Observability: request ids, the per-stream outcome record, and the app's log setup."""

import logging
import re
import sys
import uuid

log = logging.getLogger("streamhtml")

# How a stream ended: every stream logs exactly one of these.
COMPLETE = "complete"
CLIENT_GONE = "client_gone"
SHUTDOWN = "cut_by_shutdown"
ERROR = "error"

REQUEST_ID_HEADER = "X-Vcap-Request-Id"
# gorouter sends a UUID; anything else a client sends is replaced, never echoed, so a request
# cannot put its own text into our headers or logs.
_REQUEST_ID = re.compile(r"[0-9A-Za-z-]{8,64}")


def request_id(incoming: str | None) -> str:
    if incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return str(uuid.uuid4())


def configure_logging(level: str) -> None:
    """Send the app's records to stdout, where Cloud Foundry's Loggregator collects them."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(
            logging.Formatter("%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
        )
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level.upper())


def log_stream_outcome(path: str, req_id: str, stream, duration_ms: float) -> None:
    log.info(
        "stream path=%s outcome=%s bytes=%d duration_ms=%.1f request_id=%s",
        path,
        stream.outcome,
        stream.bytes_sent,
        duration_ms,
        req_id,
        extra={
            "path": path,
            "outcome": stream.outcome,
            "bytes_sent": stream.bytes_sent,
            "duration_ms": round(duration_ms, 1),
            "request_id": req_id,
        },
    )
