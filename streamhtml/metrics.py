"""Prometheus metrics, correct across gunicorn workers.

gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a fresh temp dir before any worker starts:
each worker then keeps its counters in files there, /metrics sums them, and the files of a
recycled worker keep counting. Streams in progress are not a Prometheus gauge: they are read
at scrape time from the capacity tracker's shared page, the one place they are counted.
Without that variable (Flask's test client) the values live in this process.
"""

from __future__ import annotations

import atexit
import threading

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.values import MutexValue

from .capacity import Tracker, db_connections
from .observe import RequestRecord
from .outcomes import CLIENT_GONE, SHUTDOWN

# The classic text format: every scraper reads it, Cloud Foundry's Metric Registrar included.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# prometheus_client chose its value class from PROMETHEUS_MULTIPROC_DIR when it was imported.
MULTIPROCESS = values.ValueClass is not MutexValue
DURATION_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900)
QUEUE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


_made: dict | None = None
_making = threading.Lock()


def _metrics() -> dict:
    # Made on first use, in the worker, so each value belongs to that worker's pid; under a
    # lock, since the first requests of a worker arrive on several threads at once.
    global _made
    if _made is None:
        with _making:
            if _made is None:
                _made = _make_metrics()
    return _made


def _make_metrics() -> dict:
    return {
        "requests": Counter(
            "streamhtml_requests", "Requests answered", ["endpoint", "method", "status"]
        ),
        "bytes": Counter("streamhtml_streamed_bytes", "Body bytes sent by streams", ["endpoint"]),
        "hangups": Counter(
            "streamhtml_client_hangups", "Streams the client left before the end", ["endpoint"]
        ),
        "cut": Counter(
            "streamhtml_streams_cut_by_shutdown", "Streams cut when the grace ran out", ["endpoint"]
        ),
        "duration": Histogram(
            "streamhtml_stream_duration_seconds",
            "Time from request to the stream's end",
            ["endpoint", "outcome"],
            buckets=DURATION_BUCKETS_S,
        ),
        "queue": Histogram(
            "streamhtml_queue_seconds",
            "Time from the router's X-Request-Start to the app seeing the request",
            buckets=QUEUE_BUCKETS_S,
        ),
        "dropped": Counter(
            "streamhtml_connections_dropped",
            "Connections closed before a request was served",
            ["reason"],
        ),
        "rows": Counter("streamhtml_export_rows", "Rows sent by exports", ["endpoint"]),
        "export_errors": Counter(
            "streamhtml_export_errors",
            "Exports that failed, before their first byte (a 503) or during them",
            ["cause"],
        ),
    }


_children: dict[tuple, object] = {}
_ENDED = {CLIENT_GONE: "hangups", SHUTDOWN: "cut"}  # the counters of streams that end early

# A request's counts are added up here, and written to prometheus_client (inc(), a lock, a
# getpid() and a write to its file, 1.5 µs each) by flush_counts(): at most every 50 ms on a
# busy worker (its chores), within a second on an idle one, at each scrape for the scraping
# worker, and at the worker's exit. So /metrics is that much behind, never a request short.
_pending: dict[tuple, float] = {}
_pending_lock = threading.Lock()
_flush_at_exit = False


def _child(name: str, *labels: str):
    """metric.labels(*labels), remembered: labels() takes a lock and checks every value."""
    key = (name, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = _metrics()[name].labels(*labels)
    return child


def _count(*counts: tuple[tuple, float]) -> None:
    """Add each (key, amount) to what the next flush writes."""
    global _flush_at_exit
    with _pending_lock:
        for key, amount in counts:
            _pending[key] = _pending.get(key, 0) + amount
    if not _flush_at_exit:
        _flush_at_exit = True
        atexit.register(flush_counts)


def flush_counts() -> None:
    """Write the counts added up since the last flush to prometheus_client."""
    global _pending
    with _pending_lock:
        if not _pending:
            return
        pending, _pending = _pending, {}
    for (name, *labels), amount in pending.items():
        _child(name, *labels).inc(amount)


def observe_request(record: RequestRecord) -> None:
    """The metrics' observer of every request record."""
    endpoint = record.route_label
    requests = (("requests", endpoint, record.method_label, str(record.status)), 1)
    if record.queue_ms is not None:
        _metrics()["queue"].observe(max(0.0, record.queue_ms) / 1000.0)
    if not record.streamed:
        _count(requests)
        return
    _child("duration", endpoint, record.outcome).observe(record.duration_ms / 1000.0)
    ended = _ENDED.get(record.outcome)
    if ended:
        _count(requests, (("bytes", endpoint), record.bytes_sent), ((ended, endpoint), 1))
    else:
        _count(requests, (("bytes", endpoint), record.bytes_sent))


def connection_dropped(reason: str) -> None:
    _child("dropped", reason).inc()


def rows_exported(endpoint: str, rows: int) -> None:
    _child("rows", endpoint).inc(rows)


def export_failed(cause: str) -> None:
    """`cause` is one of a few kinds (unavailable, busy, timeout, failed, filling)."""
    _child("export_errors", cause).inc()


class _InProgress:
    """streamhtml_streams_in_progress, read from the tracker when scraped."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def collect(self):
        gauge = GaugeMetricFamily(
            "streamhtml_streams_in_progress", "Streams being sent now", labels=["endpoint"]
        )
        for route in self.tracker.routes:
            gauge.add_metric([route], self.tracker.in_progress(route))
        yield gauge
        in_use, waiting = db_connections()
        yield GaugeMetricFamily(
            "streamhtml_db_connections_in_use",
            "Database connections taken from the workers' pools now",
            value=in_use,
        )
        yield GaugeMetricFamily(
            "streamhtml_db_connections_waiting",
            "Exports waiting for a database connection now",
            value=waiting,
        )


def exposition(tracker: Tracker) -> tuple[bytes, str]:
    """The Prometheus text for /metrics, summed over every worker when there are several."""
    flush_counts()
    registry = CollectorRegistry()
    if MULTIPROCESS:
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Registered(REGISTRY))
    registry.register(_InProgress(tracker))
    return generate_latest(registry), CONTENT_TYPE


class _Registered:
    """This process's own registry, as one collector (single-process mode only)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self):
        yield from self.registry.collect()


def mark_worker_dead(pid: int) -> None:
    """child_exit, in the master: drop the dead worker's live values."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(pid)
