"""What the app and its gunicorn worker tell each other through the WSGI environ.

The worker (streamhtml/worker.py) puts the client's socket and the moment it saw the request
in; the routes mark how a body may be sent and attach the live stream; the request record
(streamhtml/observe.py) reads them back. Every key is read and written here, nowhere else.
"""

from __future__ import annotations

import re
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stream import LiveStream

Environ = dict[str, Any]

_SOCKET = "gunicorn.socket"
_STREAM = "streamhtml.stream"
_COALESCE = "streamhtml.coalesce"
_BRIEF = "streamhtml.brief"
_SENDS_BUFFERS = "streamhtml.sends_buffers"
_RECEIVED_AT = "streamhtml.received_at_s"
_QUEUE_MS = "streamhtml.queue_ms"
_ROUTE = "streamhtml.route"
_REQUEST_ID = "streamhtml.request_id"
_CUT = "streamhtml.cut"
_ON_MAIN_LOOP = "streamhtml.on_main_loop"
_NEEDS_THREAD = "streamhtml.needs_thread"
_BODY = "streamhtml.body"

# X-Request-Start as routers write it: gorouter in milliseconds since the epoch; others in
# seconds or microseconds, with or without a fraction, sometimes behind "t=".
_REQUEST_START = re.compile(r"(?:t=)?([0-9]{1,16})(?:\.([0-9]{1,6}))?")
# A stamp this far from our clock is a broken clock or a forged header, not a queue.
_QUEUE_SANE_MS = (-60_000.0, 3_600_000.0)


def client_socket(environ: Environ) -> socket.socket | None:
    """The client's connection, when the server exposes it (gunicorn does)."""
    return environ.get(_SOCKET)


def mark_received(environ: Environ, received_at_s: float) -> None:
    """Worker: the wall-clock moment the whole request head was in."""
    environ[_RECEIVED_AT] = received_at_s


def received_at(environ: Environ) -> float | None:
    return environ.get(_RECEIVED_AT)


def mark_body(environ: Environ, take_buffered, expects_continue: bool) -> None:
    """Worker: the request has a body; `take_buffered()` returns (once) the bytes of it that
    arrived with the head, and `expects_continue` says the client waits for a 100 Continue,
    which the route that reads the body sends (streamhtml/uploads.py), and no other."""
    environ[_BODY] = (take_buffered, expects_continue)


def body_of(environ: Environ) -> tuple | None:
    """(take_buffered, expects_continue) for a request with a body, else None."""
    return environ.get(_BODY)


def mark_sends_buffers(environ: Environ) -> None:
    """Worker: body items may be any buffer (memoryview), not only bytes."""
    environ[_SENDS_BUFFERS] = True


def sends_buffers(environ: Environ) -> bool:
    return environ.get(_SENDS_BUFFERS, False)


def mark_coalescable(environ: Environ) -> None:
    """Route: every item of this body is ready at once, so the worker may batch its sends."""
    environ[_COALESCE] = True


def coalescable(environ: Environ) -> bool:
    return environ.get(_COALESCE, False)


def mark_brief(environ: Environ) -> None:
    """Route: this live stream is made at once and is small (BRIEF_BYTES at most), so the
    worker may send it from its main loop, as it does every body that is not a live stream
    (those are in memory)."""
    environ[_BRIEF] = True


def brief(environ: Environ) -> bool:
    return environ.get(_BRIEF, False)


def mark_on_main_loop(environ: Environ) -> None:
    """Worker: this request is being answered on the worker's main loop, where nothing may
    wait."""
    environ[_ON_MAIN_LOOP] = True


def on_main_loop(environ: Environ) -> bool:
    return environ.get(_ON_MAIN_LOOP, False)


def mark_needs_thread(environ: Environ) -> None:
    """Route: this request waits on I/O; serve it again, whole, on a pool thread (its answer
    from the main loop is discarded unsent)."""
    environ[_NEEDS_THREAD] = True


def needs_thread(environ: Environ) -> bool:
    return environ.get(_NEEDS_THREAD, False)


def attach_stream(environ: Environ, stream: LiveStream) -> None:
    environ[_STREAM] = stream


def stream_of(environ: Environ) -> LiveStream | None:
    return environ.get(_STREAM)


def mark_route(environ: Environ, rule: str) -> None:
    """Route: the app's URL rule that matched (a bounded set, unlike the path)."""
    environ[_ROUTE] = rule


def route_of(environ: Environ) -> str | None:
    return environ.get(_ROUTE)


def mark_request_id(environ: Environ, request_id: str) -> None:
    """App: the id this request is answered and logged under."""
    environ[_REQUEST_ID] = request_id


def request_id_of(environ: Environ) -> str | None:
    return environ.get(_REQUEST_ID)


def mark_cut(environ: Environ, outcome: str) -> None:
    """Worker: the response was cut (stalled client, deadline) before its end."""
    environ[_CUT] = outcome


def cut_outcome(environ: Environ) -> str | None:
    return environ.get(_CUT)


def queue_ms(environ: Environ) -> float | None:
    """Milliseconds from the router's X-Request-Start to the app seeing the request, if sane."""
    if _QUEUE_MS not in environ:
        received_at_s = environ.get(_RECEIVED_AT) or time.time()
        environ[_QUEUE_MS] = parse_queue_ms(environ.get("HTTP_X_REQUEST_START"), received_at_s)
    return environ[_QUEUE_MS]


def parse_queue_ms(stamp: str | None, received_at_s: float) -> float | None:
    if not stamp:
        return None
    match = _REQUEST_START.fullmatch(stamp.strip())
    if not match:
        return None
    whole = int(match[1])
    fraction = float(f"0.{match[2]}") if match[2] else 0.0
    # Tell the unit by magnitude: 2001 onwards is 10 digits in seconds, 13 in ms, 16 in us.
    if whole < 10**11:
        started_ms = (whole + fraction) * 1000.0
    elif whole < 10**14:
        started_ms = whole + fraction
    else:
        started_ms = (whole + fraction) / 1000.0
    waited_ms = received_at_s * 1000.0 - started_ms
    if not _QUEUE_SANE_MS[0] <= waited_ms <= _QUEUE_SANE_MS[1]:
        return None
    return round(waited_ms, 1)
