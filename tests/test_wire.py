"""What a client sees on the socket, from a real gunicorn started as the Procfile starts it."""

import collections
import contextlib
import csv
import io
import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from bad_input import BAD_NUMBERS
from nginx_support import socket_inodes, tcp_table
from support import read_body, read_chunk, read_head, request, send_request

STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
    "Expires": "0",
    "X-Accel-Buffering": "no",
    "X-Content-Type-Options": "nosniff",
}


@pytest.mark.parametrize(
    "nblocks, block_size",
    [(1, 1), (3, 4), (3, 5), (10, 6), (16, 1024), (100, 512), (5, 4096), (4, 65536), (2, 300_000)],
)
def test_a_stream_is_exactly_nblocks_chunks_of_block_size(server, nblocks, block_size):
    reply = request(server.port, f"/streamhtml?nblocks={nblocks}&block_size={block_size}")
    assert reply.status == 200 and reply.chunked
    assert [len(chunk) for chunk in reply.chunks] == [block_size] * nblocks


def test_the_defaults_are_ten_blocks_of_1024_bytes(server):
    reply = request(server.port, "/streamhtml")
    assert [len(chunk) for chunk in reply.chunks] == [1024] * 10
    assert all(chunk.endswith(b"<br>\n") for chunk in reply.chunks)


def test_zero_blocks_is_an_empty_chunked_body(server):
    reply = request(server.port, "/streamhtml?nblocks=0")
    assert reply.status == 200 and reply.chunked and reply.chunks == []


def test_static_data_repeats_one_block_and_random_data_does_not(server):
    static = request(server.port, "/streamhtml?nblocks=8&block_size=64&use_static_data=1")
    random = request(server.port, "/streamhtml?nblocks=8&block_size=64")
    assert len(set(static.chunks)) == 1
    assert len(set(random.chunks)) == 8


def test_a_stream_carries_the_no_cache_and_no_buffering_headers(server):
    reply = request(server.port, "/streamhtml?nblocks=2", headers={"Accept-Encoding": "gzip"})
    for name, value in STREAM_HEADERS.items():
        assert reply.header(name) == value, name
    assert reply.header("Content-Type") == "text/html; charset=utf-8"
    assert reply.header("Transfer-Encoding") == "chunked"
    assert reply.header("Content-Length") is None
    assert reply.header("Content-Encoding") is None, "a stream is never compressed"


def test_head_has_the_headers_of_get_and_no_body(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        send_request(sock, "/streamhtml?nblocks=1000&block_size=1000", method="HEAD")
        send_request(sock, "/health")  # the same connection must still be usable after HEAD
        reader = sock.makefile("rb")
        head = read_head(reader)
        assert head.status == 200
        for name, value in STREAM_HEADERS.items():
            assert head.header(name) == value, name
        assert head.header("Content-Length") is None
        assert read_head(reader).status == 200, "HEAD sent body bytes"


def test_streams_follow_one_another_on_a_kept_alive_connection(server):
    # The worker gathers a stream's chunks into larger writes: each response must still end
    # exactly where it should, or the next one on the connection would not parse.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        for nblocks, block_size in [(300, 1000), (1, 7), (70, 1024), (2, 70_000)]:
            send_request(sock, f"/streamhtml?nblocks={nblocks}&block_size={block_size}")
            reply = read_body(reader, read_head(reader), "GET")
            assert reply.header("Connection") == "keep-alive"
            assert [len(chunk) for chunk in reply.chunks] == [block_size] * nblocks


def idle(pid: int) -> bool:
    """Whether the process's main thread (a worker's main loop) is asleep, waiting."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "S"


def connections_held(pids: list[int], port: int) -> int:
    """Connections to `port` (the listener aside) that the processes `pids` hold open."""
    inodes = set().union(*(socket_inodes(pid) for pid in pids))
    return sum(
        1 for local, remote, _, inode in tcp_table() if local == port and remote and inode in inodes
    )


def test_a_burst_of_kept_alive_connections_is_shared_by_both_workers(server):
    # Both workers race for every connection; the first awake used to take a whole burst,
    # and a client's keep-alive connections then all ran on one core for their whole life.
    def pids_answering(connections: int) -> list[int]:
        address = ("127.0.0.1", server.port)
        socks = [socket.create_connection(address, timeout=10) for _ in range(connections)]
        try:
            pids = []
            for sock in socks:
                send_request(sock, "/health")
            for sock in socks:
                reader = sock.makefile("rb")
                pids.append(json.loads(read_body(reader, read_head(reader), "GET").body)["pid"])
            return pids
        finally:
            for sock in socks:
                sock.close()

    # The server is healthy once one worker answers; the other may still be starting.
    deadline = time.monotonic() + 10
    while len(set(pids_answering(2))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = server.worker_pids()
    shared = 0
    for _ in range(5):
        # Each worker says how many connections it holds, and the others leave a burst to the
        # one holding fewest: the last burst's connections must be closed and counted out,
        # and each worker back to waiting for the next.
        wait_until(
            lambda: not connections_held(workers, server.port) and all(map(idle, workers)),
            "the workers are idle, holding none of the last burst's connections",
        )
        counts = sorted(collections.Counter(pids_answering(10)).values())
        shared += len(counts) == 2 and counts[0] >= 3
    assert shared >= 3, "most bursts of 10 are split at least 3 to 7"


def test_http_1_0_clients_get_the_exact_body_unchunked(server):
    reply = request(server.port, "/streamhtml?nblocks=16&block_size=1024", version="1.0")
    assert reply.status == 200 and not reply.chunked
    assert len(reply.body) == 16 * 1024


def test_the_first_block_is_sent_at_once_and_the_rest_as_they_are_made(server):
    started = time.monotonic()
    reply = request(server.port, "/streamhtml?nblocks=4&block_size=100&sleep_ms=300")
    arrivals = [moment - started for moment in reply.chunk_times]
    assert len(arrivals) == 4
    assert arrivals[0] < 0.25, "the first block waited for a sleep"
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    assert all(gap > 0.2 for gap in gaps), f"blocks arrived together: {gaps}"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_a_json_405(server, method):
    reply = request(server.port, "/streamhtml", method=method, headers={"Content-Length": "0"})
    assert reply.status == 405
    assert reply.header("Allow") == "GET, HEAD"
    assert json.loads(reply.body)["status"] == 405


def test_an_unknown_path_gets_a_json_404(server):
    reply = request(server.port, "/streamhtml/extra")
    assert reply.status == 404
    assert reply.header("Content-Type") == "application/json"
    assert json.loads(reply.body)["error"] == "Not Found"


NUMERIC_PARAMETERS = {
    "/streamhtml": ["nblocks", "block_size", "sleep_ms", "use_static_data"],
    "/large.csv": ["rows", "seed"],
}
BAD_QUERIES = [
    pytest.param(path, query, id=f"{name}-{case}")
    for path, names in NUMERIC_PARAMETERS.items()
    for name in names
    for case, query in [
        *[(case, f"{name}={quote(value, safe='')}") for case, value in BAD_NUMBERS.items()],
        ("given twice", f"{name}=1&{name}=1"),
    ]
]


@pytest.mark.parametrize("path, query", BAD_QUERIES)
def test_every_malformed_number_is_a_json_400_before_any_byte_streams(small_server, path, query):
    reply = request(small_server.port, f"{path}?{query}")
    assert reply.status == 400, reply.body
    assert reply.header("Content-Type") == "application/json"
    assert not reply.chunked
    body = json.loads(reply.body)
    assert body["parameter"] == query.split("=")[0]
    assert body["error"] and body["detail"]


@pytest.mark.parametrize("path", ["/streamhtml", "/sse", "/ndjson"])
@pytest.mark.parametrize(
    "query, parameter",
    [
        ("block_size=4097", "block_size"),
        ("nblocks=1001", "nblocks"),
        ("sleep_ms=2001", "sleep_ms"),
        ("nblocks=1000&block_size=1001", "nblocks"),  # over max_response_bytes
        ("nblocks=6&sleep_ms=1000", "sleep_ms"),  # over max_stream_duration_s
    ],
)
def test_each_limit_is_refused_up_front(small_server, path, query, parameter):
    reply = request(small_server.port, f"{path}?{query}")
    assert reply.status == 400
    assert json.loads(reply.body)["parameter"] == parameter


def test_the_csv_export_is_an_attachment_of_header_plus_rows(server):
    reply = request(server.port, "/large.csv?rows=3000&seed=42")
    assert reply.header("Content-Type") == "text/csv; charset=utf-8"
    assert reply.header("Content-Disposition") == 'attachment; filename="large.csv"'
    assert reply.header("X-Accel-Buffering") == "no"
    rows = list(csv.reader(io.StringIO(reply.body.decode("utf-8"), newline="")))
    assert rows[0] == ["id", "timestamp", "name", "amount", "comment"]
    assert len(rows) == 3001
    assert len(reply.chunks) > 1, "rows are streamed in batches, not one body"
    assert request(server.port, "/large.csv?rows=3000&seed=42").body == reply.body


def test_health_is_small_json(server):
    reply = request(server.port, "/health")
    assert reply.status == 200
    body = json.loads(reply.body)
    assert body["status"] == "ok" and body["app"] == "streamhtml"
    assert len(reply.body) < 512


def test_the_page_says_what_this_is_and_links_the_examples(server):
    reply = request(server.port, "/")
    assert reply.status == 200
    assert reply.header("Content-Type") == "text/html; charset=utf-8"
    assert "default-src 'none'" in reply.header("Content-Security-Policy")
    assert reply.header("X-Content-Type-Options") == "nosniff"
    assert b'href="streamhtml?nblocks=100&amp;block_size=512"' in reply.body


@contextlib.contextmanager
def first_chunk_read(server, path: str):
    """A connection to `server` whose stream at `path` has sent its head and a first 64 bytes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        send_request(sock, path)
        reader = sock.makefile("rb")
        assert read_head(reader).status == 200
        assert len(read_chunk(reader)) == 64
        yield sock, reader


def test_a_client_that_hangs_up_mid_stream_stops_the_stream(start_server):
    server = start_server()
    path = "/streamhtml?nblocks=100&block_size=64&sleep_ms=2000"
    with first_chunk_read(server, path) as (_, reader):
        hung_up = time.monotonic()
        reader.close()
    # The stream sleeps 2 s between blocks; it must notice well before its next write.
    (line,) = server.wait_for_request(outcome="client_gone")
    assert time.monotonic() - hung_up < 1.5
    assert line["bytes_sent"] == 64
    assert request(server.port, "/streamhtml?nblocks=2").status == 200


@pytest.mark.parametrize("left_behind", [b"G", b"GET / HTTP/1.1\r\n\r\n"])
def test_a_client_that_leaves_unread_bytes_behind_when_it_hangs_up_frees_its_slot_at_once(
    start_server, left_behind
):
    server = start_server()
    path = "/streamhtml?nblocks=3&block_size=64&sleep_ms=2000"
    with first_chunk_read(server, path) as (sock, reader):
        sock.sendall(left_behind)  # a pipelined byte or request: not a sign of presence
        time.sleep(0.1)  # it reaches the server before the hang-up
        hung_up = time.monotonic()
        reader.close()
    (line,) = server.wait_for_request(outcome="client_gone")
    assert time.monotonic() - hung_up < 1.0
    assert json.loads(request(server.port, "/health").body)["streams_in_progress"] == 0


def test_a_stream_longer_than_the_worker_timeout_completes(start_server):
    server = start_server({"GUNICORN_TIMEOUT": "2"})
    reply = request(server.port, "/streamhtml?nblocks=9&block_size=128&sleep_ms=500")
    assert [len(chunk) for chunk in reply.chunks] == [128] * 9
    server.wait_for_request(outcome="complete", bytes_sent=1152)
    assert "WORKER TIMEOUT" not in server.log()


def test_each_request_is_one_json_line_with_its_outcome_bytes_and_whole_ms(start_server):
    server = start_server({"CF_INSTANCE_INDEX": "4"})
    request_id = "0b5a6c1e-1111-4222-8333-944455556666"
    request(
        server.port,
        "/streamhtml?nblocks=3&block_size=10&sleep_ms=600",
        headers={"X-Vcap-Request-Id": request_id},
    )
    (line,) = server.wait_for_request(path="/streamhtml")
    assert line["outcome"] == "complete" and line["bytes_sent"] == 30
    # 2 pauses of 600 ms: a duration that dropped whole seconds would read under 1000.
    assert 1200 <= line["duration_ms"] < 5000
    assert line["request_id"] == request_id
    assert (line["method"], line["status"], line["instance_index"]) == ("GET", 200, "4")
    assert line["pid"] in server.worker_pids()
    assert len(server.requests_logged(path="/streamhtml")) == 1


def test_cloud_foundrys_gunicorn_cmd_args_keep_one_json_line_per_request(start_server):
    server = start_server({"GUNICORN_CMD_ARGS": "--access-logfile -"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        for path in ("/streamhtml?nblocks=1", "/health"):
            send_request(sock, path)
            read_body(reader, read_head(reader), "GET")
    # A connection's requests are answered, and logged, one after another: once the second
    # is logged, every line the first will ever have is written.
    server.wait_for_request(path="/health")
    assert len(server.requests_logged(path="/streamhtml")) == 1
    assert all(line.startswith("{") for line in server.log().splitlines()), server.log()


def test_log_format_text_is_for_a_terminal(start_server):
    server = start_server({"LOG_FORMAT": "text"})
    request(server.port, "/streamhtml?nblocks=2&block_size=10")
    server.wait_for_log(r"gunicorn.access: GET /streamhtml\?nblocks=2&block_size=10 200 20 bytes")
    assert not server.records()


@pytest.mark.parametrize(
    "variable, value",
    [
        ("STREAMHTML_MAX_BLOCK_SIZE", "1MiB"),
        ("STREAMHTML_MAX_SLEEP_MS", "-1"),
        ("GUNICORN_THREADS", "0"),
        ("WEB_CONCURRENCY", "65"),
        ("PORT", "99999"),
        ("LOG_LEVEL", "loud"),
        ("GUNICORN_WORKER_CLASS", "eventlet"),
    ],
)
def test_an_invalid_setting_stops_the_start_and_names_the_variable(
    start_server, tmp_path, variable, value
):
    temp_dir = tmp_path / "temp"
    temp_dir.mkdir()
    server = start_server({variable: value, "TMPDIR": str(temp_dir)}, wait=False)
    assert server.process.wait(20) != 0
    assert f"invalid setting: {variable}" in server.log()
    assert "Traceback" not in server.log()
    assert not list(temp_dir.iterdir()), "the refused start left its metrics directory behind"


def test_a_non_numeric_web_concurrency_stops_the_start_too(start_server):
    # gunicorn parses WEB_CONCURRENCY itself, before our config runs, and says so in a traceback.
    server = start_server({"WEB_CONCURRENCY": "two"}, wait=False)
    assert server.process.wait(20) != 0
    assert "WEB_CONCURRENCY" in server.log()


AB_RUNS = [
    ("-n 10 -c 2", "nblocks=16&block_size=1024", 10, 16 * 1024),
    ("-n 100 -c 10", "nblocks=100&block_size=512", 100, 100 * 512),
]


@pytest.mark.parametrize("flags, query, requests, length", AB_RUNS)
def test_the_samples_ab_load_tests_have_no_failures(server, flags, query, requests, length):
    assert shutil.which("ab"), "make test installs ab (Debian's apache2-utils)"
    url = f"http://127.0.0.1:{server.port}/streamhtml?{query}"
    out = subprocess.run(
        ["ab", *flags.split(), url], capture_output=True, text=True, timeout=120
    ).stdout
    assert re.search(rf"Complete requests:\s+{requests}\b", out), out
    assert re.search(r"Failed requests:\s+0\b", out), out
    assert re.search(rf"Document Length:\s+{length} bytes", out), out
    assert re.search(r"Non-2xx responses", out) is None, out


def server_end_queues(server_port: int, client_port: int) -> tuple[int, int]:
    """Bytes the server's end of one loopback connection has not sent yet, and has not read
    yet (/proc/net/tcp); (0, 0) once it is gone."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
        if (local, remote) == (server_port, client_port):
            unsent, unread = fields[4].split(":")
            return int(unsent, 16), int(unread, 16)
    return 0, 0


def wait_until(condition, what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting until {what}"
        time.sleep(0.01)


def test_pipelined_answers_the_socket_cannot_take_at_once_all_arrive_whole(server):
    # Brief answers are sent from the main loop, which never waits for a socket: once the
    # client's unread answers fill the socket, the rest is handed to a pool thread.
    path = "/streamhtml?nblocks=64&block_size=1024"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(12):
            send_request(sock, path)
        client_port = sock.getsockname()[1]
        wait_until(  # nothing read yet: the answers fill the client's window and wait
            lambda: server_end_queues(server.port, client_port)[0] > 0,
            "answers wait in the server's socket",
        )
        reader = sock.makefile("rb")
        for _ in range(12):
            reply = read_body(reader, read_head(reader), "GET")
            assert reply.status == 200
            assert len(reply.body) == 64 * 1024


# The last answer on a connection must arrive whole however the client goes on sending. A
# close() with client bytes unread resets the connection, and a reset throws away what the
# server's socket has not sent yet. So the server lingers (RFC 9112 §9.6) whenever the client
# may still be sending: it sent a body, more requests, or did not ask to close. A client that
# asked to close and sent nothing more is closed at once.
BIG = b"GET /streamhtml?nblocks=64&block_size=16384 "
LAST_ANSWERS = [
    # (what the client sends first, what it sends while the answer is still on its way)
    (BIG + b"HTTP/1.0\r\n\r\n", b""),
    (BIG + b"HTTP/1.1\r\nConnection: close\r\n\r\n", b""),
    (BIG + b"HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"b" * 1000, b"b" * 60_000),
    (BIG + b"HTTP/1.0\r\n\r\n" + b"GET /health HTTP/1.0\r\n\r\n", b""),
    (BIG + b"HTTP/1.0\r\n\r\n", b"GET /health HTTP/1.0\r\n\r\n"),
    (BIG + b"HTTP/1.1\r\nConnection: close\r\n\r\n", b"GET /health HTTP/1.1\r\n\r\n"),
]


@pytest.mark.parametrize(
    "first, then",
    LAST_ANSWERS,
    ids=["http/1.0", "close", "body", "pipelined", "sent after 1.0", "sent after close"],
)
def test_the_last_answer_arrives_whole_however_the_client_goes_on_sending(server, first, then):
    with socket.socket() as sock:
        # A small window: most of the answer is still in the server's socket when it closes.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(first)
        client_port = sock.getsockname()[1]
        wait_until(
            lambda: server_end_queues(server.port, client_port)[0] > 0,
            "the answer is on its way, past what the client's window takes",
        )
        sock.sendall(then)
        wait_until(  # the server has them, unread, when it comes to close
            lambda: server_end_queues(server.port, client_port)[1] >= len(then),
            "the server's socket holds what the client sent after",
        )
        received = bytearray()
        while data := sock.recv(65536):  # a reset raises ConnectionResetError here
            received += data
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 200 ", head), head
    assert body.count(b"<br>\n") == 64, "the answer was cut short"


def test_a_request_full_of_non_ascii_text_writes_at_most_the_log_lines_byte_limit(server):
    from streamhtml.logs import MAX_REQUEST_LINE_BYTES

    # 5.6 KB of head, most of it characters JSON writes as 6 bytes each.
    reply = request(
        server.port,
        "/" + "%C3%A9" * 300 + "?q=" + "%FF" * 600,
        headers={"User-Agent": "\xff" * 1000, "X-Forwarded-For": "\xe9" * 1000},
    )
    assert reply.status == 404
    request_id = reply.header("X-Vcap-Request-Id")
    deadline = time.monotonic() + 5
    while not (lines := [line for line in server.log().splitlines() if request_id in line]):
        assert time.monotonic() < deadline, "no request line"
        time.sleep(0.05)
    (line,) = lines
    assert "\\u00c3\\u00a9" in line
    assert len(line.encode()) + 1 <= MAX_REQUEST_LINE_BYTES
