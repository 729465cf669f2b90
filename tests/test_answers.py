"""Answers that are not streams, against clients that do not read them: a deadline of their
own, a cap on those waiting on pool threads, and the memory unread answers hold counted
against the budget (streamhtml/answers.py). On the wire, against real gunicorn."""

import re
import socket
import time

from support import request

PAGE_JS = "/static/page.js"  # 23 KiB: a few fill a small send buffer


def unread_pipelined(port: int, path: str, count: int) -> socket.socket:
    """A connection that asks for `path` `count` times in one go, with a 4 KiB window, and
    never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode() * count)
    return sock


def was_reset(sock: socket.socket) -> bool:
    """Whether the server reset `sock`: its bytes read until a reset, or a quiet 0.5 s."""
    sock.settimeout(0.5)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def dropped(port: int, reason: str) -> float:
    body = request(port, "/metrics").body.decode()
    found = re.search(
        rf'^streamhtml_connections_dropped_total{{reason="{reason}"}} (\S+)$', body, re.M
    )
    return float(found.group(1)) if found else 0.0


def test_an_answer_its_client_does_not_take_is_cut_at_the_answer_timeout(start_server):
    server = start_server(
        {"STREAMHTML_ANSWER_TIMEOUT_S": "2", "STREAMHTML_SEND_BUFFER_BYTES": "16384"}
    )
    sent_at = time.monotonic()
    with unread_pipelined(server.port, PAGE_JS, 20):
        (line,) = server.wait_for_request(outcome="deadline", timeout_s=10)
        waited_s = time.monotonic() - sent_at
    assert line["path"] == PAGE_JS and line["status"] == 200
    # Its own seconds, not the stall timer's minute.
    assert 1.5 <= waited_s < 6, waited_s
    assert request(server.port, "/health").status == 200


def test_past_the_cap_an_answer_that_would_wait_is_cut_at_once(start_server):
    server = start_server(
        {
            "WEB_CONCURRENCY": "1",
            "STREAMHTML_ANSWER_TIMEOUT_S": "5",
            "STREAMHTML_MAX_WAITING_ANSWERS": "1",
            "STREAMHTML_SEND_BUFFER_BYTES": "16384",
        }
    )
    first = unread_pipelined(server.port, PAGE_JS, 20)
    time.sleep(0.3)  # the first takes the one place to wait
    with first, unread_pipelined(server.port, PAGE_JS, 20):
        (cut,) = server.wait_for_request(outcome="deadline", timeout_s=3)
        assert cut["duration_ms"] < 1000
        assert request(server.port, "/health").status == 200
        waited = server.wait_for_request(outcome="deadline", count=2, timeout_s=10)
    assert max(line["duration_ms"] for line in waited) >= 4000


def test_idle_connections_whose_answers_are_unread_are_reset_past_their_share_of_memory(
    start_server,
):
    # Streams may hold 4 MiB of an 8M quota; unread answers a quarter of that, 1 MiB. Each
    # connection below leaves some 90 KiB unread, charged twice that.
    server = start_server({"WEB_CONCURRENCY": "1", "MEMORY_LIMIT": "8m"})
    held = [unread_pipelined(server.port, PAGE_JS, 4) for _ in range(12)]
    try:
        deadline = time.monotonic() + 5
        while dropped(server.port, "unread_answers") < 6:
            assert time.monotonic() < deadline, "no idle connection was reset"
            time.sleep(0.1)
        # Oldest first: at least half of the six oldest went (newest first, none or one
        # would). Not exactly the six oldest: the very oldest may still be on a pool thread,
        # its answers not all in the socket yet, and only idle connections are reset; and
        # one past 32 KiB unread when every waiting place is taken goes whatever its age.
        reset = [was_reset(sock) for sock in held]
        assert sum(reset) >= 6, reset
        assert sum(reset[:6]) >= 3, reset
        assert request(server.port, "/streamhtml?nblocks=2&block_size=64").status == 200
    finally:
        for sock in held:
            sock.close()
