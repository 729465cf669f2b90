"""streamhtml's benchmark: the project beside a minimal Flask app and nginx, in one run.

    python bench/run.py [--quick] [--rounds N] [--project DIR] [--env KEY=VALUE ...]

Every round starts all three servers afresh on free loopback ports and runs every workload
against each, the order of the servers alternating from round to round; ratios are taken pair
by pair within a round, then the median over rounds is reported. Writes bench/RESULTS.md,
two PNG plots beside it, and raw logs under bench/out/ (gitignored).
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import exports
import siege
import uploads
import websocket_rows
from against import against_report
from plan import (
    BENCH,
    BLOCK_SIZES,
    CPU_LOADS,
    LOAD_TESTS,
    MODES,
    OUT,
    ROOT,
    RSS_BLOCK_SIZES,
    SERVERS,
    SHAPES,
    SWEEP,
    SWEEP_BYTES,
    TREES,
    file_path,
    shape_bytes,
    shape_path,
    stream_path,
)
from report import machine, plots, project_revision, table, targets, write_results
from rss import RssWatch

import tools
from tools import (
    COMMANDS,
    Server,
    ab,
    cpu_per_request,
    curl_stream,
    ensure_tools,
    free_port,
    make_file,
    raise_fd_limit,
    ranged_get,
    sweep_point,
    which,
    wrk,
)

NGINX_CONF = """daemon off;
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type text/html;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
        location = /health {{ return 200 "ok\\n"; }}
        {upload_location}
    }}
}}
"""


def tree_server(name: str, tree: Path, env: dict, round_no: int) -> Server:
    """A project tree served as its Procfile says, on a port of its own."""
    web = re.search(r"^web:\s*(.+)$", (tree / "Procfile").read_text(), re.M).group(1)
    env = {**env, "PORT": str(free_port())}
    log = OUT / f"{name}-r{round_no}.log"
    return Server(name, ["bash", "-c", web], tree, env, int(env["PORT"]), log)


def start_servers(args, tmp: Path, round_no: int) -> dict[str, Server]:
    venv_bin = str(Path(sys.executable).parent)
    path = f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    (tmp / "www/f").mkdir(parents=True, exist_ok=True)  # compare.py starts servers here too
    project_env = {
        "PATH": path,
        "WEB_CONCURRENCY": "2",
        # nginx's files: the project's /files/ rows send the very file nginx does.
        "STREAMHTML_FILES_DIR": str(tmp / "www/f"),
        **args.env,
    }
    minimal_port, nginx_port = free_port(), free_port()
    # gunicorn's defaults, but its control socket in a directory of ours, not in $HOME.
    minimal_env = {"PATH": path, "XDG_RUNTIME_DIR": str(tmp)}
    gunicorn = [f"{venv_bin}/gunicorn", "--workers", "2", "--bind", f"127.0.0.1:{minimal_port}"]
    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(tmp=tmp, port=nginx_port, upload_location=uploads.NGINX_LOCATION)
    )
    servers = {
        "project": tree_server("project", args.project, project_env, round_no),
        "minimal": Server(
            "minimal",
            [*gunicorn, "--chdir", str(BENCH), "minimal_app:app"],
            BENCH,
            minimal_env,
            minimal_port,
            OUT / f"minimal-r{round_no}.log",
        ),
        "nginx": Server(
            "nginx",
            [which("nginx"), "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
            tmp,
            {},
            nginx_port,
            OUT / f"nginx-r{round_no}.log",
        ),
    }
    if args.against:
        # The other tree, served exactly as the project is: its own Procfile, the same settings.
        servers["baseline"] = tree_server("baseline", args.against, project_env, round_no)
    return servers


def siege_starter(args, tmp: Path, name: str = "project"):
    """A function that starts a fresh server of this tree (`name`: project, or with --against
    baseline) for each siege measurement."""
    started = [0]
    memory_mib = siege.manifest_memory_mib(args.project)

    def start(env: dict | None = None) -> Server:
        started[0] += 1
        servers = start_servers(args, tmp, 0)
        project = servers[name]
        project.env["MEMORY_LIMIT"] = f"{memory_mib}m"
        project.env.update(env or {})  # a measurement's own settings (bench/siege.py)
        project.log = OUT / f"siege-{name}-{started[0]}.log"
        project.start()
        return project

    return start


# --- workloads ------------------------------------------------------------------------------


# --- one round ------------------------------------------------------------------------------


def run_round(args, mode: dict, tmp: Path, round_no: int, data: dict) -> None:
    order = SERVERS if round_no % 2 else SERVERS[::-1]
    if args.against:
        # The two trees side by side, last, and swapped every other round: each follows the
        # same servers as often as the other. Reversing all four put the project right after
        # nginx in every other round and the baseline never; in those rounds the project's
        # CPU a request read 4-5 % over the baseline's, in the others -2 to +3 %.
        pair = ("project", "baseline") if round_no % 2 else ("baseline", "project")
        order = (*SERVERS[1:], *pair)
    # The trees that serve the project's own rows (/sse, /ndjson, static data, WebSockets).
    trees = [name for name in order if name in TREES]
    servers = start_servers(args, tmp, round_no)

    def put(figure: str, name: str, value: float) -> None:
        data.setdefault(figure, {}).setdefault(name, []).append(value)
        print(f"  {figure:<22} {name:<8} {value:,.4g}", flush=True)

    try:
        for name in order:
            if args.only and name == "minimal":
                continue
            servers[name].start()
            put("startup_s", name, servers[name].startup_s)
        if args.only != "uploads":
            file_rows(servers, order, mode["stream_bytes"], put)
        if args.only != "files":
            uploads.upload_rows(servers, order, put, RssWatch)
            for name in trees:
                websocket_rows.websocket_rows(servers[name], put)
        if args.only:
            return
        for test, nblocks, size, n, c in LOAD_TESTS:
            for name in order:
                port, path = servers[name].port, stream_path(name, nblocks, size)
                put(f"ab_{test}", name, ab(f"ab {test} {name}", port, path, n, c, nblocks * size))
            for name in order:
                port, path = servers[name].port, stream_path(name, nblocks, size)
                put(f"wrk_{test}", name, wrk(f"wrk {test} {name}", port, path, c, mode["wrk_s"]))
            for shape in SHAPES:
                for name in trees:
                    port, path = servers[name].port, shape_path(shape, nblocks, size)
                    length = shape_bytes(shape, nblocks, size)
                    put(
                        f"ab_{test}_{shape}",
                        name,
                        ab(f"ab {test} {shape} {name}", port, path, n, c, length),
                    )
                    rps = wrk(f"wrk {test} {shape} {name}", port, path, c, mode["wrk_s"])
                    put(f"wrk_{test}_{shape}", name, rps)
        _, nblocks, size, _, _ = LOAD_TESTS[1]
        for figure, _, path, options in CPU_LOADS:
            for name in order:
                where = path or stream_path(name, nblocks, size)
                label = f"cpu {figure} {name}"
                used_us, rps = cpu_per_request(label, servers[name], where, mode["cpu_n"], options)
                put(f"cpu_{figure}", name, used_us)
                put(f"cpu_{figure}_rps", name, rps)
        test, nblocks, size, n, c = LOAD_TESTS[0]
        path = stream_path("project", nblocks, size, static=True)
        for name in trees:
            rps = ab(f"ab c10 static {name}", servers[name].port, path, n, c, nblocks * size)
            put("ab_c10_static", name, rps)

        total = mode["stream_bytes"]
        for size in BLOCK_SIZES:
            for name in order:
                server, path = servers[name], stream_path(name, total // size, size)
                watch = RssWatch(server.workers() if name != "nginx" else [])
                with watch:
                    speed = curl_stream(f"stream {size} {name}", server.port, path, total)
                put(f"stream_{size}", name, speed)
                if size in RSS_BLOCK_SIZES and name != "nginx":
                    put(f"rss_{size}", name, watch.growth_mib())
        path = stream_path("project", total // 1024, 1024, static=True)
        for name in trees:
            speed = curl_stream(f"stream 1024 static {name}", servers[name].port, path, total)
            put("stream_1024_static", name, speed)

        for conns in SWEEP:
            for name in order:
                point = sweep_point(f"sweep {conns} {name}", servers[name], conns, mode["sweep_s"])
                put(f"sweep_{conns}_bytes_s", name, point["bytes_s"])
                put(f"sweep_{conns}_p50", name, point["p50"])
                put(f"sweep_{conns}_p99", name, point["p99"])
                put(f"sweep_{conns}_accepted_s", name, point["accepted_s"])
                put(f"sweep_{conns}_non2xx", name, point["non2xx"])
                put(f"sweep_{conns}_health_failed", name, point["health_failed"])
                put(f"sweep_{conns}_in_time", name, point["in_time"])
    finally:
        for name in order:
            servers[name].stop()


def file_rows(servers: dict, order, size: int, put) -> None:
    """One download of the same file from /files/ and from nginx, each server in turn, with
    the worker's RSS growth over it."""
    for name in order:
        if name == "minimal":
            continue
        server = servers[name]
        for _ in range(4):
            # Each worker's first file answer loads what it needs once (mimetypes' tables):
            # the figure is a warm server's, as the stream rows' are.
            ranged_get(server.port, file_path(name, size))
        watch = RssWatch(server.workers() if name != "nginx" else [])
        with watch:
            speed = curl_stream(f"file {name}", server.port, file_path(name, size), size)
        put("file", name, speed)
        if name != "nginx":  # a tree without /files/ has no figure
            put("rss_file", name, math.nan if math.isnan(speed) else watch.growth_mib())


# --- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds to take the median of")
    parser.add_argument("--project", type=Path, default=ROOT, help="the tree to serve")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra setting for the project, e.g. GUNICORN_THREADS=32",
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="another project tree (a `git worktree` of another commit) served beside the"
        " project in every round, its rows interleaved; writes bench/out/against.md (each row"
        " project ÷ baseline) and leaves RESULTS.md alone; no siege or exports rows",
    )
    parser.add_argument("--results", type=Path, help="default: bench/RESULTS.md")
    parser.add_argument("--note", help="a line about the project tree for RESULTS.md")
    parser.add_argument("--report", type=Path, metavar="JSON", help="only rewrite the report")
    parser.add_argument(
        "--only",
        choices=("files", "uploads", "siege"),
        help="only these rows (files: /files/ and nginx's sendfile of the same file; uploads: "
        "1 GiB to /upload and to nginx discarding it, and WebSocket messages/s; siege: the "
        "siege alone, with --against for both trees), no siege but for siege; pair it with "
        "--results elsewhere, the rest of the table is empty",
    )
    parser.add_argument(
        "--exports-only",
        action="store_true",
        help="only the exports' rows (bench/exports.py), to bench/out/exports.md",
    )
    args = parser.parse_args()
    args.env = dict(item.split("=", 1) for item in args.env)
    args.project = args.project.resolve()
    args.against = args.against.resolve() if args.against else None
    args.results = args.results or (OUT / "against.md" if args.against else BENCH / "RESULTS.md")
    mode = dict(MODES["quick" if args.quick else "full"])
    if args.rounds:
        mode["rounds"] = args.rounds

    if args.report:
        return report(args, json.loads(args.report.read_text()))
    ensure_tools()
    raise_fd_limit()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    if args.exports_only:
        exports_run = exports.measure(args.rounds or 3, OUT)
        (OUT / "exports.json").write_text(json.dumps(exports_run, indent=1))
        lines = exports.section(exports_run)
        (OUT / "exports.md").write_text("\n".join(lines))
        print("\n".join(lines))
        return 0
    with tools.raw_log(OUT / "raw.log"):
        return measure(args, mode)


def measure(args, mode: dict) -> int:
    data: dict = {}
    loads = [os.getloadavg()[0]]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="streamhtml-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for sub in ("www/f", "client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp / sub).mkdir(parents=True)
        for path in (tmp, tmp / "www", tmp / "www/f"):
            path.chmod(0o755)  # nginx's workers may run as nobody
        sizes = {nb * bs for _, nb, bs, _, _ in LOAD_TESTS} | {mode["stream_bytes"], SWEEP_BYTES}
        for size in sizes:
            make_file(tmp / "www/f" / str(size), size)
        if args.only == "siege":
            mode["rounds"] = 0  # the siege alone: what the report says was run
        for tree in filter(None, (args.project, args.against)):
            # As a first start leaves them: this machine may set PYTHONDONTWRITEBYTECODE, and a
            # tree whose modules compile on every start reads slower at start to first 200.
            served = [str(tree / name) for name in ("app.py", "gunicorn.conf.py", "streamhtml")]
            compiling = [sys.executable, "-m", "compileall", "-q", *served]
            subprocess.run(compiling, stdout=subprocess.DEVNULL, check=False)
        for round_no in range(1, mode["rounds"] + 1):
            print(f"round {round_no} of {mode['rounds']}", flush=True)
            run_round(args, mode, tmp, round_no, data)
        siege_figures: dict = {}
        baseline_siege: dict = {}
        exports_run = None
        if args.only == "siege" or not (args.only or args.against):
            print("siege", flush=True)
            siege_figures = siege.measure(siege_starter(args, tmp), args.quick, print)
        if args.only == "siege" and args.against:
            print("siege of the baseline", flush=True)
            baseline_siege = siege.measure(siege_starter(args, tmp, "baseline"), args.quick, print)
        if not (args.only or args.against):
            print("exports", flush=True)
            exports_run = exports.measure(1 if args.quick else 3, OUT)
    loads.append(os.getloadavg()[0])
    run_facts = {"mode": mode, "data": data, "commands": COMMANDS, "loads": loads}
    run_facts["siege"] = siege_figures
    run_facts["baseline_siege"] = baseline_siege
    run_facts["exports"] = exports_run
    run_facts.update(env=args.env, quick=args.quick, only=args.only)
    tree = project_revision(args.project) + (f"; {args.note}" if args.note else "")
    run_facts["facts"] = {**machine(), "project tree": tree}
    if args.against:
        run_facts["facts"]["baseline tree"] = project_revision(args.against)
    run_facts["seconds"] = time.monotonic() - started
    (OUT / "results.json").write_text(json.dumps(run_facts, indent=1))
    return report(args, run_facts)


def report(args, run: dict) -> int:
    """Print the table and write RESULTS.md and the plots from one run's figures."""
    data = run["data"]
    if "baseline tree" in run["facts"]:
        lines = against_report(run)
        args.results.write_text("\n".join(lines) + "\n")
        print("\n".join(lines) + f"\n\nwrote {args.results}")
        return 0
    lines = table(data)
    target_lines, all_must = targets(data)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    pngs = [] if run.get("only") else plots(data, args.results.parent)
    write_results(args, run, lines, target_lines, pngs)
    print("\n" + "\n".join(lines) + "\n\n" + "\n".join(target_lines))
    print(f"\n{run['seconds']:.0f} s; wrote {args.results} and {', '.join(pngs)}")
    print("every must-reach target holds" if all_must else "some must-reach target FAILS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
