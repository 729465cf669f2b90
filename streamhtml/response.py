"""The HTTP/1 response every request of StreamingWorker is answered with (streamhtml/worker.py
has gunicorn build it, through `wsgi.create`).

It is gunicorn's own Response, sending differently: no send waits more than
STREAMHTML_STALL_TIMEOUT_S for the client to accept a byte, none goes past a stream's
deadline, and framing goes out with the block in one sendmsg() without copying it. A body
whose items are all ready at once (`environ.mark_coalescable`) is sent in writes of about
SEND_BYTES instead of one send per item; every item is still its own HTTP chunk. On the
worker's main loop nothing waits: a send the socket cannot take raises WouldBlock, with the
rest still queued, and a pool thread carries on from there. A file body (the worker's
`wsgi.file_wrapper`, streamhtml/sendfile.py) goes out with os.sendfile, under the same
timeouts, from a pool thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import ssl
import struct
import time
import weakref
from collections.abc import Callable, Iterator
from functools import partial
from typing import NoReturn

from gunicorn import util
from gunicorn.http import wsgi

from . import environ as env
from .outcomes import COMPLETE, DEADLINE, ERROR, STALLED
from .sendfile import file_range

SEND_BYTES = 64 * 1024
# Items this large are sent from where they are, not copied next to their framing.
ZERO_COPY_BYTES = 16 * 1024
# sendmsg() takes at most IOV_MAX (1024 on Linux) buffers; each chunk is three.
MAX_PARTS = 1020
# os.sendfile() moves at most about 2 GiB a call on Linux.
SENDFILE_MAX_BYTES = 1 << 30

_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets and frees at once
_CHUNK_END = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"

# Response fields gunicorn's checks passed unchanged, by (name, value). Most fields repeat on
# every response (the stream headers, the content types), and each check is two regular
# expressions, a lower() and a hop-by-hop lookup. Bounded: request ids and timings differ every
# time, and past this many the rest are checked every time, as before.
MAX_PASSED_FIELDS = 256
_passed_fields: dict[tuple[str, str], None] = {}


# Each chunk's size line, by size: a body repeats a few sizes, and formatting one took 120 ns,
# a tenth of what queueing a 512-byte chunk costs. Bounded: past it, sizes are formatted anew.
MAX_CHUNK_HEADS = 4096
_chunk_heads: dict[int, bytes] = {}


def _chunk_head(size: int) -> bytes:
    head = b"%X\r\n" % size
    if len(_chunk_heads) < MAX_CHUNK_HEADS:
        _chunk_heads[size] = head
    return head


class ResponseCut(BrokenPipeError):
    """We ended the response ourselves; gthread treats it as the broken pipe it becomes."""


class WouldBlock(Exception):  # noqa: N818 - a condition, not an error
    """On the main loop, the socket took less than was queued; the rest is still queued."""


# Sockets we set to reset on close (StreamingResponse._cut), until they are closed: asking
# the socket instead costs a getsockopt() for every connection that ends.
# Weak, so a socket closed by any other path is not kept.
reset_on_close: weakref.WeakSet[socket.socket] = weakref.WeakSet()


class StreamingResponse(wsgi.Response):
    """gunicorn's HTTP/1 response, sent with a stall timeout, a deadline and few copies.

    Small items are gathered into a bytearray with their framing; an item of ZERO_COPY_BYTES
    or more goes out as it is, a view between its framing, in the same sendmsg().
    """

    stall_timeout_s: float = 60.0
    headers_sent: bool
    sent: int

    def __init__(self, req, sock, cfg):
        super().__init__(req, sock, cfg)
        self.environ: env.Environ = {}
        self._coalesce: bool | None = None
        self._timeout_s: float | None = None
        # An answer that is not a stream: when its sends must be over (answers.WaitingAnswers).
        self.answer_deadline: float | None = None
        # On the main loop: sends never wait, and a send that would raises WouldBlock.
        self.inline = False
        self._reset()

    def _reset(self) -> None:
        self._tail = bytearray()
        self._parts: list = [self._tail]
        self._items: list[int] = []  # body size of each queued item, in order
        self._lead = 0  # bytes of response head queued before the first item
        self._pending_body = 0
        self._handed = 0  # bytes of the queue the socket took before a WouldBlock

    def write(self, arg) -> None:
        self.write_items((arg,))

    # gunicorn's write(), for each item of a body in one loop, taking any buffer (a memoryview
    # of a shared block, say) and counting a byte as sent only once the socket took it.
    def write_items(self, items) -> None:
        chunked = self.chunked
        for item in items:
            if not self.headers_sent:
                self.send_headers()
            if self._omits_body:
                continue
            size = len(item)
            if self.response_length is not None:
                room = self.response_length - self.sent - self._pending_body
                if room <= 0:
                    continue
                if size > room:
                    item, size = memoryview(item)[:room], room
            if size == 0:
                continue  # an empty chunk would end a chunked body
            tail = self._tail
            if chunked:
                head = _chunk_heads.get(size)
                tail += _chunk_head(size) if head is None else head
            if size < ZERO_COPY_BYTES:
                tail += item
            else:
                self._tail = tail = bytearray()
                self._parts += (item, tail)
            if chunked:
                tail += _CHUNK_END
            self._items.append(size)
            self._pending_body += size
            if self._coalesce is None:
                self._coalesce = env.coalescable(self.environ)
            if (
                not self._coalesce
                or self._pending_body >= SEND_BYTES
                or len(self._parts) > MAX_PARTS
            ):
                self.flush()

    def process_headers(self, headers) -> None:
        passed = _passed_fields
        for field in headers:
            if type(field) is tuple and field in passed:
                self.headers.append(field)
                continue
            held = len(self.headers)
            super().process_headers((field,))
            # A Content-Length also sets response_length: it is checked every time.
            if (
                len(self.headers) == held + 1
                and self.headers[-1] == field
                and type(field) is tuple
                and field[0].lower() != "content-length"
                and len(passed) < MAX_PASSED_FIELDS
            ):
                passed[field] = None

    def send_headers(self) -> None:
        # Queued, not sent: they leave with the first body bytes, in the same write.
        if self.headers_sent:
            return
        lines = self.default_headers()
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        head = util.to_bytestring("".join(lines) + "\r\n", "latin-1")
        self._tail += head
        self._lead += len(head)
        self.headers_sent = True

    def sendfile(self, respiter) -> bool:
        """Send a file body (streamhtml/sendfile.py) from the page cache with os.sendfile,
        under the same stall timeout and deadline as any write; False when `respiter` is not
        one, and the caller writes it item by item."""
        found = file_range(respiter, self.response_length)
        if found is None:
            return False
        if self.inline:
            # A file read may wait for the disk, and a large one for the client: a pool
            # thread sends it (raised before anything is queued, so it starts afresh there).
            raise WouldBlock
        if self._omits_body:
            self.send_headers()
            self.flush()
            return True
        head = b"%X\r\n" % found.length if self.chunked and found.length else b""
        self.send_headers()
        self._tail += head
        self.flush()  # the head, under the stall timeout
        if isinstance(self.sock, ssl.SSLSocket):
            self.write_items(_read_range(found))  # TLS in gunicorn: no sendfile
        else:
            self._sendfile_waiting(found.fd, found.offset, found.length)
        if head:
            self._tail += _CHUNK_END
        stream = env.stream_of(self.environ)
        if stream is not None:
            # The stream was never iterated, which is where a stream learns it ended whole.
            stream.outcome = COMPLETE
        return True

    def _sendfile_waiting(self, fd: int, offset: int, count: int) -> None:
        """os.sendfile on the socket, non-blocking, polling between sends: none waits more than
        the stall timeout for the client, nor past the stream's deadline; `sent` counts as the
        socket takes bytes, so a cut or a hang-up leaves it right."""
        stream = env.stream_of(self.environ)
        deadline = stream.deadline if stream is not None else None
        sock = self.sock
        if not self._timeout_s:
            # Any timeout makes Python keep the descriptor non-blocking, as sendfile needs.
            sock.settimeout(self.stall_timeout_s)
            self._timeout_s = self.stall_timeout_s
        out = sock.fileno()
        writable = select.poll()
        writable.register(out, select.POLLOUT)
        end = offset + count
        while offset < end:
            if deadline is not None and time.monotonic() >= deadline:
                self._cut(DEADLINE)
            try:
                sent = os.sendfile(out, fd, offset, min(end - offset, SENDFILE_MAX_BYTES))
            except BlockingIOError:
                wait_s = self.stall_timeout_s
                if deadline is not None:
                    wait_s = min(wait_s, max(0.0, deadline - time.monotonic()))
                if not writable.poll(wait_s * 1000.0):
                    late = deadline is not None and time.monotonic() >= deadline
                    self._cut(DEADLINE if late else STALLED)
                continue
            if not sent:
                # The file shrank under us: the promised length cannot be kept.
                self._cut(ERROR)
            offset += sent
            self.sent += sent

    def close(self) -> None:
        self.send_headers()
        if self.chunked:
            self._tail += _LAST_CHUNK
        self.flush()

    def flush(self) -> None:
        parts = [part for part in self._parts if part]
        if not parts:
            return
        if self.inline:
            self._send_all(parts, self._send_now)
            return
        stream = env.stream_of(self.environ)
        deadline = self.answer_deadline
        if stream is not None:
            if deadline is None or stream.deadline < deadline:
                deadline = stream.deadline
            stream.give_back_turn()
        self._send_all(parts, partial(self._send_waiting, deadline))

    def _send_all(self, parts: list, send: Callable[[list], int]) -> None:
        """Hand `parts` to the socket through `send`, counting body bytes as sent once taken.
        When `send` takes nothing (on the main loop: the socket is full), the rest stays
        queued and WouldBlock is raised."""
        handed = self._handed
        try:
            while parts:
                sent = send(parts)
                if not sent:
                    # A fresh tail: the queue may hold a view of the old one, which must not
                    # grow while it is exported.
                    self._tail = bytearray()
                    self._parts = [*parts, self._tail]
                    self._handed = handed
                    raise WouldBlock
                handed += sent
                parts = _advance(parts, sent)
        except WouldBlock:
            raise
        except BaseException:
            self.sent += self._body_within(handed)
            self._reset()
            raise
        self.sent += self._pending_body
        self._reset()

    def _send_waiting(self, deadline: float | None, parts: list) -> int:
        """One sendmsg that waits no longer than the stall timeout, nor past the deadline."""
        wait_s = self.stall_timeout_s
        if deadline is not None:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                self._cut(DEADLINE)
            wait_s = min(wait_s, left_s)
        if wait_s != self._timeout_s:
            self.sock.settimeout(wait_s)
            self._timeout_s = wait_s
        try:
            return self.sock.sendmsg(parts)
        except TimeoutError:
            late = deadline is not None and time.monotonic() >= deadline
            self._cut(DEADLINE if late else STALLED)

    def _send_now(self, parts: list) -> int:
        """One sendmsg that never waits: 0 when the socket takes nothing."""
        try:
            return self.sock.sendmsg(parts, (), socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return 0

    def _body_within(self, handed: int) -> int:
        """How many body bytes are in the first `handed` bytes of what was queued."""
        handed -= self._lead
        body = 0
        for size in self._items:
            if handed <= 0:
                break
            if self.chunked:
                handed -= len(b"%X\r\n" % size)
            body += max(0, min(size, handed))
            handed -= size + (len(_CHUNK_END) if self.chunked else 0)
        return body

    def _cut(self, outcome: str) -> NoReturn:
        stream = env.stream_of(self.environ)
        if stream is not None:
            stream.cut(outcome)
        else:
            env.mark_cut(self.environ, outcome)
        # Reset rather than close politely: a client that took nothing for so long would
        # otherwise pin the unsent bytes in the kernel for minutes.
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
            reset_on_close.add(self.sock)
        raise ResponseCut(errno.EPIPE, f"response cut: {outcome}")


def _read_range(found) -> Iterator[bytes]:
    offset, end = found.offset, found.offset + found.length
    while offset < end:
        data = os.pread(found.fd, min(SEND_BYTES, end - offset), offset)
        if not data:
            return
        offset += len(data)
        yield data


def _advance(parts: list, sent: int) -> list:
    """What is left of `parts` once the socket took `sent` bytes from their front."""
    for index, part in enumerate(parts):
        if sent < len(part):
            return [memoryview(part)[sent:], *parts[index + 1 :]]
        sent -= len(part)
    return []
