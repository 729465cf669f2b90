"""WebSockets through nginx and through the gorouter stand-in, and judged by the probe.

nginx passes a handshake on as a WebSocket only when told to (Upgrade and Connection: upgrade
to the upstream, tests/nginx_support.py), as gorouter does by itself.
"""

import pytest
from nginx_support import Nginx, gorouter_like
from support import probe
from ws_support import BINARY, CLOSE, TEXT, WsClient, close_payload


@pytest.fixture(params=["nginx", "router"])
def front(request, small_server, tmp_path):
    if request.param == "nginx":
        proxy = Nginx(tmp_path / "nginx", small_server.port)
    else:
        proxy = gorouter_like(tmp_path / "router", small_server.port)
    yield proxy.start()
    proxy.stop()


def test_echo_works_through_the_proxy(front):
    ws = WsClient(front.port, "/ws/echo")
    try:
        assert ws.status == 101
        ws.send(TEXT, b"through")
        assert ws.receive_data().payload == b"through"
        ws.send(BINARY, b"\x00\xff" * 5000)
        got = b""
        while len(got) < 10000:  # a proxy may pass a message on in frames of its own
            got += ws.receive_data().payload
        assert got == b"\x00\xff" * 5000
        ws.send(CLOSE, close_payload(1000))
        assert ws.receive_data().close_code == 1000
    finally:
        ws.close()


def test_paced_messages_stream_through_the_proxy_as_the_probe_judges(front):
    done = probe("--shape", "ws", front.url, "--nblocks", "5", "--sleep-ms", "250")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict: STREAMS" in done.stdout and "messages       5, then close 1000" in done.stdout


def test_the_probe_straight_to_the_service(small_server):
    url = f"http://127.0.0.1:{small_server.port}"
    done = probe("--shape", "ws", url, "--nblocks", "4", "--sleep-ms", "200")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "HTTP/1.1 101 Switching Protocols, websocket" in done.stdout


def test_the_probe_says_why_when_the_route_speaks_no_websocket(small_server):
    url = f"http://127.0.0.1:{small_server.port}/ws/stream?nblocks=x"
    done = probe("--shape", "ws", url.replace("nblocks=x", "block_size=0"))
    assert done.returncode == 2 and "HTTP 400" in done.stderr and "not a WebSocket" in done.stderr
