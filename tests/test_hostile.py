"""Hostile input on the wire: fuzzed queries, oversized requests, reflection attempts."""

import json
import socket
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import read_body, read_head, request, send_request, wait_for_samples

ENDPOINTS = ["/", "/health", "/streamhtml", "/large.csv", "/nowhere", "/streamhtml/"]
PARAMETERS = ["nblocks", "block_size", "sleep_ms", "use_static_data", "rows", "seed"]
# What a server must never show a client: tracebacks, file paths, module names.
LEAKS = [b"Traceback", b'File "', b".py", b"werkzeug", b"streamhtml/"]

numbers = st.integers(min_value=-(10**15), max_value=10**15).map(str)
weird = st.sampled_from(
    ["", " ", "+1", "1e9", "0x1", "1_0", "\u0663", "\uff11", "NaN", "<script>", "%00", "1;2"]
)
values = st.one_of(numbers, weird, st.text(max_size=20))
queries = st.lists(
    st.tuples(st.one_of(st.sampled_from(PARAMETERS), st.text(max_size=8)), values), max_size=5
)


class Connection:
    """One keep-alive connection, reopened when the server closes it."""

    def __init__(self, port):
        self.port = port
        self.sock = None

    def get(self, method, path):
        for _ in range(2):
            try:
                if self.sock is None:
                    self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                    self.reader = self.sock.makefile("rb")
                send_request(self.sock, path, method)
                reply = read_body(self.reader, read_head(self.reader), method)
                if (reply.header("Connection") or "").lower() == "close":
                    self.close()
                return reply
            except (ConnectionError, OSError):
                self.close()
        raise ConnectionError(f"no answer for {method} {path}")

    def close(self):
        if self.sock is not None:
            self.reader.close()
            self.sock.close()
            self.sock = None


def test_thousands_of_fuzzed_requests_get_no_5xx_and_no_internals(small_server):
    connection = Connection(small_server.port)
    statuses = {}

    @settings(
        max_examples=2500,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        method=st.one_of(  # mostly GET, so most cases reach the parameter parsing
            st.just("GET"), st.sampled_from(["HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
        ),
        endpoint=st.sampled_from(ENDPOINTS),
        query=queries,
    )
    def check(method, endpoint, query):
        encoded = "&".join(
            f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in query
        )
        path = f"{endpoint}?{encoded}" if encoded else endpoint
        reply = connection.get(method, path)
        statuses[reply.status] = statuses.get(reply.status, 0) + 1
        assert reply.status < 500, (path, reply.body[:300])
        for leak in LEAKS:
            assert leak not in reply.body, (path, leak)
        if reply.status >= 400 and method != "HEAD":
            assert reply.header("Content-Type") == "application/json"
            assert set(json.loads(reply.body)) >= {"status", "error", "detail"}

    try:
        check()
    finally:
        connection.close()
    print(f"fuzzed statuses: {dict(sorted(statuses.items()))}")
    assert statuses.get(200, 0) and statuses.get(400, 0), "the fuzzer missed whole classes"
    assert request(small_server.port, "/health").status == 200


def raw_status(port: int, data: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return int(sock.makefile("rb").readline().split()[1])


def test_oversized_requests_get_gunicorns_4xx_and_the_server_keeps_serving(server):
    oversized = {
        "request line": b"GET /streamhtml?x=" + b"a" * 8000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        "one header": b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
        "many headers": b"GET / HTTP/1.1\r\nHost: t\r\n"
        + b"".join(b"X-%d: y\r\n" % n for n in range(150))
        + b"\r\n",
        "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
    }
    for name, data in oversized.items():
        status = raw_status(server.port, data)
        assert 400 <= status < 500, name
    assert request(server.port, "/streamhtml?nblocks=2").status == 200


def test_nothing_from_the_request_is_reflected_unescaped(server):
    marker = "<script>alert(1)</script>"
    replies = [
        request(server.port, f"/streamhtml?nblocks={quote(marker)}"),
        request(server.port, f"/{quote(marker)}"),
        request(server.port, "/", headers={"Host": marker.replace(" ", "")}),
        request(server.port, "/health", headers={"X-Vcap-Request-Id": marker}),
    ]
    for reply in replies:
        assert b"<script>" not in reply.body
        assert all("<" not in value for _, value in reply.headers)


def test_a_newline_cannot_be_smuggled_into_a_header(server):
    reply = request(server.port, "/health", headers={"X-Vcap-Request-Id": "abc%0d%0aSet-Cookie:x"})
    assert reply.header("Set-Cookie") is None
    assert "%0d" not in reply.header("X-Vcap-Request-Id")


def pipelined(port: int, heads: list[bytes], expected_status: int, per_write: int = 500) -> None:
    """Send `heads` in writes of `per_write` requests on one connection each, read every answer."""
    for batch in range(0, len(heads), per_write):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"".join(heads[batch : batch + per_write]))
            reader = sock.makefile("rb")
            for _ in heads[batch : batch + per_write]:
                assert read_body(reader, read_head(reader), "GET").status == expected_status


def invented_methods(count: int) -> list[str]:
    """Methods gunicorn accepts as tokens and no route knows: QMETHODAAAA, QMETHODAAAB, ..."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return ["QMETHOD" + "".join(letters[(n // 26**k) % 26] for k in range(4)) for n in range(count)]


def test_thousands_of_invented_methods_do_not_grow_metrics(start_server):
    server = start_server()
    heads = [
        f"{method} /health HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        for method in invented_methods(25_000)
    ]
    pipelined(server.port, heads, 405)
    refused = 'streamhtml_requests_total{endpoint="other",method="other",status="405"}'
    samples = wait_for_samples(server.port, lambda samples: samples.get(refused, 0) >= 25_000)
    assert samples[refused] == 25_000
    metrics = request(server.port, "/metrics")
    assert len(metrics.body) < 64 * 1024, f"/metrics is {len(metrics.body)} bytes"
    assert b"QMETHOD" not in metrics.body


def test_thousands_of_invented_hosts_do_not_grow_the_worker(start_server):
    # The worker remembers the URL map's binding per Host, scheme, port and mount point
    # (streamhtml/web.py), at most MAX_REMEMBERED_BINDINGS of them; a client inventing a Host
    # a request must find the rest bound afresh, not a table growing with every name.
    from siege_support import rss_kib

    server = start_server({"WEB_CONCURRENCY": "1"})
    (worker,) = server.worker_pids()

    def heads(first: int, count: int) -> list[bytes]:
        return [
            f"GET /health HTTP/1.1\r\nHost: h{n}.example:{1000 + n % 60000}\r\n\r\n".encode()
            for n in range(first, first + count)
        ]

    pipelined(server.port, heads(0, 2_000), 200)  # the table full, the worker warm
    before_kib = rss_kib(worker)
    pipelined(server.port, heads(2_000, 30_000), 200)
    grown_kib = rss_kib(worker) - before_kib
    # Kept, 30,000 bindings would be some 30 MiB (a MapAdapter and its key each).
    assert grown_kib < 4 * 1024, f"the worker grew {grown_kib} KiB"
    assert request(server.port, "/health").status == 200


MALFORMED = {
    "two Content-Length headers": b"GET /health HTTP/1.1\r\nHost: t\r\n"
    b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "Content-Length with Transfer-Encoding": b"GET /health HTTP/1.1\r\nHost: t\r\n"
    b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "a bad request line": b"GET /health HTTP/1.1 extra\r\nHost: t\r\n\r\n",
    "a header without a colon": b"GET /health HTTP/1.1\r\nHost t\r\n\r\n",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_gets_gunicorns_400_and_one_log_line(small_server, data):
    before = len(small_server.requests_logged(status=400))
    assert raw_status(small_server.port, data) == 400
    # gunicorn logs a request it refuses (its warning, the access line) before it writes the
    # 400: the client has read it, so every line about the request is in the log already.
    assert len(small_server.requests_logged(status=400)) == before + 1
    assert "Traceback" not in small_server.log()


def test_a_text_log_line_cannot_be_forged_with_a_newline_in_the_path(start_server):
    server = start_server({"LOG_FORMAT": "text"})
    forged = "2026-01-01 00:00:00,000 [1] [INFO] gunicorn.access: GET /admin 200"
    request(server.port, "/x%0a" + quote(forged) + "%0d%00")
    server.wait_for_log(r"gunicorn\.access: GET /x\\x0a2026")
    lines = server.log().splitlines()
    assert not any(line.startswith(forged) for line in lines), "a forged line was written"
    assert not any("\x00" in line or "\r" in line for line in lines)


@pytest.mark.parametrize(
    ("allowed", "trusted"), [("10.0.0.1", False), ("127.0.0.0/8", True), ("*", True)]
)
def test_the_log_keeps_the_peer_and_the_forwarded_chain_apart(start_server, allowed, trusted):
    server = start_server({"FORWARDED_ALLOW_IPS": allowed})
    for _ in range(2):  # the second answer comes from what the worker remembers of the peer
        request(server.port, "/health", headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.7"})
    lines = server.wait_for_request(forwarded_for="203.0.113.9, 198.51.100.7", count=2)
    for line in lines:
        assert line["peer_addr"] == "127.0.0.1"
        assert line["forwarded_trusted"] is trusted, f"127.0.0.1 against {allowed}"
        assert "remote_addr" not in line
