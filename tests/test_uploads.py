"""POST /upload on the wire: bodies read as they arrive, in constant memory, within their limits.

The chunked decoder and the arrivals' thinning are pure, and tested on tables; everything else
against the real server: both framings, 413 before a byte is read and when a chunked body
passes the limit, a stalled body and a slow one cut at their timeouts, 100 Continue said only
by the route that reads the body, the cap on concurrent uploads, the cut at shutdown, and a
1 GiB body read in flat memory.
"""

import contextlib
import json
import signal
import socket
import threading
import time

import pytest
from files_support import GiB, rss_bytes
from support import (
    RawResponse,
    read_body,
    read_head,
    request,
    streams_in_progress,
    wait_until,
)

from streamhtml.settings import small_limits, small_limits_env
from streamhtml.uploads import ARRIVALS_MOST, Arrivals, BadBody, ChunkedBody

SMALL = small_limits()


def chunked(*pieces: bytes, trailer: bytes = b"\r\n") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n" + trailer


def feed_all(data: bytes, split_every: int | None = None) -> int:
    body = ChunkedBody()
    step = split_every or len(data) or 1
    counted = 0
    for start in range(0, len(data), step):
        piece = data[start : start + step]
        counted += body.feed(piece, len(piece))
    assert body.done, "the decoder missed the body's end"
    return counted


@pytest.mark.parametrize("split_every", [None, 1, 2, 3, 7])
def test_the_chunked_decoder_counts_the_data_however_the_reads_split_it(split_every):
    data = chunked(b"a" * 10, b"b" * 300, b"c", trailer=b"X-Sum: 1\r\n\r\n")
    assert feed_all(data, split_every) == 311


@pytest.mark.parametrize(
    "framing",
    [
        b"zz\r\nab\r\n0\r\n\r\n",  # not hexadecimal
        b"\r\n0\r\n\r\n",  # no size
        b"2\nab\r\n0\r\n\r\n",  # a bare LF
        b"2\r\nabc\r\n0\r\n\r\n",  # more data than the size
        b"2;a\x01b\r\nab\r\n0\r\n\r\n",  # a control character in an extension
        b"1" * 17 + b"\r\n",  # a size no 64 bits hold
        b"1;" + b"x" * 5000 + b"\r\n",  # an endless size line
    ],
)
def test_the_chunked_decoder_refuses_broken_framing(framing):
    with pytest.raises(BadBody):
        ChunkedBody().feed(framing, len(framing))


def test_extensions_and_whitespace_before_them_are_allowed():
    assert feed_all(b"3 ;name=value\r\nabc\r\n0\r\n\r\n") == 3


def test_arrivals_keep_at_most_100_points_spread_over_the_reads_and_always_the_last():
    for reads in (1, 99, 100, 101, 1000, 12_345):
        arrivals = Arrivals()
        for index in range(reads):
            arrivals.note(float(index), index + 1)
        points = arrivals.as_list()
        assert len(points) <= ARRIVALS_MOST
        assert points[0] == [0.0, 1] and points[-1] == [float(reads - 1), reads]
        if reads >= ARRIVALS_MOST:
            assert len(points) >= ARRIVALS_MOST // 2
            # Evenly spread: no gap between two points is more than twice another's.
            gaps = [later[1] - earlier[1] for earlier, later in zip(points, points[1:-1])]
            assert max(gaps) <= 2 * min(gaps)


# --- on the wire ----------------------------------------------------------------------------


def head(length: int | None = None, path="/upload", method="POST", extra: str = "") -> bytes:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\n{framing}\r\n{extra}\r\n".encode()


def answer(sock: socket.socket) -> RawResponse:
    with sock.makefile("rb") as reader:
        return read_body(reader, read_head(reader), "POST")


def upload(port: int, data: bytes, length: int | None, method="POST") -> RawResponse:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head(length, method=method) + data)
        return answer(sock)


def closed_by_server(sock: socket.socket, timeout_s: float = 5.0) -> bool:
    sock.settimeout(timeout_s)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    return True


@pytest.mark.parametrize("size", [0, 1, 100_000, SMALL.max_upload_bytes])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_body_with_content_length_is_read_whole_and_counted(small_server, size, method):
    reply = upload(small_server.port, b"x" * size, size, method)
    assert reply.status == 200, reply.body
    found = json.loads(reply.body)
    assert found["bytes"] == size and found["framing"] == "content-length"
    assert len(found["arrivals"]) <= ARRIVALS_MOST
    if size:
        assert found["arrivals"][-1][1] == size
        assert found["first_byte_ms"] is not None
    if size:
        assert reply.header("Connection") == "close", "a request with a body ends its connection"


def test_the_bytes_that_came_with_the_head_are_counted_at_0_ms(small_server):
    # One write: the worker reads the head and these bytes together, before any thread.
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=10) as sock:
        sock.sendall(head(1000) + b"h" * 500)
        time.sleep(0.3)  # the pause is what is measured, not a synchronisation
        sock.sendall(b"h" * 500)
        found = json.loads(answer(sock).body)
    first, last = found["arrivals"]
    assert first == [0.0, 500] and found["first_byte_ms"] == 0.0
    assert last[1] == 1000 and last[0] >= 250


@pytest.mark.parametrize("size", [1, 100_000, SMALL.max_upload_bytes])
def test_a_chunked_body_is_read_whole_and_counted(small_server, size):
    data = b"y" * size
    pieces = [data[start : start + 7000] for start in range(0, size, 7000)]
    reply = upload(small_server.port, chunked(*pieces), None)
    assert reply.status == 200, reply.body
    found = json.loads(reply.body)
    assert found["bytes"] == size and found["framing"] == "chunked"
    assert found["arrivals"][-1][1] == size


def test_a_body_of_tiny_chunks_is_counted(small_server):
    reply = upload(small_server.port, chunked(*[b"z"] * 20_000), None)
    assert reply.status == 200 and json.loads(reply.body)["bytes"] == 20_000


def test_the_arrivals_follow_a_paced_body(small_server):
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=30) as sock:
        sock.sendall(head(None))
        for index in range(4):
            if index:
                time.sleep(0.3)
            sock.sendall(b"400\r\n" + b"p" * 1024 + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        found = json.loads(answer(sock).body)
    times = [at_ms for at_ms, _ in found["arrivals"]]
    assert [total for _, total in found["arrivals"]] == [1024, 2048, 3072, 4096]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert all(gap > 200 for gap in gaps), f"the pauses were lost: {found['arrivals']}"
    assert found["seconds"] >= 0.8


def test_a_content_length_over_the_limit_gets_413_before_any_byte_or_100_continue(small_server):
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=10) as sock:
        # No body is sent: the answer cannot have waited for one.
        sock.sendall(head(SMALL.max_upload_bytes + 1, extra="Expect: 100-continue\r\n"))
        reply = answer(sock)
    assert reply.status == 413
    found = json.loads(reply.body)
    assert "STREAMHTML_MAX_UPLOAD_BYTES" in found["detail"]


def test_a_chunked_body_that_passes_the_limit_gets_413_and_the_connection_closes(small_server):
    piece = b"%x\r\n%s\r\n" % (1_000_000, b"q" * 1_000_000)
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=10) as sock:
        sock.sendall(head(None))
        try:
            # Far more than the kernel's buffers hold: the server must stop reading.
            for _ in range(30 + SMALL.max_upload_bytes // 1_000_000):
                sock.sendall(piece)
        except OSError:
            pass
        else:
            raise AssertionError("the server read 30 MB past the limit")
        with sock.makefile("rb") as reader:
            reply = read_body(reader, read_head(reader), "POST")
    assert reply.status == 413
    assert "chunked body passed" in json.loads(reply.body)["detail"]


def test_a_chunked_body_past_the_limit_is_refused_even_when_the_client_reads(small_server):
    # As above, but the client sends all it has (a few chunks past the limit) and then reads.
    data = chunked(*[b"r" * 200_000] * 6)
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=10) as sock:
        sock.sendall(head(None))
        with contextlib.suppress(OSError):
            sock.sendall(data)
        reply = answer(sock)
    assert reply.status == 413


def test_broken_chunked_framing_gets_a_json_400(small_server):
    reply = upload(small_server.port, b"2\r\nabc\r\n0\r\n\r\n", None)
    assert reply.status == 400
    assert json.loads(reply.body)["error"] == "invalid body"


def test_100_continue_comes_from_the_upload_once_admitted_and_then_the_body_is_read(small_server):
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=10) as sock:
        sock.sendall(head(5000, extra="Expect: 100-continue\r\n"))
        with sock.makefile("rb") as reader:
            interim = read_head(reader)
            assert interim.status == 100, "the client waits for 100 Continue before its body"
            sock.sendall(b"c" * 5000)
            reply = read_body(reader, read_head(reader), "POST")
    assert reply.status == 200 and json.loads(reply.body)["bytes"] == 5000


def test_no_other_route_invites_a_body_with_100_continue(small_server):
    # gunicorn says 100 Continue to every request that expects it; here only /upload does.
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        reply = answer(sock)
    assert reply.status == 405


def test_a_body_that_stops_arriving_is_cut_at_the_stall_timeout(small_server):
    stall_s = SMALL.body_stall_timeout_s
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=stall_s + 10) as sock:
        sock.sendall(head(10_000) + b"s" * 100)
        started = time.monotonic()
        reply = answer(sock)
        waited = time.monotonic() - started
    assert reply.status == 408
    found = json.loads(reply.body)
    assert "STREAMHTML_BODY_STALL_TIMEOUT_S" in found["detail"] and found["bytes_received"] == 100
    assert stall_s - 0.5 < waited < stall_s + 3
    [line] = small_server.wait_for_request(path="/upload", status=408)
    assert line["outcome"] == "stalled"


def test_a_body_that_trickles_is_cut_at_the_deadline(start_server):
    duration_s = 3
    server = start_server({**small_limits_env(), "STREAMHTML_MAX_STREAM_DURATION_S": "3"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(head(10_000))
        started = time.monotonic()
        stop = threading.Event()

        def trickle():
            # A byte every half second: never a stall, never the end.
            while not stop.wait(0.5):
                try:
                    sock.sendall(b"t")
                except OSError:
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            reply = answer(sock)
        finally:
            stop.set()
        waited = time.monotonic() - started
    assert reply.status == 408
    assert "STREAMHTML_MAX_STREAM_DURATION_S" in json.loads(reply.body)["detail"]
    assert duration_s - 0.5 < waited < duration_s + 3
    [line] = server.wait_for_request(path="/upload", status=408)
    assert line["outcome"] == "deadline"


def test_uploads_are_counted_as_streams_and_capped(start_server):
    server = start_server(small_limits_env())
    cap = SMALL.max_uploads
    held = []
    try:
        for _ in range(cap):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(head(1000) + b"h")  # a body begun, not finished
            held.append(sock)
        wait_until(
            lambda: streams_in_progress(server.port) == cap, what=f"{cap} uploads in progress"
        )
        refused = upload(server.port, b"x" * 10, 10)
        assert refused.status == 503 and refused.header("Retry-After") == "1"
        assert "STREAMHTML_MAX_UPLOADS" in json.loads(refused.body)["detail"]
        # Other streams are not uploads: they still run.
        assert request(server.port, "/streamhtml?nblocks=2&block_size=10").status == 200
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: streams_in_progress(server.port) == 0, what="the uploads to end")
    assert upload(server.port, b"x" * 10, 10).status == 200


def test_an_upload_in_progress_is_cut_at_shutdown(start_server):
    server = start_server({**small_limits_env(), "GUNICORN_GRACEFUL_TIMEOUT": "1"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(head(1000) + b"u")
        wait_until(lambda: streams_in_progress(server.port) == 1, what="the upload to be admitted")
        started = time.monotonic()
        assert server.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 5, "the worker waited for the body"
        assert closed_by_server(sock)
    assert '"outcome": "cut_by_shutdown"' in server.log()


def test_other_methods_on_upload_get_a_json_405_naming_post_and_put(small_server):
    for method in ("GET", "HEAD", "DELETE", "OPTIONS"):
        reply = request(small_server.port, "/upload", method=method)
        assert reply.status == 405, method
        assert reply.header("Allow") == "POST, PUT"


@pytest.mark.skipif(not hasattr(socket, "SO_RCVBUF"), reason="no SO_RCVBUF")
def test_a_1_gib_body_is_read_in_flat_memory(start_server):
    server = start_server({"WEB_CONCURRENCY": "1", "STREAMHTML_MAX_UPLOAD_BYTES": str(2 * GiB)})
    [pid] = server.worker_pids()
    assert upload(server.port, b"w" * 1000, 1000).status == 200  # warm: first-request imports
    before = rss_bytes(pid)
    peak = [before]
    done = threading.Event()

    def watch():
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss_bytes(pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    piece = bytes(1024 * 1024)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(head(GiB))
            for _ in range(1024):
                sock.sendall(piece)
            reply = answer(sock)
    finally:
        done.set()
        watcher.join()
    assert reply.status == 200 and json.loads(reply.body)["bytes"] == GiB
    grown_mib = (peak[0] - before) / (1024 * 1024)
    assert grown_mib < 8, f"the worker grew by {grown_mib:.1f} MiB reading 1 GiB"
