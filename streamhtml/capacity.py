"""Admission of streams across gunicorn's workers, the cut at shutdown, and how many
connections each worker holds.

Counts live in one shared memory page that the master maps before it forks: each worker
writes only its own slot, and admission sums every slot. gunicorn hands a connection to
whichever worker accepts first, so a per-worker cap alone would refuse streams while another
worker sat idle; for the same reason each worker says how many connections it holds, so the
one holding more can let another take the next (streamhtml/worker.py). The master clears a
dead worker's slot, however it died.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .observe import log
from .outcomes import SHUTDOWN

MAX_SLOTS = 256  # workers alive at once, old and new ones included during a reload
MAX_ROUTES = 16  # stream routes counted apart (the in-progress gauge is per route)
# A stream of a route nobody declared is counted here, never refused for it.
OTHER_ROUTE = "other"
_BYTES_COLUMN = MAX_ROUTES  # after the per-route counts: the bytes this worker's streams hold
# 1 + the connections the worker holds, while it accepts more; 0 while it does not (a slot
# cleared by the master reads as a worker that does not accept).
_CONNECTIONS_COLUMN = MAX_ROUTES + 1
# Database connections this worker has taken from its pool, and requests waiting for one.
_DB_IN_USE_COLUMN = MAX_ROUTES + 2
_DB_WAITING_COLUMN = MAX_ROUTES + 3
# The kernel bytes that answers idle clients left unread hold (streamhtml/answers.py): they
# count against the memory budget as streams' bytes do.
_UNREAD_COLUMN = MAX_ROUTES + 4
_COLUMNS = MAX_ROUTES + 5
# The cells a slot takes: whole 64-byte cache lines, so no two workers write one line. Packed
# at 21 cells, two slots shared a line that both workers write on every request, and each
# write had the other core fetch it again: 119 ns an increment against 89 for two processes
# writing in a loop, a few such writes a request.
_STRIDE = -(-_COLUMNS * 8 // 64) * 8
# After the slots, one cell: how many slots from the first have ever been given out, so a sum
# reads those only (two workers: two slots, not 256; /health and every admission sum).
_SLOTS_USED = MAX_SLOTS * _STRIDE
_page = memoryview(mmap.mmap(-1, (_SLOTS_USED + 1) * 8)).cast("q")
_free_slots = list(range(MAX_SLOTS - 1, -1, -1))


class Cuttable(Protocol):
    def cut(self, outcome: str) -> None: ...


# Why a stream was refused; each becomes a 503 with Retry-After.
FULL = "instance full"
WORKER_FULL = "worker full"
CSV_FULL = "csv downloads full"  # /large.csv's cap: "<what> full", as every route cap
CLIENT_FULL = "client full"
MEMORY_FULL = "memory budget full"
SHUTTING_DOWN = "shutting down"

# The last 1/SMALL_STREAMS_SHARE of the memory budget is kept for small streams: a few hundred
# clients that never read 1 MiB SSE events (each a copy) would otherwise fill it, and every
# stream after them, an ordinary paced page among them, would get 503 until they were cut.
SMALL_STREAMS_SHARE = 8


@dataclass(frozen=True)
class RouteCap:
    """At most `limit` streams at once of `routes` together, on the instance."""

    what: str  # "csv downloads", "exports": the refusal is "<what> full"
    limit: int
    routes: tuple[str, ...]

    @property
    def refusal(self) -> str:
        return f"{self.what} full"


@dataclass(frozen=True)
class Caps:
    max_streams: int
    max_streams_here: int
    memory_budget_bytes: int | None
    # A stream charged more than this is large: it may not take the small streams' share.
    small_stream_bytes: int | None = None
    # Caps declared with the routes (streamhtml/streaming.py), by route.
    route_caps: Mapping[str, RouteCap] = field(default_factory=dict)
    max_streams_per_client: int | None = None


# gunicorn hooks, in the master -----------------------------------------------------------


def assign_slot(worker) -> None:
    """pre_fork: give the worker about to be forked a slot of its own."""
    worker.streamhtml_slot = _free_slots.pop()
    _clear(worker.streamhtml_slot)
    _page[_SLOTS_USED] = max(_page[_SLOTS_USED], worker.streamhtml_slot + 1)


def release_slot(worker) -> None:
    """child_exit: a dead worker's streams are gone, however it died."""
    slot = getattr(worker, "streamhtml_slot", None)
    if slot is not None:
        _clear(slot)
        _free_slots.append(slot)


def _clear(slot: int) -> None:
    for column in range(_COLUMNS):
        _page[slot * _STRIDE + column] = 0


# In the worker ------------------------------------------------------------------------------


class ClientCounts(Protocol):
    def take(self, client: str) -> bool: ...
    def give_back(self, client: str) -> None: ...


class Tracker:
    """The live streams of one worker process, counted in its slot; thread-safe."""

    def __init__(
        self,
        caps: Caps,
        routes: Sequence[str],
        slot: int | None = None,
        clients: ClientCounts | None = None,
    ):
        routes = tuple(route for route in routes if route != OTHER_ROUTE) + (OTHER_ROUTE,)
        if len(routes) > MAX_ROUTES:
            raise ValueError(f"at most {MAX_ROUTES - 1} stream routes are counted")
        self.caps = caps
        self.routes = routes
        self._column = {route: index for index, route in enumerate(self.routes)}
        self._other = self._column[OTHER_ROUTE]
        self._slot = slot
        # Without a slot (Flask's test client) the counts live in this process only.
        self._counts = [0] * _COLUMNS if slot is None else None
        self._lock = threading.Lock()
        self._live: dict[int, tuple[Cuttable, str, int, str | None]] = {}
        # Per-client counts (streamhtml/clients.py), when the operator set a per-client cap.
        self.clients = clients if caps.max_streams_per_client else None
        self.shutting_down = False
        self._grace_over = False
        self.ended_here = 0  # streams of this process that have ended, ever

    def _instance_sum(self, column: int) -> int:
        if self._counts is not None:
            return self._counts[column]
        return sum(_every_slot(column))

    def _add(self, column: int, delta: int) -> None:
        if self._counts is not None:
            self._counts[column] += delta
        elif self._slot is not None:
            _page[self._slot * _STRIDE + column] += delta

    def in_progress(self, route: str | None = None) -> int:
        """Streams live on the instance: of one route, or of all."""
        if route is not None:
            return self._instance_sum(self._column.get(route, self._other))
        routes = len(self.routes)
        if self._counts is not None:
            return sum(self._counts[:routes])
        # The route columns lead each slot: one slice a slot, not one a route (every
        # admission and every /health asks this).
        return sum(
            sum(_page[start : start + routes])
            for start in range(0, _page[_SLOTS_USED] * _STRIDE, _STRIDE)
        )

    def held_bytes(self) -> int:
        """What streams and unread answers hold on the instance, against the memory budget."""
        return self._instance_sum(_BYTES_COLUMN) + unread_answer_bytes()

    def admit(
        self, stream: Cuttable, route: str, cost_bytes: int, client: str | None = None
    ) -> str | None:
        """Count `stream` in; None when admitted, else why it was refused. `client` counts
        against the per-client cap, if there is one (`clients`)."""
        caps = self.caps
        with self._lock:
            # A worker told to stop may still take a request it had already accepted (a
            # reload retires workers this way): serve it until the grace runs out.
            if self._grace_over:
                return SHUTTING_DOWN
            if len(self._live) >= caps.max_streams_here:
                return WORKER_FULL
            if self.in_progress() >= caps.max_streams:
                return FULL
            route_cap = caps.route_caps.get(route)
            if route_cap is not None:
                held = sum(self.in_progress(capped) for capped in route_cap.routes)
                if held >= route_cap.limit:
                    return route_cap.refusal
            budget = caps.memory_budget_bytes
            if budget is not None:
                small = caps.small_stream_bytes
                if small is not None and cost_bytes > small:
                    budget -= budget // SMALL_STREAMS_SHARE
                if self.held_bytes() + cost_bytes > budget:
                    return MEMORY_FULL
            if route not in self._column:
                route = OTHER_ROUTE
            if self.clients is None or client is None:
                client = None
            elif not self.clients.take(client):
                return CLIENT_FULL
            self._live[id(stream)] = (stream, route, cost_bytes, client)
            self._add(self._column[route], 1)
            self._add(_BYTES_COLUMN, cost_bytes)
            return None

    def release(self, stream: Cuttable) -> None:
        with self._lock:
            entry = self._live.pop(id(stream), None)
            if entry is not None:
                self.ended_here += 1
                _, route, cost_bytes, client = entry
                self._add(self._column[route], -1)
                self._add(_BYTES_COLUMN, -cost_bytes)
                if client is not None and self.clients is not None:
                    self.clients.give_back(client)

    def begin_shutdown(self, grace_s: float) -> threading.Timer | None:
        """SIGTERM: let streams run until `grace_s` from now, then cut those still running.

        Cutting shuts each stream's socket, which wakes a thread blocked in a send or in a
        pause, so the worker can exit before the platform's SIGKILL.
        """
        with self._lock:
            if self.shutting_down:
                return None
            self.shutting_down = True
        timer = threading.Timer(max(0.0, grace_s), self.cut_all)
        timer.daemon = True
        timer.start()
        return timer

    def cut_all(self, outcome: str = SHUTDOWN) -> None:
        with self._lock:
            self._grace_over = True
            streams = [entry[0] for entry in self._live.values()]
        for stream in streams:
            stream.cut(outcome)
        if streams:
            log.info("shutdown: cut %d stream(s) still running", len(streams))


_worker_slot: int | None = None
_process_tracker: Tracker | None = None


def _every_slot(column: int):
    """One column of every slot given out, in slot order. A strided slice is read in C: this
    runs several times for every request."""
    return _page[column : _page[_SLOTS_USED] * _STRIDE : _STRIDE]


def attach_worker(worker) -> None:
    """post_fork: this process is a worker; its streams count in its slot."""
    global _worker_slot
    _worker_slot = getattr(worker, "streamhtml_slot", None)


def publish_connections(held: int | None) -> None:
    """This worker holds `held` connections and accepts more; None: it accepts none now."""
    if _worker_slot is not None:
        _page[_worker_slot * _STRIDE + _CONNECTIONS_COLUMN] = 0 if held is None else held + 1


_db_here = [0, 0]  # without a slot (tests, the dataset command): this process's counts
_db_lock = threading.Lock()  # `+=` on the page is a read and a write: threads would lose counts


def count_db(in_use: int = 0, waiting: int = 0) -> None:
    """This worker took (1) or gave back (-1) a database connection, or waits (1) for one."""
    with _db_lock:
        if _worker_slot is None:
            _db_here[0] += in_use
            _db_here[1] += waiting
            return
        base = _worker_slot * _STRIDE
        _page[base + _DB_IN_USE_COLUMN] += in_use
        _page[base + _DB_WAITING_COLUMN] += waiting


def db_connections() -> tuple[int, int]:
    """Database connections in use and requests waiting for one, on the instance."""
    if _worker_slot is None:
        return _db_here[0], _db_here[1]
    return sum(_every_slot(_DB_IN_USE_COLUMN)), sum(_every_slot(_DB_WAITING_COLUMN))


def publish_unread_bytes(held: int) -> None:
    """The kernel bytes this worker's idle connections hold in answers left unread."""
    if _worker_slot is not None:
        _page[_worker_slot * _STRIDE + _UNREAD_COLUMN] = held
    else:
        _unread_here[0] = held


_unread_here = [0]  # without a slot (one process, tests): this process's own


def unread_answer_bytes() -> int:
    """What unread answers hold on the whole instance."""
    if _worker_slot is None:
        return _unread_here[0]
    return sum(_every_slot(_UNREAD_COLUMN))


def held_bytes_of_instance() -> int:
    """What streams and unread answers hold on the instance (a Tracker's held_bytes())."""
    if _process_tracker is not None:
        return _process_tracker.held_bytes()
    return unread_answer_bytes()


def fewest_connections_elsewhere() -> int | None:
    """The fewest connections another accepting worker holds; None when no other accepts."""
    if _worker_slot is None:
        return None
    others = [
        held
        for slot, held in enumerate(_every_slot(_CONNECTIONS_COLUMN))
        if held and slot != _worker_slot
    ]
    return min(others) - 1 if others else None


def new_tracker(caps: Caps, routes: Sequence[str], clients: ClientCounts | None = None) -> Tracker:
    """The tracker of the app being built; SIGTERM reaches the latest one of this process."""
    global _process_tracker
    _process_tracker = Tracker(caps, routes, _worker_slot, clients)
    return _process_tracker


def worker_slot() -> int | None:
    """This worker's slot; None outside a worker (the master, Flask's test client)."""
    return _worker_slot


def slots_used() -> int:
    """How many slots from the first have ever been given out."""
    return _page[_SLOTS_USED]


def ended_in_this_process() -> int:
    return _process_tracker.ended_here if _process_tracker is not None else 0


def begin_shutdown(grace_s: float) -> None:
    if _process_tracker is not None:
        _process_tracker.begin_shutdown(grace_s)
