"""The probe's --upload: a paced chunked body, judged from when the service says it arrived.

Directly and through nginx passing bodies on as they arrive (`proxy_request_buffering off`)
it streams; through nginx's default (`on`), which reads a body whole before it sends the
request on, it is buffered. The exit codes are the probe's own.
"""

import pytest
from nginx_support import Nginx, gorouter_like
from support import probe

from streamhtml.probe import UPLOAD, ProbeError, chunk_sizes, upload_target
from streamhtml.settings import small_limits

# 5 chunks 250 ms apart: 1 s of pauses, enough for the verdict's half-pause thresholds.
PACED = ("--nblocks", "5", "--sleep-ms", "250")


def test_chunk_sizes_add_up_and_differ_by_at_most_one():
    for total, nblocks in [(10, 3), (100_000, 5), (7, 7), (1 << 30, 10)]:
        sizes = chunk_sizes(total, nblocks)
        assert len(sizes) == nblocks and sum(sizes) == total
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    "url, path",
    [
        ("http://h", "/upload"),
        ("http://h/", "/upload"),
        ("http://h/base", "/base/upload"),
        ("http://h/base/upload", "/base/upload"),
        ("http://h/upload?x=1", "/upload?x=1"),
    ],
)
def test_the_upload_goes_to_upload_under_the_route(url, path):
    target, pacing = upload_target(url, None, 1000, None)
    assert target.path == path
    assert pacing.shape is UPLOAD and pacing.nblocks == 10 and pacing.sleep_ms == 300


def test_more_chunks_than_bytes_is_an_error():
    with pytest.raises(ProbeError):
        upload_target("http://h", 10, 5, 100)


def test_a_paced_upload_straight_to_the_service_streams(small_server):
    done = probe(f"http://127.0.0.1:{small_server.port}", "--upload", "100000", *PACED)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "POST http://127.0.0.1" in done.stdout and "verdict: STREAMS" in done.stdout
    assert "4 of the 4 pauses between chunks came through" in done.stdout


@pytest.mark.parametrize(
    "request_buffering, exit_code, verdict", [(True, 1, "BUFFERED"), (False, 0, "STREAMS")]
)
def test_through_nginx_the_upload_verdict_follows_proxy_request_buffering(
    small_server, tmp_path, request_buffering, exit_code, verdict
):
    nginx = Nginx(tmp_path, small_server.port, request_buffering=request_buffering).start()
    try:
        done = probe(nginx.url, "--upload", "100000", *PACED)
    finally:
        nginx.stop()
    assert done.returncode == exit_code, done.stdout + done.stderr
    assert f"verdict: {verdict}" in done.stdout


def test_through_the_gorouter_stand_in_the_upload_streams(small_server, tmp_path):
    router = gorouter_like(tmp_path, small_server.port).start()
    try:
        done = probe(router.url, "--upload", "100000", *PACED)
    finally:
        router.stop()
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_upload_over_the_limit_is_an_error_that_says_why(small_server):
    too_many = str(small_limits().max_upload_bytes + 1)
    done = probe(f"http://127.0.0.1:{small_server.port}", "--upload", too_many, *PACED)
    assert done.returncode == 2
    assert "HTTP 413" in done.stderr and "STREAMHTML_MAX_UPLOAD_BYTES" in done.stderr


def test_a_route_without_upload_is_an_error(small_server):
    # Werkzeug's test of a path: /streamhtml/upload is no route here.
    done = probe(f"http://127.0.0.1:{small_server.port}/streamhtml", "--upload", "1000", *PACED)
    assert done.returncode == 2 and "HTTP 404" in done.stderr


def test_upload_takes_no_shape():
    done = probe("http://127.0.0.1:9", "--upload", "1000", "--shape", "sse")
    assert done.returncode == 2 and "--upload takes no --shape" in done.stderr
