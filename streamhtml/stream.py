"""One live stream: the WSGI body that knows how it ended, its deadline, its pauses, its cut."""

from __future__ import annotations

import contextlib
import itertools
import select
import socket
import threading
import time
from collections.abc import Iterator

from .generators import Pace, paced
from .observe import CLIENT_GONE, COMPLETE, DEADLINE, ERROR

# POLLRDHUP reports a peer's FIN even when the kernel has no data to read (Linux only).
_RDHUP = getattr(select, "POLLRDHUP", 0)
_HANGUP = _RDHUP | select.POLLHUP | select.POLLERR
_WATCH = select.POLLIN | _HANGUP
# The flags of a recv that looks without taking or waiting, as one int: or-ing the two enums
# is a Python call each time.
PEEK_NOW = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)


def shut_socket(sock: socket.socket | None) -> None:
    """End a connection from our side so blocked reads, writes and polls on it return."""
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed by the client: nothing to end
        sock.shutdown(socket.SHUT_RDWR)


class ClientWatcher:
    """Sleeps between blocks, waking at once if the client hangs up or the deadline comes.

    Without it a stream with sleep_ms=30000 would learn of a hang-up only at its next write,
    and a thread would sit out the whole pause for nobody.
    """

    def __init__(self, sock: socket.socket | None, deadline: float):
        self._sock = sock
        self._deadline = deadline
        self._poll = None
        if sock is not None:
            self._poll = select.poll()
            self._poll.register(sock, _WATCH)
        self.outcome: str | None = None

    def pause(self, seconds: float) -> bool:
        """Wait `seconds`; False (and `outcome` set) if the stream should stop instead."""
        wake_at = min(time.monotonic() + seconds, self._deadline)
        while (remaining := wake_at - time.monotonic()) > 0:
            if self._poll is None:
                time.sleep(remaining)
                continue
            events = self._poll.poll(remaining * 1000.0)
            if not events:
                continue
            if self._client_gone(events[0][1]):
                self.outcome = CLIENT_GONE
                return False
            # The client sent bytes (a pipelined request, a body) and is still there. They
            # stay unread for the request's own reader; from now on only a hang-up wakes us.
            assert self._sock is not None and self._poll is not None
            if not _RDHUP:
                # Without POLLRDHUP a FIN behind those bytes would not show: nothing more to
                # learn by polling.
                time.sleep(max(0.0, wake_at - time.monotonic()))
                break
            self._poll.modify(self._sock, _HANGUP)
        if time.monotonic() >= self._deadline:
            self.outcome = DEADLINE
            return False
        return True

    def _client_gone(self, revents: int) -> bool:
        """Whether the client hung up or reset. A peek alone would take a byte left in the
        buffer for presence, and a client that sent one more byte and closed would hold its
        slot for the whole pause; the socket's own signals say it."""
        if revents & _HANGUP:
            return True
        assert self._sock is not None
        try:
            return self._sock.recv(1, PEEK_NOW) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


class Turns:
    """How many of a worker's unpaced streams may make bytes at the same moment.

    Making bytes holds the GIL; sending them does not. With dozens of streams making bytes at
    once, a /health request waits behind all of them for the GIL, once per step it takes. A
    stream takes a turn to make a batch and gives it back before sending it, so the queue for
    the GIL stays as short as the number of turns.
    """

    def __init__(self, count: int):
        self._turns = threading.BoundedSemaphore(count)

    def take(self) -> None:
        self._turns.acquire()

    def give_back(self) -> None:
        self._turns.release()


class LiveStream:
    """A WSGI body that knows how it ended, when it must end, and how to be cut.

    The server calls close() after the last chunk, or after a write failed or was cut; either
    way the inner generator is closed, so its cleanup runs and no more is made, and the
    stream leaves the tracker that admitted it.
    """

    __slots__ = (
        "_chunks",
        "_sock",
        "_watcher",
        "_cut",
        "_release",
        "_turns",
        "_has_turn",
        "deadline",
        "outcome",
    )

    def __init__(
        self,
        chunks: Iterator,
        sock: socket.socket | None,
        duration_s: float,
        pace: Pace | None = None,
        preamble: bytes = b"",
        turns: Turns | None = None,
    ):
        self.deadline = time.monotonic() + duration_s
        self._sock = sock
        self._watcher: ClientWatcher | None = None
        if pace is not None and pace.pause_s > 0:
            # Only paced streams wait, so only they need a watcher (a poll object each).
            watcher = ClientWatcher(sock, self.deadline)
            chunks = paced(chunks, pace, watcher.pause)
            self._watcher = watcher
        if preamble:
            # Sent at once, ahead of the first item; never paced, never one of the items.
            chunks = itertools.chain((preamble,), chunks)
        # A paced stream makes one block per pause: it needs no turn, and must not hold
        # one while it sleeps.
        self._turns = turns if pace is None or pace.pause_s <= 0 else None
        self._has_turn = False
        self._chunks = chunks
        self._cut: str | None = None
        self._release = None
        self.outcome: str | None = None

    def __iter__(self) -> Iterator:
        try:
            if self._turns is None:
                yield from self._chunks  # no turn to take: straight through, at C speed
            else:
                yield from self._made_in_turns(self._turns)
        except Exception:
            self.outcome = ERROR
            raise
        self.outcome = self._stopped_by() or COMPLETE

    def _made_in_turns(self, turns: Turns) -> Iterator:
        """The items, each made holding a turn; flush() gives it back before sending."""
        chunks = self._chunks
        while True:
            if not self._has_turn:
                turns.take()
                self._has_turn = True
            try:
                item = next(chunks)
            except StopIteration:
                return
            yield item

    def _stopped_by(self) -> str | None:
        return self._cut or (self._watcher.outcome if self._watcher else None)

    def give_back_turn(self) -> None:
        """The server is about to send what was made: another stream may make bytes."""
        if self._has_turn and self._turns is not None:
            self._has_turn = False
            self._turns.give_back()

    def on_release(self, release) -> None:
        """What to call once, when the stream is over (the tracker's release)."""
        self._release = release

    def cut(self, outcome: str) -> None:
        """End the stream now, from any thread; the client sees it unfinished."""
        if self._cut is None:
            self._cut = outcome
        shut_socket(self._sock)

    def settled_outcome(self) -> str:
        """How the stream ended, once the server has stopped iterating it."""
        if self.outcome is None or self._cut:
            # Stopped before its end: a write failed because the client left, or we cut it.
            return self._stopped_by() or CLIENT_GONE
        return self.outcome

    def close(self) -> None:
        release, self._release = self._release, None
        self.give_back_turn()
        try:
            close_inner = getattr(self._chunks, "close", None)
            if close_inner is not None:
                close_inner()
            self.outcome = self.settled_outcome()
        finally:
            if release is not None:
                release()
