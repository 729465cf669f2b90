"""The siege rows of `make bench`: hostile clients against the project, measured.

Uses tests/siege_support.py, the clients and instruments of tests/test_siege.py (which asserts
what these rows report). Each measurement starts the project afresh, as the Procfile does, with
MEMORY_LIMIT set to the manifest's memory as Cloud Foundry sets it:

- memory per stalled stream: N clients ask for an endless stream with a 4 KiB receive window and
  never read it; once the server's socket buffers stop growing, the instance's RSS growth and
  the kernel memory of the app's own sockets (`ss -tmn`, skmem t + w + r, local port = the
  app's), each divided by N;
- /health under each attack of siege_support.ATTACKS: probes as Cloud Foundry's health check
  sends them (a new connection every 100 ms, 1 s budget), p99 and the share answered in time,
  with the peak RSS, alone and with the app's socket buffers;
- 499 small paced streams at MEMORY_LIMIT=256M: how many are admitted;
- one client asking for 500 paced streams with STREAMHTML_MAX_STREAMS_PER_CLIENT=50: how many
  it gets, whether another client still gets its stream, and /health meanwhile.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
import siege_support as siege  # noqa: E402

STALLED_BLOCK_SIZES = (1024, 64 * 1024, 1024 * 1024)
SETTLE_MAX_S = 10.0  # the longest the socket buffers may take to fill


def manifest_memory_mib(root: Path) -> int:
    """The manifest's `memory:` in MiB (384M -> 384), without a YAML parser."""
    found = re.search(r"^\s*memory:\s*(\d+)\s*([MG])", (root / "manifest.yml").read_text(), re.M)
    return int(found.group(1)) * (1024 if found.group(2) == "G" else 1) if found else 384


class Instance:
    """What siege_support's Watch needs of a server, over the bench's Server."""

    def __init__(self, server):
        self.server = server
        self.port = server.port

    def master_pid(self) -> int:
        return self.server.proc.pid

    def worker_pids(self) -> list[int]:
        return self.server.workers()


def app_socket_kib(port: int) -> float:
    """Kernel memory of the sockets whose local port is `port`: skmem t + w + r, in KiB."""
    out = subprocess.run(
        ["ss", "-tmnH", "state", "all", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    total = 0
    for field in re.finditer(r"skmem:\(([^)]*)\)", out):
        cells = dict(re.findall(r"([a-z]+)(\d+)", field.group(1)))
        total += sum(int(cells.get(name, 0)) for name in ("t", "w", "r"))
    return total / 1024


def streams_in_progress(port: int) -> int:
    """The instance's live streams, as /metrics reports them (its tracker's count)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found = re.findall(r"^streamhtml_streams_in_progress\{[^}]*\} ([\d.]+)$", text, re.M)
    return int(sum(float(value) for value in found))


def stalled_stream_memory(start, block_size: int, clients: int) -> dict:
    """RSS and socket-buffer memory per stalled stream of `block_size` blocks, in KiB."""
    server = start()
    instance = Instance(server)
    try:
        rss_before = siege.instance_rss_mib(instance) * 1024
        sockets_before = app_socket_kib(server.port)
        nblocks = max(1, (256 << 20) // block_size)  # far more than any buffer holds
        path = f"/streamhtml?nblocks={nblocks}&block_size={block_size}"
        with siege.stalled_readers(server.port, clients, path):
            peak_rss, last, started = rss_before, -1.0, time.monotonic()
            while time.monotonic() - started < SETTLE_MAX_S:
                time.sleep(0.5)
                peak_rss = max(peak_rss, siege.instance_rss_mib(instance) * 1024)
                now = app_socket_kib(server.port)
                if now == last:
                    break
                last = now
            sockets = app_socket_kib(server.port)
            peak_rss = max(peak_rss, siege.instance_rss_mib(instance) * 1024)
            admitted = streams_in_progress(server.port)
        return {
            "rss_kib": (peak_rss - rss_before) / clients,
            "sockets_kib": (sockets - sockets_before) / clients,
            "admitted": admitted,
        }
    finally:
        server.stop()


def attack_health(start, attack, seconds: float) -> dict:
    """/health p99 (ms) and share answered within 1 s while `attack` holds."""
    server = start()
    try:
        with siege.Watch(Instance(server)) as watch, attack(server.port):
            time.sleep(seconds)
        health = watch.health
        return {
            "p99_ms": health.p99_s * 1000 if health.probes else math.nan,
            "in_time": health.answered_in_time,
            "probes": health.probes,
            "peak_rss_mib": watch.peak_rss_mib,
            "peak_total_mib": watch.peak_total_mib,
        }
    finally:
        server.stop()


SMALL_PACED = "/streamhtml?nblocks=2&block_size=256&sleep_ms=3000"


def small_paced_streams(start, count: int = 499) -> dict:
    """How many of `count` small paced streams a 256M instance admits at once."""
    server = start({"MEMORY_LIMIT": "256m"})
    asked = f"GET {SMALL_PACED} HTTP/1.1\r\nHost: b\r\n\r\n".encode()
    try:
        with siege.connections(server.port, count, asked) as held:
            statuses = [siege.read_status(sock) for sock in held]
        return {"asked": count, "admitted": statuses.count(200)}
    finally:
        server.stop()


def one_client_takes_all(start, cap: int = 50, asked_for: int = 500) -> dict:
    """One client asks for `asked_for` paced streams under a per-client cap of `cap`."""
    server = start({"STREAMHTML_MAX_STREAMS_PER_CLIENT": str(cap)})
    asked = f"GET {SMALL_PACED} HTTP/1.1\r\nHost: b\r\n\r\n".encode()
    try:
        with (
            siege.Watch(Instance(server)) as watch,
            siege.connections(server.port, asked_for, asked) as held,
        ):
            statuses = [siege.read_status(sock) for sock in held]
            with siege.connect(server.port, source="127.0.0.2") as other:
                other.sendall(asked)
                other_status = siege.read_status(other)
            time.sleep(2.0)  # /health is probed while the client holds its streams
        health = watch.health
        return {
            "cap": cap,
            "asked": asked_for,
            "admitted": statuses.count(200),
            "other_status": other_status,
            "p99_ms": health.p99_s * 1000 if health.probes else math.nan,
            "in_time": health.answered_in_time,
            "probes": health.probes,
            "peak_total_mib": watch.peak_total_mib,
        }
    finally:
        server.stop()


def measure(start, quick: bool, log) -> dict:
    """Every siege figure; `start()` returns a started project server (the bench's)."""
    clients = 50 if quick else 200
    seconds = 3.0 if quick else siege.ATTACK_S
    figures: dict = {"clients": clients, "seconds": seconds, "memory": {}, "attacks": {}}
    for size in STALLED_BLOCK_SIZES:
        result = stalled_stream_memory(start, size, clients)
        figures["memory"][size] = result
        log(f"  siege: {clients} stalled streams of {size} B blocks: {result}")
    for name, attack in siege.ATTACKS.items():
        result = attack_health(start, attack, seconds)
        figures["attacks"][name] = result
        log(f"  siege: {name}: {result}")
    figures["small_paced"] = small_paced_streams(start)
    log(f"  siege: small paced streams at 256M: {figures['small_paced']}")
    figures["per_client"] = one_client_takes_all(start)
    log(f"  siege: one client, a per-client cap: {figures['per_client']}")
    return figures


def rows(figures: dict, sweep_500: dict | None) -> list[str]:
    """The siege section of RESULTS.md."""
    clients = figures["clients"]
    lines = [
        f"Memory per stalled stream: {clients} clients ask for a stream with a 4 KiB receive"
        " window and never read it (`tests/siege_support.py` `stalled_readers`); once the app's"
        " socket buffers stop growing, the growth of the instance's RSS (master and workers)"
        " and of its sockets' kernel memory (`ss -tmn`, skmem t + w + r of the sockets whose"
        f" local port is the app's), each divided by {clients}.",
        "",
        "| block size | streams admitted | RSS per stalled stream | socket buffers per stalled"
        " stream |",
        "|---|---:|---:|---:|",
    ]
    for size, result in figures["memory"].items():
        label = f"{int(size) // 1024} KiB" if int(size) < 1 << 20 else f"{int(size) >> 20} MiB"
        lines.append(
            f"| {label} | {result.get('admitted', '–')} of {clients}"
            f" | {result['rss_kib']:,.0f} KiB | {result['sockets_kib']:,.0f} KiB |"
        )
    lines += [
        "",
        "`/health` under attack: each attack of `tests/test_siege.py` (`siege_support.ATTACKS`)"
        f" for {figures['seconds']:g} s against a fresh instance, while GET /health is sent on a"
        " new connection every 100 ms as Cloud Foundry's health check does (a probe that fails"
        " or takes 1 s counts as 1 s).",
        "",
        "| attack | /health p99 | answered within 1 s | probes | peak RSS |"
        " peak RSS + socket buffers |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in figures["attacks"].items():
        total = result.get("peak_total_mib")
        lines.append(
            f"| {name} | {result['p99_ms']:,.0f} ms | {result['in_time']:.1%}"
            f" | {result['probes']} | {result['peak_rss_mib']:.0f} MiB"
            f" | {'–' if total is None else f'{total:.0f} MiB'} |"
        )
    client = figures.get("per_client")
    if client:
        lines.append(
            f"| one client asks for {client['asked']} paced streams, "
            f"`STREAMHTML_MAX_STREAMS_PER_CLIENT={client['cap']}`: it gets {client['admitted']},"
            f" another client's stream {client['other_status']}"
            f" | {client['p99_ms']:,.0f} ms | {client['in_time']:.1%} | {client['probes']} | –"
            f" | {client['peak_total_mib']:.0f} MiB |"
        )
    if sweep_500:
        lines.append(
            "| 500 concurrent streams of 16 KiB blocks (the sweep above, wrk; median of rounds)"
            f" | {sweep_500['p99_ms']:,.0f} ms | {sweep_500['in_time']:.1%} | – | – | – |"
        )
    small = figures.get("small_paced")
    if small:
        lines += [
            "",
            f"At `MEMORY_LIMIT=256M`, {small['admitted']} of {small['asked']} concurrent paced"
            " streams of 512 bytes were admitted (`bench/siege.py` `small_paced_streams`).",
        ]
    return lines
