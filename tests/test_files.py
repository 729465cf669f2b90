"""GET /files/<path> on the wire: real files sent with sendfile, byte for byte, Range and
conditional requests as Werkzeug answers them, every way out of the directory refused, and
the limits of a stream (stall, deadline, shutdown, hang-up) held for a 1 GiB file."""

import contextlib
import json
import re
import signal
import socket
import threading
import time
from email.utils import formatdate

import pytest
from files_support import SECRET, GiB, read_syscalls, rss_bytes
from flask import Flask
from siege_support import connect
from support import read_body, read_head, request, send_request, streams_in_progress, wait_for
from werkzeug.utils import send_file
from werkzeug.wsgi import _RangeWrapper

from streamhtml.sendfile import FileBody, file_range
from streamhtml.settings import Settings, small_limits, small_limits_env
from streamhtml.web import create_app

ROUTE = "/files/<path:name>"


def streamed_bytes(port: int) -> int:
    text = request(port, "/metrics").body.decode()
    found = re.search(
        r'^streamhtml_streamed_bytes_total\{endpoint="/files/<path:name>"\} (\S+)$', text, re.M
    )
    return int(float(found[1])) if found else 0


# --- whole files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small.bin", "medium.bin", "link_in", "empty.txt"])
def test_a_file_comes_whole_and_byte_exact_with_its_length_not_chunked(
    files_server, files_dir, name
):
    expected = {"small.bin": files_dir.small, "link_in": files_dir.small, "empty.txt": b""}.get(
        name, files_dir.medium
    )
    reply = request(files_server.port, f"/files/{name}")
    assert reply.status == 200
    assert reply.body == expected
    assert reply.header("Content-Length") == str(len(expected))
    assert reply.header("Transfer-Encoding") is None
    assert reply.header("ETag") and reply.header("Last-Modified")
    assert reply.header("Accept-Ranges") == "bytes"
    [line] = files_server.wait_for_request(path=f"/files/{name}", status=200)
    assert line["bytes_sent"] == len(expected) and line["outcome"] == "complete"
    assert line["route"] == ROUTE


def test_an_html_file_is_sandboxed_and_never_sniffed(files_server):
    reply = request(files_server.port, "/files/page.html")
    assert reply.status == 200 and reply.header("Content-Type").startswith("text/html")
    assert "sandbox" in reply.header("Content-Security-Policy")
    assert reply.header("X-Content-Type-Options") == "nosniff"


def test_files_follow_one_another_on_a_kept_alive_connection(files_server, files_dir):
    with socket.create_connection(("127.0.0.1", files_server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        for name, expected in [
            ("small.bin", files_dir.small),
            ("medium.bin", files_dir.medium),
        ] * 2:
            send_request(sock, f"/files/{name}")
            assert read_body(reader, read_head(reader), "GET").body == expected


def test_head_gets_the_headers_of_get_and_no_body_nor_a_stream(files_server, files_dir):
    with socket.create_connection(("127.0.0.1", files_server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        send_request(sock, "/files/small.bin", method="HEAD")
        head = read_head(reader)
        assert head.status == 200 and head.header("Content-Length") == str(len(files_dir.small))
        # The next answer on the connection starts right after the head: no body was sent.
        send_request(sock, "/health")
        assert read_body(reader, read_head(reader), "GET").status == 200


# --- Range -----------------------------------------------------------------------------------

SIZE = 300_000
# Every single-range form of RFC 9110 §14.1.2, and what of small.bin each asks for.
RANGES = [
    ("bytes=0-0", 0, 1),
    ("bytes=10-19", 10, 20),
    ("bytes=0-", 0, SIZE),
    ("bytes=299990-", 299_990, SIZE),
    ("bytes=-10", SIZE - 10, SIZE),
    ("bytes=-1", SIZE - 1, SIZE),
    ("bytes=-999999", 0, SIZE),  # a suffix longer than the file is the whole file
    ("bytes=299999-999999", 299_999, SIZE),  # a last position past the end is clipped
    ("bytes=123456-123456", 123_456, 123_457),
]


@pytest.mark.parametrize("wanted, start, end", RANGES)
def test_a_single_range_is_a_206_of_exactly_those_bytes(
    files_server, files_dir, wanted, start, end
):
    reply = request(files_server.port, "/files/small.bin", headers={"Range": wanted})
    assert reply.status == 206
    assert reply.body == files_dir.small[start:end]
    assert reply.header("Content-Range") == f"bytes {start}-{end - 1}/{SIZE}"
    assert reply.header("Content-Length") == str(end - start)


@pytest.mark.parametrize(
    "wanted",
    [
        "bytes=300000-",  # first position at the end
        "bytes=999999-1000000",
        "bytes=20-10",  # last before first
        "bytes=-0",
        "bytes=abc",
        "bytes=0-1,5-6",  # multi-range: Werkzeug answers one range only, and refuses more
        "bytes=0-1, 0-1",
    ],
)
def test_a_range_werkzeug_cannot_satisfy_is_a_json_416_with_the_length(files_server, wanted):
    reply = request(files_server.port, "/files/small.bin", headers={"Range": wanted})
    assert reply.status == 416
    assert reply.header("Content-Range") == f"bytes */{SIZE}"
    assert json.loads(reply.body)["status"] == 416


def test_a_range_deep_in_a_1_gib_file_is_sent_from_its_offset(files_server):
    reply = request(files_server.port, "/files/big.bin", headers={"Range": f"bytes={GiB - 5}-"})
    assert reply.status == 206 and reply.body == b"\0" * 5


def test_an_if_range_that_no_longer_matches_gets_the_whole_file(files_server, files_dir):
    headers = {"Range": "bytes=0-9", "If-Range": '"not-the-etag"'}
    reply = request(files_server.port, "/files/small.bin", headers=headers)
    assert reply.status == 200 and reply.body == files_dir.small


def test_a_range_counts_the_bytes_it_sent_in_the_log_line_and_the_metrics(start_server, files_dir):
    # A server of its own: the shared one's earlier downloads may still be on their way to
    # the metrics (a worker writes its counts within a second), and would be counted here.
    server = start_server({**small_limits_env(), "STREAMHTML_FILES_DIR": str(files_dir.root)})
    path = "/files/medium.bin"
    reply = request(server.port, path, headers={"Range": "bytes=1000-1999999"})
    assert reply.status == 206 and len(reply.body) == 1_999_000
    [line] = server.wait_for_request(path=path, status=206)
    assert line["bytes_sent"] == 1_999_000 and line["outcome"] == "complete"
    wait_for(lambda: streamed_bytes(server.port) == 1_999_000, 5)


# --- conditional requests ---------------------------------------------------------------------


def test_a_matching_etag_or_a_later_date_gets_a_304_without_a_body(files_server):
    first = request(files_server.port, "/files/small.bin")
    etag, modified = first.header("ETag"), first.header("Last-Modified")
    for headers in (
        {"If-None-Match": etag},
        {"If-None-Match": f'"other", {etag}'},
        {"If-Modified-Since": modified},
        {"If-Modified-Since": formatdate(time.time() + 3600, usegmt=True)},
    ):
        reply = request(files_server.port, "/files/small.bin", headers=headers)
        assert reply.status == 304, headers
        assert reply.body == b"" and reply.header("ETag") == etag


def test_a_stale_validator_gets_the_whole_file(files_server, files_dir):
    for headers in (
        {"If-None-Match": '"stale"'},
        {"If-Modified-Since": formatdate(0, usegmt=True)},
    ):
        reply = request(files_server.port, "/files/small.bin", headers=headers)
        assert reply.status == 200 and reply.body == files_dir.small


# --- never out of the directory ---------------------------------------------------------------

REFUSED = [
    "/files/../outside/secret.txt",
    "/files/..%2foutside%2fsecret.txt",
    "/files/%2e%2e/outside/secret.txt",
    "/files/%2E%2E%2Foutside%2Fsecret.txt",
    "/files/sub/../../outside/secret.txt",
    "/files/sub/%2e%2e/%2e%2e/outside/secret.txt",
    "/files/..",
    "/files/%2e%2e",
    "/files//etc/passwd",
    "/files/%2fetc%2fpasswd",
    "/files/%2Fetc/passwd",
    "/files/sub%5c..%5c..%5coutside%5csecret.txt",  # backslashes
    "/files/link_out",  # a symlink to a file outside
    "/files/sub/relative_out",  # a relative symlink that climbs out
    "/files/dir_out/secret.txt",  # through a symlinked directory outside
    "/files/",  # the directory itself: no listing
    "/files/sub",  # a directory: no listing
    "/files/sub/",
    "/files/small.bin/",
    "/files/.env",  # hidden names, directly or through a link
    "/files/.git/config",
    "/files/link_hidden",
    "/files/./small.bin",
    "/files/fifo",  # not a regular file: opening it would wait forever
    "/files/no-such-file",
    "/files/small.bin%0a",  # a newline: the route's rule does not match it at all
    "/files/" + "a" * 300,  # longer than a file name may be
]


@pytest.mark.parametrize("path", REFUSED)
def test_no_way_out_of_the_directory_and_no_hidden_or_odd_file_is_served(files_server, path):
    reply = request(files_server.port, path, timeout_s=5)
    assert reply.status in (400, 404), (path, reply.status)
    assert json.loads(reply.body)["status"] == reply.status
    assert SECRET not in reply.body


@pytest.mark.parametrize(
    "path", ["/files/small.bin%00", "/files/%00", "/files/a%1bb", "/files/%7f"]
)
def test_a_nul_or_control_character_in_the_path_is_a_json_400(files_server, path):
    reply = request(files_server.port, path)
    assert reply.status == 400
    assert json.loads(reply.body)["error"] == "invalid path"


def test_without_a_files_directory_the_answer_names_the_setting():
    client = create_app(Settings(limits=small_limits())).test_client()
    for path in ("/files/anything.bin", "/files/"):
        reply = client.get(path)
        assert reply.status_code == 404
        assert "STREAMHTML_FILES_DIR" in reply.get_json()["detail"]


# --- the limits of a stream ---------------------------------------------------------------------


def test_a_client_that_never_reads_a_1_gib_file_is_cut_at_the_stall_timeout(files_server):
    stall_s = int(small_limits_env()["STREAMHTML_STALL_TIMEOUT_S"])
    sock = connect(files_server.port, rcvbuf=4096)
    try:
        send_request(sock, "/files/big.bin?never-reads")
        opened = time.monotonic()
        wait_for(lambda: streams_in_progress(files_server.port) >= 1, 5)
        [line] = files_server.wait_for_request(
            query="never-reads", outcome="stalled", timeout_s=stall_s + 5
        )
        cut_after = time.monotonic() - opened
        assert stall_s <= cut_after <= stall_s + 2.5, f"cut after {cut_after:.1f} s"
        assert 0 < line["bytes_sent"] < GiB
        wait_for(lambda: streams_in_progress(files_server.port) == 0, 2)
    finally:
        sock.close()


def test_a_hang_up_mid_file_is_noticed_and_frees_the_slot(files_server):
    sock = connect(files_server.port, rcvbuf=65536)
    send_request(sock, "/files/big.bin?hangs-up")
    reader = sock.makefile("rb")
    assert read_head(reader).status == 200
    assert len(reader.read(1024 * 1024)) == 1024 * 1024
    wait_for(lambda: streams_in_progress(files_server.port) == 1, 2)
    reader.close()
    sock.close()
    wait_for(lambda: streams_in_progress(files_server.port) == 0, 2)
    [line] = files_server.wait_for_request(query="hangs-up", outcome="client_gone")
    assert 1024 * 1024 <= line["bytes_sent"] < GiB


def test_a_slow_reader_of_a_1_gib_file_is_cut_at_the_streams_deadline(files_server):
    deadline_s = int(small_limits_env()["STREAMHTML_MAX_STREAM_DURATION_S"])
    sock = connect(files_server.port, rcvbuf=65536)
    send_request(sock, "/files/big.bin?reads-slowly")
    opened = time.monotonic()
    try:
        # 64 KiB every 50 ms: never stalled, far too slow to finish before the deadline.
        while time.monotonic() - opened < deadline_s + 5:
            try:
                if not sock.recv(65536):
                    break
            except OSError:
                break
            time.sleep(0.05)
        [line] = files_server.wait_for_request(query="reads-slowly", outcome="deadline")
        assert deadline_s <= time.monotonic() - opened <= deadline_s + 3
        assert 0 < line["bytes_sent"] < GiB
    finally:
        sock.close()


def test_a_1_gib_file_goes_out_by_sendfile_in_flat_memory(start_server, files_dir):
    # A deadline of its own: the small one (5 s) would cut it on a loaded machine.
    env = {
        **small_limits_env(),
        "STREAMHTML_FILES_DIR": str(files_dir.root),
        "STREAMHTML_MAX_STREAM_DURATION_S": "120",
    }
    files_server = start_server(env)
    pids = files_server.worker_pids()
    before = {pid: rss_bytes(pid) for pid in pids}
    reads_before = sum(map(read_syscalls, pids))
    with socket.create_connection(("127.0.0.1", files_server.port), timeout=10) as sock:
        send_request(sock, "/files/big.bin?memory")
        reader = sock.makefile("rb", buffering=0)
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += reader.read(1)
        received, buffer = 0, bytearray(1 << 20)
        while received < GiB and (got := sock.recv_into(buffer)):
            received += got
    assert received == GiB
    files_server.wait_for_request(query="memory", outcome="complete")
    growth = max(rss_bytes(pid) - before[pid] for pid in pids)
    assert growth < 8 * 1024 * 1024, f"a worker grew {growth / 2**20:.1f} MiB"
    # Read and sent, the file would take 131,072 reads of 8 KiB (Werkzeug's block); sendfile
    # calls move what the send buffer takes, 128 KiB or more each.
    reads = sum(map(read_syscalls, pids)) - reads_before
    assert reads < GiB // (32 * 1024), f"{reads} read calls: not sent by sendfile"


def test_health_answers_within_a_second_while_20_downloads_run(files_server):
    # Ten clients read as fast as they can, ten read nothing: both kinds hold a thread.
    stop = threading.Event()
    downloads = [connect(files_server.port, rcvbuf=None if n < 10 else 4096) for n in range(20)]

    def read_fast(sock):
        buffer = bytearray(1 << 20)
        with contextlib.suppress(OSError):
            while not stop.is_set() and sock.recv_into(buffer):
                pass

    readers = [threading.Thread(target=read_fast, args=(s,), daemon=True) for s in downloads[:10]]
    try:
        for sock in downloads:
            send_request(sock, "/files/big.bin?one-of-20")
        for reader in readers:
            reader.start()
        wait_for(lambda: streams_in_progress(files_server.port) == 20, 2)
        for _ in range(5):
            started = time.monotonic()
            assert request(files_server.port, "/health", timeout_s=2).status == 200
            assert time.monotonic() - started < 1.0
            time.sleep(0.1)
        assert streams_in_progress(files_server.port) == 20, "all 20 still running"
    finally:
        stop.set()
        for sock in downloads:
            sock.close()
    wait_for(lambda: streams_in_progress(files_server.port) == 0, 3)


def test_a_download_is_admitted_as_a_stream_and_refused_a_slot_when_full(start_server, files_dir):
    env = {**small_limits_env(), "STREAMHTML_FILES_DIR": str(files_dir.root)}
    server = start_server({**env, "STREAMHTML_MAX_STREAMS": "1"})
    holder = connect(server.port, rcvbuf=4096)
    try:
        send_request(holder, "/files/big.bin")
        wait_for(lambda: streams_in_progress(server.port) == 1, 2)
        refused = request(server.port, "/files/small.bin")
        assert refused.status == 503 and refused.header("Retry-After") == "1"
        assert json.loads(refused.body)["reason"] == "instance full"
        # HEAD and a 304 send no body: they take no slot.
        assert request(server.port, "/files/small.bin", method="HEAD").status == 200
        etag = request(server.port, "/files/small.bin", method="HEAD").header("ETag")
        assert (
            request(server.port, "/files/small.bin", headers={"If-None-Match": etag}).status == 304
        )
    finally:
        holder.close()
    wait_for(lambda: streams_in_progress(server.port) == 0, 2)
    assert request(server.port, "/files/small.bin").body == files_dir.small


def test_a_download_still_running_at_shutdown_is_cut_in_the_grace(start_server, files_dir):
    env = {
        **small_limits_env(),
        "STREAMHTML_FILES_DIR": str(files_dir.root),
        "GUNICORN_GRACEFUL_TIMEOUT": "1",
    }
    server = start_server(env)
    sock = connect(server.port, rcvbuf=65536)
    stop = threading.Event()

    def read_slowly():
        while not stop.is_set():
            try:
                if not sock.recv(65536):
                    return
            except OSError:
                return
            time.sleep(0.05)

    reader = threading.Thread(target=read_slowly, daemon=True)
    send_request(sock, "/files/big.bin?at-shutdown")
    reader.start()
    try:
        wait_for(lambda: streams_in_progress(server.port) == 1, 2)
        started = time.monotonic()
        server.stop(signal.SIGTERM, timeout_s=10)
        assert time.monotonic() - started < 5
        assert server.requests_logged(query="at-shutdown", outcome="cut_by_shutdown")
    finally:
        stop.set()
        sock.close()


# --- the seams: Werkzeug's send_file, as the worker reads it ------------------------------------


def test_werkzeugs_range_wrapper_is_read_for_the_offset_and_length_of_the_file(files_dir):
    # streamhtml/sendfile.py reads _RangeWrapper's iterable, start_byte, byte_range and
    # read_length, and hands Werkzeug a seekable wrapper: if Werkzeug changes either, ranges
    # would be read and copied (still right on the wire), and this fails.
    app = Flask(__name__)
    path = files_dir.root / "small.bin"
    environ_base = {"wsgi.file_wrapper": FileBody}
    with app.test_request_context(headers={"Range": "bytes=100-199"}, environ_base=environ_base):
        from flask import request as flask_request

        response = send_file(path, environ=flask_request.environ, conditional=True)
        assert response.status_code == 206
        assert isinstance(response.response, _RangeWrapper)
        found = file_range(response.response, response.content_length)
        assert found is not None and (found.offset, found.length) == (100, 100)
        response.close()
    with app.test_request_context(environ_base=environ_base):
        response = send_file(path, environ=flask_request.environ, conditional=True)
        found = file_range(response.response, response.content_length)
        assert found is not None and (found.offset, found.length) == (0, 300_000)
        response.close()
