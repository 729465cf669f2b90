"""The pure generators: exact sizes, random but cheap blocks, SSE and NDJSON framing, pacing,
deterministic CSV."""

import csv
import io
import json
import re
import tracemalloc

import pytest

from streamhtml.generators import (
    CSV_HEADER,
    POOL_BYTES,
    RING_BYTES,
    RINGS_ALIVE,
    Pace,
    csv_chunks,
    html_blocks,
    ndjson_lines,
    ndjson_min_line_bytes,
    paced,
    sse_events,
    sse_retry,
    sse_retry_ms,
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
    # Each request starts at a random place of its size's ring (1,024 blocks of 1 KiB), so two
    # requests start alike one time in 1,024 (two in a row flaked this test once); of 50
    # requests, 48.8 start apart on average, and fewer than 45 would take 6 coincidences.
    firsts = {bytes(blocks_of(html_blocks(4, 1024))[0]) for _ in range(50)}
    assert len(firsts) >= 45


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


def test_paced_pauses_between_blocks_never_before_the_first_nor_after_the_last():
    events = []

    def pause(seconds):
        events.append(f"pause {seconds}")
        return True

    for chunk in paced(iter([b"a", b"b", b"c"]), Pace(items=3, pause_s=0.5), pause):
        events.append(chunk)
    assert events == [b"a", "pause 0.5", b"b", "pause 0.5", b"c"]


def test_paced_makes_each_chunk_only_after_its_pause():
    events = []

    def chunks():
        for name in ("a", "b"):
            events.append(f"make {name}")
            yield name.encode()

    def pause(seconds):
        events.append("pause")
        return True

    list(paced(chunks(), Pace(items=2, pause_s=1.0), pause))
    assert events == ["make a", "pause", "make b"]


def test_paced_stops_when_pause_says_so_and_makes_nothing_more():
    made = []

    def blocks():
        for block in (b"a", b"b", b"c"):
            made.append(block)
            yield block

    assert list(paced(blocks(), Pace(items=3, pause_s=1.0), lambda seconds: False)) == [b"a"]
    assert made == [b"a"]


@pytest.mark.parametrize(
    "pause_s, expected",
    [
        # (pause, what is yielded and asked for between two chunks)
        (10.0, ["pause 10.0"]),
        (15.0, ["pause 15.0"]),  # the chunk itself comes 15 s after the last byte
        (30.0, ["pause 15.0", b"hb", "pause 15.0"]),
        (31.0, ["pause 15.0", b"hb", "pause 15.0", b"hb", "pause 1.0"]),
    ],
)
def test_a_long_pause_is_taken_in_slices_with_a_heartbeat_after_each(pause_s, expected):
    events = []

    def pause(seconds):
        events.append(f"pause {seconds}")
        return True

    pace = Pace(items=2, pause_s=pause_s, heartbeat=b"hb", heartbeat_every_s=15.0)
    for chunk in paced(iter([b"a", b"b"]), pace, pause):
        events.append(chunk)
    assert events == [b"a", *expected, b"b"]


def test_a_hang_up_during_a_heartbeat_slice_stops_the_stream():
    answers = iter([True, False])
    pace = Pace(items=2, pause_s=40.0, heartbeat=b"hb", heartbeat_every_s=15.0)
    assert list(paced(iter([b"a", b"b"]), pace, lambda seconds: next(answers))) == [b"a", b"hb"]


# --- SSE and NDJSON --------------------------------------------------------------------------

SSE_EVENT = re.compile(rb"id: (\d+)\nevent: block\ndata: ([a-z]*)\n\n")


@pytest.mark.parametrize("block_size", [1, 7, 1024, POOL_BYTES, POOL_BYTES + 1])
def test_an_sse_event_carries_its_id_and_block_size_letters(block_size):
    events = list(sse_events(3, block_size))
    parsed = [SSE_EVENT.fullmatch(event) for event in events]
    assert all(parsed), events[0][:80]
    assert [int(match[1]) for match in parsed] == [1, 2, 3]
    assert all(len(match[2]) == block_size for match in parsed)


def test_sse_events_resume_after_the_last_id_the_client_has():
    assert [SSE_EVENT.fullmatch(e)[1] for e in sse_events(5, 4, after_id=3)] == [b"4", b"5"]
    assert list(sse_events(5, 4, after_id=5)) == []


def test_consecutive_sse_events_carry_different_letters_unless_static():
    random_data = [SSE_EVENT.fullmatch(event)[2] for event in sse_events(500, 64)]
    assert all(first != second for first, second in zip(random_data, random_data[1:]))
    static_data = {SSE_EVENT.fullmatch(event)[2] for event in sse_events(50, 64, static=True)}
    (block,) = html_blocks(1, 69, static=True)  # an event's data: a block's letters
    assert static_data == {bytes(block[:64])}


@pytest.mark.parametrize(
    "sleep_ms, retry_ms", [(0, 1000), (250, 1000), (1000, 1000), (31_000, 31_000)]
)
def test_the_retry_field_is_the_pause_and_at_least_a_second(sleep_ms, retry_ms):
    assert sse_retry_ms(sleep_ms) == retry_ms
    assert sse_retry(retry_ms) == b"retry: %d\n\n" % retry_ms


def fixed_clock(t_ms=1_700_000_000_000):
    return lambda: t_ms


@pytest.mark.parametrize(
    "nblocks, block_size",
    [(1, 40), (9, 40), (10, 41), (12, 64), (100, 42), (1000, 1024), (3, POOL_BYTES + 10)],
)
def test_every_ndjson_line_is_one_json_object_of_exactly_block_size_bytes(nblocks, block_size):
    lines = list(ndjson_lines(nblocks, block_size, fixed_clock()))
    assert [len(line) for line in lines] == [block_size] * nblocks
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    objects = [json.loads(line) for line in lines]
    assert [obj["seq"] for obj in objects] == list(range(1, nblocks + 1))
    assert all(obj["t_ms"] == 1_700_000_000_000 for obj in objects)
    assert all(re.fullmatch("[a-z]*", obj["pad"]) for obj in objects)


def test_the_shortest_ndjson_line_has_an_empty_pad_for_the_widest_seq():
    assert ndjson_min_line_bytes(9) == len(b'{"seq":9,"t_ms":1700000000000,"pad":""}\n') == 40
    assert ndjson_min_line_bytes(10) == 41 and ndjson_min_line_bytes(0) == 40
    with pytest.raises(ValueError):
        ndjson_lines(10, 40, fixed_clock())


def test_an_ndjson_line_is_stamped_when_it_is_made():
    ticks = iter(range(1_700_000_000_000, 1_700_000_000_100, 10))
    lines = ndjson_lines(3, 64, lambda: next(ticks))
    assert [json.loads(line)["t_ms"] for line in lines] == [
        1_700_000_000_000,
        1_700_000_000_010,
        1_700_000_000_020,
    ]


@pytest.mark.parametrize("t_ms", [0, 123, 99_999_999_999_999])
def test_an_ndjson_line_keeps_its_size_whatever_the_clock_says(t_ms):
    lines = list(ndjson_lines(3, 60, fixed_clock(t_ms)))
    assert [len(line) for line in lines[:2]] == [60, 60]
    assert all(json.loads(line)["t_ms"] == t_ms for line in lines)


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
