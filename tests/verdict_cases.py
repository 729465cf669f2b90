"""Cases shared by the probe's and the page's tests: both must judge and parse them alike.

VERDICTS: arrivals (seconds since the request, bytes) as a path would deliver them, with the
verdict the probe (streamhtml/probe.py) and the page (static/page.js) must both reach.
SERVER_TIMINGS: Server-Timing header values, with the platform queue time both must read.
"""

from streamhtml.probe import BUFFERED, NDJSON, SSE, STREAMS, UNKNOWN, Pacing

TEN_PACED = Pacing(nblocks=10, block_size=1024, sleep_ms=300)
# For events and lines the arrivals count whole items, not bytes.
SIX_EVENTS = Pacing(nblocks=6, block_size=64, sleep_ms=300, shape=SSE)
SIX_LINES = Pacing(nblocks=6, block_size=64, sleep_ms=300, shape=NDJSON)


def paced(pacing: Pacing, start_s=0.005, jitter=(), nbytes=None):
    """One arrival per block, sleep_ms apart, as a path that passes the stream through gives."""
    jitter = list(jitter) + [0.0] * pacing.nblocks
    return [
        (start_s + k * pacing.sleep_ms / 1000 + jitter[k], nbytes or pacing.block_size)
        for k in range(pacing.nblocks)
    ]


def bunched(pacing: Pacing, every: int, nitems=None):
    """Blocks released `every` at a time, as a proxy with a buffer of that many blocks gives."""
    return [
        (0.005 + (k // every + 1) * every * pacing.sleep_ms / 1000, nitems or pacing.block_size)
        for k in range(pacing.nblocks)
    ]


def rechunked(arrivals, pieces=None, piece_bytes=None, apart_s=0.0005):
    """Each arrival cut into reads (`pieces` equal ones, or of `piece_bytes` each) that follow
    one another `apart_s` apart, as a proxy that re-frames a stream delivers it."""
    reads = []
    for t, n in arrivals:
        size = piece_bytes or -(-n // pieces)
        sizes = [min(size, n - start) for start in range(0, n, size)]
        reads += [(t + index * apart_s, nbytes) for index, nbytes in enumerate(sizes)]
    return reads


VERDICTS = [
    # (what the path did, pacing asked for, arrivals, verdict)
    ("passes each block through", TEN_PACED, paced(TEN_PACED), STREAMS),
    (
        "passes blocks through with 100 ms of jitter",
        TEN_PACED,
        paced(TEN_PACED, jitter=[0, 0.1, -0.05, 0.1, 0, -0.1, 0.05, 0, 0.1, 0]),
        STREAMS,
    ),
    (
        "compresses each block on the way (fewer bytes on the wire, still paced)",
        TEN_PACED,
        paced(TEN_PACED, nbytes=640),
        STREAMS,
    ),
    (
        "is slow to start (1.5 s to the first byte) but keeps the pauses",
        TEN_PACED,
        paced(TEN_PACED, start_s=1.5),
        STREAMS,
    ),
    (
        "is slower than the pacing: 1 MiB blocks trickle in at 2 MiB/s",
        Pacing(nblocks=4, block_size=1 << 20, sleep_ms=300),
        [(0.01 + i * 0.03125, 65536) for i in range(64)],
        STREAMS,
    ),
    ("holds everything and sends it in one read at the end", TEN_PACED, [(2.71, 10240)], BUFFERED),
    (
        "holds everything and sends it in a few reads at the end",
        TEN_PACED,
        [(2.705, 4096), (2.706, 4096), (2.707, 2048)],
        BUFFERED,
    ),
    ("releases blocks two at a time", TEN_PACED, bunched(TEN_PACED, 2), BUFFERED),
    ("releases blocks five at a time", TEN_PACED, bunched(TEN_PACED, 5), BUFFERED),
    (
        "passes three blocks through, then holds the rest for one burst",
        TEN_PACED,
        paced(TEN_PACED)[:3] + [(2.71, 7 * 1024)],
        BUFFERED,
    ),
    ("two blocks, both in one read", Pacing(2, 1024, 1000), [(1.0, 2048)], BUFFERED),
    ("two blocks, a second apart", Pacing(2, 1024, 1000), [(0.01, 1024), (1.01, 1024)], STREAMS),
    # Re-chunking is not buffering: a proxy may change where chunks (and so reads) begin and
    # end without holding bytes back. gorouter passes paced blocks one by one but sends an
    # unpaced stream in about 8 KiB pieces; nginx and others have their own buffer sizes.
    (
        "re-chunks each paced block into halves that arrive together",
        TEN_PACED,
        rechunked(paced(TEN_PACED), pieces=2),
        STREAMS,
    ),
    (
        "re-chunks paced 20 KiB blocks into 8 KiB pieces, as gorouter does",
        Pacing(6, 20480, 300),
        rechunked(paced(Pacing(6, 20480, 300)), piece_bytes=8192),
        STREAMS,
    ),
    (
        "puts two blocks in one read once (a 300 ms hiccup), and passes the rest one by one",
        TEN_PACED,
        paced(TEN_PACED)[:4] + [(paced(TEN_PACED)[5][0], 2048)] + paced(TEN_PACED)[6:],
        STREAMS,
    ),
    (
        "re-chunks an unpaced stream (sleep_ms=0) into 8 KiB pieces, as gorouter does",
        Pacing(2000, 200, 0),
        rechunked([(0.01, 400_000)], piece_bytes=8192),
        UNKNOWN,
    ),
    (
        "re-chunks a stream paced below the jitter (sleep_ms=20) into 8 KiB pieces",
        Pacing(100, 1024, 20),
        rechunked([(0.01, 102_400)], piece_bytes=8192),
        UNKNOWN,
    ),
    ("was asked for no pauses (sleep_ms=0)", Pacing(10, 1024, 0), [(0.01, 10240)], UNKNOWN),
    ("was asked for pauses shorter than jitter", Pacing(10, 1024, 20), [(0.01, 10240)], UNKNOWN),
    ("was asked for one block", Pacing(1, 1024, 300), [(0.01, 1024)], UNKNOWN),
    ("sent no body at all", TEN_PACED, [], UNKNOWN),
    # Events and lines: an arrival is how many whole ones came in a read.
    ("passes each event through", SIX_EVENTS, paced(SIX_EVENTS, nbytes=1), STREAMS),
    ("holds every event to the end", SIX_EVENTS, [(1.55, 6)], BUFFERED),
    ("releases events two at a time", SIX_EVENTS, bunched(SIX_EVENTS, 2, nitems=1), BUFFERED),
    (
        "is slow to start (1.5 s to the first event) but keeps the pauses",
        SIX_EVENTS,
        paced(SIX_EVENTS, start_s=1.5, nbytes=1),
        STREAMS,
    ),
    ("sent no events at all", SIX_EVENTS, [], UNKNOWN),
    ("was asked for one event", Pacing(1, 64, 300, SSE), [(0.01, 1)], UNKNOWN),
    ("passes each line through", SIX_LINES, paced(SIX_LINES, nbytes=1), STREAMS),
    ("holds every line, then sends them late", SIX_LINES, [(2.9, 6)], BUFFERED),
    ("was asked for unpaced lines", Pacing(6, 64, 0, NDJSON), [(0.01, 6)], UNKNOWN),
]


SERVER_TIMINGS = [
    # (the Server-Timing header as it arrived, the queue time in ms to show, None for "absent")
    ("queue;dur=12.5", 12.5),
    ("queue;dur=0", 0.0),
    ("queue;dur=12", 12.0),
    ("queue; dur = 7.25 ", 7.25),
    ("Queue;DUR=3.5", 3.5),
    ('queue;dur="4.5"', 4.5),
    ("queue;dur=.5", 0.5),
    ("queue;dur=1e3", 1000.0),
    ("app;dur=3, queue;dur=0.4", 0.4),
    ('cdn;desc="hit, stale; maybe", queue;dur=9', 9.0),
    ('queue;desc="router \\"a\\", lb";dur=2.5', 2.5),
    ("queue;dur=1.5, queue;dur=99", 1.5),
    ("queue;dur=1;dur=2", 1.0),
    (" , ,queue;dur=6", 6.0),
    (None, None),
    ("", None),
    ("queue", None),
    ("queue;desc=router", None),
    ("queue;dur=", None),
    ("queue;dur=abc", None),
    ("queue;dur=12.5ms", None),
    ("queue;dur=-3", None),
    ("queue;dur=NaN", None),
    ("queue;dur=Infinity", None),
    ("queue;dur=1e999", None),
    ("queue;dur=0x10", None),
    ("queue;dur=1_000", None),
    ("queue;dur=\u0661\u0662", None),  # digits, but not ASCII ones
    ("app;dur=12.5", None),
    ("queued;dur=12.5", None),
    ('cdn;desc="queue;dur=5"', None),
]
