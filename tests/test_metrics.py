"""/metrics: Prometheus text, summed over every gunicorn worker, kept across worker recycling."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support import read_chunk, read_head, request, scrape, send_request, wait_for_samples

PACED = "/streamhtml?nblocks=4&block_size=100&sleep_ms=100"
STREAM_OK = 'streamhtml_requests_total{endpoint="/streamhtml",method="GET",status="200"}'
BYTES = 'streamhtml_streamed_bytes_total{endpoint="/streamhtml"}'
IN_PROGRESS = 'streamhtml_streams_in_progress{endpoint="/streamhtml"}'
HANGUPS = 'streamhtml_client_hangups_total{endpoint="/streamhtml"}'


def test_counts_are_summed_over_every_worker(start_server):
    server = start_server()
    # Overlapping streams, so that gunicorn hands some to each worker.
    streams = 0
    with ThreadPoolExecutor(10) as pool:
        for _ in range(3):
            list(pool.map(lambda _: request(server.port, PACED), range(10)))
            streams += 10
            lines = server.wait_for_request(path="/streamhtml", count=streams)
            if len({line["pid"] for line in lines}) == 2:
                break
    assert len({line["pid"] for line in lines}) == 2, "both workers must have served streams"
    request(server.port, "/streamhtml?nblocks=x")
    refused = STREAM_OK.replace('"200"', '"400"')
    # A worker writes its counts at most every 50 ms, and within a second when idle.
    samples = wait_for_samples(
        server.port, lambda samples: samples.get(STREAM_OK) == streams and refused in samples
    )
    assert samples[BYTES] == streams * 400
    assert samples[refused] == 1
    durations = (
        'streamhtml_stream_duration_seconds_count{endpoint="/streamhtml",outcome="complete"}'
    )
    assert samples[durations] == streams


def test_streams_in_progress_and_hang_ups(start_server):
    server = start_server()
    held = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        send_request(sock, "/streamhtml?nblocks=50&block_size=10&sleep_ms=1000")
        reader = sock.makefile("rb")
        read_head(reader)
        read_chunk(reader)
        held.append((sock, reader))
    assert scrape(server.port)[IN_PROGRESS] == 3
    for sock, reader in held:
        reader.close()
        sock.close()
    server.wait_for_request(outcome="client_gone", count=3)
    samples = wait_for_samples(server.port, lambda samples: samples.get(HANGUPS) == 3)
    assert samples[IN_PROGRESS] == 0


def test_unknown_paths_share_one_label(start_server):
    server = start_server()
    for number in range(5):
        request(server.port, f"/no/such/path/{number}")
    unknown = 'streamhtml_requests_total{endpoint="other",method="GET",status="404"}'
    samples = wait_for_samples(server.port, lambda samples: samples.get(unknown) == 5)
    assert not any("/no/such" in name for name in samples)


def test_counts_survive_a_killed_worker(start_server):
    server = start_server()
    for _ in range(20):
        request(server.port, "/streamhtml?nblocks=1&block_size=10")
    # What a worker counted is in its file once written (within a second); what a worker
    # killed with SIGKILL had not yet written (50 ms of requests, at most) is lost.
    before = wait_for_samples(server.port, lambda samples: samples.get(STREAM_OK) == 20)[STREAM_OK]
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while victim in server.worker_pids() or len(server.worker_pids()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    samples = scrape(server.port)
    assert samples[STREAM_OK] == before == 20, "a recycled worker's counts were lost"
    assert samples.get(IN_PROGRESS, 0) == 0


def test_what_a_worker_counted_is_written_before_it_exits_gracefully(start_server):
    server = start_server({"WEB_CONCURRENCY": "1"})
    for _ in range(10):
        request(server.port, "/streamhtml?nblocks=1&block_size=10")
    [worker] = server.worker_pids()
    os.kill(worker, signal.SIGTERM)  # as a reload or a scale-down stops it, counts pending
    deadline = time.monotonic() + 15
    while worker in server.worker_pids() or not server.worker_pids():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    samples = wait_for_samples(server.port, lambda samples: samples.get(STREAM_OK, 0) >= 10)
    assert samples[STREAM_OK] == 10 and samples[BYTES] == 100


def test_a_bytes_counter_ends_in_bytes_total(server):
    request(server.port, "/streamhtml?nblocks=1")
    samples = wait_for_samples(server.port, lambda samples: BYTES in samples)
    names = {re.sub(r"\{.*", "", name) for name in samples}
    assert "streamhtml_streamed_bytes_total" in names


def test_requests_are_counted_with_the_request_log_off(start_server):
    server = start_server({"LOG_REQUESTS": "off"})
    for _ in range(3):
        request(server.port, "/streamhtml?nblocks=2&block_size=10")
    samples = wait_for_samples(server.port, lambda samples: samples.get(STREAM_OK, 0) >= 3)
    assert samples[STREAM_OK] == 3
    assert samples[BYTES] == 3 * 20
    assert not server.requests_logged(), "LOG_REQUESTS=off still wrote request lines"


def record(**changes):
    from streamhtml.observe import RequestRecord

    fields = dict(
        request_id="r",
        method="GET",
        route="/streamhtml",
        path="/streamhtml",
        query=None,
        status=200,
        bytes_sent=1000,
        duration_ms=3.0,
        outcome="complete",
        streamed=True,
        queue_ms=None,
        error=None,
        peer_addr="127.0.0.1",
        forwarded_for=None,
        forwarded_trusted=False,
        user_agent=None,
    )
    return RequestRecord(**{**fields, **changes})


# Streams that end every way, durations on and around the buckets' bounds, other routes and
# methods, gunicorn's own refusals, the router's queue time.
RECORDS = [
    *(record(duration_ms=ms) for ms in (0.0, 9.9, 10.0, 10.1, 50.0, 1000.0, 900000.0, 9e6)),
    record(outcome="client_gone", bytes_sent=10),
    record(outcome="cut_by_shutdown", route="/sse", path="/sse"),
    record(outcome="stalled", route="/ndjson", path="/ndjson"),
    record(streamed=False, route="/health", path="/health", duration_ms=0.4),
    record(streamed=False, route=None, path="/nowhere", status=404),
    record(streamed=False, method="BREW", status=405),
    record(streamed=False, route=None, status=400, error="Invalid request line"),
    record(streamed=False, route="/health", queue_ms=12.5),
    record(route="/large.csv", queue_ms=-3.0),
]


def samples_of(registry) -> dict:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in registry.collect()
        if metric.name.startswith("streamhtml_")
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def test_a_request_adds_to_the_metrics_as_prometheus_clients_own_calls_would():
    """The same records through metrics.observe_request and through the metrics' own inc()
    and observe() in a registry of their own: the same samples, route, status and outcome."""
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

    from streamhtml import metrics
    from streamhtml.outcomes import CLIENT_GONE, SHUTDOWN

    reference = CollectorRegistry()

    def made(kind, name, *args, **kwargs):
        return kind(name, *args, registry=reference, **kwargs)

    requests = made(Counter, "streamhtml_requests", "", ["endpoint", "method", "status"])
    streamed = made(Counter, "streamhtml_streamed_bytes", "", ["endpoint"])
    hangups = made(Counter, "streamhtml_client_hangups", "", ["endpoint"])
    cut = made(Counter, "streamhtml_streams_cut_by_shutdown", "", ["endpoint"])
    duration = made(
        Histogram,
        "streamhtml_stream_duration_seconds",
        "",
        ["endpoint", "outcome"],
        buckets=metrics.DURATION_BUCKETS_S,
    )
    queue = made(Histogram, "streamhtml_queue_seconds", "", buckets=metrics.QUEUE_BUCKETS_S)

    metrics.observe_request(RECORDS[0])  # the app's metrics exist before the first reading
    metrics.flush_counts()
    before = samples_of(REGISTRY)
    for _twice_so_the_remembered_values_are_used_too in range(2):
        for each in RECORDS:
            metrics.observe_request(each)
            endpoint = each.route_label
            requests.labels(endpoint, each.method_label, str(each.status)).inc()
            if each.queue_ms is not None:
                queue.observe(max(0.0, each.queue_ms) / 1000.0)
            if each.streamed:
                streamed.labels(endpoint).inc(each.bytes_sent)
                duration.labels(endpoint, each.outcome).observe(each.duration_ms / 1000.0)
                if each.outcome == CLIENT_GONE:
                    hangups.labels(endpoint).inc()
                elif each.outcome == SHUTDOWN:
                    cut.labels(endpoint).inc()
    metrics.flush_counts()  # the worker's chores, the scrape, the exit: what they write
    after = samples_of(REGISTRY)
    added = {key: value - before.get(key, 0.0) for key, value in after.items()}
    expected = samples_of(reference)
    assert {key: value for key, value in added.items() if value} == {
        key: value for key, value in expected.items() if value
    }


@pytest.mark.parametrize("multiprocess", [True, False], ids=["PROMETHEUS_MULTIPROC_DIR", "none"])
def test_the_metrics_keep_files_exactly_when_prometheus_client_chose_to(tmp_path, multiprocess):
    # metrics.MULTIPROCESS reads which value class prometheus_client chose when it was
    # imported (values.ValueClass): one that keeps files with PROMETHEUS_MULTIPROC_DIR set.
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if multiprocess:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    code = (
        "from streamhtml import metrics; metrics.connection_dropped('x'); "
        "print(metrics.MULTIPROCESS)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == [str(multiprocess)]
    assert bool(list(tmp_path.glob("counter_*.db"))) is multiprocess
