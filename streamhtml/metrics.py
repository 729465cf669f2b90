"""Prometheus metrics, correct across gunicorn workers.

gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a fresh temp dir before any worker starts:
each worker then keeps its values in files there, /metrics sums them, and the files of a
recycled worker keep counting (its live gauges are dropped by the master on child_exit).
Without that variable (Flask's test client) the values live in this process.
"""

import functools

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.values import MutexValue, ValueClass

from .observe import CLIENT_GONE, SHUTDOWN

# The classic text format: every scraper reads it, Cloud Foundry's Metric Registrar included.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

ENDPOINTS = ("/", "/health", "/info", "/metrics", "/streamhtml", "/large.csv")
STREAM_ENDPOINTS = ("/streamhtml", "/large.csv")
# prometheus_client chose its value class from PROMETHEUS_MULTIPROC_DIR when it was imported.
MULTIPROCESS = ValueClass is not MutexValue
DURATION_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900)


@functools.cache
def _metrics():
    # Made on first use, in the worker, so each value belongs to that worker's pid.
    return {
        "requests": Counter(
            "streamhtml_requests", "Requests answered", ["endpoint", "method", "status"]
        ),
        "bytes": Counter("streamhtml_streamed_bytes", "Body bytes sent by streams", ["endpoint"]),
        "in_progress": Gauge(
            "streamhtml_streams_in_progress",
            "Streams being sent now",
            ["endpoint"],
            multiprocess_mode="livesum",
        ),
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
    }


def endpoint_label(path: str | None) -> str:
    """A fixed set of labels: any other path is "other", so 404s cannot grow the series."""
    return path if path in ENDPOINTS else "other"


def observe_request(fields: dict) -> None:
    metric = _metrics()
    endpoint = endpoint_label(fields["path"])
    metric["requests"].labels(endpoint, fields["method"], str(fields["status"])).inc()
    if endpoint in STREAM_ENDPOINTS and fields["status"] == 200 and fields["method"] == "GET":
        metric["bytes"].labels(endpoint).inc(fields["bytes_sent"])
        metric["duration"].labels(endpoint, fields["outcome"]).observe(
            fields["duration_ms"] / 1000.0
        )
        if fields["outcome"] == CLIENT_GONE:
            metric["hangups"].labels(endpoint).inc()
        elif fields["outcome"] == SHUTDOWN:
            metric["cut"].labels(endpoint).inc()


def stream_started(endpoint: str) -> None:
    _metrics()["in_progress"].labels(endpoint_label(endpoint)).inc()


def stream_ended(endpoint: str) -> None:
    _metrics()["in_progress"].labels(endpoint_label(endpoint)).dec()


def exposition() -> tuple[bytes, str]:
    """The Prometheus text for /metrics, summed over every worker when there are several."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE
    return generate_latest(REGISTRY), CONTENT_TYPE


def mark_worker_dead(pid: int) -> None:
    """child_exit, in the master: drop the dead worker's live gauges."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(pid)
