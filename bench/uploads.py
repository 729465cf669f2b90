"""Bench rows for uploads: one 1 GiB body POSTed to the project's /upload and to an nginx
location that discards it, each timed from the first byte sent to the answer read, with the
project worker's RSS growth over it.

nginx reads a body it answers with `return` and throws it away (its discard path), so the two
figures are the same work: take every byte off the socket, keep none of it.
"""

from __future__ import annotations

import json
import math
import socket
import time

UPLOAD_BYTES = 1 << 30
PIECE = bytes(1 << 20)
# Added to the bench's nginx server block: bodies of any size, discarded.
NGINX_LOCATION = 'location = /upload { client_max_body_size 0; return 200 "{}\\n"; }'


def post_discarded(port: int, size: int = UPLOAD_BYTES, timeout_s: float = 300.0) -> float:
    """Bytes/s of one POST of `size` bytes with Content-Length; NaN when not all was read."""
    head = (
        f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n"
        "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        started = time.monotonic()
        sock.sendall(head)
        left = size
        try:
            while left:
                piece = PIECE if left >= len(PIECE) else PIECE[:left]
                sock.sendall(piece)
                left -= len(piece)
        except OSError:
            return math.nan  # answered before the end: a refusal, not a figure
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        seconds = time.monotonic() - started
    status, _, rest = answer.partition(b"\r\n")
    if b" 200 " not in status + b" ":
        return math.nan
    body = rest.partition(b"\r\n\r\n")[2]
    # The project says how many bytes it read; nginx's discard says nothing.
    read = json.loads(body).get("bytes", size) if b'"bytes"' in body else size
    return size / seconds if read == size else math.nan


def upload_rows(servers: dict, order, put, rss_watch) -> None:
    """The project's /upload and nginx's discard of the same 1 GiB body, in the round's order."""
    for name in order:
        if name == "minimal":
            continue  # the minimal app reads no body
        server = servers[name]
        for _ in range(4):
            # Each worker's first upload makes what it needs once: the figure is a warm one's.
            post_discarded(server.port, 1 << 20)
        watch = rss_watch(server.workers() if name != "nginx" else [])
        with watch:
            speed = post_discarded(server.port)
        put("upload", name, speed)
        if name != "nginx":  # a tree without /upload has no figure
            put("rss_upload", name, math.nan if math.isnan(speed) else watch.growth_mib())


ROWS = (
    ("upload", "one 1 GiB upload, Content-Length, discarded", "MiB/s", 1 << 20, None),
    ("rss_upload", "worker RSS growth, one 1 GiB upload", "MiB", 1, None),
)
