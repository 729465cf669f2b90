"""Clients that are slow, silent or never read: every one is cut at its setting, and its
thread, slot and connection come back. Each test runs gunicorn as the Procfile does."""

import json
import socket
import time

import pytest
from siege_support import connect
from support import read_chunk, read_head, request, send_request, streams_in_progress, wait_for

# A reply this large cannot sit in the socket buffers of a client that reads nothing.
NEVER_FITS = "/streamhtml?nblocks=64&block_size=1048576"


def closed_by_server(sock: socket.socket, timeout_s: float) -> float:
    """Seconds until the server ended the connection (EOF or reset)."""
    started = time.monotonic()
    sock.settimeout(timeout_s)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_a_stream_whose_client_reads_nothing_is_cut_at_the_stall_timeout(start_server):
    server = start_server({"STREAMHTML_STALL_TIMEOUT_S": "2", "STREAMHTML_MAX_STREAMS": "2"})
    stalled = [connect(server.port, rcvbuf=4096) for _ in range(2)]
    for sock in stalled:
        send_request(sock, NEVER_FITS)
    opened = time.monotonic()
    try:
        wait_for(lambda: streams_in_progress(server.port) == 2, 5)
        assert request(server.port, "/streamhtml?nblocks=1").status == 503, "both slots held"
        lines = server.wait_for_request(outcome="stalled", count=2, timeout_s=10)
        cut_after = time.monotonic() - opened
        assert 2 <= cut_after <= 2 + 2.5, f"cut after {cut_after:.1f} s"
        assert all(0 < line["bytes_sent"] < 64 * 1048576 for line in lines)
        # The slots are free again, and the server says so at once.
        wait_for(lambda: streams_in_progress(server.port) == 0, 2)
        assert request(server.port, "/streamhtml?nblocks=1").status == 200
    finally:
        for sock in stalled:
            sock.close()


def test_a_slow_reader_is_cut_at_the_streams_deadline(start_server):
    server = start_server({"STREAMHTML_MAX_STREAM_DURATION_S": "4"})
    sock = connect(server.port, rcvbuf=4096)
    send_request(sock, "/streamhtml?nblocks=10000&block_size=1024")
    started = time.monotonic()
    received = 0
    with sock:
        try:
            while chunk := sock.recv(1024):  # about 8 KB/s: it never stalls, it is slow
                received += len(chunk)
                time.sleep(0.125)
        except ConnectionResetError:
            pass
    took = time.monotonic() - started
    (line,) = server.wait_for_request(outcome="deadline")
    assert 4 - 0.5 <= took <= 4 + 2, f"cut after {took:.1f} s"
    assert 0 < line["bytes_sent"] < 10000 * 1024
    assert received < 10000 * 1024
    assert streams_in_progress(server.port) == 0


def test_the_deadline_holds_for_csv_downloads_too(start_server):
    server = start_server({"STREAMHTML_MAX_STREAM_DURATION_S": "2"})
    sock = connect(server.port, rcvbuf=4096)
    send_request(sock, "/large.csv?rows=1000000")
    with sock:
        took = closed_by_server(sock, timeout_s=10) if sock.recv(1) else 0.0
    assert took < 2 + 2
    server.wait_for_request(outcome="deadline", path="/large.csv")


def test_a_paced_stream_past_its_deadline_is_cut_during_a_pause(start_server):
    # nblocks x sleep_ms fits the deadline up front; a slow start must not stretch it.
    server = start_server({"STREAMHTML_MAX_STREAM_DURATION_S": "3"})
    reply_started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        send_request(sock, "/streamhtml?nblocks=3&block_size=10&sleep_ms=1000")
        reader = sock.makefile("rb")
        assert read_head(reader).status == 200
        time.sleep(2.5)  # the client dawdles; the server keeps its own clock
        chunks = 0
        try:
            while read_chunk(reader) is not None:
                chunks += 1
        except (ConnectionError, ValueError):
            pass
    assert time.monotonic() - reply_started < 3 + 2
    assert chunks == 3, "blocks made within the deadline are delivered"


@pytest.mark.parametrize(
    "sent",
    [b"", b"G", b"GET /health HTTP/1.1\r\nHost: x\r\n"],
    ids=["nothing", "one byte", "all but the blank line"],
)
def test_a_connection_without_a_whole_head_is_closed_at_the_header_timeout(start_server, sent):
    server = start_server({"STREAMHTML_HEADER_TIMEOUT_S": "2"})
    with connect(server.port) as sock:
        sock.sendall(sent)
        took = closed_by_server(sock, timeout_s=10)
    assert 2 - 0.1 <= took <= 2 + 1.5, f"closed after {took:.1f} s"
    assert request(server.port, "/health").status == 200


def test_a_head_sent_a_byte_at_a_time_is_cut_at_the_timeout_however_steady(start_server):
    server = start_server({"STREAMHTML_HEADER_TIMEOUT_S": "2"})
    head = b"GET /health HTTP/1.1\r\n" + b"X-Padding: " + b"p" * 200 + b"\r\n\r\n"
    started = time.monotonic()
    with connect(server.port) as sock:
        try:
            for byte in head:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
            reply = sock.recv(100)
        except (BrokenPipeError, ConnectionResetError):
            reply = b""
    assert reply == b"", "a head that took longer than the timeout was served"
    assert time.monotonic() - started < 2 + 1.5


@pytest.mark.parametrize("ending", [b"", b"\r\n"], ids=["still coming", "whole"])
def test_a_head_over_the_size_limit_gets_a_json_431(start_server, ending):
    server = start_server({"STREAMHTML_MAX_HEAD_BYTES": "2048"})
    with connect(server.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n" + b"X-Junk: j\r\n" * 190 + ending)
        reader = sock.makefile("rb")
        head = read_head(reader)
        body = reader.read(int(head.header("Content-Length")))
    assert head.status == 431
    assert json.loads(body)["error"] == "Request Header Fields Too Large"
    server.wait_for_request(status=431)


def test_a_request_with_a_body_is_answered_and_the_connection_closed(start_server):
    # No route reads a body: draining one would hold a thread, so the answer closes instead.
    server = start_server()
    with connect(server.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nab")
        reader = sock.makefile("rb")
        head = read_head(reader)
        reader.read(int(head.header("Content-Length")))
        assert head.status == 200 and head.header("Connection") == "close"
        assert closed_by_server(sock, timeout_s=5) < 3


def test_at_the_connection_cap_idle_connections_make_room_for_new_ones(start_server):
    server = start_server(
        {"GUNICORN_WORKER_CONNECTIONS": "100", "GUNICORN_THREADS": "32", "WEB_CONCURRENCY": "1"}
    )
    idle = [connect(server.port) for _ in range(300)]
    try:
        for _ in range(10):
            assert request(server.port, "/health", timeout_s=2).status == 200
        server.wait_for_log("closed connections in the last .* evicted", timeout_s=15)
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.slow
@pytest.mark.idle_since_start
def test_a_kept_alive_connection_idle_for_95_s_still_serves(connection_idle_since_the_start):
    # gorouter keeps an idle connection to the app 90 s and may send the next request down it
    # at any moment: the app must keep it longer (GUNICORN_KEEPALIVE, 120 s). The connection
    # has idled since the session began (conftest.py), so this wait overlaps other tests.
    idle = connection_idle_since_the_start
    assert idle.done.wait(idle.idle_for_s + 30), "the idle connection's request never finished"
    assert idle.error is None, f"after {idle.idle_s:.0f} s idle: {idle.error!r}"
    assert idle.idle_s >= idle.idle_for_s
    assert idle.status == 200


def test_half_a_head_pipelined_behind_a_request_is_cut_at_the_header_timeout(start_server):
    # gthread hands a connection whose buffer holds the start of the next request straight to
    # a thread; here it waits in the poller like any other head.
    server = start_server({"STREAMHTML_HEADER_TIMEOUT_S": "2"})
    with connect(server.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /heal")
        reader = sock.makefile("rb")
        head = read_head(reader)
        reader.read(int(head.header("Content-Length")))
        assert head.status == 200
        took = closed_by_server(sock, timeout_s=10)
    assert took <= 2 + 1.5, f"closed after {took:.1f} s"
