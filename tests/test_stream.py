"""LiveStream: the body knows how it ended, whichever way the server iterates it. The wire
tests see these outcomes in the access line; here every pairing of a way to iterate and a way
to end is checked in process, including the rare ones (a generator failing mid-stream)."""

import socket
import struct
import threading
import time

import pytest

from streamhtml.generators import Pace
from streamhtml.outcomes import CLIENT_GONE, COMPLETE, DEADLINE, ERROR, STALLED
from streamhtml.stream import ClientWatcher, LiveStream, Turns


class Broken(Exception):
    pass


def blocks(count: int, fail_after: int | None = None):
    for number in range(count):
        if number == fail_after:
            raise Broken("the generator failed")
        yield b"x" * 10


def new_stream(chunks, kind: str) -> LiveStream:
    # A stream with turns is iterated by __next__; without (brief or paced), by a generator.
    if kind == "turns":
        return LiveStream(chunks, None, 60.0, turns=Turns(1))
    if kind == "paced":
        return LiveStream(chunks, None, 60.0, pace=Pace(items=3, pause_s=0.001))
    return LiveStream(chunks, None, 60.0)


KINDS = ["turns", "no turns", "paced"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_read_to_its_end_is_complete(kind):
    stream = new_stream(blocks(3), kind)
    assert len(list(stream)) == 3
    stream.close()
    assert stream.outcome == COMPLETE


@pytest.mark.parametrize("kind", KINDS)
def test_a_generator_failing_mid_stream_is_an_error_and_the_error_reaches_the_server(kind):
    stream = new_stream(blocks(3, fail_after=1), kind)
    received = []
    with pytest.raises(Broken):
        for item in stream:
            received.append(item)
    stream.close()
    assert len(received) == 1
    assert stream.outcome == ERROR


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_the_server_stops_reading_is_the_client_gone(kind):
    # The server stops when a write fails: the client left.
    stream = new_stream(blocks(3), kind)
    next(iter(stream))
    stream.close()
    assert stream.outcome == CLIENT_GONE


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cut", [DEADLINE, STALLED])
def test_a_cut_stream_says_why_even_if_it_was_read_to_its_end(kind, cut):
    stream = new_stream(blocks(3), kind)
    items = iter(stream)
    next(items)
    stream.cut(cut)
    list(items)
    stream.close()
    assert stream.outcome == cut


@pytest.mark.parametrize("kind", KINDS)
def test_close_releases_the_stream_once_and_ends_its_generator(kind):
    cleaned_up = []

    def chunks():
        try:
            yield from blocks(3)
        finally:
            cleaned_up.append(True)

    stream = new_stream(chunks(), kind)
    released = []
    stream.on_release(lambda: released.append(True))
    next(iter(stream))
    stream.close()
    stream.close()
    assert released == [True]
    assert cleaned_up == [True], "the generator's cleanup did not run"


def test_a_stream_holds_a_turn_while_it_makes_bytes_and_gives_it_back_before_sending():
    turns = Turns(1)
    stream = LiveStream(blocks(3), None, 60.0, turns=turns)
    items = iter(stream)
    next(items)
    assert not turns._turns.acquire(blocking=False), "no turn was taken"
    stream.give_back_turn()
    assert turns._turns.acquire(blocking=False), "the turn was not given back"
    turns._turns.release()


def test_a_paced_stream_whose_deadline_comes_in_a_pause_ends_there_at_its_deadline():
    stream = LiveStream(blocks(3), None, 0.05, pace=Pace(items=3, pause_s=10.0))
    assert len(list(stream)) == 1
    stream.close()
    assert stream.outcome == DEADLINE


def pause_in_thread(watcher: ClientWatcher, seconds: float) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(watcher.pause(seconds)))
    thread.start()
    return thread, result


@pytest.mark.parametrize(
    "leave",
    ["close", "one more byte, then close", "one more byte, then reset", "half-close"],
)
def test_a_pause_ends_within_a_second_of_a_hang_up_whatever_the_client_left_unread(leave):
    ours, client = socket.socketpair()
    with ours, client:
        watcher = ClientWatcher(ours, time.monotonic() + 60)
        thread, result = pause_in_thread(watcher, 30.0)
        if leave != "close":
            client.send(b"G")  # a pipelined byte, as a ghost stream's client sends
            time.sleep(0.1)  # the watcher sees the byte first, then the hang-up
        left_at = time.monotonic()
        if leave == "half-close":
            client.shutdown(socket.SHUT_WR)
        else:
            if leave.endswith("reset"):
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
        thread.join(5)
        assert result == [False] and watcher.outcome == CLIENT_GONE
        assert time.monotonic() - left_at < 1.0
        assert ours.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) in (b"G", b"")


def test_a_client_that_sends_a_byte_and_stays_is_still_there_at_the_end_of_the_pause():
    ours, client = socket.socketpair()
    with ours, client:
        watcher = ClientWatcher(ours, time.monotonic() + 60)
        thread, result = pause_in_thread(watcher, 0.5)
        client.send(b"G")
        thread.join(5)
        assert result == [True] and watcher.outcome is None
        assert ours.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"G"  # left for the reader
