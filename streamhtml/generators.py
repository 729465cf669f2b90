"""Pure stream generators: HTML blocks and CSV rows. No Flask, no I/O, no logging."""

import csv
import itertools
import os
import random
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
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
    """`count` shared buffers of letters, each ending in LINE_END; blocks are views of them."""

    def __init__(self, count: int, letters: Callable[[int], bytes]):
        self._count = count
        self._letters = letters
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
                letters = size - len(LINE_END)
                self._buffers = [self._letters(letters) + LINE_END for _ in range(self._count)]
            return self._buffers


def _random_letters_of(count: int) -> bytes:
    return os.urandom(count).translate(_TO_LETTERS)


def _cyclic_letters_of(count: int) -> bytes:
    # Aligned so every static block ends in "...xyz<br>\n", whatever its size.
    return (LETTERS * (count // len(LETTERS) + 1))[-count:]


_rings = _Rings()
_random_tails = _Tails(TAILS, _random_letters_of)
_static_tail = _Tails(1, _cyclic_letters_of)


def _static_view(block_size: int) -> bytes | memoryview:
    if block_size < len(LINE_END):
        return LETTERS[-block_size:]
    (view,) = _static_tail.views(block_size)
    return view


def static_block(block_size: int) -> bytes:
    """The block `use_static_data=1` repeats: the same letters for every block of a size."""
    return bytes(_static_view(block_size))


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


def paced(chunks: Iterable[bytes], pause: Callable[[], bool]) -> Iterator[bytes]:
    """Yield `chunks` with `pause()` between them, never before the first.

    `pause` returns False when the stream should stop (the client left, the server is
    shutting down); then no further chunk is made.
    """
    chunks = iter(chunks)
    for chunk in chunks:
        yield chunk
        break
    for chunk in chunks:
        if not pause():
            return
        yield chunk


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
