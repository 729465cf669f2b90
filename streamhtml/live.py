"""Live streams: the WSGI body that counts and can be cut, and the tracker that admits them.

Capacity is counted across gunicorn's workers in one shared memory page that the master maps
before it forks: each worker writes only its own slot, and admission sums all slots. gunicorn
hands connections to whichever worker accepts first, so a per-worker cap alone would refuse
streams while another worker sat idle.
"""

import contextlib
import logging
import mmap
import socket
import threading
from collections.abc import Callable, Iterator

from .observe import CLIENT_GONE, COMPLETE, ERROR, SHUTDOWN

log = logging.getLogger("streamhtml")

# Where a response's LiveStream sits in the WSGI environ, for the request log.
STREAM_ENVIRON_KEY = "streamhtml.stream"
# True in the environ when the body never waits between items, so the worker may gather
# several chunks into one send (streamhtml/worker.py).
COALESCE_KEY = "streamhtml.coalesce"

MAX_SLOTS = 256  # workers alive at once, old and new ones included during a reload
_SLOT_BYTES = 8
_shared = memoryview(mmap.mmap(-1, MAX_SLOTS * _SLOT_BYTES)).cast("q")
_free_slots = list(range(MAX_SLOTS - 1, -1, -1))

# gunicorn hooks, in the master -----------------------------------------------------------


def assign_slot(worker) -> None:
    """pre_fork: give the worker about to be forked a slot of its own."""
    worker.streamhtml_slot = _free_slots.pop()
    _shared[worker.streamhtml_slot] = 0


def release_slot(worker) -> None:
    """child_exit: a dead worker's streams are gone, however it died."""
    slot = getattr(worker, "streamhtml_slot", None)
    if slot is not None:
        _shared[slot] = 0
        _free_slots.append(slot)


# In the worker ------------------------------------------------------------------------------


class Tracker:
    """Live streams of one worker process; thread-safe."""

    def __init__(self, max_streams: int, max_streams_here: int, slot: int | None = None):
        self.max_streams = max_streams
        self.max_streams_here = max_streams_here
        self._slot = slot
        self._lock = threading.Lock()
        self._live: dict[int, object] = {}
        self._shutdown_timer: threading.Timer | None = None
        self.shutting_down = False
        self._grace_over = False

    def _instance_total(self) -> int:
        if self._slot is None:
            return len(self._live)
        return sum(_shared)

    def admit(self, stream) -> bool:
        """Count `stream` in, or refuse it when the instance or this worker is full."""
        with self._lock:
            # A worker told to stop may still take a request it had already accepted (a
            # reload retires workers this way): serve it until the grace runs out.
            if self._grace_over:
                return False
            if len(self._live) >= self.max_streams_here:
                return False
            if self._instance_total() >= self.max_streams:
                return False
            self._live[id(stream)] = stream
            self._publish()
            return True

    def release(self, stream) -> None:
        with self._lock:
            if self._live.pop(id(stream), None) is not None:
                self._publish()

    def _publish(self) -> None:
        if self._slot is not None:
            _shared[self._slot] = len(self._live)

    def instance_live(self) -> int:
        return self._instance_total()

    def begin_shutdown(self, grace_s: float) -> None:
        """SIGTERM: let streams run until `grace_s` from now, then cut those still running.

        Cutting shuts each stream's socket, which wakes a thread blocked in send() or in a
        pause, so the worker can exit before the platform's SIGKILL.
        """
        with self._lock:
            if self.shutting_down:
                return
            self.shutting_down = True
        self._shutdown_timer = threading.Timer(max(0.0, grace_s), self.cut_all)
        self._shutdown_timer.daemon = True
        self._shutdown_timer.start()

    def cut_all(self) -> None:
        with self._lock:
            self._grace_over = True
            streams = list(self._live.values())
        for stream in streams:
            stream.cut()
        if streams:
            log.info("shutdown: cut %d stream(s) still running", len(streams))


def shut_socket(sock: socket.socket | None) -> None:
    """End a connection from our side so blocked reads, writes and polls on it return."""
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed by the client: nothing to end
        sock.shutdown(socket.SHUT_RDWR)


_worker_slot: int | None = None
_process_tracker: Tracker | None = None


def attach_worker(worker) -> None:
    """post_fork: this process is a worker; its streams count in its slot."""
    global _worker_slot
    _worker_slot = getattr(worker, "streamhtml_slot", None)


def new_tracker(max_streams: int, max_streams_here: int) -> Tracker:
    """The tracker of the app being built; SIGTERM reaches the latest one of this process."""
    global _process_tracker
    _process_tracker = Tracker(max_streams, max_streams_here, _worker_slot)
    return _process_tracker


def begin_shutdown(grace_s: float) -> None:
    if _process_tracker is not None:
        _process_tracker.begin_shutdown(grace_s)


class LiveStream:
    """A WSGI body that knows how it ended (gunicorn counts the bytes it sent).

    gunicorn calls close() after the last chunk, or after a write fails because the client
    left; either way the inner generator is closed, so its cleanup runs and no more is made.
    `stopped_early` says why the inner generator ended before its natural end, if it did.
    """

    __slots__ = (
        "_chunks",
        "_sock",
        "_on_close",
        "_stopped_early",
        "_tracker",
        "_closed",
        "_cut",
        "outcome",
    )

    def __init__(
        self,
        chunks: Iterator[bytes],
        sock: socket.socket | None,
        on_close: Callable[[], None] = lambda: None,
        stopped_early: Callable[[], str | None] = lambda: None,
    ):
        self._chunks = chunks
        self._sock = sock
        self._on_close = on_close
        self._stopped_early = stopped_early
        self._tracker: Tracker | None = None
        self._closed = False
        self._cut: str | None = None
        self.outcome: str | None = None

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            self.outcome = self._cut or self._stopped_early() or COMPLETE
            raise
        except Exception:
            self.outcome = ERROR
            raise

    def admit_to(self, tracker: Tracker) -> bool:
        if tracker.admit(self):
            self._tracker = tracker
            return True
        return False

    def cut(self) -> None:
        """End the stream now from another thread; the client sees it unfinished."""
        self._cut = SHUTDOWN
        shut_socket(self._sock)

    def settled_outcome(self) -> str:
        """How the stream ended, once the server has stopped iterating it."""
        if self.outcome is None or self._cut:
            # Stopped before the end: a write failed because the client left, or we cut it.
            return self._cut or self._stopped_early() or CLIENT_GONE
        return self.outcome

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close_inner = getattr(self._chunks, "close", None)
            if close_inner is not None:
                close_inner()
            self.outcome = self.settled_outcome()
            self._on_close()
        finally:
            if self._tracker is not None:
                self._tracker.release(self)
