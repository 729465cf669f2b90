"""The probe: `python -m streamhtml.probe URL` tells a path that streams from one that buffers.

The verdict is a pure function of arrival times, tested on tables of arrivals; the probe as a
whole is run as a user runs it, against gunicorn directly and through two nginx proxies: one
that buffers (gzip on, the app's `X-Accel-Buffering: no` ignored) and one that honours it.
"""

import os
import re
import subprocess
import sys

import pytest
from nginx_support import Nginx
from support import REPO, free_port
from verdict_cases import TEN_PACED, VERDICTS

from streamhtml.probe import (
    BUFFERED,
    STREAMS,
    UNKNOWN,
    Pacing,
    ProbeError,
    judge,
    summarize,
    target_for,
)


@pytest.mark.parametrize(
    "pacing, arrivals, verdict",
    [case[1:] for case in VERDICTS],
    ids=[case[0] for case in VERDICTS],
)
def test_the_verdict_of_a_path_that(pacing, arrivals, verdict):
    found = judge(arrivals, pacing)
    assert found.state == verdict, found.reasons
    assert found.reasons and all(found.reasons)
    assert found.exit_code == {STREAMS: 0, BUFFERED: 1, UNKNOWN: 3}[verdict]


def test_a_buffered_verdict_says_why():
    reasons = " ".join(judge([(2.71, 10240)], TEN_PACED).reasons)
    assert "9 of the 9 pauses between blocks were missing" in reasons
    assert "100% of the bytes arrived in one burst" in reasons
    assert "the first byte came only after 2.71 s" in reasons


def test_the_timeline_finds_when_each_block_was_in_the_gap_and_the_burst():
    line = summarize([(0.1, 512), (0.2, 512), (0.9, 2048)], Pacing(4, 768, 300))
    assert line.first_byte_s == 0.1 and line.last_byte_s == 0.9 and line.reads == 3
    # 3072 bytes in 4 blocks: 768 are in at 0.2 s, the other three blocks only at 0.9 s.
    assert line.block_times == (0.2, 0.9, 0.9, 0.9)
    assert line.largest_gap_s == pytest.approx(0.7) and line.largest_gap_at_s == 0.9
    assert (line.burst_bytes, line.burst_at_s) == (2048, 0.9)


@pytest.mark.parametrize(
    "url, options, expected",
    [
        (
            "https://streamhtml.apps.example.com",
            {},
            "https://streamhtml.apps.example.com/streamhtml?nblocks=10&block_size=1024&sleep_ms=300",
        ),
        (
            "http://127.0.0.1:8080/",
            {"sleep_ms": 500},
            "http://127.0.0.1:8080/streamhtml?nblocks=10&block_size=1024&sleep_ms=500",
        ),
        (
            "https://host.example:8443/team/streamhtml?nblocks=4&use_static_data=1",
            {"block_size": 64},
            "https://host.example:8443/team/streamhtml?nblocks=4&use_static_data=1"
            "&block_size=64&sleep_ms=300",
        ),
        (
            "http://[::1]:8080/streamhtml?nblocks=3&sleep_ms=100",
            {"nblocks": 5},
            "http://[::1]:8080/streamhtml?nblocks=5&sleep_ms=100&block_size=1024",
        ),
    ],
)
def test_the_probe_requests_streamhtml_under_the_route_it_is_given(url, options, expected):
    target, pacing = target_for(url, **options)
    assert target.url == expected
    assert pacing.nblocks * pacing.block_size == pacing.total_bytes


@pytest.mark.parametrize(
    "url",
    [
        "streamhtml.apps.example.com",
        "ftp://host/",
        "http://",
        "http://host:99999/",
        "http://h/?nblocks=-1",
    ],
)
def test_a_url_the_probe_cannot_use_is_an_error(url):
    with pytest.raises(ProbeError):
        target_for(url)


def probe(*args: str, timeout_s: float = 60, env=None) -> subprocess.CompletedProcess:
    """The probe run as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "streamhtml.probe", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_the_probe_uses_the_standard_library_only():
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, streamhtml.probe; "
            "print(*(name for name in sys.modules "
            "if name.split('.')[0] not in sys.stdlib_module_names))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "streamhtml.probe" in imported
    assert [name for name in imported if name.split(".")[0] not in ("streamhtml", "__main__")] == []


def test_a_bare_probe_of_the_service_says_it_streams(server):
    run = probe(f"http://127.0.0.1:{server.port}", timeout_s=20)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "sleep_ms=300" in run.stdout and "expects  10 blocks of 1024 bytes" in run.stdout
    for line in ("first byte", "throughput", "largest gap", "timeline:"):
        assert f"\n{line}" in run.stdout, line
    assert "verdict: STREAMS" in run.stdout
    assert re.search(r"\n  - [89] of the 9 pauses between blocks came through\n", run.stdout)


@pytest.fixture(scope="module")
def buffering_nginx(server, tmp_path_factory):
    """gzip on, `proxy_ignore_headers X-Accel-Buffering`, proxy_buffering left on."""
    nginx = Nginx(tmp_path_factory.mktemp("nginx-buffering"), server.port, False).start()
    yield nginx
    nginx.stop()


@pytest.fixture(scope="module")
def honouring_nginx(server, tmp_path_factory):
    """gzip on, but the app's `X-Accel-Buffering: no` honoured: nginx passes blocks through."""
    nginx = Nginx(tmp_path_factory.mktemp("nginx-honouring"), server.port, True).start()
    yield nginx
    nginx.stop()


def test_the_probe_through_a_buffering_nginx_says_buffered(buffering_nginx):
    run = probe(buffering_nginx.url, "--nblocks", "6", "--sleep-ms", "250")
    assert run.returncode == 1, run.stdout + run.stderr + buffering_nginx.log()
    assert "gzip" in run.stdout  # nginx compressed it: the probe asks for gzip as a browser does
    assert "verdict: BUFFERED" in run.stdout
    assert "5 of the 5 pauses between blocks were missing" in run.stdout


def test_the_probe_through_an_nginx_that_honours_x_accel_buffering_says_streams(honouring_nginx):
    run = probe(honouring_nginx.url, "--nblocks", "6", "--sleep-ms", "250")
    assert run.returncode == 0, run.stdout + run.stderr + honouring_nginx.log()
    assert "gzip" in run.stdout and "6144 bytes in" in run.stdout
    assert "verdict: STREAMS" in run.stdout


@pytest.fixture(scope="module")
def tls_nginx(server, tmp_path_factory):
    """https:// with a self-signed certificate for 127.0.0.1, passing blocks through."""
    nginx = Nginx(tmp_path_factory.mktemp("nginx-tls"), server.port, True, tls=True).start()
    yield nginx
    nginx.stop()


def test_the_probe_speaks_https_and_checks_the_certificate(tls_nginx):
    # SSL_CERT_FILE makes Python trust this one certificate, as a foundation's CA would be.
    trusted = {"SSL_CERT_FILE": str(tls_nginx.certificate)}
    run = probe(tls_nginx.url, "--nblocks", "4", "--sleep-ms", "200", env=trusted)
    assert run.returncode == 0, run.stdout + run.stderr + tls_nginx.log()
    assert f"GET {tls_nginx.url}/streamhtml?" in run.stdout
    assert "verdict: STREAMS" in run.stdout


def test_an_untrusted_certificate_is_an_error_unless_insecure(tls_nginx):
    assert_one_line_error(probe(tls_nginx.url), "TLS certificate", "not trusted", "--insecure")
    run = probe(tls_nginx.url, "--insecure", "--nblocks", "4", "--sleep-ms", "200")
    assert run.returncode == 0 and "verdict: STREAMS" in run.stdout, run.stdout + run.stderr


def assert_one_line_error(run: subprocess.CompletedProcess, *words: str):
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stdout == "" and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("probe: error: "), run.stderr
    for word in words:
        assert word in run.stderr


def test_a_refused_connection_is_one_line_and_exit_2():
    assert_one_line_error(probe(f"http://127.0.0.1:{free_port()}"), "connection refused")


def test_a_refused_request_shows_the_services_reason(server):
    run = probe(f"http://127.0.0.1:{server.port}", "--block-size", "0")
    assert_one_line_error(run, "HTTP 400", "block_size must be plain decimal digits")


def test_a_url_that_is_not_a_route_is_one_line_and_exit_2():
    assert_one_line_error(probe("streamhtml.apps.example.com"), "not an http:// or https:// URL")


def test_a_route_that_is_not_streamhtml_is_an_error_not_a_verdict(server):
    # The probe asks for /health/streamhtml here, as it would on a route to some other app.
    run = probe(f"http://127.0.0.1:{server.port}/health")
    assert_one_line_error(run, "HTTP 404")
