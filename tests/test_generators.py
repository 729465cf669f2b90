"""The pure generators: exact sizes, random but cheap blocks, deterministic CSV."""

import csv
import io
import tracemalloc

import pytest

from streamhtml.generators import (
    CSV_HEADER,
    RING_BYTES,
    RINGS_ALIVE,
    csv_chunks,
    html_blocks,
    paced,
)


def blocks_of(stream) -> list[bytes]:
    """The blocks as bytes: large ones are memoryviews of shared buffers."""
    return [bytes(block) for block in stream]


BLOCK_SIZES = [1, 2, 4, 5, 6, 100, 512, 1024, 65536, 65537, 300_000]


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("static", [False, True], ids=["random", "static"])
def test_every_block_has_exactly_block_size_bytes(block_size, static):
    blocks = blocks_of(html_blocks(7, block_size, static=static))
    assert [len(block) for block in blocks] == [block_size] * 7


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_a_block_is_lowercase_letters_then_a_line_break(block_size):
    for block in blocks_of(html_blocks(3, block_size)):
        letters = block[:-5] if block_size >= 5 else block
        assert all(letter in b"abcdefghijklmnopqrstuvwxyz" for letter in letters)
        if block_size >= 5:
            assert block.endswith(b"<br>\n")


@pytest.mark.parametrize("block_size", [1, 2, 6, 512, 1024, 65536, 65537])
def test_random_blocks_differ_from_their_neighbours(block_size):
    blocks = blocks_of(html_blocks(5000, block_size))
    assert all(first != second for first, second in zip(blocks, blocks[1:]))


def test_random_streams_differ_between_requests():
    assert blocks_of(html_blocks(4, 1024)) != blocks_of(html_blocks(4, 1024))


def test_static_data_repeats_one_block():
    for block_size in (1024, 300_000):
        assert len(set(blocks_of(html_blocks(50, block_size, static=True)))) == 1


def test_large_blocks_are_shared_views_so_no_stream_holds_a_copy():
    first, second = html_blocks(8, 300_000), html_blocks(8, 300_000)
    first_buffers = {id(block.obj) for block in first}
    second_buffers = {id(block.obj) for block in second}
    assert first_buffers == second_buffers, "every stream sends from the same buffers"
    assert len(first_buffers) > 1, "yet neighbouring blocks differ"


def test_streams_of_many_block_sizes_at_once_hold_bounded_memory():
    # A stream keeps its ring alive: a client asking for a thousand sizes and never reading
    # must not make a thousand rings of RING_BYTES each.
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        streams = [html_blocks(10, 1000 + size) for size in range(200)]
        firsts = [next(stream) for stream in streams]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(len(block) == 1000 + size for size, block in enumerate(firsts))
    held_rings = (held - before) / RING_BYTES
    assert held_rings <= RINGS_ALIVE + 2, f"{held_rings:.0f} rings' worth held"


def test_zero_blocks_is_an_empty_stream():
    assert list(html_blocks(0, 1024)) == []


def test_paced_pauses_between_blocks_never_before_the_first():
    events = []

    def pause():
        events.append("pause")
        return True

    for chunk in paced(iter([b"a", b"b", b"c"]), pause):
        events.append(chunk)
    assert events == [b"a", "pause", b"b", "pause", b"c"]


def test_paced_stops_when_pause_says_so():
    made = []

    def blocks():
        for block in (b"a", b"b", b"c"):
            made.append(block)
            yield block

    assert list(paced(blocks(), lambda: False)) == [b"a"]
    assert made == [b"a", b"b"], "at most one block is made past the stop"


def parse_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def test_csv_has_a_header_and_the_asked_rows():
    rows = parse_csv(b"".join(csv_chunks(250, seed=3)))
    assert rows[0] == list(CSV_HEADER)
    assert len(rows) == 251
    assert [row[0] for row in rows[1:]] == [str(n) for n in range(1, 251)]


def test_csv_is_deterministic_per_seed():
    assert b"".join(csv_chunks(300, seed=7)) == b"".join(csv_chunks(300, seed=7))
    assert b"".join(csv_chunks(300, seed=7)) != b"".join(csv_chunks(300, seed=8))


def test_csv_quotes_fields_that_need_it():
    data = b"".join(csv_chunks(500, seed=1))
    comments = {row[4] for row in parse_csv(data)[1:]}
    assert {"late, with fee", 'said "thanks"', "two\nlines"} <= comments


def test_csv_comes_in_chunks_of_about_the_chunk_size():
    chunks = list(csv_chunks(20_000, seed=1, chunk_bytes=16_384))
    assert len(chunks) > 10
    assert all(16_384 <= len(chunk) < 16_384 + 200 for chunk in chunks[:-1])
