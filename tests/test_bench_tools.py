"""The bench's own tools still run against this tree (bench/inprocess.py)."""

import subprocess
import sys

import pytest
from support import REPO, collector_watch_env, freed_by_collector, request

INPROCESS = [sys.executable, str(REPO / "bench" / "inprocess.py"), str(REPO), "--rounds", "1"]


def test_the_in_process_harness_times_a_real_answer_here_and_in_the_minimal_app():
    done = subprocess.run(
        [*INPROCESS, "minimal", "-n", "50"], capture_output=True, text=True, timeout=120, check=True
    )
    *_, ours, minimal = done.stdout.splitlines()
    assert float(ours.split()[-2]) > 0 and float(minimal.split()[-2]) > 0, done.stdout
    assert minimal.startswith("minimal"), done.stdout


@pytest.mark.parametrize("path", ["/no-such-page", "/streamhtml?nblocks=x"])
def test_the_in_process_harness_refuses_to_time_a_request_that_failed(path):
    done = subprocess.run(
        [*INPROCESS, "-n", "50", "--path", path], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "was not answered 200" in done.stderr


# A request leaves nothing in a reference cycle, so the garbage collector has nothing to free
# and rarely runs: every object left in a cycle is traversed by a collection, and with ~33 a
# request (before 2026-12-05) collections ran every few dozen requests, about 7 µs a request.
# A path no rule matches goes through Werkzeug's matcher, whose recursive closure is one cycle
# (a function, its cells, a tuple, a set).
WERKZEUG_MATCHER_GARBAGE = 8
GARBAGE_ALLOWED = {
    "/streamhtml?nblocks=16&block_size=1024": 0,
    "/sse?nblocks=4&block_size=64": 0,
    "/ndjson?nblocks=4&block_size=64": 0,
    "/health": 0,
    "/metrics": 0,
    "/": 0,
    "/streamhtml?nblocks=x": 0,
    # Not brief: handed to a pool thread, whose part the harness runs on its own thread.
    "/streamhtml?nblocks=8&block_size=16384": 0,
    "/sse?nblocks=100&block_size=1024": 0,
    "/large.csv?rows=1000": 0,
    "/no-such-page": WERKZEUG_MATCHER_GARBAGE,
}


@pytest.mark.parametrize("path, allowed", GARBAGE_ALLOWED.items(), ids=GARBAGE_ALLOWED.keys())
def test_a_request_leaves_nothing_in_a_reference_cycle(path, allowed):
    done = subprocess.run(
        [*INPROCESS, "--garbage", "-n", "100", "--path", path],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    left = float(done.stdout.splitlines()[-1].split()[0])
    assert left <= allowed, done.stdout


# The paths a real worker serves differently: on its main loop (brief), on a pool thread
# (not brief), a bad parameter, a miss, and gunicorn's own refusal.
REAL_WORKER_PATHS = {
    "/streamhtml?nblocks=16&block_size=1024": 0,
    "/streamhtml?nblocks=8&block_size=16384": 0,
    "/sse?nblocks=4&block_size=64": 0,
    "/health": 0,
    "/metrics": 0,
    "/streamhtml?nblocks=x": 0,
    "/no-such-page": WERKZEUG_MATCHER_GARBAGE,
}


def test_a_real_worker_leaves_nothing_in_a_reference_cycle(start_server, tmp_path):
    # The harness above runs the worker's path with stand-ins for the accept, the poller and
    # the close; here a real gunicorn worker serves real connections, and its collector says
    # what it freed (objects in cycles) while it did.
    env = {**collector_watch_env(tmp_path), "WEB_CONCURRENCY": "1"}
    server = start_server(env)
    (worker,) = server.worker_pids()
    requests = 300
    for path, allowed in REAL_WORKER_PATHS.items():
        for _ in range(20):  # warm: caches, metric children, the first collections
            request(server.port, path)
        before = freed_by_collector(env, worker)
        for _ in range(requests):
            request(server.port, path)
        # Each collection frees what is unreachable then; a few requests' worth of cycles
        # may still wait for the next one.
        freed = freed_by_collector(env, worker) - before
        assert freed / requests <= allowed + 0.5, f"{path}: {freed / requests:.1f} a request"
