"""One record per request, handed to every observer (the log line, the metrics).

gunicorn calls its logger's access() once per request it answered, its own 4xx for malformed
requests included, with the final status and byte count: streamhtml/logs.py builds the record
there, whatever the access-log setting, and hands it to the observers registered here.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
from collections.abc import Callable
from typing import NamedTuple

from gunicorn.http import message

from . import environ as env
from .outcomes import CLIENT_GONE, COMPLETE

log = logging.getLogger("streamhtml")

REQUEST_ID_HEADER = "X-Vcap-Request-Id"
# gorouter sends a UUID; anything else a client sends is replaced, never echoed, so a request
# cannot put its own text into our headers or logs.
_REQUEST_ID = re.compile(r"[0-9A-Za-z-]{8,64}")
# Methods are counted as one of these or "other", so invented methods cannot grow /metrics.
COUNTED_METHODS = ("GET", "HEAD")
# Free text from the client is cut to what takes at most this many bytes once written, in
# JSON or text: a character limit let JSON's escapes (6 bytes a non-ASCII character, 12 an
# astral one) turn 512 characters into 6 KiB. logs.MAX_REQUEST_LINE_BYTES is what a whole
# request line can then cost (SECURITY.md).
MAX_LOGGED_BYTES = 512
CLIP_MARK = "…"
_CLIP_MARK_BYTES = 6  # "\u2026" in JSON


class _Noted(threading.local):
    error: str | None = None  # a default, so reading it never raises inside getattr


_noted = _Noted()
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def process_id() -> int:
    """os.getpid(), without its syscall: asked several times for every request."""
    return _pid


def note_error(text: str | None) -> None:
    """Worker: the request being answered now failed to parse, for this reason."""
    _noted.error = text


def noted_error() -> str | None:
    return _noted.error


def request_id(incoming: str | None) -> str:
    if incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return new_request_id()


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def new_request_id() -> str:
    """A random (version 4) UUID, as str(uuid.uuid4()) writes it, from `random`'s generator
    (reseeded in each forked worker): uuid4() reads os.urandom, a syscall every request, and
    an id that labels a request guards nothing."""
    digits = "%032x" % (random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


# A NamedTuple, not a frozen dataclass: as immutable, and built in 0.6 µs instead of 2.4
# (a frozen dataclass sets each of its 16 fields through object.__setattr__), once a request.
class RequestRecord(NamedTuple):
    request_id: str
    method: str
    route: str | None  # the app's URL rule that matched, None when none did
    path: str
    query: str | None
    status: int
    bytes_sent: int
    duration_ms: float
    outcome: str
    streamed: bool  # the body was a live stream (streamhtml/stream.py)
    queue_ms: float | None
    error: str | None  # why gunicorn refused the request, for its own 4xx
    peer_addr: str | None
    forwarded_for: str | None
    forwarded_trusted: bool
    user_agent: str | None

    @property
    def method_label(self) -> str:
        return self.method if self.method in COUNTED_METHODS else "other"

    @property
    def route_label(self) -> str:
        return self.route or "other"


Observer = Callable[[RequestRecord], None]
_observers: dict[str, Observer] = {}


def watch(name: str, observer: Observer | None) -> None:
    """Hand every record to `observer` under `name` (None stops it); a reload replaces it."""
    if observer is None:
        _observers.pop(name, None)
    else:
        _observers[name] = observer


def publish(record: RequestRecord) -> None:
    for observer in tuple(_observers.values()):
        try:
            observer(record)
        except Exception:
            log.exception("request observer %r failed", observer)


def logged_bytes(char: str) -> int:
    """The most bytes one character takes in a log line: JSON's escape of it, or the text
    format's (a control character as `\\x0a`, anything else as UTF-8), whichever is longer."""
    if " " <= char <= "~":
        return 2 if char in '"\\' else 1
    return 12 if char > "\uffff" else 6


def clipped(text: str | None, most_bytes: int = MAX_LOGGED_BYTES) -> str | None:
    """`text`, cut (and marked) so it takes at most `most_bytes` in a log line."""
    if text is None:
        return None
    if len(text) * 12 <= most_bytes or (
        text.isascii()
        and text.isprintable()
        and len(text) + text.count('"') + text.count("\\") <= most_bytes
    ):
        return text
    room = most_bytes - _CLIP_MARK_BYTES
    taken = 0
    cut_at = 0
    for index, char in enumerate(text):
        taken += logged_bytes(char)
        if taken <= room:
            cut_at = index + 1
        elif taken > most_bytes:
            return text[:cut_at] + CLIP_MARK
    return text


def _status(resp) -> int:
    # gunicorn's own error responses (malformed requests) carry only the status line.
    code = getattr(resp, "status_code", None)
    if isinstance(code, int):
        return code
    try:
        return int(str(resp.status).split()[0])
    except (ValueError, IndexError):
        return 0


def _outcome(resp, environ: env.Environ, stream) -> str:
    if stream is not None:
        return stream.settled_outcome()
    cut = env.cut_outcome(environ)
    if cut is not None:
        return cut
    length = getattr(resp, "response_length", None)
    if length is not None and resp.sent < length:
        return CLIENT_GONE
    return COMPLETE


def _response_header(resp, name: str) -> str | None:
    lowered = name.lower()
    for key, value in getattr(resp, "headers", ()):
        if key.lower() == lowered:
            return value
    return None


class ForwardedTrust:
    """Whether a peer may speak for the client, judged as gunicorn's parser judges it (its
    forwarded_allow_ips check, which StreamingWorker remembers per address)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def trusts(self, peer: str | None) -> bool:
        cfg = self.cfg
        return message._ip_in_allow_list(
            peer or "", cfg.forwarded_allow_ips, cfg.forwarded_allow_networks()
        )


def build_record(
    resp, req, environ: env.Environ, duration_s: float, trust: ForwardedTrust
) -> RequestRecord:
    peer = environ.get("REMOTE_ADDR")
    error = noted_error()
    stream = env.stream_of(environ)
    # Why a stream's source failed mid-stream (a database error), on the request's own line.
    failure = stream.failure if stream is not None else None
    # gunicorn writes its own error answers whole, past the response object's count.
    bytes_sent = resp.sent if error is None else resp.response_length or 0
    return RequestRecord(
        request_id=env.request_id_of(environ)
        or _response_header(resp, REQUEST_ID_HEADER)
        or request_id(environ.get("HTTP_X_VCAP_REQUEST_ID")),
        method=clipped(environ.get("REQUEST_METHOD") or getattr(req, "method", None)) or "",
        route=env.route_of(environ),
        path=clipped(environ.get("PATH_INFO") or getattr(req, "path", None)) or "",
        query=clipped(environ.get("QUERY_STRING")) or None,
        status=_status(resp),
        bytes_sent=bytes_sent,
        duration_ms=round(duration_s * 1000.0, 1),
        outcome=_outcome(resp, environ, stream) if error is None else COMPLETE,
        streamed=stream is not None,
        queue_ms=env.queue_ms(environ),
        error=clipped(error or failure),
        peer_addr=peer,
        forwarded_for=clipped(environ.get("HTTP_X_FORWARDED_FOR")),
        forwarded_trusted=trust.trusts(peer),
        user_agent=clipped(environ.get("HTTP_USER_AGENT")),
    )


def refusal_record(peer: str | None, status: int, body_bytes: int, error: str) -> RequestRecord:
    """The record of a request the worker refused before the app saw it (a 431)."""
    return RequestRecord(
        request_id=new_request_id(),
        method="",
        route=None,
        path="",
        query=None,
        status=status,
        bytes_sent=body_bytes,
        duration_ms=0.0,
        outcome=COMPLETE,
        streamed=False,
        queue_ms=None,
        error=error,
        peer_addr=peer,
        forwarded_for=None,
        forwarded_trusted=False,
        user_agent=None,
    )
