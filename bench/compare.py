"""A quick A/B for per-request work: project trees beside the minimal app, rounds interleaved.

`make bench` is the measurement of record; this is the loop for trying a change. Each round
runs the same `ab` load against every tree and the minimal app, one after another (the order
reversed every other round), so the machine's drift hits them alike; each row is the median
of the rounds and of the per-round ratios to the minimal app. CPU per request is the
server's (master and workers, from /proc).

    .venv/bin/python bench/compare.py . /tmp/my-change --rounds 6
    .venv/bin/python bench/compare.py . --path /health

Give each tree as a checkout (`git worktree add /tmp/my-change`); run it on an idle machine.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import run as bench
from report import median

import tools


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", type=Path, help="project trees to serve")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", "--requests", type=int, default=3000, help="ab requests a round")
    parser.add_argument("--path", default="/streamhtml?nblocks=16&block_size=1024")
    parser.add_argument("--ab", default="-c 2", help="ab's options, e.g. '-k -c 2'")
    args = parser.parse_args()

    tools.ensure_tools()
    tools.raise_fd_limit()
    bench.OUT.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="streamhtml-compare-") as tmp_name,
        tools.raw_log(bench.OUT / "compare.log"),
    ):
        results = measure(args, Path(tmp_name))

    base = [rps for rps, _ in results["minimal app"]]
    print(f"\n{'server':<40} {'req/s':>7} {'CPU µs/req':>10} {'÷ minimal':>9}  per round")
    for name, rows in results.items():
        # A round whose ab run failed is nan; median leaves it out, as make bench does.
        ratios = [rps / base_rps for (rps, _), base_rps in zip(rows, base, strict=True)]
        print(
            f"{name:<40} {median(r for r, _ in rows):>7.0f}"
            f" {median(c for _, c in rows):>10.0f}"
            f" {median(ratios):>9.2f}  {' '.join(f'{r:.2f}' for r in ratios)}"
        )
    return 0


def measure(args, tmp: Path) -> dict[str, list[tuple[float, float]]]:
    """(req/s, CPU µs a request) of each server, a pair a round."""
    servers: dict[str, tools.Server] = {}
    for index, tree in enumerate(args.trees):
        served = argparse.Namespace(project=tree.resolve(), env={}, against=None)
        started = bench.start_servers(served, tmp, 0)
        project = started["project"]
        project.log = bench.OUT / f"compare-{index}.log"
        servers[f"{index}: {tree}"] = project
    servers["minimal app"] = started["minimal"]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
    try:
        for server in servers.values():
            server.start()
        for round_no in range(1, args.rounds + 1):
            # Reversed every other round, as make bench does: the tree run first in every
            # round read some 5 % more CPU a request than the same tree run last.
            order = list(servers.items())
            for name, server in order if round_no % 2 else order[::-1]:
                cpu_us, rps = tools.cpu_per_request(
                    name, server, args.path, args.requests, args.ab.split()
                )
                results[name].append((rps, cpu_us))
            line = ", ".join(f"{name} {rows[-1][0]:.0f} req/s" for name, rows in results.items())
            print(f"round {round_no}: {line}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return results


if __name__ == "__main__":
    sys.exit(main())
