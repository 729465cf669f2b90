"""The page at `/`, in a real headless Chromium: a person starts a stream and watches it arrive.

HTML blocks and NDJSON lines are read with fetch; SSE events with Chromium's own EventSource,
reconnects included; WebSocket messages with its own WebSocket; directly and through nginx.

Debian's chromium (`make test` installs it), driven by Playwright from PyPI; Playwright's own
browser downloads are never used. Every test fails on a console error, an uncaught exception
or a Content-Security-Policy violation: the page must work under its CSP as served.
"""

import os
import re
import time

import pytest
from forward_proxy import Relay
from nginx_support import Nginx
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright
from support import REPO
from verdict_cases import SERVER_TIMINGS, VERDICTS

from streamhtml.probe import judge

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# The README's screenshot; `make screenshot` refreshes it, other runs leave the tree clean.
README_SCREENSHOT = REPO / "docs" / "page.png"

# A CSP violation is reported to the page as an event; record each one where the test sees it.
RECORD_CSP_VIOLATIONS = """
window.cspViolationsSeen = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolationsSeen.push(`${event.violatedDirective} blocked ${event.blockedURI}`);
});
"""

# Every EventSource the page makes, kept where a test can ask its readyState.
RECORD_EVENT_SOURCES = """
window.eventSourcesMade = [];
window.EventSource = class extends window.EventSource {
  constructor(...args) {
    super(...args);
    window.eventSourcesMade.push(this);
  }
};
"""

# The colour the chart draws received bytes in (page.js COLORS.received, #0b5cad).
COUNT_RECEIVED_PIXELS = """
() => {
  const canvas = document.getElementById("chart");
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  let count = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] === 11 && data[i + 1] === 92 && data[i + 2] === 173) count += 1;
  }
  return count;
}
"""

SNAPSHOT = """
() => ({
  received: Number(document.getElementById("received").dataset.value),
  unit: document.getElementById("unit").innerText,
  reconnects: document.getElementById("reconnects").innerText,
  total: Number(document.getElementById("total").dataset.value),
  points: Number(document.getElementById("chart").dataset.points),
  state: document.getElementById("verdict").dataset.state,
  verdict: document.getElementById("verdict").innerText,
  rate: document.getElementById("rate").innerText,
  queue: document.getElementById("queue").innerText,
})
"""


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
        except PlaywrightError as error:
            pytest.skip(f"headless Chromium cannot be launched from {CHROMIUM}: {error}")
        yield launched
        launched.close()


class Troubles(list):
    """Console errors, uncaught exceptions and CSP violations seen by one page."""

    def unexpected(self, *allowed: str) -> list[str]:
        return [line for line in self if not any(text in line for text in allowed)]


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 960, "height": 1000})
    page = context.new_page()
    page.troubles = Troubles()
    page.requested = []
    page.on("request", lambda request: page.requested.append(request.url))
    page.on(
        "console",
        lambda message: message.type == "error" and page.troubles.append(message.text),
    )
    page.on("pageerror", lambda error: page.troubles.append(f"uncaught: {error}"))
    page.add_init_script(RECORD_CSP_VIOLATIONS)
    page.add_init_script(RECORD_EVENT_SOURCES)
    yield page
    context.close()


def assert_no_troubles(page, *allowed: str):
    violations = page.evaluate("window.cspViolationsSeen")
    assert violations == [], violations
    assert page.troubles.unexpected(*allowed) == []


def start_stream(
    page, base_url: str, nblocks: int, block_size: int, sleep_ms: int, shape: str = "html"
):
    page.goto(f"{base_url}/")
    page.get_by_label("shape").select_option(shape)
    page.get_by_label("nblocks").fill(str(nblocks))
    page.get_by_label("block_size").fill(str(block_size))
    page.get_by_label("sleep_ms").fill(str(sleep_ms))
    page.get_by_role("button", name="Start stream").click()


def wait_for(page, condition, timeout_s: float = 15.0) -> dict:
    """Poll the page's counters until `condition(snapshot)` holds; return that snapshot."""
    deadline = time.monotonic() + timeout_s
    while True:
        snapshot = page.evaluate(SNAPSHOT)
        if condition(snapshot):
            return snapshot
        assert time.monotonic() < deadline, f"gave up waiting; the page shows {snapshot}"
        time.sleep(0.05)


def finished(snapshot: dict) -> bool:
    return snapshot["state"] not in ("idle", "running")


def streamed(page, base_url: str, state: str = "streams", **pacing) -> dict:
    """Start a stream on the page, wait for its end, and check how the page judged it."""
    start_stream(page, base_url, **pacing)
    done = wait_for(page, finished)
    assert done["state"] == state, done
    return done


def test_a_direct_stream_is_drawn_as_it_arrives_and_the_page_says_it_streams(
    page, server, tmp_path
):
    start_stream(page, f"http://127.0.0.1:{server.port}", nblocks=8, block_size=2048, sleep_ms=400)

    # While the stream runs (8 blocks, 400 ms apart: 2.8 s), the counters and chart move.
    early = wait_for(page, lambda s: s["received"] > 0)
    assert early["state"] == "running", early
    assert early["total"] == 8 * 2048 and 0 < early["received"] < early["total"]
    assert early["points"] >= 1
    assert page.evaluate(COUNT_RECEIVED_PIXELS) > 0, "the chart drew nothing in its colour"
    later = wait_for(page, lambda s: s["received"] > early["received"])
    assert later["state"] == "running" and later["received"] < later["total"], later
    assert later["points"] > early["points"]
    assert later["rate"].endswith("/s")

    done = wait_for(page, finished)
    assert done["state"] == "streams", done
    assert done["received"] == done["total"] == 8 * 2048 and done["points"] >= 8
    assert done["unit"] == "bytes" and done["reconnects"] == "–"
    assert "STREAMS" in done["verdict"]
    assert re.search(r"[67] of the 7 pauses between blocks came through", done["verdict"])
    assert done["queue"] == "–"  # nothing stamped X-Request-Start: the app reports no queue
    chart_label = page.get_by_role("img").get_attribute("aria-label")
    assert re.search(r"16,384 bytes in \d+ reads over 2\.\d+ s\. STREAMS", chart_label)
    assert_no_troubles(page)
    # Self-contained: the page, its script, style and icon, and the stream, all from here.
    here = f"http://127.0.0.1:{server.port}/"
    assert [url for url in page.requested if not url.startswith(here)] == []
    assert {url.split("?")[0] for url in page.requested} >= {
        here,
        here + "static/page.js",
        here + "static/page.css",
        here + "streamhtml",
    }


def requests_to(page, path: str) -> list[str]:
    return [url for url in page.requested if url.split("?")[0].endswith(path)]


def test_a_direct_sse_stream_is_counted_in_events_and_the_page_says_it_streams(
    page, server, tmp_path
):
    base_url = f"http://127.0.0.1:{server.port}"
    start_stream(page, base_url, nblocks=8, block_size=64, sleep_ms=400, shape="sse")

    early = wait_for(page, lambda s: s["received"] > 0)
    assert early["state"] == "running" and early["unit"] == "events", early
    assert early["total"] == 8 and 0 < early["received"] < 8
    later = wait_for(page, lambda s: s["received"] > early["received"])
    assert later["state"] == "running" and later["rate"].endswith("events/s"), later

    done = wait_for(page, finished)
    assert done["state"] == "streams", done
    assert done["received"] == done["total"] == 8 and done["points"] == 8
    assert re.search(r"[67] of the 7 pauses between events came through", done["verdict"])
    assert "STREAMS: the events arrived" in done["verdict"] and "byte" not in done["verdict"]
    assert done["reconnects"] == "0"
    assert page.locator("#ttfb-label").inner_text() == "First event after"
    chart_label = page.get_by_role("img").get_attribute("aria-label")
    assert re.search(r"8 events in 8 reads over 2\.\d+ s\. STREAMS", chart_label)

    # The README shows this: a finished SSE stream, its chart and its verdict.
    screenshot = README_SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "page.png"
    screenshot.parent.mkdir(exist_ok=True)
    bottom = page.locator("#verdict").bounding_box()
    clip = {"x": 0, "y": 0, "width": 960, "height": bottom["y"] + bottom["height"] + 12}
    page.screenshot(path=screenshot, clip=clip, full_page=True)
    assert screenshot.stat().st_size > 10_000

    # The service ended the stream after event 8, and the page closed its EventSource: a
    # closed EventSource never reconnects (an open one would, after its retry of 1 s).
    page.wait_for_function(
        "() => window.eventSourcesMade.length === 1"
        " && window.eventSourcesMade[0].readyState === EventSource.CLOSED",
        timeout=5000,
    )
    assert len(requests_to(page, "/sse")) == 1, page.requested
    assert_no_troubles(page)


def test_a_direct_ndjson_stream_is_counted_in_lines(page, server):
    base_url = f"http://127.0.0.1:{server.port}"
    done = streamed(page, base_url, nblocks=5, block_size=100, sleep_ms=300, shape="ndjson")
    assert (done["received"], done["total"], done["unit"]) == (5, 5, "lines")
    assert "4 of the 4 pauses between lines came through" in done["verdict"]
    assert len(requests_to(page, "/ndjson")) == 1
    assert_no_troubles(page)


# nginx compresses text/html alone unless told more: these proxies compress every shape.
GZIP_TYPES = ("text/event-stream", "application/x-ndjson")


@pytest.fixture(scope="module")
def buffering_nginx(server, tmp_path_factory):
    """gzip on and the app's `X-Accel-Buffering: no` ignored: nginx holds the stream."""
    directory = tmp_path_factory.mktemp("nginx-page")
    nginx = Nginx(directory, server.port, False, gzip_types=GZIP_TYPES).start()
    yield nginx
    nginx.stop()


@pytest.fixture(scope="module")
def honouring_nginx(server, tmp_path_factory):
    """gzip on for every shape, the app's `X-Accel-Buffering: no` honoured."""
    directory = tmp_path_factory.mktemp("nginx-page-honouring")
    nginx = Nginx(directory, server.port, gzip_types=GZIP_TYPES).start()
    yield nginx
    nginx.stop()


def test_through_a_buffering_proxy_the_page_says_buffered(page, buffering_nginx):
    start_stream(page, buffering_nginx.url, nblocks=6, block_size=1024, sleep_ms=300)
    running = page.evaluate(SNAPSHOT)
    assert running["state"] == "running" and running["received"] == 0, running
    done = wait_for(page, finished)
    assert done["state"] == "buffered", done
    assert "BUFFERED" in done["verdict"] and "5 of the 5 pauses" in done["verdict"]
    assert done["received"] == 6 * 1024
    assert_no_troubles(page)


def test_event_source_through_a_gzip_nginx_that_honours_the_header_streams(page, honouring_nginx):
    done = streamed(
        page, honouring_nginx.url, nblocks=6, block_size=1024, sleep_ms=300, shape="sse"
    )
    assert "5 of the 5 pauses between events came through" in done["verdict"]
    assert done["received"] == 6 and done["reconnects"] == "0"
    assert_no_troubles(page)


def test_event_source_through_a_buffering_gzip_nginx_says_buffered(page, buffering_nginx):
    done = streamed(
        page,
        buffering_nginx.url,
        nblocks=6,
        block_size=1024,
        sleep_ms=300,
        shape="sse",
        state="buffered",
    )
    assert "5 of the 5 pauses between events were missing" in done["verdict"]
    assert done["received"] == 6
    assert_no_troubles(page)


@pytest.fixture
def impatient_nginx(server, tmp_path):
    """An nginx that cuts a response after 1 s without a byte, as idle-timeout balancers do."""
    nginx = Nginx(tmp_path / "nginx", server.port, gzip=False, read_timeout_s=1)
    yield nginx.start()
    nginx.stop()


def test_event_source_reconnects_after_each_cut_and_counts_each_event_once(page, impatient_nginx):
    # Each 1.5 s pause is cut after 1 s. The EventSource reconnects after the retry delay the
    # stream gave (its pause, 1.5 s) with Last-Event-ID, and the service resumes after it.
    start_stream(page, impatient_nginx.url, nblocks=3, block_size=16, sleep_ms=1500, shape="sse")
    done = wait_for(page, finished, timeout_s=20)
    assert done["state"] == "streams", done
    assert done["received"] == 3 and done["reconnects"] == "2", done
    assert len(requests_to(page, "/sse")) == 3
    # Chromium reports each cut stream on the console; nothing else may be there.
    assert_no_troubles(page, "net::ERR_INCOMPLETE_CHUNKED_ENCODING")


def test_a_refused_event_source_shows_the_services_reason(page, server):
    base_url = f"http://127.0.0.1:{server.port}"
    done = streamed(
        page, base_url, nblocks=4, block_size=16, sleep_ms=999999, shape="sse", state="error"
    )
    assert "HTTP 400" in done["verdict"] and "sleep_ms must be" in done["verdict"]
    # Chromium logs the refused EventSource and the 400 fetch as console errors.
    assert_no_troubles(page, "status of 400", "EventSource")


def test_a_refused_request_shows_the_services_reason(page, server):
    done = streamed(
        page,
        f"http://127.0.0.1:{server.port}",
        nblocks=4,
        block_size=16,
        sleep_ms=999999,
        state="error",
    )
    assert "HTTP 400" in done["verdict"] and "sleep_ms must be" in done["verdict"]
    # Chromium logs every 4xx fetch as a console error: that one, and only that, is expected.
    assert_no_troubles(page, "status of 400")


@pytest.mark.parametrize(
    "pacing, arrivals, verdict",
    [case[1:] for case in VERDICTS],
    ids=[case[0] for case in VERDICTS],
)
def test_the_page_judges_as_the_probe_does(page, server, pacing, arrivals, verdict):
    page.goto(f"http://127.0.0.1:{server.port}/")
    found = page.evaluate(
        "([arrivals, pacing]) => window.streamhtml.judge(arrivals, pacing)",
        [
            [list(arrival) for arrival in arrivals],
            {
                "nblocks": pacing.nblocks,
                "blockSize": pacing.block_size,
                "sleepMs": pacing.sleep_ms,
                "shape": pacing.shape.name,
            },
        ],
    )
    assert found["state"] == verdict.lower(), found["reasons"]
    assert tuple(found["reasons"]) == judge(arrivals, pacing).reasons
    assert_no_troubles(page)


def test_the_page_reads_the_platform_queue_time_as_the_probe_does(page, server):
    page.goto(f"http://127.0.0.1:{server.port}/")
    found = page.evaluate(
        "(headers) => headers.map((header) => window.streamhtml.platformQueueMs(header))",
        [header for header, _ in SERVER_TIMINGS],
    )
    wrong = [
        (header, got, expected)
        for (header, expected), got in zip(SERVER_TIMINGS, found)
        if got != expected
    ]
    assert wrong == [] and len(found) == len(SERVER_TIMINGS)
    assert_no_troubles(page)


@pytest.fixture
def relay_with_server_timing(server):
    """A relay in front of the app that adds `Server-Timing: queue;dur=12.5`, as the app will
    answer when gorouter's X-Request-Start reaches it (that side is not in this tree)."""
    relay = Relay(server.port, response_headers=[("Server-Timing", "app;dur=2, queue;dur=12.5")])
    yield relay.start()
    relay.stop()


def test_the_page_shows_the_time_the_request_spent_in_the_platform(page, relay_with_server_timing):
    done = streamed(page, relay_with_server_timing.url, nblocks=4, block_size=1024, sleep_ms=200)
    assert done["queue"] == "12.5 ms"
    queue = page.locator("#queue")
    assert queue.get_attribute("data-value") == "12.5"
    label = page.locator("dd#queue >> xpath=preceding-sibling::dt").inner_text()
    described = page.locator(f"#{queue.get_attribute('aria-describedby')}").inner_text()
    assert label == "Platform queue"
    assert "time the request spent in the platform" in described
    assert "before the app saw it" in described
    assert any("/streamhtml?" in url for url in page.requested)
    assert_no_troubles(page)


# --- the WebSocket shape: the browser's own WebSocket ------------------------------------


@pytest.fixture
def plain_nginx(server, tmp_path):
    """nginx as shipped, passing WebSocket handshakes on (tests/nginx_support.py)."""
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


def test_the_websocket_shape_streams_through_nginx(page, plain_nginx):
    done = streamed(page, plain_nginx.url, nblocks=5, block_size=100, sleep_ms=300, shape="ws")
    assert done["received"] == 5
    assert_no_troubles(page)


def test_a_refused_websocket_says_so(page, server):
    base_url = f"http://127.0.0.1:{server.port}"
    # Over the pacing the service allows: refused with a 400 before the handshake.
    done = streamed(
        page, base_url, nblocks=5, block_size=100, sleep_ms=600_000, shape="ws", state="error"
    )
    assert "could not open" in done["verdict"]
    # Chromium reports the failed handshake on the console itself.
    assert_no_troubles(page, "WebSocket connection to")
