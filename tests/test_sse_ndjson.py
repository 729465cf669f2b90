"""/sse and /ndjson on the wire, from a real gunicorn started as the Procfile starts it.

Framing byte for byte, one HTTP chunk per paced event or line, resuming from Last-Event-ID,
keep-alive comments in a long pause, the limits and headers of /streamhtml, and the pacing
through an nginx that compresses text/event-stream and application/x-ndjson.
"""

import json
import re
import socket
import time
import zlib
from urllib.parse import quote

import pytest
from bad_input import BAD_NUMBERS
from nginx_support import Nginx
from support import Server, read_body, read_chunk, read_head, request, send_request

from streamhtml.generators import SSE_HEARTBEAT
from streamhtml.settings import load_settings

STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
    "Expires": "0",
    "X-Accel-Buffering": "no",
    "X-Content-Type-Options": "nosniff",
}
CONTENT_TYPES = {
    "/sse": "text/event-stream; charset=utf-8",
    "/ndjson": "application/x-ndjson",
}
# What completes one item of each shape, in the decoded body.
ITEM_ENDS = {
    "/streamhtml": rb"<br>\n",
    "/sse": rb"\ndata: [a-z]+\n\n",
    "/ndjson": rb"\n",
}


def sse_event(event_id: int, block_size: int) -> re.Pattern:
    return re.compile(rb"id: %d\nevent: block\ndata: [a-z]{%d}\n\n" % (event_id, block_size))


def epoch_ms() -> int:
    return time.time_ns() // 1_000_000


def timed(port: int, path: str, headers=None, timeout_s: float = 30):
    """The reply, and when each of its chunks arrived, in seconds from the request."""
    started = time.monotonic()
    reply = request(port, path, headers=headers, timeout_s=timeout_s)
    return reply, [moment - started for moment in reply.chunk_times]


# --- framing ---------------------------------------------------------------------------------


def test_an_sse_stream_is_a_retry_field_then_one_chunk_per_event(server):
    reply = request(server.port, "/sse?nblocks=3&block_size=5")
    assert reply.status == 200 and reply.chunked
    assert reply.chunks[0] == b"retry: 1000\n\n"
    assert len(reply.chunks) == 1 + 3
    for event_id, chunk in enumerate(reply.chunks[1:], start=1):
        assert sse_event(event_id, 5).fullmatch(chunk), chunk


def test_sse_retry_is_the_pause_when_that_is_longer_than_a_second(server):
    reply = request(server.port, "/sse?nblocks=2&block_size=5&sleep_ms=1500")
    assert reply.chunks[0] == b"retry: 1500\n\n"


def test_an_ndjson_stream_is_one_chunk_per_line_of_exactly_block_size_bytes(server):
    before_ms = epoch_ms()
    reply = request(server.port, "/ndjson?nblocks=12&block_size=64")
    after_ms = epoch_ms()
    assert reply.status == 200 and reply.chunked
    assert [len(chunk) for chunk in reply.chunks] == [64] * 12
    for seq, chunk in enumerate(reply.chunks, start=1):
        line = json.loads(chunk)
        assert list(line) == ["seq", "t_ms", "pad"]
        assert line["seq"] == seq and before_ms <= line["t_ms"] <= after_ms
        assert chunk == f'{{"seq":{seq},"t_ms":{line["t_ms"]},"pad":"{line["pad"]}"}}\n'.encode()
        assert re.fullmatch("[a-z]+", line["pad"])


@pytest.mark.parametrize("path", ["/sse?nblocks=4&block_size=64", "/ndjson?nblocks=4"])
def test_a_stream_carries_the_streamhtml_headers_and_its_own_content_type(server, path):
    reply = request(server.port, path, headers={"Accept-Encoding": "gzip, br"})
    for name, value in STREAM_HEADERS.items():
        assert reply.header(name) == value, name
    assert reply.header("Content-Type") == CONTENT_TYPES[path.split("?")[0]]
    assert reply.header("Transfer-Encoding") == "chunked"
    assert reply.header("Content-Length") is None
    assert reply.header("Content-Encoding") is None, "a stream is never compressed here"


@pytest.mark.parametrize("path", ["/sse", "/ndjson"])
def test_head_gets_the_headers_and_no_body(server, path):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        send_request(sock, f"{path}?nblocks=1000&block_size=1000", method="HEAD")
        send_request(sock, "/health")  # the connection is still usable after HEAD
        reader = sock.makefile("rb")
        head = read_head(reader)
        assert head.status == 200
        assert head.header("Content-Type") == CONTENT_TYPES[path]
        assert head.header("X-Accel-Buffering") == "no"
        assert head.header("Content-Length") is None
        assert read_head(reader).status == 200, "HEAD sent body bytes"


@pytest.mark.parametrize(
    "path",
    [
        "/sse?nblocks=3&block_size=10",
        "/sse?nblocks=3&block_size=10&sleep_ms=100",
        "/ndjson?nblocks=3&block_size=50",
        "/ndjson?nblocks=3&block_size=50&sleep_ms=100",
    ],
)
def test_after_the_last_item_the_stream_ends_and_the_connection_stays_usable(server, path):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        send_request(sock, path)
        send_request(sock, "/health")
        reader = sock.makefile("rb")
        first = read_body(reader, read_head(reader), "GET")
        assert first.status == 200 and len(first.chunks) == (4 if "/sse" in path else 3)
        assert read_body(reader, read_head(reader), "GET").status == 200


# --- pacing ----------------------------------------------------------------------------------


def test_a_paced_event_is_exactly_one_http_chunk_sent_as_it_is_made(server):
    reply, arrivals = timed(server.port, "/sse?nblocks=4&block_size=10&sleep_ms=300")
    assert reply.chunks[0] == b"retry: 1000\n\n" and len(reply.chunks) == 1 + 4
    for event_id, chunk in enumerate(reply.chunks[1:], start=1):
        assert sse_event(event_id, 10).fullmatch(chunk), chunk
    assert arrivals[1] < 0.25, "the first event waited for a pause"
    gaps = [later - earlier for earlier, later in zip(arrivals[1:], arrivals[2:])]
    assert all(0.25 < gap < 0.6 for gap in gaps), gaps


def test_a_paced_line_is_exactly_one_http_chunk_stamped_when_it_was_sent(server):
    reply, arrivals = timed(server.port, "/ndjson?nblocks=4&block_size=60&sleep_ms=300")
    lines = [json.loads(chunk) for chunk in reply.chunks]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4] and arrivals[0] < 0.25
    assert all(len(chunk) == 60 for chunk in reply.chunks)
    sent_gaps_ms = [later["t_ms"] - earlier["t_ms"] for earlier, later in zip(lines, lines[1:])]
    assert all(295 <= gap < 600 for gap in sent_gaps_ms), sent_gaps_ms
    # Each line's t_ms, against the first, matches when it arrived, against the first.
    lateness_ms = [
        (arrival - arrivals[0]) * 1000 - (line["t_ms"] - lines[0]["t_ms"])
        for line, arrival in zip(lines, arrivals)
    ]
    assert all(abs(late) < 100 for late in lateness_ms), lateness_ms


# --- resuming --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, headers, first_id",
    [
        ("", {}, 1),
        ("", {"Last-Event-ID": "0"}, 1),
        ("", {"Last-Event-ID": "3"}, 4),
        ("&last_event_id=2", {}, 3),
        # An EventSource reconnects to the URL it opened, sending the newer id in the header.
        ("&last_event_id=2", {"Last-Event-ID": "4"}, 5),
    ],
)
def test_an_sse_stream_resumes_after_the_last_event_id(server, query, headers, first_id):
    reply = request(server.port, f"/sse?nblocks=5&block_size=8{query}", headers=headers)
    assert reply.status == 200
    assert reply.chunks[0] == b"retry: 1000\n\n"
    assert len(reply.chunks) == 1 + 5 - (first_id - 1)
    for event_id, chunk in enumerate(reply.chunks[1:], start=first_id):
        assert sse_event(event_id, 8).fullmatch(chunk), chunk


@pytest.mark.parametrize("headers, query", [({"Last-Event-ID": "5"}, ""), ({}, "&last_event_id=5")])
def test_a_resume_with_nothing_left_is_a_204_that_stops_an_event_source(server, headers, query):
    reply = request(server.port, f"/sse?nblocks=5&block_size=8{query}", headers=headers)
    assert reply.status == 204 and reply.body == b""
    assert reply.header("Cache-Control") == STREAM_HEADERS["Cache-Control"]


@pytest.mark.parametrize(
    "query, headers, error, named",
    [
        ("&last_event_id=6", {}, "invalid query parameter", ("parameter", "last_event_id")),
        ("", {"Last-Event-ID": "6"}, "invalid header", ("header", "Last-Event-ID")),
        ("", {"Last-Event-ID": "-1"}, "invalid header", ("header", "Last-Event-ID")),
        ("", {"Last-Event-ID": "abc"}, "invalid header", ("header", "Last-Event-ID")),
        ("", {"Last-Event-ID": "1e3"}, "invalid header", ("header", "Last-Event-ID")),
    ],
)
def test_a_last_event_id_past_nblocks_or_malformed_is_a_json_400(
    server, query, headers, error, named
):
    reply = request(server.port, f"/sse?nblocks=5{query}", headers=headers)
    assert reply.status == 400
    body = json.loads(reply.body)
    assert (body["status"], body["error"]) == (400, error)
    assert body[named[0]] == named[1] and "from 0 to 5" in body["detail"]


# --- the limits of /streamhtml ---------------------------------------------------------------

BAD_QUERIES = [
    pytest.param(path, f"{name}={quote(value, safe='')}", name, id=f"{path}-{name}-{case}")
    for path in ("/sse", "/ndjson")
    for name in ("nblocks", "block_size", "sleep_ms")
    for case, value in BAD_NUMBERS.items()
]


@pytest.mark.parametrize("path, query, named", BAD_QUERIES)
def test_a_malformed_number_is_a_400_naming_the_parameter(small_server, path, query, named):
    reply = request(small_server.port, f"{path}?{query}")
    assert reply.status == 400, reply.body
    assert json.loads(reply.body)["parameter"] == named


def test_an_ndjson_block_size_too_small_for_the_line_names_the_minimum(server):
    reply = request(server.port, "/ndjson?nblocks=100&block_size=41")
    assert reply.status == 400
    body = json.loads(reply.body)
    assert body["parameter"] == "block_size"
    assert "at least 42 bytes for nblocks=100" in body["detail"]
    assert request(server.port, "/ndjson?nblocks=100&block_size=42").status == 200


# --- capacity, logs, metrics -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/sse", "/ndjson"])
def test_a_stream_is_counted_in_progress_and_logged_under_its_route(small_server, path):
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=10) as sock:
        send_request(sock, f"{path}?nblocks=3&block_size=50&sleep_ms=1000")
        reader = sock.makefile("rb")
        assert read_head(reader).status == 200
        assert read_chunk(reader)
        metrics = request(small_server.port, "/metrics").body.decode()
        in_progress = f'streamhtml_streams_in_progress{{endpoint="{path}"}} '
        assert re.search(rf"^{re.escape(in_progress)}1(\.0)?$", metrics, re.MULTILINE), metrics
        while read_chunk(reader) is not None:
            pass
    [line] = small_server.wait_for_request(route=path, status=200)
    assert line["outcome"] == "complete" and line["path"] == path


HEARTBEAT_S = 1


@pytest.fixture(scope="module")
def patient_server(tmp_path_factory):
    """A server that allows a 31 s sleep_ms (STREAMHTML_MAX_SLEEP_MS), and beats every
    HEARTBEAT_S in a long pause (15 s by default)."""
    log_path = tmp_path_factory.mktemp("patient") / "gunicorn.log"
    env = {"STREAMHTML_MAX_SLEEP_MS": "31000", "STREAMHTML_SSE_HEARTBEAT_S": str(HEARTBEAT_S)}
    running = Server(log_path, env=env).start()
    yield running
    running.stop()


def test_a_client_that_hangs_up_in_a_long_pause_stops_the_stream_at_once(patient_server):
    with socket.create_connection(("127.0.0.1", patient_server.port), timeout=10) as sock:
        send_request(sock, "/sse?nblocks=3&block_size=8&sleep_ms=31000")
        reader = sock.makefile("rb")
        assert read_head(reader).status == 200
        assert read_chunk(reader) == b"retry: 31000\n\n"
        assert sse_event(1, 8).fullmatch(read_chunk(reader))
        hung_up = time.monotonic()
        reader.close()
    (line,) = patient_server.wait_for_request(route="/sse", outcome="client_gone")
    assert time.monotonic() - hung_up < 1.5


def test_a_long_pause_sends_a_keep_alive_comment_every_heartbeat_then_the_event(
    patient_server,
):
    heartbeat_s = HEARTBEAT_S
    reply, arrivals = timed(patient_server.port, "/sse?nblocks=2&block_size=8&sleep_ms=2500")
    assert reply.chunks[0] == b"retry: 2500\n\n"
    assert sse_event(1, 8).fullmatch(reply.chunks[1])
    assert reply.chunks[2:4] == [SSE_HEARTBEAT, SSE_HEARTBEAT] == [b": keep-alive\n\n"] * 2
    assert sse_event(2, 8).fullmatch(reply.chunks[4]) and len(reply.chunks) == 5
    assert arrivals[1] < 0.5
    first, second = arrivals[2] - arrivals[1], arrivals[3] - arrivals[2]
    assert heartbeat_s - 0.3 < first < heartbeat_s + 0.5, arrivals
    assert heartbeat_s - 0.3 < second < heartbeat_s + 0.5, arrivals
    assert 2.3 < arrivals[4] - arrivals[1] < 3.2, arrivals


def test_the_heartbeat_is_15_s_unless_set():
    assert load_settings({}).limits.sse_heartbeat_s == 15
    assert load_settings({"STREAMHTML_SSE_HEARTBEAT_S": "25"}).limits.sse_heartbeat_s == 25


# --- through a compressing nginx -------------------------------------------------------------

PACED_QUERY = "nblocks=6&block_size=2000&sleep_ms=400"  # 2 s from the first item to the last
GZIP_TYPES = ("text/event-stream", "application/x-ndjson")


@pytest.fixture(scope="module")
def gzip_nginx(server, tmp_path_factory):
    """gzip on for every shape's type; the app's `X-Accel-Buffering: no` honoured."""
    nginx = Nginx(tmp_path_factory.mktemp("gzip-honouring"), server.port, gzip_types=GZIP_TYPES)
    yield nginx.start()
    nginx.stop()


@pytest.fixture(scope="module")
def buffering_gzip_nginx(server, tmp_path_factory):
    """The same nginx, ignoring `X-Accel-Buffering: no`: it buffers and compresses whole."""
    nginx = Nginx(
        tmp_path_factory.mktemp("gzip-buffering"),
        server.port,
        honour_accel_buffering=False,
        gzip_types=GZIP_TYPES,
    )
    yield nginx.start()
    nginx.stop()


def item_arrivals(port: int, path: str) -> list[float]:
    """When each item (block, event, line) was whole, from the gzip'd body, in seconds."""
    reply, arrivals = timed(port, f"{path}?{PACED_QUERY}", headers={"Accept-Encoding": "gzip"})
    assert reply.status == 200
    assert reply.header("Content-Encoding") == "gzip", "nginx compressed it, as configured"
    decoder = zlib.decompressobj(wbits=31)
    body, items = b"", []
    for chunk, arrival in zip(reply.chunks, arrivals):
        body += decoder.decompress(chunk)
        items += [arrival] * (len(re.findall(ITEM_ENDS[path], body)) - len(items))
    assert len(items) == 6
    return items


@pytest.mark.parametrize("path", ["/streamhtml", "/sse", "/ndjson"])
def test_through_gzip_nginx_each_item_arrives_as_it_is_made(gzip_nginx, path):
    items = item_arrivals(gzip_nginx.port, path)
    assert items[0] < 0.5, f"the first item waited: {items}"
    gaps = [later - earlier for earlier, later in zip(items, items[1:])]
    assert all(gap > 0.2 for gap in gaps), f"items came bunched: {gaps}"


@pytest.mark.parametrize("path", ["/streamhtml", "/sse", "/ndjson"])
def test_the_same_nginx_ignoring_x_accel_buffering_holds_every_item_to_the_end(
    buffering_gzip_nginx, path
):
    items = item_arrivals(buffering_gzip_nginx.port, path)
    assert items[0] > 1.5, f"nginx passed the first item at once: {items}"
