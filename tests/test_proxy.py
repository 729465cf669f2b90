"""Through an nginx with gzip on, as many front ends are configured, blocks still arrive as
they are made, because the service sends X-Accel-Buffering: no."""

import time
import zlib

import pytest
from nginx_support import Nginx
from support import request

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
