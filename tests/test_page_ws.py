"""The page's WebSocket shape in a real headless Chromium, with the browser's own WebSocket,
directly and through nginx (the fixtures and helpers are tests/test_page.py's)."""

import pytest
import test_page
from nginx_support import Nginx
from test_page import assert_no_troubles, finished, start_stream, wait_for

# test_page.py's fixtures, shared: a headless Chromium per module, a fresh page per test.
browser = test_page.browser
page = test_page.page


@pytest.fixture
def nginx(server, tmp_path):
    proxy = Nginx(tmp_path / "nginx", server.port).start()
    yield proxy
    proxy.stop()


def test_a_websocket_stream_is_counted_in_messages_and_the_page_says_it_streams(page, server):
    base_url = f"http://127.0.0.1:{server.port}"
    start_stream(page, base_url, nblocks=6, block_size=256, sleep_ms=300, shape="ws")
    early = wait_for(page, lambda snapshot: snapshot["received"] >= 1)
    assert early["state"] == "running" and early["unit"] == "messages", early
    done = wait_for(page, finished)
    assert done["state"] == "streams", done
    assert done["received"] == done["total"] == 6
    assert "5 of the 5 pauses between messages came through" in done["verdict"]
    assert page.locator("#ttfb-label").inner_text() == "First message after"
    assert_no_troubles(page)


def test_the_websocket_shape_streams_through_nginx(page, nginx):
    start_stream(page, nginx.url, nblocks=5, block_size=100, sleep_ms=300, shape="ws")
    done = wait_for(page, finished)
    assert done["state"] == "streams", done
    assert done["received"] == 5
    assert_no_troubles(page)


def test_a_refused_websocket_says_so(page, server):
    base_url = f"http://127.0.0.1:{server.port}"
    # Over the pacing the service allows: refused with a 400 before the handshake.
    start_stream(page, base_url, nblocks=5, block_size=100, sleep_ms=600_000, shape="ws")
    done = wait_for(page, finished)
    assert done["state"] == "error", done
    assert "could not open" in done["verdict"]
    # Chromium reports the failed handshake on the console itself.
    assert_no_troubles(page, "WebSocket connection to")
