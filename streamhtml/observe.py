"""Observability: request ids, the per-stream outcome record, and the app's log setup."""

import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator

log = logging.getLogger("streamhtml")

COMPLETE = "complete"
CLIENT_GONE = "client_gone"
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


class MeteredStream:
    """A WSGI body that counts what it hands out and records the outcome once, on close.

    The server calls close() after the last chunk, or after a write fails because the client
    left; either way the inner generator is closed so its cleanup runs and no more is made.
    `stopped_early` says why the inner generator ended before its natural end, if it did.
    """

    __slots__ = (
        "_chunks",
        "_record",
        "_stopped_early",
        "_started",
        "_closed",
        "bytes_sent",
        "outcome",
    )

    def __init__(
        self,
        chunks: Iterator[bytes],
        record: Callable[["MeteredStream", float], None],
        stopped_early: Callable[[], str | None] = lambda: None,
    ):
        self._chunks = chunks
        self._record = record
        self._stopped_early = stopped_early
        self._started = time.perf_counter()
        self._closed = False
        self.bytes_sent = 0
        self.outcome: str | None = None

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.outcome = self._stopped_early() or COMPLETE
            raise
        except Exception:
            self.outcome = ERROR
            raise
        self.bytes_sent += len(chunk)
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        close_inner = getattr(self._chunks, "close", None)
        if close_inner is not None:
            close_inner()
        if self.outcome is None:
            # Closed before the end: the server stopped iterating because a write failed.
            self.outcome = self._stopped_early() or CLIENT_GONE
        self._record(self, (time.perf_counter() - self._started) * 1000.0)


def log_stream_outcome(path: str, req_id: str, stream: MeteredStream, duration_ms: float) -> None:
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
