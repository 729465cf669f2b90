"""Capacity, slow and abandoned streams, signals: the service keeps working and cuts nothing
it should finish. Every test runs gunicorn as the Procfile does, with WEB_CONCURRENCY=2."""

import asyncio
import json
import os
import re
import signal
import socket
import statistics
import time

import pytest
from support import REPO, read_chunk, read_head, request, send_request


def proc(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/{name}") as file:
        return file.read()


def rss_kib(pid: int) -> int:
    status = proc(pid, "status")
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


def cpu_ticks(pid: int) -> int:
    fields = proc(pid, "stat").rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def manifest_memory_mib() -> int:
    found = re.search(
        r"^\s*memory:\s*(\d+)\s*(M|MB|G|GB)\s*$", (REPO / "manifest.yml").read_text(), re.M
    )
    size, unit = int(found.group(1)), found.group(2)
    return size * 1024 if unit.startswith("G") else size


def open_stream(port: int, path: str):
    """Send a request and read its head; the caller reads chunks and closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    send_request(sock, path)
    reader = sock.makefile("rb")
    return sock, reader, read_head(reader)


async def read_stream(port: int, path: str) -> list[int]:
    """One whole chunked response over asyncio; the sizes of its chunks."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise AssertionError(f"{head[:12]!r} {await reader.read(1000)!r}")
    sizes = []
    while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)) != 0:
        sizes.append(len(await reader.readexactly(size)))
        await reader.readexactly(2)
    writer.close()
    return sizes


async def health_latencies(port: int, until: asyncio.Event) -> list[float]:
    latencies = []
    while not until.is_set() and len(latencies) < 400:
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        reply = await reader.read()
        latencies.append(time.perf_counter() - started)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
        writer.close()
        await asyncio.sleep(0.05)
    return latencies


@pytest.mark.slow
def test_500_concurrent_slow_streams_complete_while_health_stays_fast(start_server):
    server = start_server()
    path = "/streamhtml?nblocks=8&block_size=1024&sleep_ms=500"
    peak_rss_kib = 0

    async def scenario():
        nonlocal peak_rss_kib
        done = asyncio.Event()
        probe = asyncio.create_task(health_latencies(server.port, done))
        streams = [asyncio.create_task(read_stream(server.port, path)) for _ in range(500)]
        while not all(task.done() for task in streams):
            pids = [server.master_pid(), *server.worker_pids()]
            peak_rss_kib = max(peak_rss_kib, sum(rss_kib(pid) for pid in pids))
            await asyncio.sleep(0.25)
        done.set()
        return await asyncio.gather(*streams), await probe

    results, latencies = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    assert all(sizes == [1024] * 8 for sizes in results)
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(f"/health during 500 streams: {len(latencies)} probes, p99 {p99 * 1000:.0f} ms")
    assert max(latencies) < 1.0, "Cloud Foundry's health check would have failed"
    assert peak_rss_kib / 1024 < manifest_memory_mib()


def test_past_capacity_a_stream_gets_503_at_once_and_health_still_answers(start_server):
    server = start_server({"STREAMHTML_MAX_STREAMS": "3"})
    held = [open_stream(server.port, "/streamhtml?nblocks=20&sleep_ms=1000") for _ in range(3)]
    try:
        started = time.monotonic()
        refused = request(server.port, "/streamhtml?nblocks=1")
        assert time.monotonic() - started < 1.0
        assert refused.status == 503
        assert refused.header("Retry-After") == "1"
        assert json.loads(refused.body)["error"] == "over capacity"
        health = request(server.port, "/health")
        assert health.status == 200
        assert json.loads(health.body)["streams_in_progress"] == 3
    finally:
        for sock, reader, _ in held:
            reader.close()
            sock.close()
    # The hung-up streams leave the count; the capacity is free again.
    deadline = time.monotonic() + 5
    while json.loads(request(server.port, "/health").body)["streams_in_progress"]:
        assert time.monotonic() < deadline, "streams still counted after the clients left"
        time.sleep(0.1)
    assert request(server.port, "/streamhtml?nblocks=1").status == 200


def test_a_killed_workers_streams_no_longer_count(start_server):
    server = start_server({"STREAMHTML_MAX_STREAMS": "2"})
    held = [open_stream(server.port, "/streamhtml?nblocks=20&sleep_ms=1000") for _ in range(2)]
    assert request(server.port, "/streamhtml?nblocks=1").status == 503
    for pid in server.worker_pids():
        os.kill(pid, signal.SIGKILL)
    for sock, reader, _ in held:
        reader.close()
        sock.close()
    deadline = time.monotonic() + 15
    while request(server.port, "/streamhtml?nblocks=1").status != 200:
        assert time.monotonic() < deadline, "capacity not freed after the workers died"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_slow_reader_gets_every_byte_in_bounded_memory(start_server):
    server = start_server()
    workers = server.worker_pids()
    before = {pid: rss_kib(pid) for pid in workers}
    total = 96 * 65536  # 6 MiB read at about 500 KB/s
    sock, reader, head = open_stream(server.port, "/streamhtml?nblocks=96&block_size=65536")
    received, peak_growth_kib = 0, 0
    with sock, reader:
        assert head.status == 200
        while (chunk := read_chunk(reader)) is not None:
            received += len(chunk)
            time.sleep(len(chunk) / 500_000)
            growth = max(rss_kib(pid) - before[pid] for pid in workers)
            peak_growth_kib = max(peak_growth_kib, growth)
    assert received == total
    print(f"worker RSS growth while a slow client read 6 MiB: {peak_growth_kib} KiB")
    assert peak_growth_kib < 16 * 1024


def test_a_hang_up_stops_all_work_for_that_stream_within_a_second(start_server):
    server = start_server({"WEB_CONCURRENCY": "1"})
    (worker,) = server.worker_pids()
    sock, reader, head = open_stream(server.port, "/streamhtml?nblocks=1000000&block_size=1024")
    read_chunk(reader)
    reader.close()
    sock.close()
    server.wait_for_request(outcome="client_gone", timeout_s=1.0)
    busy_before = cpu_ticks(worker)
    time.sleep(1.0)
    assert cpu_ticks(worker) - busy_before <= 5, "the worker kept burning CPU"


@pytest.mark.slow
def test_a_hundred_hang_ups_leak_no_threads_or_memory(start_server):
    server = start_server({"WEB_CONCURRENCY": "1"})
    (worker,) = server.worker_pids()

    def hang_up(path):
        sock, reader, _ = open_stream(server.port, path)
        read_chunk(reader)
        reader.close()
        sock.close()

    for _ in range(10):  # warm up: the thread pool and block rings are made once
        hang_up("/streamhtml?nblocks=100000&block_size=1024")
    server.wait_for_request(outcome="client_gone", count=10)
    threads_before, rss_before = thread_count(worker), rss_kib(worker)
    for number in range(100):
        # Half hang up during a pause; half while the server writes as fast as it can, with
        # far more left to send than the socket buffers hold.
        query = "nblocks=1000&sleep_ms=200" if number % 2 else "nblocks=100000"
        hang_up(f"/streamhtml?{query}&block_size=1024")
    server.wait_for_request(outcome="client_gone", count=110)  # every hang-up was noticed
    assert json.loads(request(server.port, "/health").body)["streams_in_progress"] == 0
    assert thread_count(worker) <= threads_before + 2
    assert rss_kib(worker) - rss_before < 4 * 1024


def read_until_cut(reader) -> tuple[int, bool]:
    """Chunks read, and whether the stream ended without its terminating chunk."""
    count = 0
    try:
        while read_chunk(reader) is not None:
            count += 1
    except (ConnectionError, ValueError):
        return count, True
    return count, False


@pytest.mark.slow
def test_sigterm_finishes_short_streams_cuts_long_ones_and_exits_before_sigkill(start_server):
    server = start_server()
    short = open_stream(server.port, "/streamhtml?nblocks=5&block_size=100&sleep_ms=500")
    long = open_stream(server.port, "/streamhtml?nblocks=100&block_size=100&sleep_ms=500")
    # Both heads are read: both streams are admitted and under way.
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    short_chunks, short_cut = read_until_cut(short[1])
    long_chunks, long_cut = read_until_cut(long[1])
    exit_code = server.process.wait(12)
    took = time.monotonic() - signalled
    assert (short_chunks, short_cut) == (5, False), "a stream that fit in the grace was cut"
    assert long_cut and 5 < long_chunks < 100, "the long stream was not cut cleanly"
    assert took < 10, f"exited {took:.1f} s after SIGTERM: Cloud Foundry would SIGKILL it"
    assert exit_code == 0
    assert server.requests_logged(outcome="cut_by_shutdown")
    assert "Traceback" not in server.log()
    for sock, reader, _ in (short, long):
        reader.close()
        sock.close()


def test_sighup_reloads_and_keeps_serving(start_server, tmp_path):
    server = start_server({"TMPDIR": str(tmp_path)})
    old_workers = set(server.worker_pids())
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while not (set(server.worker_pids()) - old_workers and len(server.worker_pids()) == 2):
        assert request(server.port, "/streamhtml?nblocks=2").status == 200
        assert time.monotonic() < deadline, "no new workers after SIGHUP"
        time.sleep(0.1)
    reply = request(server.port, "/streamhtml?nblocks=3&block_size=10")
    assert [len(chunk) for chunk in reply.chunks] == [10, 10, 10]
    # The reloaded configuration still removes the metrics directory the first one made.
    assert list(tmp_path.glob("streamhtml-metrics-*")), "the server keeps its metrics in TMPDIR"
    assert server.stop() == 0
    assert list(tmp_path.glob("streamhtml-metrics-*")) == []


def test_a_sigkilled_worker_is_replaced_and_service_continues(start_server):
    server = start_server()
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while victim in server.worker_pids() or len(server.worker_pids()) < 2:
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.1)
    for _ in range(10):
        assert request(server.port, "/streamhtml?nblocks=4&block_size=64").status == 200


def test_past_the_memory_budget_a_stream_gets_503_until_memory_is_given_back(start_server):
    # MEMORY_LIMIT as Cloud Foundry writes it; streams may hold half (2 MiB). A paced stream
    # of 200 KiB, more than its send buffer holds, is charged ~321 KiB
    # (docs/operations.md#memory): six fit.
    server = start_server({"MEMORY_LIMIT": "4m", "STREAMHTML_STREAM_MEMORY_PERCENT": "50"})
    path = "/streamhtml?nblocks=200&block_size=1024&sleep_ms=1000"
    held = [open_stream(server.port, path) for _ in range(6)]
    try:
        assert all(head.status == 200 for _, _, head in held)
        refused = request(server.port, path)
        assert refused.status == 503 and refused.header("Retry-After") == "1"
        assert json.loads(refused.body)["reason"] == "memory budget full"
        info = json.loads(request(server.port, "/info").body)
        assert info["limits"]["stream_memory_budget_bytes"] == 2 * 1024 * 1024
        sock, reader, _ = held.pop()
        reader.close()
        sock.close()
        deadline = time.monotonic() + 5
        while (reply := request(server.port, "/streamhtml?nblocks=1")).status != 200:
            assert time.monotonic() < deadline, reply.body
            time.sleep(0.1)
    finally:
        for sock, reader, _ in held:
            reader.close()
            sock.close()
