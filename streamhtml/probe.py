"""Does this route stream? Ask for paced blocks, events or lines and time their arrival.

    python -m streamhtml.probe https://streamhtml.apps.example.com
    python -m streamhtml.probe http://127.0.0.1:8080 --nblocks 20 --sleep-ms 500
    python -m streamhtml.probe --shape sse https://streamhtml.apps.example.com
    python -m streamhtml.probe -H 'Host: streamhtml.apps.example.com' http://10.0.0.5

The service sends block after block with `sleep_ms` between them. When every hop passes the
stream through, the blocks arrive with those pauses; when something on the way (a proxy, a
load balancer, a compressing filter) buffers it, they arrive bunched together, usually in one
burst at the end. The probe prints the time to first byte, the arrival timeline, the
throughput and a verdict: STREAMS (exit 0) or BUFFERED (exit 1). Errors exit 2 with one line;
UNKNOWN (exit 3) means the pacing asked for is too short to judge.

`--shape` picks what is streamed, as proxies treat each differently: html (/streamhtml, the
default; the verdict counts bytes), sse (/sse, Server-Sent Events; it counts events, parsed as
they arrive, and reports the keep-alive comments apart) or ndjson (/ndjson; it counts lines,
and reports each line's lateness: its time in transit, from its t_ms to its arrival, less the
first line's, so the two clocks' offset cancels out).

`--upload BYTES` asks the other way: does the path stream a request body up to the service,
or hold it back? The probe POSTs BYTES to /upload in `--nblocks` chunks (chunked transfer
coding), `--sleep-ms` apart, and the service answers when each byte reached it; the verdict is
the same as for a stream down: the chunks' pauses came through (STREAMS), or the body came in
one burst once it was whole (BUFFERED: nginx's `proxy_request_buffering on`, its default).

The verdict is judged on arrival times, never on how many reads the bytes came in: a proxy may
re-chunk a stream (gorouter sends an unpaced one in about 8 KiB pieces) without holding it back.

It also prints the response headers that tell what is on the path (Transfer-Encoding,
Content-Encoding, Via, X-Vcap-Request-Id, Server-Timing) and the platform queue time: the app
answers `Server-Timing: queue;dur=<ms>` when gorouter's X-Request-Start reached it, the time the
request spent in the platform before the app saw it.

`-H 'Name: value'` (repeatable, as curl's) adds or replaces a request header: `-H 'Host: ...'`
points the probe at a router by its address. Proxies are used as urllib uses them: HTTP_PROXY
for http:// URLs (the proxy is asked for the whole URL), HTTPS_PROXY for https:// ones (a
CONNECT tunnel, with Basic proxy authentication from the proxy URL's user:password), NO_PROXY
for the hosts to reach directly; lowercase names win.

Standard library only, Python 3.10 or newer, no Flask: copy this one file to a jump box and run
it there (`python3 probe.py URL`) if the package is not installed.
"""

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import math
import os
import re
import socket
import ssl
import sys
import time
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

try:
    from . import __version__
except ImportError:  # run as a lone file: python3 probe.py URL
    __version__ = "standalone"

DEFAULT_NBLOCKS = 10
DEFAULT_BLOCK_SIZE = 1024
DEFAULT_SLEEP_MS = 300

STREAMS = "STREAMS"
BUFFERED = "BUFFERED"
UNKNOWN = "UNKNOWN"
EXIT_CODES = {STREAMS: 0, BUFFERED: 1, UNKNOWN: 3}
EXIT_ERROR = 2

# The verdict's thresholds. A pause between two blocks "came through" when the second block
# completed at least half a pause after the first; jitter of less than half a pause is normal.
MIN_SLEEP_MS = 50  # shorter pauses drown in network jitter: nothing to judge
MOST = 0.5  # more than this share of the pauses missing: the blocks came bunched
SHORT_SPREAD = 0.5  # arrivals spread over less than this share of the paced duration
SLOW_START_S = 1.0  # a first byte later than this (and late for the pacing) is worth a note

# One arrival: (seconds since the request was sent, what arrived then: body bytes for html,
# whole events or lines for sse and ndjson).
Arrival = tuple[float, int]


class ProbeError(Exception):
    """Anything that stops the probe before a verdict: reported as one line, exit 2."""


@dataclass(frozen=True)
class Shape:
    """What is streamed, where it is asked for, and what the verdict counts in it."""

    name: str
    path: str
    accept: str
    items: str  # what is paced: "blocks"
    counted: str  # what the verdict counts: "bytes" (a block's share of them), "events"
    counted_one: str
    nothing: str  # what the verdict says when none of it arrived


HTML = Shape("html", "/streamhtml", "text/html", "blocks", "bytes", "byte", "no body bytes")
SSE = Shape("sse", "/sse", "text/event-stream", "events", "events", "event", "no events")
NDJSON = Shape("ndjson", "/ndjson", "application/x-ndjson", "lines", "lines", "line", "no lines")
WS = Shape("ws", "/ws/stream", "*/*", "messages", "messages", "message", "no messages")
SHAPES = {shape.name: shape for shape in (HTML, SSE, NDJSON, WS)}
# Not a --shape: the body goes up, with --upload.
UPLOAD = Shape("upload", "/upload", "application/json", "chunks", "bytes", "byte", "no body bytes")


@dataclass(frozen=True)
class Pacing:
    """What the probe asked for, so what a stream passed through untouched looks like."""

    nblocks: int
    block_size: int
    sleep_ms: int
    shape: Shape = HTML

    @property
    def total_bytes(self) -> int:
        return self.nblocks * self.block_size

    @property
    def spread_s(self) -> float:
        """Seconds from the first block to the last: the service pauses only between blocks."""
        return max(self.nblocks - 1, 0) * self.sleep_ms / 1000.0


@dataclass(frozen=True)
class Timeline:
    """The arrivals summed up; times are seconds since the request was sent."""

    first_byte_s: float
    last_byte_s: float
    total_bytes: int
    reads: int
    # When each block had fully arrived, judged by share of the bytes (so it also works for
    # compressed byte counts): block k is complete once (k + 1) / nblocks of the bytes are in.
    block_times: tuple[float, ...]
    largest_gap_s: float
    largest_gap_at_s: float
    # The most bytes that arrived within half a pause, and when that burst ended.
    burst_bytes: int
    burst_at_s: float

    @property
    def spread_s(self) -> float:
        return self.last_byte_s - self.first_byte_s


@dataclass(frozen=True)
class Verdict:
    state: str
    reasons: tuple[str, ...]

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.state]


def summarize(arrivals: Sequence[Arrival], pacing: Pacing) -> Timeline:
    arrivals = sorted((t, n) for t, n in arrivals if n > 0)
    if not arrivals:
        return Timeline(0.0, 0.0, 0, 0, (), 0.0, 0.0, 0, 0.0)
    total = sum(n for _, n in arrivals)
    block_times, received, k = [], 0, 0
    for t, n in arrivals:
        received += n
        # Integer arithmetic: block k is in once received * nblocks >= total * (k + 1).
        while k < pacing.nblocks and received * pacing.nblocks >= total * (k + 1):
            block_times.append(t)
            k += 1
    gap, gap_at = 0.0, arrivals[0][0]
    for (before, _), (t, _) in zip(arrivals, arrivals[1:]):
        if t - before > gap:
            gap, gap_at = t - before, t
    window = pacing.sleep_ms / 2000.0
    burst, burst_at, start, in_window = 0, arrivals[0][0], 0, 0
    for t, n in arrivals:
        in_window += n
        while t - arrivals[start][0] > window:
            in_window -= arrivals[start][1]
            start += 1
        if in_window > burst:
            burst, burst_at = in_window, t
    return Timeline(
        first_byte_s=arrivals[0][0],
        last_byte_s=arrivals[-1][0],
        total_bytes=total,
        reads=len(arrivals),
        block_times=tuple(block_times),
        largest_gap_s=gap,
        largest_gap_at_s=gap_at,
        burst_bytes=burst,
        burst_at_s=burst_at,
    )


def judge(arrivals: Sequence[Arrival], pacing: Pacing) -> Verdict:
    """STREAMS, BUFFERED or UNKNOWN, with the reasons, from arrival times alone.

    A stream passed through untouched shows the service's pauses: its blocks arrive about
    `sleep_ms` apart, over about (nblocks - 1) x sleep_ms. Something that buffers cannot
    recreate those pauses: its blocks arrive bunched, over a shorter time. A late first byte
    alone is not buffering (a slow route is slow for every byte); it gets a note.
    """
    shape = pacing.shape
    if pacing.nblocks < 2 or pacing.sleep_ms < MIN_SLEEP_MS:
        return Verdict(
            UNKNOWN,
            (
                f"nblocks={pacing.nblocks} and sleep_ms={pacing.sleep_ms} leave no pauses to "
                f"look for: use at least 2 {shape.items} and {MIN_SLEEP_MS} ms",
            ),
        )
    line = summarize(arrivals, pacing)
    if line.total_bytes == 0:
        return Verdict(UNKNOWN, (f"{shape.nothing} arrived",))
    sleep_s = pacing.sleep_ms / 1000.0
    pauses = pacing.nblocks - 1
    seen = sum(
        1 for before, t in zip(line.block_times, line.block_times[1:]) if t - before >= sleep_s / 2
    )
    spread = (
        f"the {shape.counted} arrived over {line.spread_s:.2f} s; "
        f"paced, they take {pacing.spread_s:.2f} s ({pauses} pauses of {pacing.sleep_ms} ms)"
    )
    missing = pauses - seen
    buffered = []
    if missing > MOST * pauses:
        buffered.append(
            f"{missing} of the {pauses} pauses between {shape.items} were missing: "
            f"the {shape.items} arrived bunched together"
        )
    if line.spread_s < SHORT_SPREAD * pacing.spread_s:
        buffered.append(spread)
    if line.burst_bytes * 2 > line.total_bytes:
        buffered.append(
            f"{percent(line.burst_bytes, line.total_bytes)} of the {shape.counted} arrived in "
            "one burst, "
            f"within {pacing.sleep_ms // 2} ms, ending {line.burst_at_s:.2f} s after the request"
        )
    late = line.first_byte_s > max(SLOW_START_S, SHORT_SPREAD * pacing.spread_s)
    if buffered:
        if late:
            buffered.append(
                f"the first {shape.counted_one} came only after {line.first_byte_s:.2f} s, "
                "held back with the rest"
            )
        return Verdict(BUFFERED, tuple(buffered))
    reasons = [f"{seen} of the {pauses} pauses between {shape.items} came through", spread]
    if late:
        reasons.append(
            f"note: the first {shape.counted_one} took {line.first_byte_s:.2f} s, a slow start, "
            "but the pauses after it came through"
        )
    return Verdict(STREAMS, tuple(reasons))


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


# --- the request -------------------------------------------------------------------------------

# A header name is an HTTP token (RFC 9110, section 5.1).
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# The response headers the report shows: how the body was framed and encoded, which proxies
# said they were on the way, gorouter's request id, and the app's platform queue time.
SHOWN_HEADERS = (
    "Transfer-Encoding",
    "Content-Encoding",
    "Via",
    "X-Vcap-Request-Id",
    "Server-Timing",
)


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # with the query

    @property
    def netloc(self) -> str:
        """host[:port] as a Host header carries it: the port only when not the scheme's own."""
        default = 443 if self.scheme == "https" else 80
        host = bracketed(self.host)
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"


def bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _url_parts(url: str):
    """The URL split, its port (the scheme's by default) and its path without a final slash."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProbeError(f"not an http:// or https:// URL: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise ProbeError(f"bad port in {url!r}: {error}") from None
    return parts, port, parts.path.rstrip("/")


def target_for(
    url: str, nblocks=None, block_size=None, sleep_ms=None, shape: str | None = None
) -> tuple[Target, Pacing]:
    """The request to make from a route (https://host) or a full .../streamhtml, /sse or
    /ndjson URL.

    The shape is the one named, else the one the URL's path ends in, else html. Each of
    nblocks, block_size and sleep_ms comes from the option when given, else from the URL's
    query, else from the default; any other query parameter is kept.
    """
    parts, port, path = _url_parts(url)
    in_url = next((name for name, kind in SHAPES.items() if path.endswith(kind.path)), None)
    if shape and in_url and shape != in_url:
        raise ProbeError(f"--shape {shape} asks for {SHAPES[shape].path}, the URL for {path}")
    wanted = SHAPES[shape or in_url or HTML.name]
    if in_url:
        path = path[: -len(SHAPES[in_url].path)]
    path += wanted.path
    query: dict[str, str | int] = dict(parse_qsl(parts.query, keep_blank_values=True))
    given = {"nblocks": nblocks, "block_size": block_size, "sleep_ms": sleep_ms}
    defaults = {
        "nblocks": DEFAULT_NBLOCKS,
        "block_size": DEFAULT_BLOCK_SIZE,
        "sleep_ms": DEFAULT_SLEEP_MS,
    }
    for name, value in given.items():
        if value is None:
            value = query.get(name, defaults[name])
        if not str(value).isdigit() or not str(value).isascii():
            raise ProbeError(f"{name} in the URL must be a whole number, not {value!r}")
        query[name] = int(value)
    pacing = Pacing(int(query["nblocks"]), int(query["block_size"]), int(query["sleep_ms"]), wanted)
    target = Target(parts.scheme, parts.hostname, port, f"{path}?{urlencode(query)}")
    return target, pacing


def parse_header(text: str) -> tuple[str, str]:
    """`Name: value`, as curl's -H takes it. An empty value removes a header the probe sends."""
    if any(char in text for char in "\r\n\0"):
        raise ProbeError(f"-H {text!r}: a header cannot hold CR, LF or NUL")
    name, colon, value = text.partition(":")
    if not colon:
        raise ProbeError(f"-H {text!r}: give it as 'Name: value'")
    if not name:
        raise ProbeError(f"-H {text!r}: the header name is empty")
    if not HEADER_NAME.fullmatch(name):
        raise ProbeError(f"-H {text!r}: {name!r} is not a header name")
    value = value.strip(" \t")
    try:
        value.encode("latin-1")  # what http.client sends header values as
    except UnicodeEncodeError:
        raise ProbeError(f"-H {text!r}: a header value must be Latin-1") from None
    return name, value


def request_headers(
    target: Target, given: Sequence[tuple[str, str]], accept: str = HTML.accept
) -> tuple[tuple[str, str], ...]:
    """The probe's own headers, each replaced where -H gives the same name, then the other -H."""
    own = [
        ("Host", target.netloc),
        # As a browser would: a compressing proxy then compresses, and may buffer to do so.
        ("Accept-Encoding", "gzip"),
        # Some proxies treat text/event-stream apart: ask as an EventSource would.
        ("Accept", accept),
        ("Cache-Control", "no-cache"),
        ("User-Agent", f"streamhtml-probe/{__version__}"),
    ]
    given_by_name: dict[str, list[tuple[str, str]]] = {}
    for name, value in given:
        given_by_name.setdefault(name.lower(), []).append((name, value))
    headers = []
    for name, value in own:
        headers += given_by_name.pop(name.lower(), [(name, value)])
    for extra in given_by_name.values():
        headers += extra
    return tuple((name, value) for name, value in headers if value)


@dataclass(frozen=True)
class Proxy:
    """An http:// proxy from the environment, picked as urllib picks it."""

    host: str
    port: int
    authorization: str | None  # "Basic ...", from the proxy URL's user:password

    @property
    def url(self) -> str:
        """The proxy as the report shows it: never with its credentials."""
        return f"http://{bracketed(self.host)}:{self.port}"


def proxy_for(target: Target) -> Proxy | None:
    """The proxy urllib would use for the target (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), if any."""
    proxy_url = urllib.request.getproxies().get(target.scheme)
    if not proxy_url or urllib.request.proxy_bypass(target.netloc):
        return None
    return parse_proxy(proxy_url, target.scheme)


def parse_proxy(proxy_url: str, for_scheme: str) -> Proxy:
    # urllib takes a bare host:port (or user:password@host:port) for an http:// proxy.
    proxy_url = proxy_url.strip()
    parts = urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
    shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"  # no password in a message
    if parts.scheme != "http":
        raise ProbeError(
            f"cannot use the {for_scheme} proxy {shown}: the probe speaks to http:// proxies only"
        )
    if not parts.hostname:
        raise ProbeError(f"no host in the {for_scheme} proxy {shown}")
    try:
        port = parts.port or 80
    except ValueError:
        raise ProbeError(f"bad port in the {for_scheme} proxy {shown}") from None
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    return Proxy(parts.hostname, port, authorization)


@dataclass(frozen=True)
class Request:
    """The one GET the probe makes: what it asks for, with which headers, through which proxy."""

    target: Target
    headers: tuple[tuple[str, str], ...]
    proxy: Proxy | None = None

    @property
    def tunnelled(self) -> bool:
        """https:// through a proxy goes in a CONNECT tunnel, so the proxy sees only TLS."""
        return self.proxy is not None and self.target.scheme == "https"

    @property
    def request_uri(self) -> str:
        # An http:// proxy is asked for the whole URL; an origin, tunnelled or not, for the path.
        return self.target.url if self.proxy and not self.tunnelled else self.target.path

    @property
    def sent_headers(self) -> list[tuple[str, str]]:
        """The headers, and the proxy's credentials where the proxy reads the request."""
        if self.proxy and self.proxy.authorization and not self.tunnelled:
            return [*self.headers, ("Proxy-Authorization", self.proxy.authorization)]
        return list(self.headers)

    @property
    def via(self) -> str:
        return f" via proxy {self.proxy.url}" if self.proxy else ""

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)


def request_for(
    target: Target, header_args: Sequence[str] = (), accept: str = HTML.accept
) -> Request:
    headers = request_headers(target, [parse_header(text) for text in header_args], accept)
    return Request(target, headers, proxy_for(target))


def miscounted(counted: int, unit: str, pacing: Pacing) -> str | None:
    """What a body that did not hold the blocks asked for got instead."""
    return f"expected {pacing.nblocks} {unit}, got {counted}" if counted != pacing.nblocks else None


class BodyReader:
    """Counts what the verdict counts in a body, read by read; for html, its bytes."""

    # Bytes can be counted as sent even in an encoding the probe cannot decode; events not.
    counts_bytes = True

    def feed(self, data: bytes, at_s: float) -> int:
        """What `data`, arrived `at_s` after the request, adds to the count."""
        return len(data)

    def mismatch(self, pacing: Pacing, found: "Measurement") -> str | None:
        """How the body differs from what was asked for, if it does."""
        if found.decoded and found.body_bytes != pacing.total_bytes:
            return f"expected {pacing.total_bytes} bytes, got {found.body_bytes}"
        return None

    def summary_lines(self) -> list[str]:
        """What the body held, beside its byte count."""
        return []

    def section_lines(self) -> list[str]:
        """A section of the report of its own, before the timeline."""
        return []


class SseReader(BodyReader):
    """Events, parsed as they arrive by the EventSource rules: one counts once dispatched
    (at its blank line, with data). Comments are counted apart: they are the keep-alives."""

    counts_bytes = False

    def __init__(self) -> None:
        self._partial = b""
        self._has_data = False
        self.last_id: bytes | None = None
        self.events = 0
        self.comments = 0
        self.retry_ms: int | None = None
        self.wrong_id: str | None = None  # the first event whose id is not its number

    def feed(self, data: bytes, at_s: float) -> int:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        dispatched = 0
        for line in lines:
            line = line.removesuffix(b"\r")
            if not line:
                if self._has_data:
                    dispatched += 1
                    self._dispatched()
                self._has_data = False
            elif line.startswith(b":"):
                self.comments += 1
            else:
                name, _, value = line.partition(b":")
                value = value.removeprefix(b" ")
                if name == b"data":
                    self._has_data = True
                elif name == b"id":
                    self.last_id = value
                elif name == b"retry" and value.isdigit():
                    self.retry_ms = int(value)
        return dispatched

    def _dispatched(self) -> None:
        self.events += 1
        if self.wrong_id is None and self.last_id != b"%d" % self.events:
            shown = "none" if self.last_id is None else printable(self.last_id.decode("latin-1"))
            self.wrong_id = f"event {self.events} had id {shown}"

    def mismatch(self, pacing: Pacing, found: "Measurement") -> str | None:
        wrong = (
            self.wrong_id and f"expected ids 1 to {pacing.nblocks} in order, but {self.wrong_id}"
        )
        return miscounted(self.events, "events", pacing) or wrong

    def summary_lines(self) -> list[str]:
        retry = "no retry field" if self.retry_ms is None else f"retry: {self.retry_ms} ms"
        ids = f"ids 1 to {self.events} in order" if not self.wrong_id else self.wrong_id
        return [
            f"events         {plural(self.events, 'event')}, {ids}; {retry}; "
            f"{plural(self.comments, 'keep-alive comment')} (not counted)"
        ]


# Lines of the lateness table shown in full; past it, a summary.
MAX_LISTED_LINES = 30


class NdjsonReader(BodyReader):
    """Lines, each checked as it arrives: a JSON object of block_size bytes with the next seq
    and an integer t_ms, the server's clock when it sent the line."""

    counts_bytes = False

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._partial = b""
        self.lines = 0
        self.timings: list[tuple[int, float]] = []  # (t_ms, seconds to arrive), line by line
        self.wrong: str | None = None  # the first line that is not as asked for

    def feed(self, data: bytes, at_s: float) -> int:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._check(line, at_s)
        return len(lines)

    def _check(self, line: bytes, at_s: float) -> None:
        self.lines += 1
        try:
            found = json.loads(line)
        except ValueError:
            found = None
        if (
            isinstance(found, dict)
            and found.get("seq") == self.lines
            and type(found.get("t_ms")) is int
            and len(line) + 1 == self.block_size
        ):
            self.timings.append((found["t_ms"], at_s))
        elif self.wrong is None:
            self.wrong = (
                f"line {self.lines} is not a JSON object of {self.block_size} bytes "
                f"with seq {self.lines} and an integer t_ms"
            )

    def lateness_ms(self) -> list[float]:
        """Each line's time in transit less the first line's: the clocks' offset cancels."""
        if not self.timings:
            return []
        first_t_ms, first_at_s = self.timings[0]
        return [(at_s - first_at_s) * 1000 - (t_ms - first_t_ms) for t_ms, at_s in self.timings]

    def mismatch(self, pacing: Pacing, found: "Measurement") -> str | None:
        if self._partial:
            return f"the body ended inside line {self.lines + 1}"
        return miscounted(self.lines, "lines", pacing) or self.wrong

    def summary_lines(self) -> list[str]:
        checked = self.wrong or f"seq 1 to {self.lines} in order, {self.block_size} bytes each"
        return [f"lines          {plural(self.lines, 'line')}, {checked}"]

    def section_lines(self) -> list[str]:
        late = self.lateness_ms()
        if not late:
            return []
        lines = [
            f"lateness: {min(late):+.1f} to {max(late):+.1f} ms, each line's time in transit "
            "(t_ms to arrival) less the first line's",
            f"  {'seq':>6}  {'sent':>9}  {'arrived':>9}  {'late':>10}",
        ]
        first_t_ms = self.timings[0][0]
        for seq, ((t_ms, at_s), late_ms) in enumerate(zip(self.timings, late), start=1):
            if seq > MAX_LISTED_LINES:
                lines.append(f"  … and {plural(len(late) - MAX_LISTED_LINES, 'line')} more")
                break
            lines.append(
                f"  {seq:>6}  {ms((t_ms - first_t_ms) / 1000):>9}  {ms(at_s):>9}  "
                f"{late_ms:>+7.1f} ms"
            )
        lines.append("  (sent: t_ms less the first line's; arrived: since the request)")
        return lines


class WsReader(BodyReader):
    """Binary messages of a WebSocket, each counted once whole; and how it was closed."""

    counts_bytes = False

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.messages = 0
        self.wrong_size: str | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.pings = 0

    def feed(self, data: bytes, at_s: float) -> int:
        self.messages += 1
        if len(data) != self.block_size and self.wrong_size is None:
            self.wrong_size = f"message {self.messages} was {len(data)} bytes"
        return 1

    def mismatch(self, pacing: Pacing, found: "Measurement") -> str | None:
        if self.close_code != 1000:
            said = f"{self.close_code} {self.close_reason}".strip() if self.close_code else "none"
            return f"the WebSocket closed with {said}, not 1000, after {self.messages} messages"
        wrong = (
            self.wrong_size
            and f"expected messages of {pacing.block_size} bytes, but {self.wrong_size}"
        )
        return miscounted(self.messages, "messages", pacing) or wrong

    def summary_lines(self) -> list[str]:
        return [
            f"messages       {self.messages}, then close {self.close_code}; "
            f"{plural(self.pings, 'ping')} from the service answered"
        ]


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One masked frame, as a client must send it (RFC 6455 §5.3)."""
    key = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    masked = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return head + key + masked


def ws_read_frame(reader) -> tuple[bool, int, bytes]:
    """(fin, opcode, payload) of the next frame from the server; ProbeError when cut."""
    head = reader.read(2)
    if len(head) < 2:
        raise ProbeError("the WebSocket connection was cut without a close frame")
    fin, opcode, masked, length = head[0] & 0x80, head[0] & 0x0F, head[1] & 0x80, head[1] & 0x7F
    if masked:
        raise ProbeError("the server sent a masked frame, which RFC 6455 forbids")
    if length >= 126:
        size = 2 if length == 126 else 8
        extended = reader.read(size)
        if len(extended) < size:
            raise ProbeError("the WebSocket connection was cut inside a frame")
        length = int.from_bytes(extended, "big")
    payload = reader.read(length) if length else b""
    if len(payload) < length:
        raise ProbeError("the WebSocket connection was cut inside a frame")
    return bool(fin), opcode, payload


def measure_ws(request: Request, timeout_s: float, insecure: bool, body: WsReader) -> "Measurement":
    """Open the WebSocket, answer its pings, and time each binary message as it completes."""
    connection = open_connection(request, timeout_s, insecure)
    try:
        started = time.monotonic()
        connection.connect()
        connected = time.monotonic()
        sock = connection.sock
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        lines = [f"GET {request.request_uri} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in request.sent_headers]
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        sent = time.monotonic()
        reader = sock.makefile("rb")  # the head, then the frames, from one buffer
        status_line = reader.readline(65537).decode("latin-1").rstrip("\r\n")
        _, _, status_reason = status_line.partition(" ")
        status, _, reason = status_reason.partition(" ")
        headers = http.client.parse_headers(reader)
        head = time.monotonic()
        if status != "101":
            length = min(int(headers.get("Content-Length") or 0), 4096)
            raise ProbeError(
                f"HTTP {status} {reason} from {request.target.url}{request.via}, not a WebSocket"
                f"{error_detail(reader.read(length) if length else b'')}"
            )
        expected = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        if (headers.get("Sec-WebSocket-Accept") or "").strip() != expected:
            raise ProbeError(f"a wrong Sec-WebSocket-Accept from {request.target.url}{request.via}")
        arrivals: list[Arrival] = []
        wire_bytes, message = 0, bytearray()
        while True:
            fin, opcode, payload = ws_read_frame(reader)
            now = time.monotonic() - sent
            wire_bytes += len(payload) + 2
            if opcode == 0x9:  # ping: pong with its payload
                body.pings += 1
                sock.sendall(ws_frame(0xA, payload))
            elif opcode == 0x8:
                body.close_code = int.from_bytes(payload[:2], "big") if payload else 1005
                body.close_reason = payload[2:].decode("utf-8", "replace")
                with contextlib.suppress(OSError):
                    sock.sendall(ws_frame(0x8, payload[:2]))
                break
            elif opcode in (0x0, 0x1, 0x2):
                message += payload
                if fin:
                    arrivals.append((now, body.feed(bytes(message), now)))
                    message = bytearray()
        return Measurement(
            status_line=status_line,
            framing="websocket",
            encoding="identity",
            connect_s=connected - started,
            head_s=head - sent,
            arrivals=tuple(arrivals),
            wire_bytes=wire_bytes,
            body_bytes=body.messages * body.block_size,
            decoded=True,
            headers=tuple((name, headers.get(name)) for name in SHOWN_HEADERS),
        )
    finally:
        connection.close()


def reader_for(pacing: Pacing) -> BodyReader:
    if pacing.shape is WS:
        return WsReader(pacing.block_size)
    if pacing.shape is SSE:
        return SseReader()
    if pacing.shape is NDJSON:
        return NdjsonReader(pacing.block_size)
    return BodyReader()


@dataclass(frozen=True)
class Measurement:
    status_line: str
    framing: str
    encoding: str
    connect_s: float
    head_s: float  # from the request sent to the response head
    # What the verdict counts: body bytes (decoded when compressed with gzip or deflate), or
    # whole events or lines.
    arrivals: tuple[Arrival, ...]
    wire_bytes: int
    body_bytes: int
    decoded: bool
    headers: tuple[tuple[str, str | None], ...] = ()  # SHOWN_HEADERS, None when absent

    def header(self, name: str) -> str | None:
        return dict(self.headers).get(name)


def open_connection(
    request: Request, timeout_s: float, insecure: bool
) -> http.client.HTTPConnection:
    """A connection to the origin, or to the proxy: for https:// one that will CONNECT through."""
    target, proxy = request.target, request.proxy
    host, port = (proxy.host, proxy.port) if proxy else (target.host, target.port)
    if target.scheme != "https":
        return http.client.HTTPConnection(host, port, timeout=timeout_s)
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=context)
    if proxy:
        # TLS then runs inside the tunnel, with the target's name: the proxy sees neither the
        # request nor its Host header.
        auth = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
        connection.set_tunnel(target.host, target.port, headers=auth)
    return connection


def put_head(connection: http.client.HTTPConnection, request: Request, method: str) -> None:
    connection.putrequest(method, request.request_uri, skip_host=True, skip_accept_encoding=True)
    for name, value in request.sent_headers:
        connection.putheader(name, value)


def send(connection: http.client.HTTPConnection, request: Request) -> None:
    put_head(connection, request, "GET")
    connection.endheaders()


def measure(
    request: Request, timeout_s: float, insecure: bool = False, body: BodyReader | None = None
) -> Measurement:
    """GET the target once and time every read of the body as it comes off the socket.

    `body` counts what each read adds (bytes, unless it reads events or lines).
    """
    body = body or BodyReader()
    connection = open_connection(request, timeout_s, insecure)
    try:
        started = time.monotonic()
        connection.connect()
        connected = time.monotonic()
        send(connection, request)
        sent = time.monotonic()
        response = connection.getresponse()
        head = time.monotonic()
        if response.status != 200:
            raise ProbeError(
                f"HTTP {response.status} {response.reason} from {request.target.url}{request.via}"
                f"{error_detail(response.read(4096))}"
            )
        encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
        decoder = {
            "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
            "x-gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
            "deflate": lambda: zlib.decompressobj(),
        }.get(encoding, lambda: None)()
        if decoder is None and encoding != "identity" and not body.counts_bytes:
            raise ProbeError(f"cannot read events or lines from a {encoding} body")
        arrivals, wire_bytes, body_bytes = [], 0, 0
        while True:
            try:
                data = response.read1(65536)
            except http.client.IncompleteRead as error:
                raise ProbeError(
                    f"the stream was cut after {wire_bytes + len(error.partial)} bytes "
                    f"from {request.target.url}{request.via}"
                ) from None
            now = time.monotonic() - sent
            if not data:
                break
            wire_bytes += len(data)
            try:
                decoded = decoder.decompress(data) if decoder else data
            except zlib.error as error:
                raise ProbeError(f"cannot decode the {encoding} body: {error}") from None
            body_bytes += len(decoded)
            count = body.feed(decoded, now)
            if count:
                arrivals.append((now, count))
        if decoder:
            # What the decoder still held arrived with the last read.
            rest = decoder.flush()
            body_bytes += len(rest)
            count = body.feed(rest, now)
            if count:
                arrivals.append((now, count))
        return Measurement(
            status_line=f"HTTP/{response.version / 10:.1f} {response.status} {response.reason}",
            framing="chunked"
            if (response.getheader("Transfer-Encoding") or "").lower() == "chunked"
            else "length"
            if response.getheader("Content-Length")
            else "until close",
            encoding=encoding,
            connect_s=connected - started,
            head_s=head - sent,
            arrivals=tuple(arrivals),
            wire_bytes=wire_bytes,
            body_bytes=body_bytes,
            decoded=decoder is not None or encoding == "identity",
            headers=tuple((name, response.getheader(name)) for name in SHOWN_HEADERS),
        )
    finally:
        connection.close()


def error_detail(body: bytes) -> str:
    """The service's JSON `detail` (why a 400), else the start of whatever the body says."""
    text = body.decode("utf-8", "replace")
    try:
        detail = json.loads(text).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if detail is None:  # an HTML error page: its title, else its text
        title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        detail = title.group(1) if title else re.sub(r"<[^>]*>", " ", text)
    detail = " ".join(str(detail).split())[:200]
    return f": {detail}" if detail else ""


def network_error(error: BaseException, request: Request, timeout_s: float) -> str:
    target, proxy = request.target, request.proxy
    origin = f"{target.host}:{target.port}"
    # The probe's own connection goes to the proxy when there is one.
    where = f"proxy {proxy.host}:{proxy.port}" if proxy else origin
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve {proxy.host if proxy else target.host}: {error.strerror}"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return f"no answer from {where} within {timeout_s:.0f} s"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate of {origin} not trusted: {error.verify_message} (--insecure skips)"
    if isinstance(error, ssl.SSLError):
        return f"TLS with {origin} failed: {error.reason or error}"
    if isinstance(error, http.client.RemoteDisconnected):
        return f"{where} closed the connection without an answer"
    if isinstance(error, http.client.HTTPException):
        return f"bad HTTP from {where}: {type(error).__name__} {error}"
    if proxy and str(error).startswith("Tunnel connection failed"):
        # http.client's only word on a refused CONNECT: "Tunnel connection failed: 403 ...".
        answer = str(error).partition(":")[2].strip()
        return f"the proxy {proxy.url} would not open a tunnel to {origin}: {answer}"
    return f"{where}: {getattr(error, 'strerror', None) or error}"


# --- the platform's queue time -----------------------------------------------------------------

# A Server-Timing duration: a plain decimal number of milliseconds, no sign (time spent in the
# platform is never negative, and a clock that says so is not worth showing).
DURATION = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)  # as page.js reads it


def platform_queue_ms(server_timing: str | None) -> float | None:
    """The `queue` metric's duration in a Server-Timing header, or None.

    The app answers `Server-Timing: queue;dur=12.5` when gorouter's X-Request-Start reached it:
    the milliseconds the request spent in the platform (router, load balancers) before the app
    saw it. Read leniently: other metrics may come first (`name;param=value;...`, comma
    separated, values maybe quoted); the first `queue` metric counts, and its first `dur`.
    """
    for metric in split_unquoted(server_timing or "", ","):
        name, *params = split_unquoted(metric, ";")
        if name.strip().lower() != "queue":
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "dur":
                return duration_ms(value)
        return None
    return None


def split_unquoted(text: str, separator: str) -> list[str]:
    """The text split at each separator outside a "quoted string" (where \\ escapes)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def duration_ms(value: str) -> float | None:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].strip()
    if not DURATION.fullmatch(value):
        return None
    duration = float(value)
    return duration if math.isfinite(duration) else None


# --- the report --------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def rate(nbytes: int, seconds: float) -> str:
    if seconds <= 0:
        return "-"
    per_s = nbytes / seconds
    for unit in ("B/s", "KiB/s", "MiB/s"):
        if per_s < 1024 or unit == "MiB/s":
            return f"{per_s:.1f} {unit}"
        per_s /= 1024
    raise AssertionError("unreachable")


def histogram(arrivals: Sequence[Arrival], pacing: Pacing, width: int = 40) -> list[str]:
    """Bytes per time bucket from the request: one bucket per pause when that fits in 30."""
    if not arrivals:
        return []
    end = max(t for t, _ in arrivals)
    bucket = pacing.sleep_ms / 1000.0
    if bucket <= 0 or end / bucket > 30:
        bucket = max(end / 30, 0.001)
    counts = [0] * (int(end / bucket) + 1)
    for t, n in arrivals:
        counts[int(t / bucket)] += n
    top = max(counts)
    digits = len(str(top))
    counted = pacing.shape.counted
    lines = [f"timeline: {counted} arrived per {ms(bucket)}, by time since the request"]
    for index, count in enumerate(counts):
        bar = "#" * math.ceil(width * count / top) if count else "."
        lines.append(f"  {ms(index * bucket):>9}  {count:>{digits}}  {bar}")
    return lines


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def printable(text: str, limit: int = 200) -> str:
    """Text from the network as safe to print: no control characters, no endless line."""
    text = "".join(char if char.isprintable() else "?" for char in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def route_lines(request: Request) -> list[str]:
    """How the request went: a Host given with -H, the proxy on the way."""
    lines = []
    host = request.header("Host")
    host_given = host != request.target.netloc
    if host_given:
        lines.append(f"         Host: {printable(host) if host else '(none)'}, from -H")
    if request.tunnelled and request.proxy:
        lines.append(f"         via proxy {request.proxy.url}, in a CONNECT tunnel")
    elif request.proxy:
        lines.append(f"         via proxy {request.proxy.url}")
        if host_given:
            lines.append(
                "         note: an HTTP proxy may replace -H Host with the URL's host; "
                "https:// (a tunnel) or NO_PROXY keeps it"
            )
    return lines


def queue_line(found: Measurement) -> str:
    queue_ms = platform_queue_ms(found.header("Server-Timing"))
    if queue_ms is None:
        return (
            f"platform queue {'-':>9}   "
            "no X-Request-Start reached the app: no gorouter on the path?"
        )
    return f"platform queue {queue_ms:>6.1f} ms   X-Request-Start to the app (Server-Timing)"


def header_lines(found: Measurement) -> list[str]:
    width = max(len(name) for name in SHOWN_HEADERS)
    lines = []
    for index, (name, value) in enumerate(found.headers):
        shown = "-" if value is None else printable(value) or "(empty)"
        lines.append(f"{'headers' if index == 0 else '':<15}{name:<{width}}  {shown}")
    return lines


def expectation(pacing: Pacing) -> str:
    apart = f"{pacing.sleep_ms} ms apart"
    if pacing.shape is SSE:
        return (
            f"{pacing.nblocks} events of {pacing.block_size} letters, {apart}, "
            f"over {pacing.spread_s:.2f} s"
        )
    return (
        f"{pacing.nblocks} {pacing.shape.items} of {pacing.block_size} bytes, {apart}: "
        f"{pacing.total_bytes} bytes over {pacing.spread_s:.2f} s"
    )


def report(
    request: Request,
    pacing: Pacing,
    found: Measurement,
    verdict: Verdict,
    body: BodyReader | None = None,
) -> str:
    line = summarize(found.arrivals, pacing)
    compressed = "" if found.encoding == "identity" else f", {found.encoding}"
    counted = "" if found.decoded else f" (counted as sent: cannot decode {found.encoding})"
    lines = [
        f"probe    GET {request.target.url}",
        *route_lines(request),
        f"expects  {expectation(pacing)}",
        "",
        f"connect        {ms(found.connect_s):>9}",
        f"response head  {ms(found.head_s):>9}   {found.status_line}, {found.framing}{compressed}",
        queue_line(found),
        f"first byte     {ms(line.first_byte_s):>9}   time to first byte of the body",
        f"last byte      {ms(line.last_byte_s):>9}",
        f"body           {found.body_bytes} bytes in {plural(line.reads, 'read')}, "
        f"{found.wire_bytes} bytes on the wire{counted}",
        # Reads are not blocks: say so, lest a read count look like a verdict.
        "               (a read: what arrived at once; proxies may re-chunk, so reads need not "
        f"match {pacing.shape.items})",
        *(body.summary_lines() if body else []),
        f"throughput     {rate(found.wire_bytes, line.spread_s)} on the wire, first to last "
        f"byte; {rate(found.wire_bytes, line.last_byte_s)} from the request",
        f"largest gap    {ms(line.largest_gap_s):>9}   before the read at "
        f"{ms(line.largest_gap_at_s)}",
    ]
    if pacing.sleep_ms:
        lines.append(
            f"largest burst  {percent(line.burst_bytes, line.total_bytes):>9}   of the "
            f"{pacing.shape.counted} within {pacing.sleep_ms // 2} ms, "
            f"ending at {ms(line.burst_at_s)}"
        )
    else:
        lines.append("               (sleep_ms=0: the throughput is the path's, unpaced)")
    lines += ["", *header_lines(found)]
    if body and body.section_lines():
        lines += ["", *body.section_lines()]
    lines += ["", *histogram(found.arrivals, pacing), ""]
    lines.append(f"verdict: {verdict.state}")
    lines += [f"  - {reason}" for reason in verdict.reasons]
    return "\n".join(lines)


# --- uploads: the body goes up --------------------------------------------------------------

SEND_PIECE = bytes(64 * 1024)  # what a chunk is sent in, so a large one is never in memory


def upload_target(url: str, nblocks, total_bytes: int, sleep_ms) -> tuple[Target, Pacing]:
    """POST to /upload under the route (or the URL's own .../upload), paced as asked."""
    parts, port, path = _url_parts(url)
    if not path.endswith(UPLOAD.path):
        path += UPLOAD.path
    nblocks = DEFAULT_NBLOCKS if nblocks is None else nblocks
    sleep_ms = DEFAULT_SLEEP_MS if sleep_ms is None else sleep_ms
    if not 0 < nblocks <= total_bytes:
        raise ProbeError(f"--upload {total_bytes} cannot be sent in {nblocks} chunks")
    pacing = Pacing(nblocks, total_bytes // nblocks, sleep_ms, UPLOAD)
    query = f"?{parts.query}" if parts.query else ""
    return Target(parts.scheme, parts.hostname, port, path + query), pacing


def chunk_sizes(total_bytes: int, nblocks: int) -> list[int]:
    """`total_bytes` in `nblocks` chunks as even as can be, the larger ones first."""
    each, more = divmod(total_bytes, nblocks)
    return [each + 1 if index < more else each for index in range(nblocks)]


@dataclass(frozen=True)
class UploadMeasurement:
    status_line: str
    sent_s: float  # from the head sent to the last chunk sent
    answer_s: float  # from the head sent to the answer's head
    # When the body's bytes reached the service, in seconds since it had the request head.
    arrivals: tuple[Arrival, ...]
    body_bytes: int
    first_byte_ms: float | None
    service_seconds: float


def send_upload(connection, request: Request, pacing: Pacing, total_bytes: int) -> None:
    put_head(connection, request, "POST")
    connection.putheader("Content-Type", "application/octet-stream")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    for index, size in enumerate(chunk_sizes(total_bytes, pacing.nblocks)):
        if index:
            time.sleep(pacing.sleep_ms / 1000.0)
        connection.send(b"%x\r\n" % size)
        while size:
            piece = min(size, len(SEND_PIECE))
            connection.send(SEND_PIECE[:piece] if piece < len(SEND_PIECE) else SEND_PIECE)
            size -= piece
        connection.send(b"\r\n")
    connection.send(b"0\r\n\r\n")


def measure_upload(
    request: Request, pacing: Pacing, total_bytes: int, timeout_s: float, insecure: bool = False
) -> UploadMeasurement:
    """POST the paced body, and read when the service says each byte reached it."""
    connection = open_connection(request, timeout_s, insecure)
    try:
        connection.connect()
        started = time.monotonic()
        # The service may answer early (a 413, a 503) and close: its answer says why.
        with contextlib.suppress(OSError):
            send_upload(connection, request, pacing, total_bytes)
        sent = time.monotonic()
        response = connection.getresponse()
        answered = time.monotonic()
        body = response.read(1 << 20)
        if response.status != 200:
            raise ProbeError(
                f"HTTP {response.status} {response.reason} from {request.target.url}{request.via}"
                f"{error_detail(body)}"
            )
        try:
            found = json.loads(body)
            points = [(float(at_ms), int(total)) for at_ms, total in found["arrivals"]]
            received = int(found["bytes"])
        except (ValueError, KeyError, TypeError):
            raise ProbeError(
                f"no upload timeline from {request.target.url}{request.via}: "
                "is it a streamhtml route?"
            ) from None
        arrivals, before = [], 0
        for at_ms, total in points:
            if total > before:
                arrivals.append((at_ms / 1000.0, total - before))
                before = total
        return UploadMeasurement(
            status_line=f"HTTP/{response.version / 10:.1f} {response.status} {response.reason}",
            sent_s=sent - started,
            answer_s=answered - started,
            arrivals=tuple(arrivals),
            body_bytes=received,
            first_byte_ms=found.get("first_byte_ms"),
            service_seconds=float(found.get("seconds") or 0.0),
        )
    finally:
        connection.close()


def upload_report(
    request: Request, pacing: Pacing, total_bytes: int, found: UploadMeasurement, verdict: Verdict
) -> str:
    line = summarize(found.arrivals, pacing)
    first = "-" if found.first_byte_ms is None else f"{found.first_byte_ms:.0f} ms"
    lines = [
        f"probe    POST {request.target.url}",
        *route_lines(request),
        f"expects  {total_bytes} bytes up in {pacing.nblocks} chunks, {pacing.sleep_ms} ms "
        f"apart, over {pacing.spread_s:.2f} s",
        "",
        f"sent           {ms(found.sent_s):>9}   the body, chunked, from the request head",
        f"answer         {ms(found.answer_s):>9}   {found.status_line}",
        f"service got    {found.body_bytes} bytes over {line.spread_s:.2f} s, in "
        f"{found.service_seconds:.2f} s of reading",
        f"first byte     {first:>9}   after the request head reached the service",
        f"largest burst  {percent(line.burst_bytes, line.total_bytes):>9}   of the bytes "
        f"within {pacing.sleep_ms // 2} ms, ending at {ms(line.burst_at_s)}",
        "",
        *histogram(found.arrivals, pacing),
        "          (times since the service had the request head)",
        "",
        f"verdict: {verdict.state}",
    ]
    lines += [f"  - {reason}" for reason in verdict.reasons]
    return "\n".join(lines)


def probe_upload(args) -> int:
    try:
        target, pacing = upload_target(args.url, args.nblocks, args.upload, args.sleep_ms)
        # The answer is JSON to parse: asked for uncompressed, whatever a proxy would do.
        request = request_for(target, [*args.header, "Accept-Encoding:"], UPLOAD.accept)
    except ProbeError as error:
        print(f"probe: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    timeout_s = args.timeout if args.timeout else pacing.spread_s + 30.0
    found = _measured(
        lambda: measure_upload(request, pacing, args.upload, timeout_s, args.insecure),
        request,
        timeout_s,
    )
    if isinstance(found, int):
        return found
    if found.body_bytes != args.upload:
        print(
            f"probe: error: sent {args.upload} bytes, the service read {found.body_bytes}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    verdict = judge(found.arrivals, pacing)
    print(upload_report(request, pacing, args.upload, found, verdict))
    return verdict.exit_code


def whole_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(text)


DESCRIPTION = """\
Stream paced blocks from a streamhtml route and tell whether anything on the way buffers
them. Also shows the response headers that tell what is on the path, and the time the request
spent in the platform before the app saw it (from the app's Server-Timing: queue;dur=...).
"""

EPILOG = """\
Exit status: 0 STREAMS, 1 BUFFERED, 2 error, 3 UNKNOWN (pacing too short).

Uploads: --upload BYTES POSTs a paced chunked body to /upload and judges it the same way:
  python -m streamhtml.probe https://streamhtml.apps.example.com --upload 1048576 --sleep-ms 300

Proxies: as Python's urllib, the probe goes through HTTP_PROXY for http:// URLs and through
HTTPS_PROXY (in a CONNECT tunnel) for https:// ones, unless NO_PROXY lists the host; lowercase
names win. Only http:// proxy URLs, with user:password@ for Basic proxy authentication.

To probe a Cloud Foundry router by its address, give the route's host name:
  python -m streamhtml.probe -H 'Host: app.apps.example.com' http://10.0.0.5
gorouter refuses a Host that is the client's own IP. Through an http:// proxy, the proxy
takes the host from the URL; an https:// URL keeps -H Host inside the tunnel (add -k when
the router's certificate does not name the address).
"""


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m streamhtml.probe",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "url", help="the route (https://host) or a full .../streamhtml, /sse or /ndjson URL"
    )
    parser.add_argument(
        "--shape",
        choices=tuple(SHAPES),
        help="what to stream: html (/streamhtml, the default unless the URL names another), "
        "sse (/sse, Server-Sent Events), ndjson (/ndjson, JSON lines) or ws (/ws/stream, "
        "binary WebSocket messages)",
    )
    parser.add_argument("--nblocks", type=whole_number, help=f"default {DEFAULT_NBLOCKS}")
    parser.add_argument("--block-size", type=whole_number, help=f"default {DEFAULT_BLOCK_SIZE}")
    parser.add_argument(
        "--sleep-ms", type=whole_number, help=f"pause between blocks, default {DEFAULT_SLEEP_MS}"
    )
    parser.add_argument(
        "--upload",
        type=whole_number,
        metavar="BYTES",
        help="POST this many bytes to /upload instead, in --nblocks chunks --sleep-ms apart, "
        "and judge whether the body streamed up to the service",
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header, as curl's -H: repeatable; replaces the probe's own header of "
        "that name (Host, Accept-Encoding, ...); 'NAME:' with no value drops it",
    )
    parser.add_argument(
        "--timeout", type=float, help="seconds to wait on the network; default the pacing + 30"
    )
    parser.add_argument(
        "-k", "--insecure", action="store_true", help="do not verify the TLS certificate"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def _measured(run, request, timeout_s: float):
    """run()'s measurement, or the exit status once its error is said in one line."""
    try:
        return run()
    except ProbeError as error:
        print(f"probe: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, http.client.HTTPException) as error:
        print(f"probe: error: {network_error(error, request, timeout_s)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.upload is not None:
        if args.shape or args.block_size is not None:
            print("probe: error: --upload takes no --shape or --block-size", file=sys.stderr)
            return EXIT_ERROR
        return probe_upload(args)
    try:
        target, pacing = target_for(
            args.url, args.nblocks, args.block_size, args.sleep_ms, args.shape
        )
        request = request_for(target, args.header, pacing.shape.accept)
    except ProbeError as error:
        print(f"probe: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    timeout_s = args.timeout if args.timeout else pacing.spread_s + 30.0
    body = reader_for(pacing)
    found = _measured(
        lambda: (
            measure_ws(request, timeout_s, args.insecure, body)
            if isinstance(body, WsReader)
            else measure(request, timeout_s, args.insecure, body)
        ),
        request,
        timeout_s,
    )
    if isinstance(found, int):
        return found
    problem = body.mismatch(pacing, found)
    if problem:
        print(
            f"probe: error: {problem} from {target.url}: is it a streamhtml route?",
            file=sys.stderr,
        )
        return EXIT_ERROR
    verdict = judge(found.arrivals, pacing)
    print(report(request, pacing, found, verdict, body))
    return verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())
