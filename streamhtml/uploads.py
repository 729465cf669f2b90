"""POST and PUT /upload: a request body read as it arrives, timed, and thrown away.

The body is read straight off the client's socket into one fixed buffer (constant memory
whatever its size), framed by Content-Length or chunked transfer coding, and every read is
timed from the moment the request head was whole. The answer says how the body arrived:
its bytes, its seconds, the wait for its first byte, and at most ARRIVALS_MOST
`[ms since the head, bytes so far]` pairs spread over it, from which the probe tells a body
passed through as it was sent from one a proxy held back and sent at once.

What a body may cost (SECURITY.md): a Content-Length over STREAMHTML_MAX_UPLOAD_BYTES is
refused with 413 before a byte is read (and before the 100 Continue a client may wait for);
a chunked body is cut with 413 as it passes it. Each read waits at most
STREAMHTML_BODY_STALL_TIMEOUT_S for a byte, and none past the stream's deadline; an upload
holds a stream slot, within STREAMHTML_MAX_UPLOADS, and is cut at shutdown like a stream.
The request runs on a pool thread (its route waits on I/O), never on the worker's main loop.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field

from flask import Blueprint, Response, current_app, request

from . import environ as env
from .outcomes import CLIENT_GONE, DEADLINE, STALLED
from .settings import Limits
from .stream import shut_socket
from .streaming import (
    UPLOADS,
    client_of,
    error_response,
    over_capacity,
    settings,
    stream_charge_bytes,
    stream_route,
    uncached_json,
)

routes = Blueprint("uploads", __name__)

# One read takes at most this much off the socket, into the one buffer an upload holds.
READ_BYTES = 128 * 1024
# The kernel's receive buffer of an upload's connection (it doubles what is set). Left to
# autotuning it grows to tcp_rmem's maximum, 6 MiB, for a fast sender: memory the platform
# counts against the instance's quota. At 256 KiB a loopback upload still runs at GB/s.
RECEIVE_BUFFER_BYTES = 256 * 1024
ARRIVALS_MOST = 100
# A chunk-size line (hex size and extensions) and a trailer section, at most.
MAX_CHUNK_LINE_BYTES = 4096
MAX_TRAILER_BYTES = 16 * 1024
_HEX = frozenset(b"0123456789abcdefABCDEF")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class BadBody(Exception):
    """The body's chunked framing is broken: a 400."""


class Cut(Exception):  # noqa: N818 - how the read ended, named by its cause
    """The read stopped before the body's end: `outcome` says why."""

    def __init__(self, outcome: str):
        super().__init__(outcome)
        self.outcome = outcome


class TooLarge(Exception):
    """A chunked body passed the limit."""


@dataclass
class Arrivals:
    """At most `most` points [ms, bytes so far], spread evenly over the reads: when full,
    every other point goes and only every other read from then on is kept. The last read
    is always the last point."""

    most: int = ARRIVALS_MOST
    points: list[list[float | int]] = field(default_factory=list)
    stride: int = 1
    reads: int = 0
    last: list[float | int] | None = None

    def note(self, at_ms: float, total: int) -> None:
        index = self.reads
        self.reads += 1
        self.last = [round(at_ms, 1), total]
        if index % self.stride:
            return
        if len(self.points) >= self.most:
            del self.points[1::2]
            self.stride *= 2
            if index % self.stride:
                return
        self.points.append(self.last)

    def as_list(self) -> list[list[float | int]]:
        points = list(self.points)
        if self.last is not None and (not points or points[-1] is not self.last):
            if len(points) >= self.most:
                points[-1] = self.last
            else:
                points.append(self.last)
        return points


class ChunkedBody:
    """RFC 9112 §7.1 chunked transfer coding, fed as it arrives: counts the data bytes,
    checks the framing, ignores extensions and trailers (within their bounds)."""

    def __init__(self) -> None:
        self.line = bytearray()  # a chunk-size line, a chunk's CRLF, or the trailers, so far
        self.left = 0  # data bytes of the current chunk still to come
        self.state = "size"
        self.done = False

    def feed(self, data: bytes | bytearray, end: int) -> int:
        """The data bytes in data[:end]; anything after the body's end is ignored. Lines are
        searched in `data` itself, never in a copy of what is left of it: a read full of tiny
        chunks costs one pass, not one copy per chunk."""
        counted, at = 0, 0
        while at < end and not self.done:
            if self.state == "data":
                take = min(self.left, end - at)
                counted += take
                self.left -= take
                at += take
                if not self.left:
                    self.state = "crlf"
            elif self.state == "crlf":
                piece = data[at : min(end, at + 2 - len(self.line))]
                self.line += piece
                at += len(piece)
                if len(self.line) == 2:
                    if self.line != b"\r\n":
                        raise BadBody("a chunk's data is not followed by CRLF")
                    self.line.clear()
                    self.state = "size"
            else:
                at = self._line(data, at, end)
        return counted

    def _line(self, data: bytes | bytearray, at: int, end: int) -> int:
        trailer = self.state == "trailer"
        newline = data.find(b"\n", at, end)
        stop = end if newline < 0 else newline + 1
        self.line += data[at:stop]
        bound = MAX_TRAILER_BYTES if trailer else MAX_CHUNK_LINE_BYTES
        if len(self.line) > bound:
            raise BadBody(f"a chunk-size line or the trailers are over {bound} bytes")
        if newline < 0:
            return end
        if not self.line.endswith(b"\r\n"):
            raise BadBody("a line of the chunked framing ends in a bare LF")
        if trailer:
            # The trailers end with an empty line: the section is just CRLF, or ends CRLFCRLF.
            if self.line == b"\r\n" or self.line.endswith(b"\r\n\r\n"):
                self.done = True
            return stop
        size = _chunk_size(bytes(self.line[:-2]))
        self.line.clear()
        if size:
            self.left, self.state = size, "data"
        else:
            self.state = "trailer"
        return stop


def _chunk_size(line: bytes) -> int:
    digits, semicolon, extensions = line.partition(b";")
    if semicolon:
        digits = digits.rstrip(b" \t")  # RFC 9112 allows whitespace before extensions only
    if not digits or len(digits) > 16 or not set(digits) <= _HEX:
        raise BadBody(f"a chunk size is not hexadecimal: {digits[:32]!r}")
    if any((byte < 0x20 and byte != 0x09) or byte == 0x7F for byte in extensions):
        raise BadBody("a chunk extension holds a control character")
    return int(digits, 16)


class Upload:
    """An upload in progress, as the capacity tracker counts and cuts it."""

    def __init__(self, sock: socket.socket | None, deadline: float):
        self.sock = sock
        self.deadline = deadline
        self.cut_by: str | None = None

    def cut(self, outcome: str) -> None:
        """From any thread (shutdown): the blocked read wakes to the shut socket."""
        if self.cut_by is None:
            self.cut_by = outcome
        shut_socket(self.sock)


@dataclass
class Received:
    bytes: int = 0
    first_byte_ms: float | None = None
    arrivals: Arrivals = field(default_factory=Arrivals)


def read_body(
    upload: Upload,
    sock: socket.socket,
    buffered: bytes,
    length: int | None,
    stall_s: float,
    most_bytes: int,
    head_at: float,
    received: Received,
) -> None:
    """Read the body (Content-Length `length`, or chunked when None) off `sock`, after the
    `buffered` bytes that came with the head, counting into `received`; raises Cut, BadBody
    or TooLarge when it stops short."""
    chunked = ChunkedBody() if length is None else None
    buffer = bytearray(READ_BYTES)
    left = length
    # Chunked framing is not counted as body, but it may not cost more than the body may.
    wire_most = 2 * most_bytes + MAX_TRAILER_BYTES
    wire = 0

    def take(data: bytes | bytearray, end: int, at_ms: float | None = None) -> bool:
        nonlocal left, wire
        if chunked is not None:
            wire += end
            count = chunked.feed(data, end)
        else:
            count = min(end, left or 0)
            left = (left or 0) - count
        now_ms = (time.monotonic() - head_at) * 1000.0 if at_ms is None else at_ms
        if count:
            if received.first_byte_ms is None:
                received.first_byte_ms = round(now_ms, 1)
            received.bytes += count
            received.arrivals.note(now_ms, received.bytes)
        if received.bytes > most_bytes or wire > wire_most:
            raise TooLarge()
        return chunked.done if chunked is not None else not left

    # What came in the head's own read arrived with it: at 0 ms, whenever it is counted.
    if buffered and take(buffered, len(buffered), 0.0):
        return
    if length == 0:
        return
    timeout_s: float | None = None
    while True:
        wait_s = min(stall_s, upload.deadline - time.monotonic())
        if wait_s <= 0:
            raise Cut(DEADLINE)
        if wait_s != timeout_s:
            sock.settimeout(wait_s)
            timeout_s = wait_s
        try:
            count = sock.recv_into(buffer, READ_BYTES if left is None else min(READ_BYTES, left))
        except TimeoutError:
            raise Cut(DEADLINE if time.monotonic() >= upload.deadline else STALLED) from None
        except OSError:
            count = 0
        if not count:
            raise Cut(upload.cut_by or CLIENT_GONE)
        if take(buffer, count):
            return


# The answer, 100 arrivals and all, is a few KiB: what its socket may be asked to hold.
ANSWER_MOST_BYTES = 8192


def upload_cost_bytes(limits: Limits) -> int:
    """What an upload holds: a stream's thread and the socket room for its answer, its read
    buffer, and its kernel receive buffer (doubled by the kernel)."""
    held = READ_BYTES + 2 * RECEIVE_BUFFER_BYTES
    return stream_charge_bytes(limits, held, ANSWER_MOST_BYTES, items=1)


def body_framing() -> int | None:
    """The body's Content-Length, or None when it is chunked (gunicorn has refused every
    other framing, and both at once, before the app sees the request)."""
    environ = request.environ
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return None
    return int(environ.get("CONTENT_LENGTH") or 0)


@stream_route(
    routes, "/upload", "application/json", waits_on_io=True, cap=UPLOADS, methods=("POST", "PUT")
)
def upload():
    limits = settings().limits
    environ = request.environ
    length = body_framing()
    most = limits.max_upload_bytes
    if length is not None and length > most:
        return too_large(length)
    sock = env.client_socket(environ)
    take_buffered, expects_continue = env.body_of(environ) or (bytes, False)
    if sock is None:
        return error_response(501, "not implemented", "this server does not expose its socket")
    head_at = time.monotonic() - max(0.0, time.time() - (env.received_at(environ) or time.time()))
    current = Upload(sock, time.monotonic() + limits.max_stream_duration_s)
    tracker = current_app.extensions["streamhtml.tracker"]
    refused = tracker.admit(
        current, "/upload", upload_cost_bytes(limits), client_of(environ, tracker)
    )
    if refused:
        return over_capacity(refused, "/upload")
    received = Received()
    started = time.monotonic()
    previous_timeout = sock.gettimeout()
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        buffered = take_buffered()
        if expects_continue and not buffered:
            sock.settimeout(limits.body_stall_timeout_s)
            sock.sendall(CONTINUE)
        read_body(
            current,
            sock,
            buffered,
            length,
            limits.body_stall_timeout_s,
            most,
            head_at,
            received,
        )
    except TooLarge:
        return too_large(None)
    except BadBody as bad:
        return error_response(400, "invalid body", str(bad), bytes_received=received.bytes)
    except Cut as cut:
        return cut_short(cut.outcome, received, limits)
    except OSError:  # the 100 Continue could not be sent: the client is gone
        return cut_short(current.cut_by or CLIENT_GONE, received, limits)
    finally:
        tracker.release(current)
        with contextlib.suppress(OSError):
            sock.settimeout(previous_timeout)
    seconds = time.monotonic() - started
    return uncached_json(
        bytes=received.bytes,
        seconds=round(seconds, 3),
        first_byte_ms=received.first_byte_ms,
        arrivals=received.arrivals.as_list(),
        framing="content-length" if length is not None else "chunked",
    )


def too_large(length: int | None) -> Response:
    most = settings().limits.max_upload_bytes
    said = f"Content-Length {length} is" if length is not None else "the chunked body passed"
    return error_response(
        413,
        "Content Too Large",
        f"{said} over the {most} bytes an upload may send (STREAMHTML_MAX_UPLOAD_BYTES)",
    )


def cut_short(outcome: str, received: Received, limits: Limits) -> Response:
    env.mark_cut(request.environ, outcome)
    why = {
        STALLED: f"no byte of the body arrived for {limits.body_stall_timeout_s} s "
        "(STREAMHTML_BODY_STALL_TIMEOUT_S)",
        DEADLINE: f"the body was not whole within {limits.max_stream_duration_s} s "
        "(STREAMHTML_MAX_STREAM_DURATION_S)",
    }.get(outcome, "the body ended before its end")
    status = 408 if outcome in (STALLED, DEADLINE) else 400
    error = "Request Timeout" if status == 408 else "incomplete body"
    return error_response(status, error, why, bytes_received=received.bytes)
