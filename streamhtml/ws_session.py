"""One WebSocket connection's loop on wsproto: what streamhtml/websockets.py runs once the
handshake is answered. Kept apart so wsproto and h11 (about 16 ms of a worker's start, a
twentieth of it) are imported by the first WebSocket, not by every worker as it starts."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    TextMessage,
)

from .outcomes import (
    CLIENT_GONE,
    COMPLETE,
    DEADLINE,
    PROTOCOL_ERROR,
    STALLED,
    TOO_BIG,
)
from .settings import Limits
from .stream import shut_socket

READ_BYTES = 64 * 1024
# After our close frame, how long the client may take to send its own before we hang up.
CLOSE_WAIT_S = 1.0
NORMAL, GOING_AWAY, POLICY, MESSAGE_TOO_BIG = 1000, 1001, 1008, 1009


class Session:
    """One WebSocket connection: counted by the capacity tracker, cut at shutdown."""

    def __init__(self, sock: socket.socket, limits: Limits):
        self.sock = sock
        self.conn = Connection(ConnectionType.SERVER)
        self.deadline = time.monotonic() + limits.max_stream_duration_s
        self.stall_s = float(limits.stall_timeout_s)
        self.ping_every_s = float(limits.ws_ping_interval_s)
        self.max_message_bytes = limits.ws_max_message_bytes
        self.cut_by: str | None = None
        self.sending = False
        self.sent_at = time.monotonic()
        self.ping_sent_at: float | None = None  # an unanswered ping's
        self.message_bytes = 0  # of the message coming in
        self.bytes_sent = 0
        self.close_code: int | None = None

    def closed_normally(self) -> bool:
        return self.close_code in (None, NORMAL)

    def cut(self, outcome: str) -> None:
        """From any thread (shutdown): the loop wakes to a read of nothing and closes with
        1001; a send the client is not taking is broken off at once."""
        if self.cut_by is None:
            self.cut_by = outcome
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)
        if self.sending:
            shut_socket(self.sock)

    def send(self, event: Event) -> None:
        data = self.conn.send(event)
        self.sending = True
        try:
            self.sock.sendall(data)
        finally:
            self.sending = False
        self.bytes_sent += len(data)
        self.sent_at = time.monotonic()

    def close(self, code: int, reason: str = "") -> None:
        """Say close (if the state allows), then wait briefly for the client's."""
        self.close_code = code
        if self.conn.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return
        self.send(CloseConnection(code=code, reason=reason))
        if self.conn.state is ConnectionState.CLOSED or self.cut_by:
            return
        self.sock.settimeout(CLOSE_WAIT_S)
        ends_at = time.monotonic() + CLOSE_WAIT_S
        with contextlib.suppress(OSError):
            while time.monotonic() < ends_at and self.conn.state is not ConnectionState.CLOSED:
                data = self.sock.recv(READ_BYTES)
                if not data:
                    return
                self.conn.receive_data(data)
                for _ in self.conn.events():
                    pass


def run(session: Session, messages: Iterator[bytes] | None, pause_s: float) -> str:
    """The session's loop, until it ends; returns its outcome. `messages` are sent `pause_s`
    apart (the first at once), then the connection is closed with 1000; without them, every
    message is echoed as it arrives, frame piece by frame piece."""
    sock = session.sock
    sock.settimeout(session.stall_s)  # no send waits longer on a client that reads nothing
    readable = select.poll()
    readable.register(sock, select.POLLIN)
    next_message_at = time.monotonic() if messages is not None else float("inf")
    try:
        while True:
            now = time.monotonic()
            if session.cut_by:
                session.close(GOING_AWAY, "the server is going away")
                return session.cut_by
            if now >= session.deadline:
                session.close(POLICY, "the stream's deadline (STREAMHTML_MAX_STREAM_DURATION_S)")
                return DEADLINE
            ping_sent_at = session.ping_sent_at
            if ping_sent_at is not None and now - ping_sent_at >= session.stall_s:
                return STALLED  # no pong, nor anything else: the client is gone or stuck
            if messages is not None and now >= next_message_at:
                item = next(messages, None)
                if item is None:
                    session.close(NORMAL)
                    return COMPLETE
                session.send(BytesMessage(data=bytes(item)))
                next_message_at = now + pause_s
                continue
            if now - session.sent_at >= session.ping_every_s:
                session.send(Ping(b"streamhtml"))
                if session.ping_sent_at is None:
                    session.ping_sent_at = now
            wake_at = min(session.deadline, session.sent_at + session.ping_every_s, next_message_at)
            if session.ping_sent_at is not None:
                wake_at = min(wake_at, session.ping_sent_at + session.stall_s)
            if not readable.poll(max(0.0, wake_at - time.monotonic()) * 1000.0):
                continue
            data = sock.recv(READ_BYTES)
            if not data:
                if session.cut_by:
                    continue  # shutdown: say 1001 at the top of the loop
                return CLIENT_GONE
            session.ping_sent_at = None  # it is there: anything it sends answers a ping
            session.conn.receive_data(data)
            ended = answer(session, session.conn.events(), echo=messages is None)
            if ended:
                return ended
    except TimeoutError:
        return STALLED
    except OSError:
        return session.cut_by or CLIENT_GONE


def answer(session: Session, events: Iterator[Event], echo: bool) -> str | None:
    """Answer what the client sent; an outcome when that ended the session."""
    for event in events:
        if isinstance(event, Message):
            size = len(event.data.encode()) if isinstance(event, TextMessage) else len(event.data)
            session.message_bytes += size
            if session.message_bytes > session.max_message_bytes:
                session.close(
                    MESSAGE_TOO_BIG,
                    f"a message is over {session.max_message_bytes} bytes "
                    "(STREAMHTML_WS_MAX_MESSAGE_BYTES)",
                )
                return TOO_BIG
            if event.message_finished:
                session.message_bytes = 0
            if echo:
                kind = TextMessage if isinstance(event, TextMessage) else BytesMessage
                session.send(kind(data=event.data, message_finished=event.message_finished))
        elif isinstance(event, Ping):
            session.send(event.response())
        elif isinstance(event, Pong):
            pass
        elif isinstance(event, CloseConnection):
            if session.conn.state is ConnectionState.REMOTE_CLOSING:
                session.close_code = event.code
                session.send(event.response())
                return COMPLETE
            # wsproto found the client's frames broken: it says why, as a close code.
            session.close(event.code, event.reason or "protocol error")
            return PROTOCOL_ERROR
    return None
