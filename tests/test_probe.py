"""The probe: `python -m streamhtml.probe URL` tells a path that streams from one that buffers.

The verdict is a pure function of arrival times, tested on tables of arrivals, as are the
parsing of -H arguments, the choice of proxy and the reading of Server-Timing. The probe as a
whole is run as a user runs it: against gunicorn directly; through two nginx proxies, one that
buffers (gzip on, the app's `X-Accel-Buffering: no` ignored) and one that honours it; through
TLS; and through stand-ins of our own (tests/forward_proxy.py) for a forward proxy (HTTP_PROXY,
HTTPS_PROXY) and for a router in front of the app.
"""

import base64
import os
import re
import subprocess
import sys

import pytest
from forward_proxy import ForwardProxy, Relay
from nginx_support import Nginx, gorouter_like
from support import REPO, free_port, probe, without_proxies
from verdict_cases import SERVER_TIMINGS, SIX_EVENTS, TEN_PACED, VERDICTS

from streamhtml.probe import (
    BUFFERED,
    HTML,
    NDJSON,
    SSE,
    STREAMS,
    UNKNOWN,
    NdjsonReader,
    Pacing,
    ProbeError,
    Proxy,
    Request,
    SseReader,
    Target,
    judge,
    parse_header,
    parse_proxy,
    platform_queue_ms,
    proxy_for,
    request_for,
    request_headers,
    route_lines,
    summarize,
    target_for,
)

# A short paced stream for the wire tests that are not about the pacing: 0.6 s.
QUICK = ("--nblocks", "4", "--sleep-ms", "200")


@pytest.mark.parametrize(
    "pacing, arrivals, verdict",
    [case[1:] for case in VERDICTS],
    ids=[case[0] for case in VERDICTS],
)
def test_the_verdict_of_a_path_that(pacing, arrivals, verdict):
    found = judge(arrivals, pacing)
    assert found.state == verdict, found.reasons
    assert found.reasons and all(found.reasons)
    if verdict != BUFFERED:
        assert "buffer" not in " ".join(found.reasons).lower()
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
    for name, value in [
        ("Transfer-Encoding", "chunked"),
        ("Content-Encoding", "-"),
        ("Via", "-"),
        ("Server-Timing", "-"),
    ]:
        assert shown_header(run.stdout, name) == value, name
    assert shown_header(run.stdout, "X-Vcap-Request-Id")  # the app's own request id, or "-"
    absent = "no X-Request-Start reached the app: no gorouter on the path?"
    assert f"\nplatform queue         -   {absent}\n" in run.stdout


def shown_header(output: str, name: str) -> str | None:
    """The value the probe's report shows for a response header, None if it has no line."""
    found = re.search(rf"^(?:headers)? +{re.escape(name)} +(.*)$", output, re.MULTILINE)
    return found.group(1) if found else None


# nginx compresses text/html alone unless told more: these proxies compress every shape.
GZIP_TYPES = ("text/event-stream", "application/x-ndjson")


@pytest.fixture(scope="module")
def buffering_nginx(server, tmp_path_factory):
    """gzip on, `proxy_ignore_headers X-Accel-Buffering`, proxy_buffering left on."""
    directory = tmp_path_factory.mktemp("nginx-buffering")
    nginx = Nginx(directory, server.port, False, gzip_types=GZIP_TYPES).start()
    yield nginx
    nginx.stop()


@pytest.fixture(scope="module")
def honouring_nginx(server, tmp_path_factory):
    """gzip on, but the app's `X-Accel-Buffering: no` honoured: nginx passes blocks through."""
    directory = tmp_path_factory.mktemp("nginx-honouring")
    nginx = Nginx(directory, server.port, True, gzip_types=GZIP_TYPES).start()
    yield nginx
    nginx.stop()


def test_the_probe_through_a_buffering_nginx_says_buffered(buffering_nginx):
    run = probe(buffering_nginx.url, "--nblocks", "6", "--sleep-ms", "250")
    assert run.returncode == 1, run.stdout + run.stderr + buffering_nginx.log()
    assert "gzip" in run.stdout  # nginx compressed it: the probe asks for gzip as a browser does
    assert shown_header(run.stdout, "Content-Encoding") == "gzip"
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


# --- request headers with -H ---------------------------------------------------------------------

PROBE_HEADERS = ["Host", "Accept-Encoding", "Accept", "Cache-Control", "User-Agent"]


@pytest.mark.parametrize(
    "arguments, names, changed",
    [
        ([], PROBE_HEADERS, {"Host": "app.example:8080", "Accept-Encoding": "gzip"}),
        (["Host: router.example"], PROBE_HEADERS, {"Host": "router.example"}),
        (["host:router.example"], ["host", *PROBE_HEADERS[1:]], {"host": "router.example"}),
        (["X-Extra: 1"], [*PROBE_HEADERS, "X-Extra"], {"X-Extra": "1"}),
        (["Accept-Encoding:"], ["Host", "Accept", "Cache-Control", "User-Agent"], {}),
        (["Accept-Encoding: identity"], PROBE_HEADERS, {"Accept-Encoding": "identity"}),
        (["X-A: 1", "X-A:  2 "], [*PROBE_HEADERS, "X-A", "X-A"], {}),
        (["Authorization: Basic a2V5OnZhbHVl"], [*PROBE_HEADERS, "Authorization"], {}),
    ],
)
def test_a_header_given_with_dash_h_replaces_the_probes_own_or_is_added(arguments, names, changed):
    target = Target("http", "app.example", 8080, "/streamhtml")
    headers = request_headers(target, [parse_header(argument) for argument in arguments])
    assert [name for name, _ in headers] == names
    for name, value in changed.items():
        assert dict(headers)[name] == value
    if arguments == ["X-A: 1", "X-A:  2 "]:
        assert headers[-2:] == (("X-A", "1"), ("X-A", "2"))


@pytest.mark.parametrize(
    "argument, complaint",
    [
        ("Host app.example", "give it as 'Name: value'"),
        (": app.example", "the header name is empty"),
        ("Ho st: app.example", "is not a header name"),
        ("Host: app.example\r\nX-Injected: 1", "CR, LF or NUL"),
        ("X-Name\n: value", "CR, LF or NUL"),
        ("X-Note: caf\u00e9 \u2615", "must be Latin-1"),
    ],
)
def test_a_malformed_header_argument_is_one_line_and_exit_2(argument, complaint):
    with pytest.raises(ProbeError, match=re.escape(complaint)):
        parse_header(argument)
    assert_one_line_error(probe("-H", argument, "http://127.0.0.1:9/"), complaint)


def test_a_host_given_with_dash_h_reaches_the_app(server, start_hop):
    relay = start_hop(Relay(server.port))
    run = probe("-H", "Host: app.example", f"http://127.0.0.1:{relay.port}/", *QUICK)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verdict: STREAMS" in run.stdout
    assert "\n         Host: app.example, from -H\n" in run.stdout
    assert [seen.header("Host") for seen in relay.seen] == ["app.example"]


@pytest.fixture
def start_hop():
    """Start a ForwardProxy or Relay; each one is stopped after the test, its threads joined."""
    started = []

    def start(hop):
        started.append(hop)
        return hop.start()

    yield start
    for hop in started:
        hop.stop()


# --- proxies -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ, url, proxy_url",
    [
        ({"HTTP_PROXY": "http://proxy:3128"}, "http://app.example/", "http://proxy:3128"),
        ({"http_proxy": "http://proxy:3128"}, "http://app.example/", "http://proxy:3128"),
        (
            {"HTTP_PROXY": "http://upper:3128", "http_proxy": "http://lower:3128"},
            "http://app.example/",
            "http://lower:3128",
        ),
        ({"HTTP_PROXY": "http://proxy:3128"}, "https://app.example/", None),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://app.example/", "http://proxy:3128"),
        ({"https_proxy": "proxy:3128"}, "https://app.example/", "http://proxy:3128"),
        ({"HTTPS_PROXY": "http://proxy"}, "https://app.example/", "http://proxy:80"),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "http://app.example/", None),
        ({"ALL_PROXY": "http://proxy:3128"}, "http://app.example/", None),
        (
            {"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "app.example"},
            "http://app.example/",
            None,
        ),
        (
            {"HTTP_PROXY": "http://proxy:3128", "no_proxy": "localhost, .example"},
            "http://app.example:8080/",
            None,
        ),
        (
            {"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "other.example"},
            "http://app.example/",
            "http://proxy:3128",
        ),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*"}, "https://app.example/", None),
    ],
)
def test_the_probe_picks_its_proxy_as_urllib_does(monkeypatch, environ, url, proxy_url):
    for name in os.environ:
        if name not in without_proxies(os.environ):
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    proxy = proxy_for(target_for(url)[0])
    assert (proxy.url if proxy else None) == proxy_url


def test_proxy_credentials_become_basic_authorization_and_are_never_shown():
    proxy = parse_proxy("http://probe:s%40cret@proxy.example:3128", "https")
    assert proxy.authorization == "Basic " + base64.b64encode(b"probe:s@cret").decode()
    assert proxy.url == "http://proxy.example:3128"
    assert parse_proxy("http://proxy.example:3128", "http").authorization is None


@pytest.mark.parametrize(
    "proxy_url, complaint",
    [
        ("socks5://127.0.0.1:1080", "cannot use the https proxy socks5://127.0.0.1:1080"),
        ("https://probe:s3cret@proxy:443", "cannot use the https proxy https://proxy:443"),
        ("http://:3128", "no host in the https proxy"),
        ("http://proxy:99999", "bad port in the https proxy"),
    ],
)
def test_a_proxy_the_probe_cannot_use_is_one_line_and_exit_2(proxy_url, complaint):
    with pytest.raises(ProbeError, match=re.escape(complaint)):
        parse_proxy(proxy_url, "https")
    run = probe("https://app.example/", env={"HTTPS_PROXY": proxy_url})
    assert_one_line_error(run, complaint)
    assert "s3cret" not in run.stderr


def test_the_probe_honours_http_proxy(server, start_hop):
    proxy = start_hop(ForwardProxy())
    environ = {"HTTP_PROXY": f"http://probe:s%40cret@127.0.0.1:{proxy.port}"}
    run = probe(f"http://127.0.0.1:{server.port}/", *QUICK, env=environ)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verdict: STREAMS" in run.stdout
    assert f"\n         via proxy {proxy.url}\n" in run.stdout and "cret" not in run.stdout
    assert shown_header(run.stdout, "Via") == "1.1 test-forward-proxy"
    [seen] = proxy.seen
    assert seen.method == "GET"
    assert seen.target.startswith(f"http://127.0.0.1:{server.port}/streamhtml?nblocks=4&")
    assert (
        seen.header("Proxy-Authorization") == "Basic " + base64.b64encode(b"probe:s@cret").decode()
    )


HTTP_TARGET = Target("http", "app.example", 80, "/streamhtml")
HTTPS_TARGET = Target("https", "app.example", 443, "/streamhtml")
A_PROXY = Proxy("proxy.example", 3128, "Basic cHJvYmU6c2VjcmV0")
GIVEN_HOST = (("Host", "router.example"),)


@pytest.mark.parametrize(
    "request_made, lines",
    [
        (Request(HTTP_TARGET, (("Host", "app.example"),)), []),
        (Request(HTTP_TARGET, GIVEN_HOST), ["Host: router.example, from -H"]),
        (Request(HTTP_TARGET, ()), ["Host: (none), from -H"]),
        (
            Request(HTTP_TARGET, (("Host", "app.example"),), A_PROXY),
            ["via proxy http://proxy.example:3128"],
        ),
        (
            Request(HTTP_TARGET, GIVEN_HOST, A_PROXY),
            [
                "Host: router.example, from -H",
                "via proxy http://proxy.example:3128",
                "note: an HTTP proxy may replace -H Host with the URL's host; https:// (a tunnel) "
                "or NO_PROXY keeps it",
            ],
        ),
        (
            Request(HTTPS_TARGET, GIVEN_HOST, A_PROXY),
            [
                "Host: router.example, from -H",
                "via proxy http://proxy.example:3128, in a CONNECT tunnel",
            ],
        ),
    ],
)
def test_the_report_says_how_the_request_went(request_made, lines):
    assert [line.strip() for line in route_lines(request_made)] == lines


def test_no_proxy_sends_the_probe_around_the_proxy(server, start_hop):
    proxy = start_hop(ForwardProxy())
    environ = {"http_proxy": proxy.url, "no_proxy": "localhost,127.0.0.1"}
    run = probe(f"http://127.0.0.1:{server.port}/", *QUICK, env=environ)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "via proxy" not in run.stdout and shown_header(run.stdout, "Via") == "-"
    assert proxy.seen == []


def test_the_probe_tunnels_https_through_https_proxy_with_connect(tls_nginx, start_hop):
    proxy = start_hop(ForwardProxy())
    environ = {
        "HTTPS_PROXY": f"http://probe:s%40cret@127.0.0.1:{proxy.port}",
        "SSL_CERT_FILE": str(tls_nginx.certificate),
    }
    run = probe(tls_nginx.url, *QUICK, env=environ)
    assert run.returncode == 0, run.stdout + run.stderr + tls_nginx.log()
    assert "verdict: STREAMS" in run.stdout
    assert f"\n         via proxy {proxy.url}, in a CONNECT tunnel\n" in run.stdout
    assert "cret" not in run.stdout
    [seen] = proxy.seen
    assert (seen.method, seen.target) == ("CONNECT", f"127.0.0.1:{tls_nginx.port}")
    assert (
        seen.header("Proxy-Authorization") == "Basic " + base64.b64encode(b"probe:s@cret").decode()
    )


@pytest.fixture
def tls_nginx_before_a_relay(server, start_hop, tmp_path):
    """https:// nginx in front of a Relay that records the Host each request reached it with."""
    relay = start_hop(Relay(server.port))
    nginx = Nginx(tmp_path / "nginx", relay.port, True, tls=True).start()
    yield nginx, relay
    nginx.stop()


def test_a_host_given_with_dash_h_reaches_the_app_through_the_tunnel(
    tls_nginx_before_a_relay, start_hop
):
    nginx, relay = tls_nginx_before_a_relay
    proxy = start_hop(ForwardProxy())
    environ = {"HTTPS_PROXY": proxy.url, "SSL_CERT_FILE": str(nginx.certificate)}
    run = probe("-H", "Host: app.example", nginx.url, *QUICK, env=environ)
    assert run.returncode == 0, run.stdout + run.stderr + nginx.log()
    assert [(seen.method, seen.target) for seen in proxy.seen] == [
        ("CONNECT", f"127.0.0.1:{nginx.port}")
    ]
    assert [seen.header("Host") for seen in relay.seen] == ["app.example"]


def test_a_proxy_that_will_not_open_the_tunnel_is_one_line_and_exit_2(start_hop):
    proxy = start_hop(ForwardProxy())
    run = probe(f"https://127.0.0.1:{free_port()}", env={"HTTPS_PROXY": proxy.url})
    assert_one_line_error(run, f"the proxy {proxy.url} would not open a tunnel", "502")


def test_a_proxy_that_refuses_the_connection_is_one_line_and_exit_2():
    port = free_port()
    run = probe("http://app.example/", env={"HTTP_PROXY": f"http://127.0.0.1:{port}"})
    assert_one_line_error(run, f"connection refused by proxy 127.0.0.1:{port}")


# --- the platform's queue time -----------------------------------------------------------------


@pytest.mark.parametrize("server_timing, queue_ms", SERVER_TIMINGS)
def test_the_platform_queue_time_read_from(server_timing, queue_ms):
    assert platform_queue_ms(server_timing) == queue_ms


def test_the_probe_shows_the_platform_queue_time_the_app_reports(server, start_hop):
    # The relay adds the header the app sends when X-Request-Start reached it (the app's side
    # is not in this tree): what the probe makes of it is under test, not the app.
    added = [("Server-Timing", "queue;dur=12.5, app;dur=3")]
    relay = start_hop(Relay(server.port, response_headers=added))
    run = probe(relay.url, *QUICK)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (
        "\nplatform queue   12.5 ms   X-Request-Start to the app (Server-Timing)\n"
    ) in run.stdout
    assert shown_header(run.stdout, "Server-Timing") == "queue;dur=12.5, app;dur=3"


# --- re-chunking is not buffering ----------------------------------------------------------------


@pytest.mark.parametrize(
    "proxy, nblocks, block_size",
    [
        (ForwardProxy(rechunk="halves"), 5, 1024),
        (ForwardProxy(rechunk="reads", read_pause_s=0.002), 4, 20480),
    ],
    ids=["each block in two halves", "blocks in 8 KiB pieces, as gorouter sends them"],
)
def test_a_paced_stream_re_chunked_by_a_proxy_still_streams(
    server, start_hop, proxy, nblocks, block_size
):
    start_hop(proxy)
    url = f"http://127.0.0.1:{server.port}/"
    sizes = ("--nblocks", str(nblocks), "--block-size", str(block_size), "--sleep-ms", "200")
    run = probe(url, *sizes, env={"HTTP_PROXY": proxy.url})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verdict: STREAMS" in run.stdout and "buffer" not in run.stdout.lower()
    # The proxy did re-frame the stream: more chunks than blocks, none of them a whole block.
    assert sum(proxy.chunk_sizes) == nblocks * block_size
    assert len(proxy.chunk_sizes) >= 2 * nblocks and max(proxy.chunk_sizes) < block_size


def test_an_unpaced_stream_in_8_kib_pieces_is_unknown_never_buffered(server, start_hop):
    proxy = start_hop(ForwardProxy(rechunk="reads", read_pause_s=0.002))
    url = f"http://127.0.0.1:{server.port}/"
    sizes = ("--nblocks", "1000", "--block-size", "200", "--sleep-ms", "0")
    run = probe(url, *sizes, env={"HTTP_PROXY": proxy.url})
    assert run.returncode == 3, run.stdout + run.stderr
    assert "verdict: UNKNOWN" in run.stdout and "buffer" not in run.stdout.lower()
    assert "proxies may re-chunk, so reads need not match blocks" in run.stdout
    # As gorouter sends it: many 200-byte blocks to a chunk, none over 8 KiB.
    assert sum(proxy.chunk_sizes) == 200_000
    assert len(proxy.chunk_sizes) < 100 and 4096 < max(proxy.chunk_sizes) <= 8192


# --- shapes: SSE and NDJSON ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, shape, expected, shape_found",
    [
        ("https://app.example", "sse", "https://app.example/sse", SSE),
        ("https://app.example/team/", "ndjson", "https://app.example/team/ndjson", NDJSON),
        ("https://app.example/sse", None, "https://app.example/sse", SSE),
        ("https://app.example/ndjson", "ndjson", "https://app.example/ndjson", NDJSON),
        ("https://app.example/x/streamhtml", "html", "https://app.example/x/streamhtml", HTML),
        ("https://app.example/x", None, "https://app.example/x/streamhtml", HTML),
    ],
)
def test_the_shape_picks_the_endpoint_named_or_the_one_in_the_url(
    url, shape, expected, shape_found
):
    target, pacing = target_for(url, shape=shape)
    assert target.url == f"{expected}?nblocks=10&block_size=1024&sleep_ms=300"
    assert pacing.shape is shape_found


def test_a_shape_that_contradicts_the_url_is_an_error():
    with pytest.raises(ProbeError, match="--shape sse asks for /sse"):
        target_for("https://app.example/ndjson", shape="sse")


@pytest.mark.parametrize(
    "shape, accept",
    [(None, "text/html"), ("sse", "text/event-stream"), ("ndjson", "application/x-ndjson")],
)
def test_the_probe_accepts_what_the_shape_sends(shape, accept):
    target, pacing = target_for("http://app.example", shape=shape)
    assert request_for(target, accept=pacing.shape.accept).header("Accept") == accept


def test_a_verdict_on_events_counts_events_not_bytes():
    reasons = " ".join(judge([(1.55, 6)], SIX_EVENTS).reasons)
    assert "5 of the 5 pauses between events were missing" in reasons
    assert "100% of the events arrived in one burst" in reasons
    assert "the first event came only after 1.55 s" in reasons
    assert "byte" not in reasons and "block" not in reasons


SSE_STREAM = (
    b"retry: 1000\n\n"
    b"id: 1\nevent: block\ndata: abc\n\n"
    b": keep-alive\n\n"
    b"id: 2\r\nevent: block\r\ndata: def\r\n\r\n"
    b"id: 3\nevent: block\ndata:\n\n"
)


@pytest.mark.parametrize("read_bytes", [1, 2, 7, len(SSE_STREAM)])
def test_sse_events_are_counted_as_they_complete_whatever_the_reads(read_bytes):
    reader = SseReader()
    reads = [SSE_STREAM[at : at + read_bytes] for at in range(0, len(SSE_STREAM), read_bytes)]
    counted = [reader.feed(data, at_s=index) for index, data in enumerate(reads)]
    assert sum(counted) == 3 and reader.events == 3
    assert (reader.comments, reader.retry_ms, reader.wrong_id) == (1, 1000, None)
    # An event counts in the read that brings the last byte of its blank line, not before.
    ends = [
        SSE_STREAM.index(b"abc\n\n") + 4,
        SSE_STREAM.index(b"def\r\n\r\n") + 6,
        len(SSE_STREAM) - 1,
    ]
    assert counted == [
        sum(1 for end in ends if end // read_bytes == index) for index in range(len(reads))
    ]
    assert reader.mismatch(Pacing(3, 3, 300, SSE), None) is None


def test_sse_events_out_of_order_or_missing_are_a_mismatch():
    reader = SseReader()
    reader.feed(b"id: 1\ndata: a\n\nid: 3\ndata: a\n\n", 0.1)
    assert reader.mismatch(Pacing(3, 1, 300, SSE), None) == "expected 3 events, got 2"
    assert reader.mismatch(Pacing(2, 1, 300, SSE), None) == (
        "expected ids 1 to 2 in order, but event 2 had id 3"
    )


def ndjson_line(seq: int, t_ms: int, size: int = 60) -> bytes:
    head = b'{"seq":%d,"t_ms":%d,"pad":"' % (seq, t_ms)
    return head + b"x" * (size - len(head) - 3) + b'"}\n'


def test_ndjson_lateness_is_each_lines_transit_less_the_first_lines():
    reader = NdjsonReader(block_size=60)
    body = ndjson_line(1, 1_700_000_000_000) + ndjson_line(2, 1_700_000_000_300)
    # The second line split over two reads: it counts once whole, at 0.9 s.
    assert reader.feed(body[:70], 0.5) == 1
    assert reader.feed(body[70:] + ndjson_line(3, 1_700_000_000_600), 0.9) == 2
    # Sent 300 and 600 ms after the first; both arrived 400 ms after it.
    assert reader.lateness_ms() == pytest.approx([0.0, 100.0, -200.0])
    assert reader.mismatch(Pacing(3, 60, 300, NDJSON), None) is None
    assert "+100.0 ms" in "\n".join(reader.section_lines())


@pytest.mark.parametrize(
    "body, problem",
    [
        (ndjson_line(1, 1) + ndjson_line(3, 1), "line 2 is not a JSON object of 60 bytes"),
        (ndjson_line(1, 1) + ndjson_line(2, 1, size=61), "line 2 is not a JSON object"),
        (ndjson_line(1, 1) + b"not json" + b" " * 51 + b"\n", "line 2 is not a JSON object"),
        (ndjson_line(1, 1) + ndjson_line(2, 1)[:-1], "the body ended inside line 2"),
        (ndjson_line(1, 1), "expected 2 lines, got 1"),
    ],
)
def test_an_ndjson_line_that_is_not_as_asked_is_a_mismatch(body, problem):
    reader = NdjsonReader(block_size=60)
    reader.feed(body, 0.1)
    assert reader.mismatch(Pacing(2, 60, 300, NDJSON), None).startswith(problem)


def test_a_probe_of_sse_counts_events_and_says_it_streams(server):
    run = probe(f"http://127.0.0.1:{server.port}", "--shape", "sse", *QUICK, "--block-size", "32")
    assert run.returncode == 0, run.stdout + run.stderr
    asked = f"GET http://127.0.0.1:{server.port}/sse?nblocks=4&block_size=32&sleep_ms=200"
    assert asked in run.stdout
    assert "expects  4 events of 32 letters, 200 ms apart" in run.stdout
    assert "\nevents         4 events, ids 1 to 4 in order; retry: 1000 ms; " in run.stdout
    assert "0 keep-alive comments (not counted)" in run.stdout
    assert "timeline: events arrived per 200 ms" in run.stdout
    assert "verdict: STREAMS" in run.stdout and "3 of the 3 pauses between events" in run.stdout


def test_a_probe_of_ndjson_reports_the_lateness_of_each_line(server):
    run = probe(f"http://127.0.0.1:{server.port}/ndjson", *QUICK, "--block-size", "64")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "\nlines          4 lines, seq 1 to 4 in order, 64 bytes each\n" in run.stdout
    rows = re.findall(r"^ +(\d) +(\d+) ms +(\d+) ms +([+-]\d+\.\d) ms$", run.stdout, re.M)
    assert [int(seq) for seq, *_ in rows] == [1, 2, 3, 4], run.stdout
    assert all(abs(float(late)) < 100 for *_, late in rows)
    assert all(190 <= int(sent) - int(rows[k][1]) < 400 for k, (_, sent, *_) in enumerate(rows[1:]))
    assert "verdict: STREAMS" in run.stdout and "pauses between lines came through" in run.stdout


def test_a_probe_of_sse_that_gets_fewer_events_than_asked_is_an_error(server):
    # Resuming after event 2, the service sends events 3 and 4 alone.
    run = probe(f"http://127.0.0.1:{server.port}/sse", *QUICK, "-H", "Last-Event-ID: 2")
    assert_one_line_error(run, "expected 4 events, got 2")


@pytest.mark.parametrize("shape, items", [("sse", "events"), ("ndjson", "lines")])
def test_through_a_buffering_nginx_events_and_lines_are_buffered(buffering_nginx, shape, items):
    run = probe(buffering_nginx.url, "--shape", shape, "--nblocks", "6", "--sleep-ms", "250")
    assert run.returncode == 1, run.stdout + run.stderr + buffering_nginx.log()
    assert shown_header(run.stdout, "Content-Encoding") == "gzip"
    assert f"5 of the 5 pauses between {items} were missing" in run.stdout


@pytest.mark.parametrize("shape, items", [("sse", "events"), ("ndjson", "lines")])
def test_through_an_nginx_honouring_the_header_events_and_lines_stream(
    honouring_nginx, shape, items
):
    run = probe(honouring_nginx.url, "--shape", shape, "--nblocks", "6", "--sleep-ms", "250")
    assert run.returncode == 0, run.stdout + run.stderr + honouring_nginx.log()
    assert shown_header(run.stdout, "Content-Encoding") == "gzip"
    assert "verdict: STREAMS" in run.stdout and f"pauses between {items} came through" in run.stdout


def test_through_the_router_stand_in_the_probe_shows_the_platform_queue(server, tmp_path):
    # The router stamps X-Request-Start; the app answers Server-Timing: queue;dur=...
    router = gorouter_like(tmp_path / "router", server.port).start()
    try:
        found = probe(f"http://127.0.0.1:{router.port}/", "--nblocks", "3", "--sleep-ms", "100")
    finally:
        router.stop()
    assert found.returncode == 0, found.stdout + found.stderr
    queue = re.search(r"platform queue\s+(\d+\.\d) ms", found.stdout)
    assert queue, found.stdout
    assert 0 <= float(queue[1]) < 1000
