"""WebSockets: GET /ws/echo and GET /ws/stream, on wsproto, one pool thread each.

wsproto (python-hyper) is the protocol alone, without I/O: the route says the 101 itself,
then one loop (streamhtml/ws_session.py) on the request's own pool thread reads the socket,
feeds wsproto, and sends what it answers, with no second thread per connection. In that loop:

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
import hashlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from flask import Blueprint, Response, current_app, request

from . import environ as env
from . import observe
from .generators import html_blocks
from .observe import RequestRecord
from .outcomes import CLIENT_GONE, ERROR, STALLED
from .params import parse_stream_request
from .streaming import (
    client_of,
    error_response,
    over_capacity,
    settings,
    stream_base_bytes,
    stream_route,
)

if TYPE_CHECKING:
    from .ws_session import Session

routes = Blueprint("websockets", __name__)

# RFC 6455 §1.3: the accept token is base64(SHA-1(key + this)).
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
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
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + ACCEPT_GUID).digest())


class TakenOver(Response):
    """The WebSocket is over and its connection is to be closed, with nothing more sent:
    gunicorn's gthread (and StreamingWorker.handle_request after it) takes a StopIteration
    from the WSGI call as "close this connection"."""

    def __call__(self, environ, start_response):
        raise StopIteration


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
    # wsproto is imported here, by the first WebSocket: not every worker's start pays for it.
    from . import ws_session

    limits = settings().limits
    route = env.route_of(environ) or request.path
    session = ws_session.Session(sock, limits)
    tracker = current_app.extensions["streamhtml.tracker"]
    # Charged as a stream with no end in sight: its send buffer whole, and its read buffer.
    cost_bytes = stream_base_bytes(limits) + ws_session.READ_BYTES
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
        outcome = ws_session.run(session, messages, pause_s)
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
        error=None if session.closed_normally() else f"closed with {session.close_code}",
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
