"""WebSockets: GET /ws/echo and GET /ws/stream, on wsproto, one pool thread each.

wsproto (python-hyper) is the protocol alone, without I/O: the route says the 101 itself,
then one loop on the request's own pool thread reads the socket, feeds wsproto, and sends
what it answers, with no second thread per connection. In that loop:

- a message over STREAMHTML_WS_MAX_MESSAGE_BYTES is closed with 1009, counted as it arrives
  (wsproto hands over a long frame in pieces, so none is held whole);
- a ping goes out whenever nothing was sent for STREAMHTML_WS_PING_INTERVAL_S, so an idle
  connection stays alive through load balancers with idle timeouts; a ping not answered
  within STREAMHTML_STALL_TIMEOUT_S, or a send the client takes nothing of for that long,
  ends the connection (`outcome=stalled`);
- at the stream's deadline the connection is closed with 1008, and at shutdown with 1001;
- a protocol error (an unmasked frame, a bad opcode, invalid UTF-8) is closed with wsproto's
  code for it (1002, 1007).

A WebSocket is admitted and counted as a stream of its route. Once it ends, the route answers
nothing more: its response tells the worker the connection is closed (gunicorn's convention,
StopIteration from the WSGI call; see `TakenOver`), and its request line is published here.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import select
import socket
import time
from collections.abc import Iterator

from flask import Blueprint, Response, current_app, request
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
from wsproto.utilities import generate_accept_token

from . import environ as env
from . import observe
from .generators import html_blocks
from .observe import RequestRecord
from .outcomes import (
    CLIENT_GONE,
    COMPLETE,
    DEADLINE,
    ERROR,
    PROTOCOL_ERROR,
    STALLED,
    TOO_BIG,
)
from .params import parse_stream_request
from .settings import Limits
from .stream import shut_socket
from .streaming import (
    client_of,
    error_response,
    over_capacity,
    settings,
    stream_base_bytes,
    stream_route,
)

routes = Blueprint("websockets", __name__)

READ_BYTES = 64 * 1024
# After our close frame, how long the client may take to send its own before we hang up.
CLOSE_WAIT_S = 1.0
NORMAL, GOING_AWAY, POLICY, MESSAGE_TOO_BIG = 1000, 1001, 1008, 1009
CONTENT_TYPE = "application/octet-stream"  # what the messages hold; never a header here


class Refused(Exception):
    """The request is no WebSocket handshake: `status`, `detail`, extra headers."""

    def __init__(self, status: int, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def accept_token(environ: env.Environ) -> bytes:
    """Sec-WebSocket-Accept for a valid opening handshake (RFC 6455 §4.2.1), else Refused."""
    upgrade = environ.get("HTTP_UPGRADE", "").lower()
    connection = {token.strip().lower() for token in environ.get("HTTP_CONNECTION", "").split(",")}
    if environ.get("REQUEST_METHOD") != "GET" or upgrade != "websocket":
        raise Refused(426, "this is a WebSocket endpoint: open it with a WebSocket client")
    if "upgrade" not in connection or environ.get("SERVER_PROTOCOL") != "HTTP/1.1":
        raise Refused(400, "a WebSocket handshake is an HTTP/1.1 GET with Connection: Upgrade")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
        raise Refused(426, "only WebSocket version 13 is spoken", {"Sec-WebSocket-Version": "13"})
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise Refused(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    return generate_accept_token(key.encode("ascii"))


class TakenOver(Response):
    """The WebSocket is over and its connection is to be closed, with nothing more sent:
    gunicorn's gthread (and StreamingWorker.handle_request after it) takes a StopIteration
    from the WSGI call as "close this connection"."""

    def __call__(self, environ, start_response):
        raise StopIteration


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


def serve(messages: Iterator[bytes] | None = None, pause_s: float = 0.0) -> Response:
    """The whole WebSocket, from the handshake to the close."""
    environ = request.environ
    try:
        token = accept_token(environ)
    except Refused as wrong:
        response = error_response(wrong.status, "WebSocket handshake", wrong.detail)
        response.headers.update(wrong.headers)
        if wrong.status == 426:
            response.headers["Upgrade"] = "websocket"  # the one hop-by-hop field gunicorn passes
        return response
    sock = env.client_socket(environ)
    if sock is None:
        return error_response(501, "not implemented", "this server does not expose its socket")
    limits = settings().limits
    route = env.route_of(environ) or request.path
    session = Session(sock, limits)
    tracker = current_app.extensions["streamhtml.tracker"]
    # Charged as a stream with no end in sight: its send buffer whole, and its read buffer.
    cost_bytes = stream_base_bytes(limits) + READ_BYTES
    refused = tracker.admit(session, route, cost_bytes, client_of(environ, tracker))
    if refused:
        return over_capacity(refused, route)
    started = time.monotonic()
    request_id = env.request_id_of(environ) or observe.new_request_id()
    outcome = ERROR
    try:
        sock.settimeout(session.stall_s)
        sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + token + b"\r\n"
            b"X-Content-Type-Options: nosniff\r\n"
            + f"{observe.REQUEST_ID_HEADER}: {request_id}\r\n\r\n".encode("latin-1")
        )
        outcome = run(session, messages, pause_s)
    except TimeoutError:
        outcome = STALLED
    except OSError:
        outcome = CLIENT_GONE
    finally:
        tracker.release(session)
        observe.publish(record(environ, request_id, session, outcome, started))
    return TakenOver()


def record(
    environ: env.Environ, request_id: str, session: Session, outcome: str, started: float
) -> RequestRecord:
    """The session's request line: status 101, the bytes it sent, how it ended."""
    return RequestRecord(
        request_id=request_id,
        method="GET",
        route=env.route_of(environ),
        path=observe.clipped(environ.get("PATH_INFO")) or "",
        query=observe.clipped(environ.get("QUERY_STRING")) or None,
        status=101,
        bytes_sent=session.bytes_sent,
        duration_ms=round((time.monotonic() - started) * 1000.0, 1),
        outcome=outcome,
        streamed=True,
        queue_ms=env.queue_ms(environ),
        error=None if session.close_code in (None, NORMAL) else f"closed with {session.close_code}",
        peer_addr=environ.get("REMOTE_ADDR"),
        forwarded_for=observe.clipped(environ.get("HTTP_X_FORWARDED_FOR")),
        forwarded_trusted=False,
        user_agent=observe.clipped(environ.get("HTTP_USER_AGENT")),
    )


# websocket=True: Werkzeug matches these rules for WebSocket handshakes only, and no other
# rule for one (a WebsocketMismatch, answered as a JSON 400 by web.http_error).
@stream_route(routes, "/ws/echo", CONTENT_TYPE, waits_on_io=True, websocket=True)
def ws_echo():
    return serve()


@stream_route(routes, "/ws/stream", CONTENT_TYPE, waits_on_io=True, websocket=True)
def ws_stream():
    wanted = parse_stream_request(request.args, settings().limits)
    blocks = html_blocks(wanted.nblocks, wanted.block_size, static=wanted.static)
    return serve((bytes(block) for block in blocks), wanted.sleep_ms / 1000.0)
