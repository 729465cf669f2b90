"""One live stream: the WSGI body that knows how it ended, its deadline, its pauses, its cut."""

from __future__ import annotations

import contextlib
import itertools
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

from .generators import Pace, paced
from .outcomes import CLIENT_GONE, COMPLETE, DEADLINE, ERROR

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


class StreamFailed(Exception):  # noqa: N818 - how a stream ended, named by its cause
    """A stream's source failed (a database, a file): before the first byte the route answers
    with an error; after it, the response ends unfinished and the log names `cause`."""

    @property
    def cause(self) -> str:
        return str(self)


class HangupWatch:
    """Notices, from one thread per process, a client that hangs up while its stream waits on
    I/O (a database query), and calls back, so the query is cancelled within a moment rather
    than at the next send. Edge-triggered epoll on the hang-up flags only: bytes the client
    sends do not wake it, and a socket is watched only while a wait lasts."""

    _FLAGS = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR | select.EPOLLONESHOT

    def __init__(self):
        self._epoll: select.epoll | None = None
        self._callbacks: dict[int, Callable[[], object]] = {}
        self._lock = threading.Lock()

    def _started(self) -> select.epoll:
        with self._lock:
            if self._epoll is None:
                self._epoll = select.epoll()
                threading.Thread(target=self._run, name="hangup-watch", daemon=True).start()
            return self._epoll

    @contextlib.contextmanager
    def watching(self, sock: socket.socket | None, on_hangup: Callable[[], object]):
        if sock is None or sock.fileno() < 0:
            yield
            return
        epoll = self._started()
        fd = sock.fileno()
        # Once the wait is over, on_hangup must not run: the query it cancels would be the
        # next one on that pooled connection. Ending the wait waits for a call under way.
        guard = threading.Lock()
        active = [True]

        def hung_up() -> None:
            with guard:
                if active[0]:
                    on_hangup()

        with self._lock:
            self._callbacks[fd] = hung_up
        try:
            epoll.register(fd, self._FLAGS)
        except OSError:
            with self._lock:
                self._callbacks.pop(fd, None)
            yield
            return
        try:
            yield
        finally:
            with self._lock:
                self._callbacks.pop(fd, None)
            with contextlib.suppress(OSError, ValueError):
                epoll.unregister(fd)
            with guard:
                active[0] = False

    def _run(self) -> None:
        assert self._epoll is not None
        while True:
            for fd, _events in self._epoll.poll():
                with self._lock:
                    callback = self._callbacks.pop(fd, None)
                if callback is not None:
                    try:
                        callback()
                    except Exception:  # noqa: BLE001 - a failed cancel must not stop the watch
                        log.exception("hang-up callback failed")


_hangups = HangupWatch()
log = logging.getLogger("streamhtml")


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
        "failure",
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
        self.failure: str | None = None  # why the source failed, when it did

    def prime(self, chunks: Iterator) -> None:
        """Take `chunks` as the items, and make the first now, on the route's thread: a stream
        that waits on I/O learns here, before any byte is sent, that its source is unavailable
        (a StreamFailed the route answers with an error), rather than after its 200."""
        rest = iter(chunks)
        try:
            first = next(rest)
        except StopIteration:
            self._chunks = iter(())
            return
        self._chunks = _resumed(first, rest)

    def waiting(self, cancel: Callable[[], object]):
        """A context for a wait on I/O: should the client hang up meanwhile, the stream is cut
        and `cancel()` called (a query's cancel), at once, from the hang-up watch's thread."""

        def hung_up() -> None:
            self.cut(CLIENT_GONE)
            cancel()

        return _hangups.watching(self._sock, hung_up)

    def __iter__(self) -> Iterator:
        try:
            if self._turns is None:
                yield from self._chunks  # no turn to take: straight through, at C speed
            else:
                yield from self._made_in_turns(self._turns)
        except StreamFailed as failed:
            self.outcome = ERROR
            self.failure = failed.cause
            raise
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


def _resumed(first, rest: Iterator) -> Iterator:
    """`first`, then the rest of `rest`, which is closed with this generator."""
    try:
        yield first
        yield from rest
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()
