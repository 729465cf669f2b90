"""Bench row for WebSockets: binary messages per second from /ws/stream, unpaced, read by a
minimal client (the probe's frame reader), the project alone serving them."""

from __future__ import annotations

import base64
import math
import os
import socket
import time

from streamhtml.probe import ProbeError, ws_frame, ws_read_frame

MESSAGES = 100_000
MESSAGE_BYTES = 64


def messages_per_s(port: int, count: int = MESSAGES, size: int = MESSAGE_BYTES) -> float:
    """Messages/s of one unpaced /ws/stream, handshake to close; NaN when it fell short."""
    path = f"/ws/stream?nblocks={count}&block_size={size}&sleep_ms=0"
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        reader = sock.makefile("rb")
        started = time.monotonic()
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        if b" 101 " not in reader.readline():
            return math.nan
        while reader.readline() not in (b"\r\n", b""):
            pass
        received = 0
        try:
            while True:
                _, opcode, payload = ws_read_frame(reader)
                if opcode == 0x2:
                    received += 1
                elif opcode == 0x9:
                    sock.sendall(ws_frame(0xA, payload))
                elif opcode == 0x8:
                    break
        except ProbeError:
            return math.nan
        seconds = time.monotonic() - started
        reader.close()
    return received / seconds if received == count else math.nan


def websocket_rows(server, put) -> None:
    for _ in range(4):  # warm: each worker's first WebSocket imports wsproto (16 ms)
        messages_per_s(server.port, 1000)
    put("ws_messages", server.name, messages_per_s(server.port))


ROWS = (
    (
        "ws_messages",
        f"/ws/stream, {MESSAGES:,} unpaced {MESSAGE_BYTES} B messages",
        "msg/s",
        1,
        None,
    ),
)
