"""Where the per-chunk time goes: the project beside the minimal app, under the same loads.

    python bench/profile_chunks.py [--project DIR] [--seconds S]

For each server and load, py-spy samples the workers (--gil: only the thread holding the GIL,
that is, Python CPU time) and strace -c -f counts the workers' syscalls. Writes
bench/out/profile/: raw stacks, per-function summaries and syscall tables, and prints the
GIL-held CPU time and syscalls per chunk. Findings go, by hand, into bench/PROFILE.md.
"""

import argparse
import collections
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run as bench

import tools

OUT = bench.OUT / "profile"
RATE = 200  # py-spy samples per second
CURL = ["curl", "-s", "-o", "/dev/null"]
# name, block size, then (nblocks, the load's argv before its URL, requests; None: wrk counts)
# under py-spy, and the same under strace, which slows the workers down many times.
LOADS = (
    ("ab-c10", 512, (100, ["ab", "-q", "-n", "3000", "-c", "10"], 3000),
     (100, ["ab", "-q", "-n", "300", "-c", "10"], 300)),
    ("wrk-c10", 512, (100, ["wrk", "-t1", "-c10", "-d6s"], None),
     (100, ["wrk", "-t1", "-c10", "-d3s"], None)),
    ("stream-1k", 1024, (262144, CURL, 1), (16384, CURL, 1)),
)  # fmt: skip
SPY = str(Path(sys.executable).parent / "py-spy")


def spy_summary(raw: Path, chunks: int) -> list[str]:
    """Self and inclusive share of GIL samples per function, and GIL time per chunk."""
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [
            re.sub(r" \((?:.*/)?(?:site-packages/|lib/python3\.\d+/)?", " (", frame)
            for frame in stack.split(";")
            if not frame.startswith(("process ", "thread "))
        ]
        if not frames or not count.isdigit():
            continue
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    per_chunk = total / RATE / chunks * 1e6 if chunks else float("nan")
    lines = [f"GIL samples {total} at {RATE}/s: {per_chunk:.2f} µs of GIL time per chunk", ""]
    lines += ["self:"] + [f"{n / total:6.1%}  {f}" for f, n in own.most_common(30)]
    lines += ["", "inclusive:"] + [f"{n / total:6.1%}  {f}" for f, n in inclusive.most_common(60)]
    return lines


def load(label: str, server: tools.Server, size: int, how: tuple) -> int:
    """Run one load; the number of chunks it made the server send."""
    nblocks, argv, requests = how
    url = f"http://127.0.0.1:{server.port}{bench.stream_path(server.name, nblocks, size)}"
    out = tools.run(label, [*argv, url], 300)
    if requests is None:  # wrk: what it finished
        requests = int(tools.number(r"(\d+) requests in", out, 0))
    return requests * nblocks


def profile(server: tools.Server, name: str, size: int, spied: tuple, traced: tuple) -> str:
    tag = f"{server.name}-{name}"
    raw = OUT / f"{tag}.spy.txt"
    spy = subprocess.Popen(
        [SPY, "record", "--gil", "--nonblocking", "--rate", str(RATE), "--format", "raw"]
        + ["-o", str(raw), "--pid", str(server.proc.pid), "--subprocesses"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    time.sleep(1.0)  # py-spy attaches
    chunks = load(f"py-spy {tag}", server, size, spied)
    spy.send_signal(signal.SIGINT)
    spy.wait(30)
    summary = spy_summary(raw, chunks)
    (OUT / f"{tag}.spy-summary.txt").write_text("\n".join(summary) + "\n")

    # strace counts; it does not time (it slows the workers down many times).
    table = OUT / f"{tag}.strace.txt"
    pids = [arg for pid in server.workers() for arg in ("-p", str(pid))]
    strace = subprocess.Popen(["strace", "-c", "-f", "-o", str(table), *pids])
    time.sleep(1.0)
    traced_chunks = load(f"strace {tag}", server, size, traced)
    strace.send_signal(signal.SIGINT)
    strace.wait(30)
    calls = syscalls(table.read_text())
    top = ", ".join(f"{k} {v / traced_chunks:.2f}" for k, v in calls.most_common(8))
    return (
        f"{tag}: {chunks} chunks under py-spy; {summary[0]}\n"
        f"  syscalls per chunk ({traced_chunks} chunks under strace):"
        f" {sum(calls.values()) / traced_chunks:.2f} in all; {top}"
    )


def syscalls(table: str) -> collections.Counter:
    calls = collections.Counter()
    for line in table.splitlines():
        cells = line.split()
        if len(cells) >= 5 and cells[0][0].isdigit() and cells[-1] != "total":
            calls[cells[-1]] = int(cells[3])
    return calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=bench.ROOT)
    args = parser.parse_args()
    args.env, args.against = {}, None
    args.project = args.project.resolve()
    tools.APT["strace"] = "strace"
    tools.ensure_tools()
    if not Path(SPY).exists() or not tools.which("strace"):
        sys.exit("needs py-spy (bench/requirements.txt) and strace (apt-get install strace)")
    OUT.mkdir(parents=True, exist_ok=True)
    lines = []
    with tools.raw_log(OUT / "raw.log"), tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        servers = bench.start_servers(args, tmp, 0)
        try:
            for name in ("project", "minimal"):
                servers[name].log = OUT / f"{name}.log"
                servers[name].start()
                for load in LOADS:
                    lines.append(profile(servers[name], *load))
                    print(lines[-1], flush=True)
        finally:
            for server in servers.values():
                server.stop()
    (OUT / "summary.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
