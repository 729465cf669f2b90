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


def test_a_row_falls_against_the_baseline_only_when_worse_in_every_round_and_by_enough():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from against import against_report
    finally:
        sys.path.remove(str(REPO / "bench"))

    def line_of(lines: list[str], label: str) -> str:
        return next(line for line in lines if line.startswith(f"| {label} |"))

    run = {
        "mode": {"rounds": 3},
        "seconds": 1.0,
        "loads": [0.0, 0.0],
        "facts": {"project tree": "a", "baseline tree": "b", "nproc": "2", "CPU": "x",
                  "Python": "3"},
        "data": {
            # req/s: higher is better. Worse in every round by 5 %: falls.
            "ab_c10": {"project": [95, 95, 95], "baseline": [100, 100, 100]},
            # Worse by 5 % twice, better once: the rounds disagree, it does not fall.
            "ab_c2": {"project": [95, 95, 101], "baseline": [100, 100, 100]},
            # Worse in every round, by 1 %: within what falls.
            "wrk_c10": {"project": [99, 99, 99], "baseline": [100, 100, 100]},
            # µs a request: lower is better. 3 % more in every round: falls.
            "cpu_health": {"project": [103, 103, 103], "baseline": [100, 100, 100]},
            # MiB by difference: 0.2 → 0.5 MiB is three times as much, and no fall.
            "rss_1024": {"project": [0.5, 0.5, 0.5], "baseline": [0.2, 0.2, 0.2]},
            "rss_65536": {"project": [3.0, 3.0, 3.0], "baseline": [1.0, 1.0, 1.0]},
        },
    }  # fmt: skip
    lines = against_report(run)
    assert line_of(lines, "`ab -n 2000 -c 10`, 100 × 512 B").endswith("| **falls** |")
    assert line_of(lines, "`ab -n 2000 -c 2`, 16 × 1 KiB").endswith("|  |")
    assert line_of(lines, "`wrk -c10` keep-alive, 100 × 512 B").endswith("|  |")
    assert line_of(lines, "server CPU a request, `/health`, `ab -c 2`").endswith("| **falls** |")
    assert line_of(lines, "worker RSS growth, 1 KiB blocks").endswith(
        "| +0.30 | +0.30, +0.30, +0.30 |  |"
    )
    assert line_of(lines, "worker RSS growth, 64 KiB blocks").endswith("| **falls** |")
    assert lines[-1].startswith("Rows that fell: `ab -n 2000 -c 10`")


def test_the_siege_of_two_trees_marks_less_health_in_time_or_much_more_memory():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from against import siege_against
    finally:
        sys.path.remove(str(REPO / "bench"))

    def attack(in_time: float, peak: float) -> dict:
        return {"p99_ms": 20.0, "in_time": in_time, "peak_rss_mib": peak, "peak_total_mib": peak}

    ours = {"memory": {}, "attacks": {"a": attack(0.98, 100.0), "b": attack(1.0, 150.0)}}
    theirs = {"memory": {}, "attacks": {"a": attack(1.0, 100.5), "b": attack(1.0, 120.0)}}
    marked = [line.split(" |")[0] for line in siege_against(ours, theirs) if "**worse**" in line]
    assert marked == ["| a: answered within 1 s", "| b: peak RSS", "| b: peak RSS + sockets"]
