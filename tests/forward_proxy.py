"""Stand-in proxies for the probe's and the page's tests: standard library, threaded, streaming.

ForwardProxy is what HTTP_PROXY and HTTPS_PROXY point at: it forwards absolute-form GETs
(`GET http://host:port/path`) and opens CONNECT tunnels. It can also re-chunk what it
forwards, as gorouter does: one chunk per read from the app, reads of up to 8 KiB.

Relay sits in front of one app port as a router would, and can add response headers.

Both record every request head they see, pass bytes on as they arrive (never a whole body),
and stop() closes every socket they opened and joins every thread they started.
"""

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 65536
# gorouter's reads from an app come in at most 8 KiB, and it sends each read as one chunk.
ROUTER_READ_BYTES = 8192
# Request headers that are for this hop only (RFC 9110, section 7.6.1), not for the next.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class SeenRequest:
    """A request head as a proxy received it."""

    method: str
    target: str  # as sent: a path, an absolute URL, or host:port for CONNECT
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The bytes of an HTTP head up to its blank line, and whatever arrived after them."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("the connection closed inside an HTTP head")
        data += more
        if len(data) > MAX_HEAD_BYTES:
            raise ConnectionError("an HTTP head too long for a test proxy")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def parse_request_head(head: bytes) -> SeenRequest:
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    fields = (line.partition(":") for line in lines)
    headers = tuple((name.strip(), value.strip()) for name, _, value in fields)
    return SeenRequest(method, target, headers)


def request_head(method: str, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def with_headers(head: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """A response head (without its blank line) with headers added, blank line included."""
    added = b"".join(f"\r\n{name}: {value}".encode("latin-1") for name, value in headers)
    return head + added + b"\r\n\r\n"


def pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes as they arrive until the source closes, then end the sink's side too."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass  # either side gone: the other learns it from the shutdown below
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


class ChunkedDecoder:
    """The payload of a chunked body, fed in pieces as they come off a socket."""

    def __init__(self):
        self.buffer = b""
        self.left_in_chunk = 0
        self.state = "size"  # size line, chunk data, the CRLF after it, trailer, done

    @property
    def done(self) -> bool:
        return self.state == "done"

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        payload = []
        while True:
            if self.state == "size":
                line, found, rest = self.buffer.partition(b"\r\n")
                if not found:
                    break
                self.buffer = rest
                self.left_in_chunk = int(line.split(b";")[0].strip(), 16)
                self.state = "data" if self.left_in_chunk else "trailer"
            elif self.state == "data":
                if not self.buffer:
                    break
                piece = self.buffer[: self.left_in_chunk]
                self.buffer = self.buffer[len(piece) :]
                self.left_in_chunk -= len(piece)
                payload.append(piece)
                if self.left_in_chunk == 0:
                    self.state = "crlf"
            elif self.state == "crlf":
                if len(self.buffer) < 2:
                    break
                self.buffer = self.buffer[2:]
                self.state = "size"
            elif self.state == "trailer":
                line, found, rest = self.buffer.partition(b"\r\n")
                if not found:
                    break
                self.buffer = rest
                if not line:
                    self.state = "done"
            else:
                break
        return b"".join(payload)


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins the handler threads
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass  # a test proxy's broken connection shows in the test's own assertions


class _Hop:
    """What both stand-ins share: the threaded server, the record, the clean stop."""

    name = "hop"

    def __init__(self, timeout_s: float = 5.0, response_headers: Sequence[tuple[str, str]] = ()):
        self.timeout_s = timeout_s
        self.response_headers = list(response_headers)
        self.seen: list[SeenRequest] = []
        self.chunk_sizes: list[int] = []  # when re-chunking: the payload size of each chunk sent
        self.port = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._server: _ThreadingServer | None = None
        self._serving: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        hop = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                hop.serve_connection(self.request)

        self._server = _ThreadingServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._serving = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name
        )
        self._serving.start()
        return self

    def stop(self) -> None:
        """Close every connection, then join every thread: none may outlive the test."""
        if self._server is None:
            return
        self._server.shutdown()
        with self._lock:
            self._stopping = True
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._serving.join(self.timeout_s)
        threads = [*self._threads, self._serving]
        for thread in threads:
            thread.join(self.timeout_s)
        for sock in sockets:
            sock.close()
        self._server = None
        alive = [thread.name for thread in threads if thread.is_alive()]
        assert alive == [], f"{self.name} threads still running after stop: {alive}"

    def serve_connection(self, client: socket.socket) -> None:
        """One client connection, on a thread of the server's own."""
        self._track(client)
        with self._lock:
            self._threads.append(threading.current_thread())
        client.settimeout(self.timeout_s)
        self.handle(client)

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
            stopping = self._stopping
        if stopping:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return sock

    def connect(self, host: str, port: int) -> socket.socket:
        return self._track(socket.create_connection((host, port), timeout=self.timeout_s))

    def record_chunk(self, size: int) -> None:
        with self._lock:
            self.chunk_sizes.append(size)

    def record(self, head: bytes) -> SeenRequest:
        seen = parse_request_head(head)
        with self._lock:
            self.seen.append(seen)
        return seen

    def handle(self, client: socket.socket) -> None:
        raise NotImplementedError

    def relay_response(self, upstream: socket.socket, client: socket.socket) -> None:
        """The upstream's response head with our headers added, then its body as it comes."""
        head, rest = read_head(upstream)
        client.sendall(with_headers(head, self.response_headers) + rest)
        pipe(upstream, client)

    def both_ways(self, client: socket.socket, upstream: socket.socket) -> None:
        back = threading.Thread(target=pipe, args=(upstream, client), name=f"{self.name}-back")
        with self._lock:
            self._threads.append(back)
        back.start()
        pipe(client, upstream)
        back.join(self.timeout_s)


class ForwardProxy(_Hop):
    """An HTTP forward proxy: absolute-form GETs and CONNECT tunnels, nothing else.

    rechunk: None passes the app's chunks through as they are; "reads" sends each read from the
    app (at most 8 KiB) as one chunk, as gorouter does; "halves" sends each such read as two
    chunks, one after the other. Either way, every byte is passed on as soon as it is read.
    read_pause_s: a pause before each read from the app, as a busy router takes, so that an
    unpaced stream piles up into full 8 KiB reads whatever the speed of this machine.
    """

    name = "forward-proxy"

    def __init__(
        self, rechunk: str | None = None, read_pause_s: float = 0.0, timeout_s: float = 5.0
    ):
        assert rechunk in (None, "reads", "halves"), rechunk
        # A proxy says it was on the way (RFC 9110, section 7.6.3).
        super().__init__(timeout_s, response_headers=[("Via", "1.1 test-forward-proxy")])
        self.rechunk = rechunk
        self.read_pause_s = read_pause_s

    def handle(self, client: socket.socket) -> None:
        head, rest = read_head(client)
        seen = self.record(head)
        if seen.method == "CONNECT":
            self.tunnel(client, seen.target, rest)
        elif seen.method == "GET" and seen.target.startswith("http://"):
            self.forward(client, seen)
        else:
            client.sendall(BAD_REQUEST)

    def tunnel(self, client: socket.socket, authority: str, early_bytes: bytes) -> None:
        host, _, port = authority.rpartition(":")
        try:
            upstream = self.connect(host.strip("[]"), int(port))
        except (OSError, ValueError):
            client.sendall(BAD_GATEWAY)
            return
        with upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if early_bytes:
                upstream.sendall(early_bytes)
            self.both_ways(client, upstream)

    def forward(self, client: socket.socket, seen: SeenRequest) -> None:
        url = urlsplit(seen.target)
        try:
            upstream = self.connect(url.hostname, url.port or 80)
        except OSError:
            client.sendall(BAD_GATEWAY)
            return
        path = url.path or "/"
        passed = [
            (name, value)
            for name, value in seen.headers
            if name.lower() not in HOP_BY_HOP and name.lower() != "host"
        ]
        # RFC 9112, section 3.2.2: a proxy takes Host from an absolute-form target.
        headers = [("Host", url.netloc), *passed, ("Connection", "close")]
        with upstream:
            upstream.sendall(
                request_head("GET", f"{path}?{url.query}" if url.query else path, headers)
            )
            if self.rechunk:
                self.relay_rechunked(upstream, client)
            else:
                self.relay_response(upstream, client)

    def relay_rechunked(self, upstream: socket.socket, client: socket.socket) -> None:
        head, rest = read_head(upstream)
        client.sendall(with_headers(head, self.response_headers))
        if b"transfer-encoding: chunked" not in head.lower():
            client.sendall(rest)
            pipe(upstream, client)
            return
        decoder = ChunkedDecoder()
        self.send_chunks(client, decoder.feed(rest))
        while not decoder.done:
            time.sleep(self.read_pause_s)
            data = upstream.recv(ROUTER_READ_BYTES)
            if not data:
                return  # the app cut the stream: so does the proxy, with no last chunk
            self.send_chunks(client, decoder.feed(data))
        client.sendall(b"0\r\n\r\n")

    def send_chunks(self, client: socket.socket, payload: bytes) -> None:
        if not payload:
            return
        # No chunk over a read's worth (what came in with the response head may be more).
        reads = [
            payload[at : at + ROUTER_READ_BYTES] for at in range(0, len(payload), ROUTER_READ_BYTES)
        ]
        if self.rechunk == "halves":
            pieces = [
                half for read in reads for half in (read[: len(read) // 2], read[len(read) // 2 :])
            ]
        else:
            pieces = reads
        for piece in filter(None, pieces):
            client.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.record_chunk(len(piece))


class Relay(_Hop):
    """A reverse proxy in front of one app port, as a router is; it may add response headers.

    It passes each request on as it came (Host included) and records it.
    """

    name = "relay"

    def __init__(
        self,
        app_port: int,
        response_headers: Sequence[tuple[str, str]] = (),
        timeout_s: float = 5.0,
    ):
        super().__init__(timeout_s, response_headers)
        self.app_port = app_port

    def handle(self, client: socket.socket) -> None:
        head, rest = read_head(client)
        seen = self.record(head)
        try:
            upstream = self.connect("127.0.0.1", self.app_port)
        except OSError:
            client.sendall(BAD_GATEWAY)
            return
        # One request per connection keeps the relay simple; browsers open another.
        headers = [(n, v) for n, v in seen.headers if n.lower() not in ("connection", "keep-alive")]
        headers.append(("Connection", "close"))
        with upstream:
            upstream.sendall(request_head(seen.method, seen.target, headers) + rest)
            self.relay_response(upstream, client)
