"""The app behind proxies.

Through an nginx with gzip on, as many front ends are configured, blocks still arrive as they
are made, because the service sends X-Accel-Buffering: no.

Through the gorouter stand-in (tests/nginx_support.py, `gorouter_like`), what gorouter adds on
the wire: its own X-Vcap-Request-Id in place of the client's, on the response too when the app
sent none; X-Request-Start in milliseconds since the epoch, which the app turns into a queue
time; and an unpaced stream re-chunked by the router's reads, bytes unchanged. The stand-in's
chunks are nginx's (up to 8 KiB reads), not gorouter's exact ~8 KiB ones: the tests check only
that chunk boundaries are no longer the app's blocks.
"""

import re
import time
import zlib

import pytest
from nginx_support import Nginx, ScriptedUpstream, gorouter_like, request_header
from support import request, static_block

PACED = "/streamhtml?nblocks=6&block_size=2000&sleep_ms=400"  # 2 s from first block to last


@pytest.fixture
def proxy(server, tmp_path):
    def start(honour_accel_buffering: bool) -> Nginx:
        nginx = Nginx(tmp_path / "nginx", server.port, honour_accel_buffering).start()
        started.append(nginx)
        return nginx

    started = []
    yield start
    for nginx in started:
        nginx.stop()


def timed_gzip_stream(port: int):
    started = time.monotonic()
    reply = request(port, PACED, headers={"Accept-Encoding": "gzip"})
    return reply, [moment - started for moment in reply.chunk_times]


def test_through_gzip_nginx_blocks_arrive_as_they_are_made(proxy):
    nginx = proxy(honour_accel_buffering=True)
    reply, arrivals = timed_gzip_stream(nginx.port)
    assert reply.status == 200
    assert reply.header("Content-Encoding") == "gzip", "nginx compressed it, as configured"
    assert len(zlib.decompress(reply.body, wbits=31)) == 6 * 2000
    assert arrivals[0] < 0.5, f"the first block waited: {arrivals}"
    assert arrivals[-1] - arrivals[0] > 1.5, f"blocks came in one burst: {arrivals}"


def test_the_same_nginx_ignoring_the_header_holds_the_stream_to_its_end(proxy):
    # The contrast that shows the header matters: nginx buffers the gzip'd stream whole.
    nginx = proxy(honour_accel_buffering=False)
    reply, arrivals = timed_gzip_stream(nginx.port)
    assert len(zlib.decompress(reply.body, wbits=31)) == 6 * 2000
    assert arrivals[0] > 1.5, f"nginx passed the first block at once: {arrivals}"


def test_the_service_itself_never_compresses(server):
    reply = request(server.port, PACED, headers={"Accept-Encoding": "gzip, deflate, br, zstd"})
    assert reply.header("Content-Encoding") is None
    assert len(reply.body) == 6 * 2000


@pytest.fixture(scope="module")
def router(server, tmp_path_factory):
    nginx = gorouter_like(tmp_path_factory.mktemp("router"), server.port).start()
    yield nginx
    nginx.stop()


@pytest.fixture
def scripted_router(tmp_path):
    """The stand-in in front of a bare upstream that records what the router sends it."""
    upstream = ScriptedUpstream().start()
    nginx = gorouter_like(tmp_path / "router", upstream.port)
    try:
        yield nginx.start(), upstream
    finally:
        nginx.stop()
        upstream.stop()


def epoch_ms() -> int:
    return time.time_ns() // 1_000_000


def test_the_router_stamps_x_request_start_in_milliseconds_since_the_epoch(scripted_router):
    router, upstream = scripted_router
    before_ms = epoch_ms()
    reply = request(
        router.port, "/", headers={"X-Request-Start": "1", "X-Vcap-Request-Id": "x" * 9}
    )
    after_ms = epoch_ms()
    assert reply.status == 200
    [head] = upstream.heads
    stamped = request_header(head, "X-Request-Start")
    # nginx's clock is cached per event loop turn: allow it a few ms behind ours.
    assert stamped.isdigit() and before_ms - 50 <= int(stamped) <= after_ms, (before_ms, stamped)
    assert re.fullmatch(r"[0-9a-f]{32}", request_header(head, "X-Vcap-Request-Id"))
    assert request_header(head, "X-Forwarded-For") == "127.0.0.1"
    assert request_header(head, "X-Forwarded-Proto") == "http"


def test_the_router_puts_its_request_id_on_a_response_the_app_sent_without_one(scripted_router):
    router, upstream = scripted_router
    reply = request(router.port, "/")
    [head] = upstream.heads
    routers_id = request_header(head, "X-Vcap-Request-Id")
    assert reply.header("X-Vcap-Request-Id") == routers_id
    assert [line["request_id"] for line in router.access_lines()] == [routers_id]


def test_the_app_reports_how_long_a_request_queued_behind_the_router(router, server):
    reply = request(router.port, "/health")
    assert reply.status == 200
    assert re.search(r"\bqueue;dur=\d+(\.\d+)?", reply.header("Server-Timing") or "")
    [logged] = server.wait_for_request(request_id=reply.header("X-Vcap-Request-Id"))
    queue_ms = logged.get("queue_ms")
    assert isinstance(queue_ms, int | float) and 0 <= queue_ms < 1000, logged


UNPACED = "/streamhtml?nblocks=2000&block_size=200&use_static_data=1"


def test_one_http_chunk_per_block_holds_only_on_a_direct_connection(router, server):
    direct = request(server.port, UNPACED)
    assert direct.chunks == [static_block(200)] * 2000

    routed = request(router.port, UNPACED)
    assert routed.body == direct.body, "the router changed the bytes"
    # The router frames whatever each read from the app returned: fewer, larger chunks.
    assert len(routed.chunks) < 2000 / 4, [len(chunk) for chunk in routed.chunks]
    assert max(len(chunk) for chunk in routed.chunks) <= 8 * 1024
