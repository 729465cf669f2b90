"""Answers that are not streams, bounded as streams are: how many may wait for clients that do
not take them and for how long, /health never behind them, and what the kernel holds of the
answers that idle clients left unread, counted against the memory budget.

A page, a JSON answer or a file is made at once; only its send may wait. A client that asks
for answers and never reads them (1,500 connections pipelining 40 `GET /` each) used to pin a
pool thread per connection for the stall timeout's minute and a full send buffer per idle
connection until its keep-alive ran out: /health queued behind a thousand blocked threads,
and socket buffers filled the memory quota.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable

# Request heads the worker answers on its main loop whatever its pool holds: Cloud Foundry's
# health check must never queue behind answers or streams waiting on pool threads.
_HEALTH_HEADS = (b"GET /health ", b"GET /health?", b"HEAD /health ", b"HEAD /health?")
# Unread answers may hold at most this share of the memory budget (1/4), and never the part
# streams hold: they belong to clients that are not reading, streams to clients that are.
UNREAD_SHARE = 4
# The kernel charges a socket more than the bytes it queues (SO_SNDBUF is doubled for it).
KERNEL_BYTES_PER_BYTE = 2
# A connection holding this much unread (as charged) has answers backed up: its next answer
# would wait for the client as one the socket cannot take does, and needs a place to wait.
BACKLOG_BYTES = 32 * 1024
_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets and frees at once


def is_health(head: bytes) -> bool:
    return head.startswith(_HEALTH_HEADS)


class WaitingAnswers:
    """The answers of one worker that wait on pool threads for their clients, capped."""

    def __init__(self, most: int, timeout_s: float):
        self.most = most
        self.timeout_s = timeout_s
        self.count = 0
        self._lock = threading.Lock()

    def take(self, resp, rest: Callable[[], object]) -> Callable[[], object] | None:
        """`rest` of an answer the socket could not take whole, to run where it may wait:
        holding a place, within the answer deadline. None when every place is taken: the
        answer's deadline is then already over, and its first send cuts it."""
        with self._lock:
            if self.count >= self.most:
                resp.answer_deadline = 0.0
                return None
            self.count += 1
        resp.answer_deadline = time.monotonic() + self.timeout_s

        def rest_then_free() -> object:
            try:
                return rest()
            finally:
                with self._lock:
                    self.count -= 1

        return rest_then_free

    def full(self) -> bool:
        return self.count >= self.most


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes the kernel still holds to send on `sock` (SIOCOUTQ); 0 once it is closed."""
    fd = sock.fileno()
    if fd < 0:
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return 0


def reset(sock: socket.socket) -> None:
    """Close `sock` so that the kernel drops what it still held to send."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
    with contextlib.suppress(OSError):
        sock.close()


class UnreadAnswers:
    """The connections of one worker whose clients left answers unread, with what the kernel
    holds for each, and which of them are idle (kept alive, no request being served), oldest
    first; the total is published for the instance's memory budget (capacity)."""

    def __init__(self, publish: Callable[[int], None]):
        self.held: dict[object, int] = {}
        self.idle: dict[object, None] = {}
        self.held_bytes = 0
        self._publish = publish

    def note(self, conn, idle: bool = False) -> int:
        """Measure a connection; what it holds (0: nothing unread, and it is forgotten)."""
        held = unsent_bytes(conn.sock) * KERNEL_BYTES_PER_BYTE
        self.held_bytes += held - self.held.pop(conn, 0)
        self.idle.pop(conn, None)
        if held:
            self.held[conn] = held
            if idle:
                self.idle[conn] = None
        self._publish(self.held_bytes)
        return held

    def busy(self, conn) -> None:
        """`conn` is being served: it is no longer idle, and no longer to be evicted."""
        self.idle.pop(conn, None)

    def forget(self, conn) -> None:
        self.idle.pop(conn, None)
        before = self.held.pop(conn, None)
        if before is not None:
            self.held_bytes -= before
            self._publish(self.held_bytes)

    def sweep(self) -> None:
        """Measure every connection again: clients read, or left, since."""
        for conn in list(self.held):
            self.note(conn, conn in self.idle)

    def oldest_idle(self):
        return next(iter(self.idle), None)
