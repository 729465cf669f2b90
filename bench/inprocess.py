"""Per-request CPU, measured in one process: the worker's own main-loop path, no network.

Each request is the head `ab` sends, answered by StreamingWorker.answer_one (gunicorn's
parser, wsgi.create, Flask and the app, the access line and the metrics, the one sendmsg) over
a socketpair, with the caches warm; a request the main loop hands to a pool thread (a stream
that is not brief) is carried on at once on the same thread. It leaves out what only a server
does (accept, the poller, the close) and what the kernel and `ab` cost, so its figures are
lower than a server's CPU per request (bench/PROFILE.md says by how much); what it is for is
telling two trees apart. On a shared VM the wire's req/s moves by ±10 % from one minute to
the next; this, run interleaved, by a few per cent.

    .venv/bin/python bench/inprocess.py . /tmp/my-change --rounds 6   # A/B, interleaved
    .venv/bin/python bench/inprocess.py . minimal --rounds 6          # beside the baseline
    .venv/bin/python bench/inprocess.py . --profile 30                # where the time goes
    .venv/bin/python bench/inprocess.py . --garbage --path /nope      # cycles a request leaves

Give each tree as a checkout (`git worktree add /tmp/my-change`); `minimal` stands for
bench/minimal_app.py served the way gunicorn's sync worker serves it (its parser, wsgi.create,
one sendall per item; no access line), the baseline `make bench` compares against. Each
figure is the best of 5 timed batches in a fresh process; each tree's line gives the smallest
and the median over rounds.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import timeit
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from types import SimpleNamespace

HEAD = (
    b"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:8080\r\nUser-Agent: ApacheBench/2.3\r\n"
    b"Accept: */*\r\n\r\n"
)
DEFAULT_PATH = "/streamhtml?nblocks=16&block_size=1024"
BENCH = Path(__file__).resolve().parent
MINIMAL = "minimal"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", type=Path, help="project trees, or minimal")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", "--requests", type=int, default=1500, help="requests a batch")
    parser.add_argument("--path", default=DEFAULT_PATH)
    parser.add_argument("--profile", type=int, metavar="LINES", help="cProfile one tree instead")
    parser.add_argument(
        "--garbage", action="store_true", help="count what a request leaves for the collector"
    )
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child's run
    parser.add_argument("--minimal", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args()
    if args.one:
        return measure_here(args)
    if args.profile:
        return run_child(args.trees[0], args, ["--profile", str(args.profile)], show=True)
    if args.garbage:
        return run_child(args.trees[0], args, ["--garbage"], show=True)

    figures: dict[Path, list[float]] = {tree: [] for tree in args.trees}
    for round_number in range(1, args.rounds + 1):
        for tree in args.trees:
            figures[tree].append(run_child(tree, args))
        print(
            f"round {round_number}: " + ", ".join(f"{t} {f[-1]:.1f} µs" for t, f in figures.items())
        )
    print(f"\n{'tree':<40} {'best µs':>8} {'median µs':>10}")
    for tree, values in figures.items():
        print(f"{str(tree):<40} {min(values):>8.1f} {statistics.median(values):>10.1f}")
    return 0


def run_child(tree: Path, args, extra=(), show=False):
    if str(tree) == MINIMAL:
        tree, extra = BENCH, [*extra, "--minimal"]
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        str(tree.resolve()),
        "--one",
        "-n",
        str(args.requests),
        "--path",
        args.path,
        *extra,
    ]
    with tempfile.TemporaryDirectory(prefix="streamhtml-inprocess-") as metrics_dir:
        environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        done = subprocess.run(
            command, cwd=tree, env=environment, capture_output=not show, text=True
        )
    if done.returncode:
        last_line = (done.stderr or "").strip().splitlines()[-1:] or ["(see above)"]
        sys.exit(f"{tree}: the measurement failed: {last_line[0]}")
    return 0 if show else float(done.stdout.split()[-1])


def measure_here(args) -> int:
    """In a child whose cwd is the tree: build the worker's pieces and time answer_one."""
    sys.path.insert(0, os.getcwd())
    make_path = minimal_request_path if args.minimal else request_path
    answer_one, first_answer = make_path(args.path.encode())
    # The first request's one-off work (metric children, caches) is not timed; its answer is
    # checked, so a tree that fails the request cannot look fast.
    status_line = first_answer().split(b"\r\n", 1)[0]
    if args.garbage:
        return count_garbage(answer_one, args.requests, status_line)
    if not status_line.startswith(b"HTTP/1.0 200 "):
        sys.exit(f"the first request was not answered 200: {status_line!r}")
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(lambda: [answer_one() for _ in range(args.requests)])
        stats = pstats.Stats(profiler)
        print(f"{stats.total_calls / args.requests:.0f} function calls a request")
        stats.sort_stats("tottime").print_stats(args.profile)
        return 0
    # With the garbage collector on, as in a server: timeit turns it off by default, which
    # would hide the cost of every reference cycle a request leaves behind.
    batches = timeit.repeat(answer_one, "gc.enable()", number=args.requests, repeat=5)
    print(f"{min(batches) / args.requests * 1e6:.1f}")
    return 0


def count_garbage(answer_one, requests: int, status_line: bytes) -> int:
    """What each request leaves that only the garbage collector frees (objects in reference
    cycles): each costs a traversal, and enough of them a collection that stalls the worker."""
    import collections
    import gc

    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # the collector keeps what it finds, to be counted
    for _ in range(requests):
        answer_one()
    gc.collect()
    gc.set_debug(0)
    kinds = collections.Counter(type(thing).__qualname__ for thing in gc.garbage)
    print(status_line.decode("latin-1"))
    for kind, count in kinds.most_common(12):
        print(f"{count / requests:8.2f} {kind}")
    print(f"{len(gc.garbage) / requests:.2f} objects a request left for the collector")
    return 0


def request_path(path: bytes):
    """Functions that serve one request through the worker's main-loop path: the first
    returns the byte count the client got, the second those bytes."""
    from gunicorn import util
    from gunicorn.config import Config
    from gunicorn.http import message, wsgi
    from gunicorn.http.parser import RequestParser

    from app import app  # the tree's own WSGI entry
    from streamhtml import logs, observe
    from streamhtml import worker as streaming

    try:
        from streamhtml import adoption, connections
    except ImportError:  # a tree from before the worker was split by job
        adoption = connections = streaming

    cfg = Config()
    cfg.set("accesslog", "-")
    # What StreamingWorker.init_process does in a worker process (by hand in older trees).
    if hasattr(streaming, "adopt"):
        adoption.adopt(cfg)
    else:
        getattr(streaming, "_settle", lambda cfg: None)(cfg)
        wsgi.create = adoption._create
        util.http_date = adoption._http_date
        message._ip_in_allow_list = adoption._ip_in_allow_list

    log = logs.RequestLogger(cfg)  # its setup() starts the request line and the metrics
    null_fd = os.open(os.devnull, os.O_WRONLY)
    for observer in observe._observers.values():
        if isinstance(observer, logs.RequestLine):
            observer.fd = null_fd  # the line is made and written, to nowhere

    worker = object.__new__(streaming.StreamingWorker)
    worker.cfg, worker.log, worker.wsgi = cfg, log, app
    worker.nr, worker.max_requests, worker.alive = 0, sys.maxsize, True
    worker.keepalived_conns, worker.max_keepalived, worker.nr_conns = [], 100, 1
    # A request handed to the pool (a live stream that is not brief) is served at once, on
    # this thread; what the main loop does once it is over (keep-alive or close) is not run.
    worker.tpool, worker.on_pool = _AtOnce(), 0
    worker.method_queue = SimpleNamespace(defer=lambda *args: None)

    # The parser the worker's main loop makes (gunicorn's, in a tree before new_parser).
    new_parser = getattr(worker, "new_parser", partial(RequestParser, cfg))
    server_end, client_end, received = wide_socketpair()
    server_end.setblocking(False)
    head = HEAD.replace(b"{path}", path)

    def answer_one():
        conn = object.__new__(connections.Connection)
        conn.sock, conn.client, conn.server = server_end, ("127.0.0.1", 40000), ("127.0.0.1", 8080)
        conn.parser = new_parser(server_end, conn.client)
        conn.parser.unreader.unread(head)
        conn.whole_head, conn.received_at_s, conn.inline, conn.client_done = head, 0.0, False, False
        worker.answer_one(conn)
        return client_end.recv_into(received)

    def first_answer() -> bytes:
        return bytes(received[: answer_one()])

    return answer_one, first_answer


class _AtOnce:
    """A thread pool that runs what it is given at once, on the caller's thread."""

    def submit(self, function, *args):
        done: Future = Future()
        done.set_result(function(*args))
        return done


def wide_socketpair():
    """A server end and a client end whose buffers take a whole answer, and a buffer to read
    it into."""
    server_end, client_end = socket.socketpair()
    server_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    client_end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return server_end, client_end, bytearray(1 << 20)


def minimal_request_path(path: bytes):
    """As request_path, for the minimal app under gunicorn's sync worker's own steps."""
    from gunicorn.config import Config
    from gunicorn.http import wsgi
    from gunicorn.http.parser import RequestParser
    from minimal_app import app

    cfg = Config()
    server_end, client_end, received = wide_socketpair()
    head = HEAD.replace(b"{path}", path)
    client, server = ("127.0.0.1", 40000), ("127.0.0.1", 8080)

    def answer_one():
        parser = RequestParser(cfg, server_end, client)
        parser.unreader.unread(head)
        req = next(parser)
        resp, environ = wsgi.create(req, server_end, client, server, cfg)
        body = app(environ, resp.start_response)
        try:
            for item in body:
                resp.write(item)
            resp.close()
        finally:
            if hasattr(body, "close"):
                body.close()
        return client_end.recv_into(received)

    def first_answer() -> bytes:
        return bytes(received[: answer_one()])

    return answer_one, first_answer


if __name__ == "__main__":
    sys.exit(main())
