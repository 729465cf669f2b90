"""A raw WebSocket client for the tests: the handshake and frames by hand, so a test can also
send what no library would (an unmasked frame, a frame that claims a gigabyte)."""

import base64
import hashlib
import os
import socket
import struct
import time
from dataclasses import dataclass, field

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes = b"", mask: bool = True, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    repeated = (key * (length // 4 + 1))[:length]
    return head + key + bytes(a ^ b for a, b in zip(payload, repeated))


def close_payload(code: int) -> bytes:
    return struct.pack("!H", code)


@dataclass
class Received:
    opcode: int
    payload: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if self.opcode == CLOSE else None


class WsClient:
    """One WebSocket connection to the test server."""

    def __init__(
        self, port: int, path: str, timeout_s: float = 10.0, headers: str = "", rcvbuf: int = 0
    ):
        self.sock = socket.socket()
        if rcvbuf:  # before connecting, so the window it offers is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout_s)
        self.sock.connect(("127.0.0.1", port))
        self.reader = self.sock.makefile("rb")
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{headers}\r\n".encode()
        )
        self.status_line = self.reader.readline().decode("latin-1").strip()
        self.headers = {}
        while (line := self.reader.readline().decode("latin-1").strip()) != "":
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.status = int(self.status_line.split()[1])
        expected = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        if self.status == 101:
            assert self.headers["sec-websocket-accept"] == expected

    def send(self, opcode: int, payload: bytes = b"", mask: bool = True, fin: bool = True):
        self.sock.sendall(frame(opcode, payload, mask, fin))

    def receive(self) -> Received:
        head = self.reader.read(2)
        if len(head) < 2:
            raise ConnectionError("closed without a close frame")
        assert not head[1] & 0x80, "the server masked a frame"
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", self.reader.read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self.reader.read(8))[0]
        return Received(head[0] & 0x0F, self.reader.read(length))

    def receive_data(self) -> Received:
        """The next text or binary frame, answering pings on the way."""
        while True:
            got = self.receive()
            if got.opcode == PING:
                self.send(PONG, got.payload)
                continue
            return got

    def until_close(self) -> tuple[list[Received], Received]:
        """Every frame up to the server's close (pings answered), and the close."""
        got = []
        while True:
            item = self.receive_data()
            if item.opcode == CLOSE:
                return got, item
            got.append(item)

    def closed_by_server(self, timeout_s: float = 5.0) -> bool:
        """Whether the server closes the connection within `timeout_s` (what it sends before
        that, pings say, is read and dropped)."""
        deadline = time.monotonic() + timeout_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return False

    def close(self) -> None:
        self.reader.close()
        self.sock.close()
