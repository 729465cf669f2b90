"""Pure stream generators: HTML blocks and CSV rows. No Flask, no I/O, no logging."""

import csv
import functools
import itertools
import os
import random
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone

LINE_END = b"<br>\n"
LETTERS = b"abcdefghijklmnopqrstuvwxyz"

# Random letters are cut from one pool made at import, so a block costs a slice, not per-byte
# Python work. os.urandom makes it different in every process.
POOL_BYTES = 1 << 20
_TO_LETTERS = bytes(LETTERS[i % len(LETTERS)] for i in range(256))
_POOL = os.urandom(POOL_BYTES).translate(_TO_LETTERS)
_LONGEST_SLICE = POOL_BYTES // 2

# For small blocks the per-block slice still shows on the hot path, so each block size gets a
# ring of distinct blocks made once per process and shared by every request of that size.
# The ring spans at least RING_BYTES, far beyond gzip's 32 KiB window, so a compressing proxy
# cannot fold repeated blocks; blocks larger than RING_MAX_BLOCK are cut one by one instead.
RING_BYTES = 1 << 20
RING_MIN_BLOCKS = 16
RING_MAX_BLOCKS = 4096
RING_MAX_BLOCK = 64 << 10
RING_SIZES_CACHED = 8


def random_letters(count: int, rng: random.Random) -> bytes:
    """`count` random lowercase letters, made of slices of the pool at random offsets."""
    if count <= _LONGEST_SLICE:
        start = rng.randrange(POOL_BYTES - count + 1)
        return _POOL[start : start + count]
    parts = []
    remaining = count
    while remaining:
        part = min(remaining, _LONGEST_SLICE)
        start = rng.randrange(POOL_BYTES - part + 1)
        parts.append(_POOL[start : start + part])
        remaining -= part
    return b"".join(parts)


def _letter_count(block_size: int) -> int:
    return block_size - len(LINE_END) if block_size >= len(LINE_END) else block_size


def _finish(letters: bytes, block_size: int) -> bytes:
    return letters + LINE_END if block_size >= len(LINE_END) else letters


def random_block(block_size: int, rng: random.Random) -> bytes:
    """One block: letters then `<br>\\n`, or only letters when the block is under 5 bytes."""
    return _finish(random_letters(_letter_count(block_size), rng), block_size)


def static_block(block_size: int) -> bytes:
    count = _letter_count(block_size)
    return _finish((LETTERS * (count // len(LETTERS) + 1))[:count], block_size)


@functools.lru_cache(maxsize=RING_SIZES_CACHED)
def _ring(block_size: int) -> tuple[bytes, ...]:
    rng = random.Random()
    count = max(RING_MIN_BLOCKS, min(RING_MAX_BLOCKS, -(-RING_BYTES // block_size)))
    ring = []
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
    return tuple(ring)


def html_blocks(
    nblocks: int, block_size: int, static: bool = False, rng: random.Random | None = None
) -> Iterator[bytes]:
    """Exactly `nblocks` blocks of exactly `block_size` bytes each.

    Consecutive random blocks always differ. The iterator is built from C-level itertools
    where it can be, since it runs once per chunk on the hot path.
    """
    if static:
        return itertools.repeat(static_block(block_size), nblocks)
    # The module's generator: a new Random() per request would cost a getrandom() syscall.
    rng = rng or random
    if block_size > RING_MAX_BLOCK:
        return (random_block(block_size, rng) for _ in range(nblocks))
    ring = _ring(block_size)
    start = rng.randrange(len(ring))
    return itertools.islice(itertools.cycle(ring), start, start + nblocks)


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
