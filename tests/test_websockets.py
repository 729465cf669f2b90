"""WebSockets on the wire: /ws/echo and /ws/stream, their limits, and clients that misbehave.

Every test talks to a real gunicorn through tests/ws_support.py, a client written by hand so
it can also break the protocol on purpose. Through nginx and in Chromium: tests/test_proxy.py
and tests/test_page.py.
"""

import json
import struct
import threading
import time

import pytest
from siege_support import instance_rss_mib
from support import request, streams_in_progress, wait_until
from ws_support import BINARY, CLOSE, PING, PONG, TEXT, WsClient, close_payload, frame

from streamhtml.settings import small_limits, small_limits_env

SMALL = small_limits()


def test_echo_returns_text_and_binary_messages_and_closes_cleanly(small_server):
    ws = WsClient(small_server.port, "/ws/echo")
    try:
        assert ws.status == 101
        ws.send(TEXT, "héllo".encode())
        assert ws.receive_data().payload == "héllo".encode()
        ws.send(BINARY, bytes(range(256)) * 4)
        got = ws.receive_data()
        assert got.opcode == BINARY and got.payload == bytes(range(256)) * 4
        ws.send(CLOSE, close_payload(1000))
        assert ws.receive_data().close_code == 1000
        assert ws.closed_by_server()
    finally:
        ws.close()
    [line] = small_server.wait_for_request(route="/ws/echo", status=101)
    assert line["outcome"] == "complete"


def test_a_fragmented_message_is_echoed_in_its_pieces(small_server):
    ws = WsClient(small_server.port, "/ws/echo")
    try:
        ws.send(TEXT, b"abc", fin=False)
        ws.send(0x0, b"def", fin=True)
        pieces = [ws.receive_data(), ws.receive_data()]
        assert b"".join(piece.payload for piece in pieces) == b"abcdef"
    finally:
        ws.close()


def test_a_ping_from_the_client_gets_its_pong(small_server):
    ws = WsClient(small_server.port, "/ws/echo")
    try:
        ws.send(PING, b"are you there")
        got = ws.receive()
        assert got.opcode == PONG and got.payload == b"are you there"
    finally:
        ws.close()


def test_stream_sends_n_paced_binary_messages_then_closes_with_1000(small_server):
    ws = WsClient(small_server.port, "/ws/stream?nblocks=4&block_size=100&sleep_ms=300")
    try:
        messages, close = ws.until_close()
    finally:
        ws.close()
    assert close.close_code == 1000
    assert [len(item.payload) for item in messages] == [100] * 4
    assert all(item.opcode == BINARY for item in messages)
    gaps = [later.at - earlier.at for earlier, later in zip(messages, messages[1:])]
    assert all(gap > 0.2 for gap in gaps), f"the messages came bunched: {gaps}"


@pytest.mark.parametrize(
    "query", ["nblocks=x", "block_size=0", f"block_size={SMALL.max_block_size + 1}", "sleep_ms=-1"]
)
def test_bad_stream_parameters_get_the_json_400_before_any_handshake(small_server, query):
    ws = WsClient(small_server.port, f"/ws/stream?{query}")
    try:
        assert ws.status == 400
    finally:
        ws.close()


def test_a_plain_get_to_a_websocket_endpoint_and_a_handshake_to_another_get_json_400(
    small_server,
):
    plain = request(small_server.port, "/ws/echo")
    assert plain.status == 400 and "WebSocket" in json.loads(plain.body)["detail"]
    ws = WsClient(small_server.port, "/health")
    try:
        assert ws.status == 400
    finally:
        ws.close()


def test_another_websocket_version_gets_426_naming_13(small_server):
    reply = request(
        small_server.port,
        "/ws/echo",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "8",
        },
    )
    assert reply.status == 426 and reply.header("Sec-WebSocket-Version") == "13"


def test_a_message_over_the_limit_is_closed_with_1009(small_server):
    ws = WsClient(small_server.port, "/ws/echo")
    try:
        ws.send(BINARY, b"x" * (SMALL.ws_max_message_bytes + 1))
        _, close = ws.until_close()
        assert close.close_code == 1009
    finally:
        ws.close()
    [line] = small_server.wait_for_request(route="/ws/echo", outcome="too_big")
    assert line["error"] == "closed with 1009"


def test_a_frame_that_claims_a_terabyte_is_closed_with_1009_as_its_bytes_pass_the_limit(
    small_server,
):
    ws = WsClient(small_server.port, "/ws/stream?nblocks=1&block_size=1&sleep_ms=0")
    ws.close()
    ws = WsClient(small_server.port, "/ws/echo")
    try:
        key = b"\x01\x02\x03\x04"
        ws.sock.sendall(bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 40) + key)
        ws.sock.sendall(b"\x00" * (SMALL.ws_max_message_bytes + 4096))
        _, close = ws.until_close()
        assert close.close_code == 1009
    finally:
        ws.close()


def test_an_unmasked_frame_from_the_client_is_closed_with_1002(small_server):
    ws = WsClient(small_server.port, "/ws/echo")
    try:
        ws.send(TEXT, b"no mask", mask=False)
        _, close = ws.until_close()
        assert close.close_code == 1002
    finally:
        ws.close()
    [line] = small_server.wait_for_request(route="/ws/echo", outcome="protocol_error")
    assert line["status"] == 101


def test_an_idle_websocket_gets_pings_and_stays_open_while_it_answers_them(small_server):
    ws = WsClient(small_server.port, "/ws/echo")
    try:
        pings = 0
        # Past the stall timeout, within the (small) deadline.
        ends_at = time.monotonic() + SMALL.stall_timeout_s + 0.5
        while time.monotonic() < ends_at:
            got = ws.receive()
            assert got.opcode == PING, got
            pings += 1
            ws.send(PONG, got.payload)
        assert pings >= SMALL.stall_timeout_s // SMALL.ws_ping_interval_s - 1
        ws.send(TEXT, b"still here")
        assert ws.receive_data().payload == b"still here"
    finally:
        ws.close()


def test_a_client_that_answers_no_ping_is_cut_at_the_stall_timeout(small_server):
    ws = WsClient(small_server.port, "/ws/echo")
    started = time.monotonic()
    try:
        assert ws.receive().opcode == PING  # and never a pong
        assert ws.closed_by_server(timeout_s=SMALL.stall_timeout_s + 5)
    finally:
        ws.close()
    waited = time.monotonic() - started
    assert waited < SMALL.ws_ping_interval_s + SMALL.stall_timeout_s + 2
    [line] = small_server.wait_for_request(route="/ws/echo", outcome="stalled")
    assert line["status"] == 101


def test_a_client_that_never_reads_is_cut_at_the_stall_timeout_and_frees_its_slot(
    start_server,
):
    server = start_server({**small_limits_env(), "STREAMHTML_SEND_BUFFER_BYTES": "4096"})
    # Blocks of 4 KiB, unpaced, to a client that reads nothing: the send buffer fills.
    ws = WsClient(server.port, "/ws/stream?nblocks=200&block_size=4096&sleep_ms=0", rcvbuf=4096)
    try:
        wait_until(lambda: streams_in_progress(server.port) == 1, what="the stream to be admitted")
        [line] = server.wait_for_request(
            timeout_s=SMALL.stall_timeout_s + 10, route="/ws/stream", outcome="stalled"
        )
        assert line["status"] == 101
        wait_until(lambda: streams_in_progress(server.port) == 0, what="the slot to be freed")
    finally:
        ws.close()


def test_a_websocket_is_closed_with_1008_at_the_streams_deadline(start_server):
    server = start_server({**small_limits_env(), "STREAMHTML_MAX_STREAM_DURATION_S": "2"})
    ws = WsClient(server.port, "/ws/echo")
    started = time.monotonic()
    try:
        _, close = ws.until_close()
        assert close.close_code == 1008
        assert 1.5 < time.monotonic() - started < 5
    finally:
        ws.close()


def test_websockets_are_counted_as_streams_and_refused_past_the_cap(start_server):
    server = start_server({**small_limits_env(), "STREAMHTML_MAX_STREAMS": "2"})
    open_ = [WsClient(server.port, "/ws/echo") for _ in range(2)]
    try:
        wait_until(lambda: streams_in_progress(server.port) == 2, what="2 WebSockets in progress")
        refused = WsClient(server.port, "/ws/echo")
        assert refused.status == 503
        refused.close()
    finally:
        for ws in open_:
            ws.close()
    wait_until(lambda: streams_in_progress(server.port) == 0, what="their slots to be freed")


def test_websockets_are_closed_with_1001_at_shutdown(start_server):
    server = start_server({**small_limits_env(), "GUNICORN_GRACEFUL_TIMEOUT": "1"})
    ws = WsClient(server.port, "/ws/echo", timeout_s=10)
    try:
        wait_until(
            lambda: streams_in_progress(server.port) == 1, what="the WebSocket to be admitted"
        )
        stopping = threading.Thread(target=server.stop, daemon=True)
        stopping.start()
        _, close = ws.until_close()
        assert close.close_code == 1001
        stopping.join(15)
    finally:
        ws.close()
    assert server.process.returncode == 0


def test_500_idle_websockets_leave_health_fast_and_memory_within_the_quota(start_server):
    memory_mib = 384  # manifest.yml's memory
    server = start_server({"MEMORY_LIMIT": f"{memory_mib}m"})
    sockets = []
    try:
        for _ in range(500):
            ws = WsClient(server.port, "/ws/echo", timeout_s=20)
            assert ws.status == 101, ws.status_line
            sockets.append(ws)
        wait_until(
            lambda: streams_in_progress(server.port) == 500, what="500 WebSockets", timeout_s=20
        )
        slowest = 0.0
        for _ in range(20):
            started = time.monotonic()
            assert request(server.port, "/health", timeout_s=5).status == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
        assert slowest < 1.0, f"/health took {slowest:.2f} s beside 500 WebSockets"
        rss = instance_rss_mib(server)
        print(f"500 idle WebSockets: /health at most {slowest * 1000:.0f} ms, RSS {rss:.0f} MiB")
        assert rss < 0.75 * memory_mib, f"{rss:.0f} MiB with 500 WebSockets open"
        ws = sockets[-1]
        ws.send(TEXT, b"one of 500")
        assert ws.receive_data().payload == b"one of 500"
    finally:
        for ws in sockets:
            ws.close()
    wait_until(lambda: streams_in_progress(server.port) == 0, what="500 slots to be freed")


def test_frames_are_built_as_rfc_6455_says():
    # The test client's own framing, against the RFC's example: "Hello", unmasked.
    assert frame(TEXT, b"Hello", mask=False) == bytes.fromhex("810548656c6c6f")


def test_the_accept_token_is_rfc_6455s_and_wsprotos():
    from wsproto.utilities import generate_accept_token

    from streamhtml.websockets import accept_token

    def handshake(key: str) -> dict:
        return {
            "REQUEST_METHOD": "GET",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_UPGRADE": "websocket",
            "HTTP_CONNECTION": "keep-alive, Upgrade",
            "HTTP_SEC_WEBSOCKET_VERSION": "13",
            "HTTP_SEC_WEBSOCKET_KEY": key,
        }

    # RFC 6455 §1.3's own example.
    assert accept_token(handshake("dGhlIHNhbXBsZSBub25jZQ==")) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    for key in ("AAAAAAAAAAAAAAAAAAAAAA==", "x3JJHMbDL1EzLkh9GBhXDw=="):
        assert accept_token(handshake(key)) == generate_accept_token(key.encode())
