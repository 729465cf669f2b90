"""Pure stream generators: HTML blocks, SSE events, NDJSON lines, CSV rows. No Flask, no I/O."""

import csv
import itertools
import os
import random
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

LINE_END = b"<br>\n"
LETTERS = b"abcdefghijklmnopqrstuvwxyz"

# Random letters are cut from one pool made at import, so a block costs a slice, not per-byte
# Python work. os.urandom makes it different in every process.
POOL_BYTES = 1 << 20
_TO_LETTERS = bytes(LETTERS[i % len(LETTERS)] for i in range(256))
_POOL = os.urandom(POOL_BYTES).translate(_TO_LETTERS)

# Blocks up to RING_MAX_BLOCK come from a ring of distinct blocks made once per process and
# block size, shared by every request of that size. The ring spans at least RING_BYTES, far
# beyond gzip's 32 KiB window, so a compressing proxy cannot fold repeated blocks. A stream
# that never ends keeps its ring alive, so at most RINGS_ALIVE rings exist at once; a size
# beyond them is cut block by block instead.
RING_BYTES = 1 << 20
RING_MIN_BLOCKS = 16
RING_MAX_BLOCKS = 4096
RING_MAX_BLOCK = 64 << 10
RING_SIZES_CACHED = 8
RINGS_ALIVE = 16
# Larger blocks are the tails of TAILS shared buffers, each ending in LINE_END: a block is a
# view of the last block_size bytes of one of them, so no stream holds a copy of its block,
# however large, and a client that stops reading pins nothing of its own.
TAILS = 4
TAIL_MIN_BYTES = 1 << 20


def random_letters(count: int, rng: random.Random) -> bytes:
    """`count` random lowercase letters (at most POOL_BYTES), one slice of the pool."""
    start = rng.randrange(POOL_BYTES - count + 1)
    return _POOL[start : start + count]


def _letter_count(block_size: int) -> int:
    return block_size - len(LINE_END) if block_size >= len(LINE_END) else block_size


def _finish(letters: bytes, block_size: int) -> bytes:
    return letters + LINE_END if block_size >= len(LINE_END) else letters


def random_block(block_size: int, rng: random.Random) -> bytes:
    """One block of up to RING_MAX_BLOCK bytes: letters then `<br>\\n` (letters only under 5)."""
    return _finish(random_letters(_letter_count(block_size), rng), block_size)


class _Ring(list):
    """A ring of blocks; a list subclass so the registry can hold it weakly."""


class _Rings:
    """The rings alive in this process: at most RINGS_ALIVE, the last RING_SIZES_CACHED kept."""

    def __init__(self):
        self._lock = threading.Lock()
        self._alive: weakref.WeakValueDictionary[int, _Ring] = weakref.WeakValueDictionary()
        self._kept: dict[int, _Ring] = {}

    def get(self, block_size: int) -> _Ring | None:
        with self._lock:
            ring = self._alive.get(block_size)
            if ring is None:
                if len(self._alive) >= RINGS_ALIVE:
                    return None
                ring = _Ring(_make_ring(block_size))
                self._alive[block_size] = ring
            self._kept.pop(block_size, None)
            self._kept[block_size] = ring
            while len(self._kept) > RING_SIZES_CACHED:
                del self._kept[next(iter(self._kept))]
            return ring


def _make_ring(block_size: int) -> list[bytes]:
    rng = random.Random()
    count = max(RING_MIN_BLOCKS, min(RING_MAX_BLOCKS, -(-RING_BYTES // block_size)))
    ring: list[bytes] = []
    while len(ring) < count:
        block = random_block(block_size, rng)
        # Tiny blocks have few values: redraw so neighbours differ, across the wrap too.
        # A 5-byte block is all "<br>\n" and has only one value.
        if (
            _letter_count(block_size)
            and ring
            and (block == ring[-1] or (len(ring) == count - 1 and block == ring[0]))
        ):
            continue
        ring.append(block)
    return ring


class _Tails:
    """`count` shared buffers of letters, each ending in `ending`; blocks are views of them."""

    def __init__(self, count: int, letters: Callable[[int], bytes], ending: bytes = LINE_END):
        self._count = count
        self._letters = letters
        self._ending = ending
        self._lock = threading.Lock()
        self._buffers: list[bytes] = []

    def views(self, block_size: int) -> list[memoryview]:
        buffers = self._buffers
        if not buffers or len(buffers[0]) < block_size:
            buffers = self._grow(block_size)
        return [memoryview(buffer)[len(buffer) - block_size :] for buffer in buffers]

    def _grow(self, block_size: int) -> list[bytes]:
        with self._lock:
            if not self._buffers or len(self._buffers[0]) < block_size:
                # Powers of two, so a range of sizes does not regrow them each time; streams
                # still on the old buffers keep them until they end.
                size = max(TAIL_MIN_BYTES, 1 << (block_size - 1).bit_length())
                letters = size - len(self._ending)
                self._buffers = [self._letters(letters) + self._ending for _ in range(self._count)]
            return self._buffers


def _random_letters_of(count: int) -> bytes:
    return os.urandom(count).translate(_TO_LETTERS)


def _cyclic_letters_of(count: int) -> bytes:
    # Aligned so every static block ends in "...xyz<br>\n", whatever its size.
    return (LETTERS * (count // len(LETTERS) + 1))[-count:]


_rings = _Rings()
_random_tails = _Tails(TAILS, _random_letters_of)
_static_tail = _Tails(1, _cyclic_letters_of)
_letter_tails = _Tails(TAILS, _random_letters_of, ending=b"")


def _static_view(block_size: int) -> bytes | memoryview:
    if block_size < len(LINE_END):
        return LETTERS[-block_size:]
    (view,) = _static_tail.views(block_size)
    return view


def html_blocks(
    nblocks: int, block_size: int, static: bool = False, rng: random.Random | None = None
) -> Iterator[bytes | memoryview]:
    """Exactly `nblocks` blocks of exactly `block_size` bytes each, bytes or memoryviews.

    Consecutive random blocks always differ. The iterator is built from C-level itertools
    where it can be, since it runs once per chunk on the hot path.
    """
    if static:
        return itertools.repeat(_static_view(block_size), nblocks)
    # The module's generator: a new Random() per request would cost a getrandom() syscall.
    source: Any = rng or random
    if block_size > RING_MAX_BLOCK:
        blocks: list = _random_tails.views(block_size)
    else:
        ring = _rings.get(block_size)
        if ring is None:
            return (random_block(block_size, source) for _ in range(nblocks))
        blocks = ring
    start = source.randrange(len(blocks))
    # repeat() holds the ring itself, so the registry sees it alive while this stream is.
    endless = itertools.chain.from_iterable(itertools.repeat(blocks))
    return itertools.islice(endless, start, start + nblocks)


@dataclass(frozen=True)
class Pace:
    """How a paced stream waits: `pause_s` before each of its `items` but the first.

    With a `heartbeat`, a pause longer than `heartbeat_every_s` is taken in slices of that
    length with the heartbeat sent after each, so the connection never stays silent longer.
    """

    items: int
    pause_s: float
    heartbeat: bytes = b""
    heartbeat_every_s: float = 0.0


def paced(chunks: Iterable, pace: Pace, pause: Callable[[float], bool]) -> Iterator:
    """Yield `pace.items` of `chunks`, pausing before each but the first.

    Each chunk is made only after its pause, so what it says about the time is true when it
    leaves; knowing the count, no pause follows the last. `pause(seconds)` returns False when
    the stream should stop (the client left, the deadline came): then nothing more is made.
    """
    chunks = iter(chunks)
    for index in range(pace.items):
        if index:
            left_s = pace.pause_s
            while pace.heartbeat and left_s > pace.heartbeat_every_s > 0:
                if not pause(pace.heartbeat_every_s):
                    return
                yield pace.heartbeat
                left_s -= pace.heartbeat_every_s
            if not pause(left_s):
                return
        chunk = next(chunks, None)
        if chunk is None:
            return
        yield chunk


# --- letters for SSE and NDJSON --------------------------------------------------------------

# Each view of the pool starts this far past the one before (wrapping), so consecutive events
# carry different letters without a random draw per event.
_POOL_STRIDE = 7919


def _static_letters(size: int) -> memoryview:
    # The static tail ends in "...xyz<br>\n"; without its line end it is letters only.
    (view,) = _static_tail.views(size + len(LINE_END))
    return view[:size]


def letter_views(size: int, static: bool = False, rng: random.Random | None = None) -> Iterator:
    """Endless views of `size` lowercase letters, zero-copy: the same ones when `static`."""
    if static:
        return itertools.repeat(_static_letters(size))
    if size > POOL_BYTES:
        return itertools.cycle(_letter_tails.views(size))
    return _pool_views(size, (rng or random).randrange(POOL_BYTES - size + 1))


def _pool_views(size: int, offset: int) -> Iterator[memoryview]:
    pool = memoryview(_POOL)
    span = POOL_BYTES - size + 1
    while True:
        yield pool[offset : offset + size]
        offset = (offset + _POOL_STRIDE) % span


# --- Server-Sent Events ----------------------------------------------------------------------

# No SSE stream stays silent longer than this: idle-timeout load balancers (many cut at 30 or
# 60 s) see a comment line instead, which every EventSource ignores.
SSE_HEARTBEAT = b": keep-alive\n\n"
# The reconnection delay is the stream's own pause, so a resumed stream keeps its pacing; but
# never under this, so a client that keeps reconnecting does so at most once a second.
SSE_MIN_RETRY_MS = 1000
_SSE_EVENT = b"id: %d\nevent: block\ndata: %b\n\n"


def sse_retry_ms(sleep_ms: int) -> int:
    return max(sleep_ms, SSE_MIN_RETRY_MS)


def sse_retry(retry_ms: int) -> bytes:
    """The field that opens a stream: how long an EventSource waits before it reconnects.

    A block of its own (a blank line ends it), so it dispatches no event.
    """
    return b"retry: %d\n\n" % retry_ms


def sse_events(
    nblocks: int,
    block_size: int,
    after_id: int = 0,
    static: bool = False,
    rng: random.Random | None = None,
) -> Iterator[bytes]:
    """Events `after_id + 1` to `nblocks`: `id`, `event: block`, and `block_size` letters."""
    ids = range(after_id + 1, nblocks + 1)
    return map(_SSE_EVENT.__mod__, zip(ids, letter_views(block_size, static, rng)))


# --- NDJSON ----------------------------------------------------------------------------------

_NDJSON_LINE = b'{"seq":%d,"t_ms":%d,"pad":"%b"}\n'
# A line's bytes besides the digits of seq and t_ms and the pad.
NDJSON_FRAME_BYTES = len(_NDJSON_LINE % (0, 0, b"")) - 2
# Wall-clock milliseconds since the epoch have 13 digits from 2001-09-09 to 2286-11-20.
T_MS_DIGITS = 13
_T_MS_RANGE = range(10 ** (T_MS_DIGITS - 1), 10**T_MS_DIGITS)


def ndjson_min_line_bytes(nblocks: int) -> int:
    """The shortest line that fits every seq up to `nblocks` with a 13-digit t_ms: no pad."""
    return NDJSON_FRAME_BYTES + len(str(max(nblocks, 1))) + T_MS_DIGITS


def ndjson_lines(
    nblocks: int,
    block_size: int,
    now_ms: Callable[[], int],
    static: bool = False,
    rng: random.Random | None = None,
) -> Iterator[bytes]:
    """`nblocks` JSON lines of exactly `block_size` bytes: seq from 1, t_ms, then a pad.

    t_ms is `now_ms()` as the line is made. Bytes formatting, not json.dumps: the line is
    plain ASCII, so its bytes are its JSON.
    """
    shortest = ndjson_min_line_bytes(nblocks)
    if block_size < shortest:
        raise ValueError(f"a line for nblocks={nblocks} takes at least {shortest} bytes")
    pad_source = next(letter_views(block_size, static, rng))
    return _ndjson_lines(nblocks, block_size, now_ms, pad_source)


def _ndjson_lines(nblocks, block_size, now_ms, pad_source) -> Iterator[bytes]:
    line = _NDJSON_LINE
    for digits, first, last in _digit_runs(nblocks):
        # One pad per width of seq, copied once: formatting from bytes beats a view.
        pad_bytes = block_size - NDJSON_FRAME_BYTES - digits - T_MS_DIGITS
        pad = bytes(pad_source[:pad_bytes])
        for seq in range(first, last + 1):
            t_ms = now_ms()
            if t_ms in _T_MS_RANGE:
                yield line % (seq, t_ms, pad)
            else:  # a clock outside 2001-2286 (a test's): fit the pad to its width
                fitted = pad_bytes + T_MS_DIGITS - len(str(t_ms))
                yield line % (seq, t_ms, pad_source[: max(fitted, 0)])


def _digit_runs(last: int) -> Iterator[tuple[int, int, int]]:
    """(digits, first, last) of each run of 1..last whose numbers have the same width."""
    first = 1
    while first <= last:
        digits = len(str(first))
        end = min(last, 10**digits - 1)
        yield digits, first, end
        first = end + 1


# --- CSV -----------------------------------------------------------------------------------

CSV_HEADER = ("id", "timestamp", "name", "amount", "comment")
CSV_CHUNK_BYTES = 64 << 10
_CSV_EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)
_NAMES = ("Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances")
# Some comments carry commas, quotes and newlines, so a CSV reader must honour quoting.
_COMMENTS = (
    "ok",
    "paid in full",
    "late, with fee",
    'said "thanks"',
    "two\nlines",
    "plain text",
    "refund; partial",
    "",
)


class _Buffer:
    """A write() target for csv.writer that hands back what it gathered."""

    def __init__(self):
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)

    def take(self) -> bytes:
        data = "".join(self.parts).encode("utf-8")
        self.parts.clear()
        self.size = 0
        return data


def csv_rows(rows: int, seed: int) -> Iterator[tuple]:
    """The header, then `rows` synthetic records; the same seed gives the same records."""
    rng = random.Random(seed)
    yield CSV_HEADER
    for row_id in range(1, rows + 1):
        cents = rng.randrange(0, 10_000_000)
        yield (
            row_id,
            (_CSV_EPOCH + timedelta(seconds=row_id * 37)).isoformat(),
            rng.choice(_NAMES),
            f"{cents // 100}.{cents % 100:02d}",
            rng.choice(_COMMENTS),
        )


def csv_chunks(rows: int, seed: int, chunk_bytes: int = CSV_CHUNK_BYTES) -> Iterator[bytes]:
    """The CSV document in chunks of about `chunk_bytes`, so a chunk is not a syscall per row."""
    buffer = _Buffer()
    writer = csv.writer(buffer)
    for record in csv_rows(rows, seed):
        writer.writerow(record)
        if buffer.size >= chunk_bytes:
            yield buffer.take()
    if buffer.size:
        yield buffer.take()
