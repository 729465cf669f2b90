"""Hostile clients, and the instruments that watch a server while they attack it.

Used by tests/test_siege.py (each attack must leave /health answering and memory within the
quota) and by bench/siege.py (the same attacks, measured). Every attack is a context manager:
on entry it opens its connections and starts misbehaving, on exit it lets go of them all.
"""

import contextlib
import json
import re
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

HEALTH = b"GET /health HTTP/1.1\r\nHost: siege\r\nConnection: close\r\n\r\n"
# Cloud Foundry's health check: one probe must answer 200 within its invocation timeout.
HEALTH_BUDGET_S = 1.0


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1))
    except (OSError, AttributeError):
        return 0  # the process has just exited


def instance_rss_mib(server) -> float:
    """RSS of the gunicorn master and its workers, summed, as a container's quota sees it."""
    return sum(rss_kib(pid) for pid in [server.master_pid(), *server.worker_pids()]) / 1024


def kernel_tcp_mib() -> float:
    """Memory the kernel holds in TCP buffers, machine-wide (the quota counts the app's)."""
    with open("/proc/net/sockstat") as sockstat:
        for line in sockstat:
            if line.startswith("TCP:"):
                return int(line.split()[-1]) * 4096 / 2**20
    return 0.0


def app_socket_mib(port: int) -> float:
    """Kernel memory of the sockets whose local port is `port` (the app's side of every
    connection): `ss -tm` skmem t + w + r, in MiB."""
    out = subprocess.run(
        ["ss", "-tmnH", "state", "all", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    total = 0
    for found in re.finditer(r"skmem:\(([^)]*)\)", out):
        cells = dict(re.findall(r"([a-z]+)(\d+)", found.group(1)))
        total += sum(int(cells.get(name, 0)) for name in ("t", "w", "r"))
    return total / 2**20


def streams_in_progress(port: int) -> int | None:
    """The instance's live streams, as /health says; None if it did not answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(HEALTH)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        return json.loads(reply.partition(b"\r\n\r\n")[2])["streams_in_progress"]
    except (OSError, ValueError, KeyError):
        return None


@dataclass
class HealthReport:
    latencies_s: list = field(default_factory=list)  # None for a probe that failed

    @property
    def probes(self) -> int:
        return len(self.latencies_s)

    @property
    def answered_in_time(self) -> float:
        good = [t for t in self.latencies_s if t is not None and t < HEALTH_BUDGET_S]
        return len(good) / max(1, self.probes)

    @property
    def p99_s(self) -> float:
        answered = sorted(t if t is not None else HEALTH_BUDGET_S for t in self.latencies_s)
        if len(answered) < 2:
            return answered[0] if answered else float("nan")
        return statistics.quantiles(answered, n=100, method="inclusive")[98]


class Watch:
    """Probes /health as the platform does and samples the instance's RSS, in two threads."""

    def __init__(self, server, probe_every_s: float = 0.1):
        self.server = server
        self.probe_every_s = probe_every_s
        self.health = HealthReport()
        self.peak_rss_mib = 0.0
        self.peak_total_mib = 0.0  # RSS and the app's socket buffers, sampled together
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._probe, daemon=True),
            threading.Thread(target=self._sample, daemon=True),
        ]

    def __enter__(self) -> "Watch":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def _probe(self) -> None:
        while not self._stop.is_set():
            self.health.latencies_s.append(probe_health(self.server.port))
            self._stop.wait(self.probe_every_s)

    def _sample(self) -> None:
        sockets_mib, sockets_at = 0.0, 0.0
        while not self._stop.is_set():
            rss = instance_rss_mib(self.server)
            if time.monotonic() - sockets_at >= 1.0:
                # ss costs CPU the instance would miss: once a second, with the RSS of then.
                sockets_mib, sockets_at = app_socket_mib(self.server.port), time.monotonic()
            self.peak_rss_mib = max(self.peak_rss_mib, rss)
            self.peak_total_mib = max(self.peak_total_mib, rss + sockets_mib)
            self._stop.wait(0.2)


def probe_health(port: int) -> float | None:
    """Seconds for one /health on a fresh connection, or None if it failed or took too long."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=HEALTH_BUDGET_S) as sock:
            sock.sendall(HEALTH)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
                if time.monotonic() - started > HEALTH_BUDGET_S:
                    return None
    except OSError:
        return None
    return time.monotonic() - started if reply.startswith(b"HTTP/1.1 200") else None


def connect(port: int, rcvbuf: int | None = None, source: str | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        # Set before connecting, so the window the client advertises stays this small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if source:
        sock.bind((source, 0))  # another client: any address of 127.0.0.0/8 is this host
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


@contextlib.contextmanager
def connections(port: int, count: int, send: bytes = b"", rcvbuf: int | None = None):
    """`count` connections that send `send` (maybe nothing), then neither read nor close."""
    opened = []
    try:
        for _ in range(count):
            sock = connect(port, rcvbuf)
            if send:
                sock.sendall(send)
            opened.append(sock)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def read_start(sock: socket.socket) -> bytes:
    """The start of the answer a connection is getting, its status line at least if any."""
    start = b""
    with contextlib.suppress(OSError):
        while b"\r\n" not in start and (chunk := sock.recv(4096)):
            start += chunk
    return start


def read_status(sock: socket.socket) -> int:
    """The status of the answer a connection is getting (0 if none came)."""
    try:
        return int(read_start(sock).split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def stalled_readers(port: int, count: int, path: str):
    """Clients that ask for a stream with a tiny receive window and never read it."""
    request = f"GET {path} HTTP/1.1\r\nHost: siege\r\n\r\n".encode()
    return connections(port, count, request, rcvbuf=4096)


def partial_heads(port: int, count: int, sent: bytes = b"G"):
    """Slowloris: each connection sends the start of a request head, then nothing."""
    return connections(port, count, sent)


def silent(port: int, count: int):
    return connections(port, count)


def unread_http10(port: int, count: int, path: str = "/health"):
    """HTTP/1.0 requests whose clients never read the answer and never close."""
    return connections(port, count, f"GET {path} HTTP/1.0\r\n\r\n".encode(), rcvbuf=4096)


@contextlib.contextmanager
def downloads(port: int, count: int, path: str) -> Iterator[dict]:
    """`count` clients reading `path` as fast as they can, over and over, until released.

    They run in a process of their own, so their appetite for the GIL does not slow this
    process's /health probes. Yields, once released, the count of replies by status.
    """
    statuses: dict[int, int] = {}
    child = subprocess.Popen(
        [sys.executable, __file__, "download", str(port), path, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield statuses
    finally:
        out, _ = child.communicate("stop\n", timeout=30)
        statuses.update({int(status): n for status, n in json.loads(out or "{}").items()})


@contextlib.contextmanager
def attackers(*args: str) -> Iterator[None]:
    """This file run as a process of its own (`args` say which attack), until released: its
    appetite for the GIL then does not slow this process's /health probes."""
    child = subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        yield
    finally:
        child.communicate("stop\n", timeout=30)


def pipelined_unread(port: int, count: int, path: str, requests: int):
    """`count` connections that each pipeline `requests` GETs of `path` with a 4 KiB window
    and never read the answers; each one cut or reset is opened again at once."""
    return attackers("pipelined", str(port), path, str(count), str(requests))


def _pipeline_until_told(port: int, path: str, count: int, requests: int) -> None:
    asked = f"GET {path} HTTP/1.1\r\nHost: siege\r\n\r\n".encode() * requests
    # Told of a hang-up or a reset without reading: the answers stay unread.
    hangup = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR
    watched = select.poll()
    watched.register(sys.stdin, select.POLLIN)
    open_by_fd: dict[int, socket.socket] = {}

    def open_one() -> None:
        try:
            sock = connect(port, rcvbuf=4096)
            sock.setblocking(False)
            sock.send(asked)
        except OSError:
            return
        open_by_fd[sock.fileno()] = sock
        watched.register(sock, hangup)

    for _ in range(count):
        open_one()
    while True:
        for fd, _ in watched.poll(1000):
            if fd == sys.stdin.fileno():
                for sock in open_by_fd.values():
                    sock.close()
                return
            watched.unregister(fd)
            open_by_fd.pop(fd).close()
            open_one()
        while len(open_by_fd) < count:
            open_one()


def ghost_streams(port: int, clients: int, path: str):
    """`clients` at a time ask for a paced stream, send one more byte (as if pipelining), take
    the answer's head and close, over and over: nobody stays to read the stream."""
    return attackers("ghosts", str(port), path, str(clients))


def _run_until_told(client, count: int, stop: threading.Event) -> None:
    """`count` threads run `client` until a line on stdin says stop (they watch `stop`)."""
    threads = [threading.Thread(target=client, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    sys.stdin.readline()
    stop.set()
    for thread in threads:
        thread.join(10)


def _ghosts_until_told(port: int, path: str, clients: int) -> None:
    asked = f"GET {path} HTTP/1.1\r\nHost: siege\r\n\r\n".encode()
    stop = threading.Event()

    def haunt() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError), connect(port) as sock:
                sock.sendall(asked)
                # The head and the first block, all that comes before the pause: read whole,
                # so the close is a FIN, not the reset that unread bytes would make.
                taken = b""
                while (
                    not (b"\r\n\r\n" in taken and taken.endswith(b"\r\n"))
                    or len(taken.partition(b"\r\n\r\n")[2]) < 64
                ):
                    if not (chunk := sock.recv(65536)):
                        break
                    taken += chunk
                # Sent once the stream has started: read by nobody (the server read the head
                # and anything with it already), it waits in the socket through the pause.
                sock.sendall(b"G")
            stop.wait(0.05)

    _run_until_told(haunt, clients, stop)


def _download_until_told(port: int, path: str, count: int) -> None:
    statuses: dict[int, int] = {}
    stop = threading.Event()

    def download() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                    sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
                    first = sock.recv(65536)
                    status = int(first.split(b" ", 2)[1]) if first else 0
                    statuses[status] = statuses.get(status, 0) + 1
                    while not stop.is_set() and sock.recv(1 << 20):
                        pass
            except OSError:
                statuses[0] = statuses.get(0, 0) + 1
            stop.wait(0.2)

    _run_until_told(download, count, stop)
    print(json.dumps(statuses))


# Each attack of tests/test_siege.py, as bench/siege.py measures it too: a name, and what to
# enter for a server listening on a port.
ATTACK_S = 8.0
ATTACKS = {
    "300 clients that never read a stream of 1 MiB blocks": lambda port: stalled_readers(
        port, 300, "/streamhtml?nblocks=1024&block_size=1048576"
    ),
    "300 clients that never read SSE events of 1 MiB": lambda port: stalled_readers(
        port, 300, "/sse?nblocks=1024&block_size=1048576"
    ),
    "300 clients that never read NDJSON lines of 1 MiB": lambda port: stalled_readers(
        port, 300, "/ndjson?nblocks=1024&block_size=1048576"
    ),
    "1,600 connections that send one byte of a request head": lambda port: partial_heads(
        port, 1600
    ),
    "3,000 connections that send nothing": lambda port: silent(port, 3000),
    "10,000 connections that send nothing": lambda port: silent(port, 10_000),
    "80 HTTP/1.0 clients that never read the answer or close": lambda port: unread_http10(port, 80),
    "50 downloads of /large.csv at the default cap": lambda port: downloads(
        port, 50, "/large.csv?rows=1000000"
    ),
    "100 clients reading 16-byte blocks as fast as they can": lambda port: downloads(
        port, 100, "/streamhtml?nblocks=1048576&block_size=16"
    ),
    "100 clients scraping /metrics over and over": lambda port: downloads(port, 100, "/metrics"),
    "1,500 connections that pipeline 40 GET / each, never read, and come back when cut": (
        lambda port: pipelined_unread(port, 1500, "/", 40)
    ),
    "100 clients that ask for a paced stream, send one byte more and close, over and over": (
        lambda port: ghost_streams(port, 100, "/streamhtml?nblocks=10&block_size=64&sleep_ms=30000")
    ),
    "8,000 connections that send 16,000 bytes of a head that never ends": lambda port: (
        partial_heads(port, 8000, b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 16_000)
    ),
}


def paced_stream_completes(port: int, nblocks: int = 6, sleep_ms: int = 200) -> bool:
    """A normal client's paced stream, read to its end: does it arrive whole?"""
    path = f"/streamhtml?nblocks={nblocks}&block_size=100&sleep_ms={sleep_ms}"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
    except OSError:
        return False
    head, _, body = reply.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.0 200") and len(body) == nblocks * 100


if __name__ == "__main__":
    # The attackers' own process: siege_support.py KIND PORT PATH COUNT [REQUESTS]
    kind, port_arg, path_arg, count_arg = sys.argv[1:5]
    if kind == "download":
        _download_until_told(int(port_arg), path_arg, int(count_arg))
    elif kind == "pipelined":
        _pipeline_until_told(int(port_arg), path_arg, int(count_arg), int(sys.argv[5]))
    elif kind == "ghosts":
        _ghosts_until_told(int(port_arg), path_arg, int(count_arg))
