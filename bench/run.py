"""streamhtml's benchmark: the project beside a minimal Flask app and nginx, in one run.

    python bench/run.py [--quick] [--rounds N] [--project DIR] [--env KEY=VALUE ...]

Every round starts all three servers afresh on free loopback ports and runs every workload
against each, the order of the servers alternating from round to round; ratios are taken pair
by pair within a round, then the median over rounds is reported. Writes bench/RESULTS.md,
two PNG plots beside it, and raw logs under bench/out/ (gitignored).
"""

import argparse
import http.client
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import exports
import siege
import uploads
import websocket_rows
from rss import RssWatch, worker_pids

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
MIB = 1 << 20
SERVERS = ("project", "minimal", "nginx")

# The sample's two load tests: (name, nblocks, block_size, ab requests, concurrency).
LOAD_TESTS = (("c10", 100, 512, 2000, 10), ("c2", 16, 1024, 2000, 2))
# The same load tests on the project's other stream shapes (it alone serves them): a block is
# one event or one line.
SHAPES = ("sse", "ndjson")
BLOCK_SIZES = (1024, 4096, 16384, 65536, 262144)
RSS_BLOCK_SIZES = (1024, 65536)
SWEEP = (1, 10, 100, 500)
SWEEP_BLOCK = 16384
SWEEP_BYTES = 16 * MIB  # each stream of the sweep; wrk asks again when one ends
HEALTH_TIMEOUT_S = 5.0
RAMP_MAX_S = 4.0  # the longest the sweep waits for the server to accept every stream
MODES = {
    "full": {"rounds": 5, "wrk_s": 3, "stream_bytes": 256 * MIB, "sweep_s": 3, "cpu_n": 5000},
    "quick": {"rounds": 1, "wrk_s": 2, "stream_bytes": 64 * MIB, "sweep_s": 2, "cpu_n": 2000},
}
# CPU per request: (figure, label, path for the project and the minimal app, ab's options).
# ab speaks HTTP/1.0: a connection a request, unless -k keeps it alive.
CPU_LOADS = (
    ("health", "`/health`, `ab -c 2`", "/health", ["-c", "2"]),
    ("c2", "16 × 1 KiB, `ab -c 2` (HTTP/1.0)", None, ["-c", "2"]),
    ("c2_keepalive", "16 × 1 KiB, `ab -k -c 2` (keep-alive)", None, ["-k", "-c", "2"]),
)
APT = {"wrk": "wrk", "ab": "apache2-utils", "nginx": "nginx-light", "curl": "curl"}

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

RAW = None  # the raw log, opened in main()
COMMANDS: dict[str, str] = {}  # label -> the first command line run under it


# --- set-up ---------------------------------------------------------------------------------


def ensure_tools() -> None:
    """Install the Debian tools and the bench's Python requirements that are missing."""
    missing = [pkg for tool, pkg in APT.items() if not which(tool)]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        print(f"installing {' '.join(missing)} from Debian", flush=True)
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *missing], check=True)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("installing bench/requirements.txt", flush=True)
        pip = [sys.executable, "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "-r", str(BENCH / "requirements.txt")], check=True)


def which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))  # the project binds 0.0.0.0, so the port must be free there
        return s.getsockname()[1]


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def make_file(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    letters = bytes(b"abcdefghijklmnopqrstuvwxyz"[b % 26] for b in os.urandom(MIB))
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(letters)
        f.write(letters[: size % MIB])
    path.chmod(0o644)


# --- processes ------------------------------------------------------------------------------


def log_command(label: str, argv: list[str], prefix: str = "") -> None:
    line = prefix + shlex.join(argv)
    COMMANDS.setdefault(label, line)
    RAW.write(f"\n$ {line}\n")
    RAW.flush()


def run(label: str, argv: list[str], timeout: float) -> str:
    log_command(label, argv)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    RAW.write(done.stdout + done.stderr)
    return done.stdout


def http_get(port: int, path: str, timeout: float) -> tuple[int, float]:
    """(status, seconds) of one GET on a new connection; status 0 on a timeout or error."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        conn.close()
    return status, time.perf_counter() - started


def ranged_get(port: int, path: str) -> None:
    """One GET of the first byte of `path`, on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Range": "bytes=0-0"})
        conn.getresponse().read()
    except OSError:
        pass
    finally:
        conn.close()


class Server:
    """One server in its own process group, its output in a file; stopped by its PID."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict, port: int, log: Path):
        self.name, self.argv, self.cwd, self.env, self.port, self.log = (
            name,
            argv,
            cwd,
            env,
            port,
            log,
        )
        self.proc: subprocess.Popen | None = None
        self.startup_s = math.nan

    def start(self) -> None:
        env_text = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items() if k != "PATH")
        if "PATH" in self.env:
            env_text = f"PATH={self.env['PATH'].split(':')[0]}:$PATH {env_text}"
        log_command(f"start {self.name}", self.argv, f"cd {self.cwd} && env {env_text} ")
        with open(self.log, "ab") as out:
            started = time.perf_counter()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.startup_s = self.wait_healthy(started, 30.0)

    def wait_healthy(self, started: float, limit_s: float) -> float:
        while time.perf_counter() - started < limit_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: see {self.log}")
            if http_get(self.port, "/health", 1.0)[0] == 200:
                return time.perf_counter() - started
            time.sleep(0.01)
        raise RuntimeError(f"{self.name} not healthy after {limit_s} s: see {self.log}")

    def workers(self) -> list[int]:
        """The master's children; the master is the child of bash if bash did not exec."""
        return worker_pids(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def start_servers(args, tmp: Path, round_no: int) -> dict[str, Server]:
    venv_bin = str(Path(sys.executable).parent)
    path = f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    web = re.search(r"^web:\s*(.+)$", (args.project / "Procfile").read_text(), re.M).group(1)
    (tmp / "www/f").mkdir(parents=True, exist_ok=True)  # compare.py starts servers here too
    project_env = {
        "PATH": path,
        "PORT": str(free_port()),
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
        "project": Server(
            "project",
            ["bash", "-c", web],
            args.project,
            project_env,
            int(project_env["PORT"]),
            OUT / f"project-r{round_no}.log",
        ),
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
    return servers


def siege_starter(args, tmp: Path):
    """A function that starts a fresh project server for each siege measurement."""
    started = [0]
    memory_mib = siege.manifest_memory_mib(args.project)

    def start(env: dict | None = None) -> Server:
        started[0] += 1
        servers = start_servers(args, tmp, 0)
        project = servers["project"]
        project.env["MEMORY_LIMIT"] = f"{memory_mib}m"
        project.env.update(env or {})  # a measurement's own settings (bench/siege.py)
        project.log = OUT / f"siege-{started[0]}.log"
        project.start()
        return project

    return start


# --- workloads ------------------------------------------------------------------------------


def stream_path(name: str, nblocks: int, block_size: int, static: bool = False) -> str:
    if name == "nginx":
        return f"/f/{nblocks * block_size}"
    return f"/streamhtml?nblocks={nblocks}&block_size={block_size}" + (
        "&use_static_data=1" if static else ""
    )


def file_path(name: str, size: int) -> str:
    """The same file of `size` bytes: through /files/ (send_from_directory and sendfile), or
    nginx's static file (sendfile on)."""
    return f"/f/{size}" if name == "nginx" else f"/files/{size}"


def shape_path(shape: str, nblocks: int, block_size: int) -> str:
    return f"/{shape}?nblocks={nblocks}&block_size={block_size}"


def shape_bytes(shape: str, nblocks: int, block_size: int) -> int:
    """The body's length, for ab's check: an NDJSON line is block_size bytes; an SSE event is
    its block_size letters in `id: k`, `event: block`, `data:` lines, after `retry: 1000`."""
    if shape == "ndjson":
        return nblocks * block_size
    framing = sum(len(f"id: {k}\nevent: block\ndata: \n\n") for k in range(1, nblocks + 1))
    return len("retry: 1000\n\n") + framing + nblocks * block_size


def number(pattern: str, text: str, default: float = math.nan) -> float:
    found = re.search(pattern, text)
    return float(found.group(1)) if found else default


def ab(label: str, port: int, path: str, n: int, c: int, length: int) -> float:
    out = run(
        label, ["ab", "-q", "-n", str(n), "-c", str(c), f"http://127.0.0.1:{port}{path}"], 300
    )
    ok = (
        number(r"Complete requests:\s+(\d+)", out) == n
        and number(r"Failed requests:\s+(\d+)", out) == 0
        and number(r"Non-2xx responses:\s+(\d+)", out, 0) == 0
        and number(r"Document Length:\s+(\d+)", out) == length
    )
    return number(r"Requests per second:\s+([\d.]+)", out) if ok else math.nan


WRK_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def parse_wrk(out: str) -> dict:
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": number(r"Requests/sec:\s+([\d.]+)", out),
        "bytes_s": float(transfer.group(1)) * WRK_UNITS[transfer.group(2)]
        if transfer
        else math.nan,
        "non2xx": int(number(r"Non-2xx or 3xx responses: (\d+)", out, 0)),
        "errors": sum(int(e) for e in errors.groups()) if errors else 0,
    }


def process_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far, every thread of each included."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def cpu_per_request(label: str, server: "Server", path: str, n: int, options: list[str]):
    """(µs of the server's CPU a request, req/s) over `n` requests of ab; nan when any failed.

    A /health body's length varies with the worker's pid, so ab's length check is not used:
    every answer must be a 2xx and none may fail."""
    pids = [server.proc.pid, *server.workers()]
    before = process_cpu_s(pids)
    url = f"http://127.0.0.1:{server.port}{path}"
    out = run(label, ["ab", "-q", "-n", str(n), *options, url], 300)
    used_s = process_cpu_s(pids) - before
    ok = (
        number(r"Complete requests:\s+(\d+)", out) == n
        and number(r"Non-2xx responses:\s+(\d+)", out, 0) == 0
        and number(r"Failed requests:\s+(\d+)", out) - number(r"Length: (\d+)", out, 0) == 0
        and number(r"Exceptions: (\d+)", out, 0) == 0
    )
    rps = number(r"Requests per second:\s+([\d.]+)", out)
    return (used_s / n * 1e6, rps) if ok else (math.nan, math.nan)


def wrk_argv(port: int, path: str, conns: int, seconds: float) -> list[str]:
    url = f"http://127.0.0.1:{port}{path}"
    return ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", url]


def wrk(label: str, port: int, path: str, conns: int, seconds: float) -> float:
    result = parse_wrk(run(label, wrk_argv(port, path, conns, seconds), seconds + 60))
    return result["rps"] if result["non2xx"] == 0 and result["errors"] == 0 else math.nan


def curl_stream(label: str, port: int, path: str, length: int) -> float:
    argv = [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        "300",
        "-w",
        "%{http_code} %{size_download} %{speed_download}",
        f"http://127.0.0.1:{port}{path}",
    ]
    code, size, speed = (run(label, argv, 330).split() + ["0", "0", "nan"])[:3]
    return float(speed) if code == "200" and int(size) == length else math.nan


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)] if ordered else math.nan


class HealthProbes:
    """GET /health every 20 ms, each on a new connection in its own thread, so a slow answer
    does not delay the next probe (an open loop: the figure is the latency a health checker
    sees, not the rate one client could get). Bounded: one probe per tick, each with a timeout.
    """

    def __init__(self, port: int, seconds: float):
        self.port, self.seconds = port, seconds
        self.results: list[tuple[int, float]] = []

    def _probe(self) -> None:
        self.results.append(http_get(self.port, "/health", HEALTH_TIMEOUT_S))

    def run(self) -> tuple[list[float], int]:
        threads = []
        for _ in range(int(self.seconds / 0.02)):
            thread = threading.Thread(target=self._probe, daemon=True)
            thread.start()
            threads.append(thread)
            time.sleep(0.02)
        for thread in threads:
            thread.join(HEALTH_TIMEOUT_S + 5)
        failed = sum(status != 200 for status, _ in self.results)
        # A failed probe counts as the timeout: it is no faster than that for a health checker.
        return [t if s == 200 else max(t, HEALTH_TIMEOUT_S) for s, t in self.results], failed


def accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the socket listening on `port`."""
    waiting = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cells = line.split()
            if cells[3] == "0A" and int(cells[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                waiting += int(cells[4].split(":")[1], 16)
    return waiting


def sweep_point(label: str, server: Server, conns: int, seconds: float) -> dict:
    """`conns` streams at once through wrk; once the server has accepted them all (or after
    RAMP_MAX_S), /health probes (HealthProbes) for `seconds`; then wrk is stopped."""
    path = stream_path(server.name, SWEEP_BYTES // SWEEP_BLOCK, SWEEP_BLOCK)
    argv = wrk_argv(server.port, path, conns, int(RAMP_MAX_S + seconds + 10))
    log_command(label, argv)
    started = time.perf_counter()
    load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)  # wrk connects
        accepted_s, calm = math.nan, 0
        while time.perf_counter() - started < RAMP_MAX_S and calm < 3:
            calm = calm + 1 if accept_queue(server.port) == 0 else 0
            time.sleep(0.05)
        if calm >= 3:
            accepted_s = time.perf_counter() - started - 0.1
        latencies, failed = HealthProbes(server.port, seconds).run()
        load.send_signal(signal.SIGINT)  # wrk stops and reports
        out = load.communicate(timeout=30)[0]
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    RAW.write(out + f"health: n={len(latencies)} failed={failed} accepted_s={accepted_s}\n")
    result = parse_wrk(out)
    result.update(p50=percentile(latencies, 0.5), p99=percentile(latencies, 0.99))
    result["in_time"] = sum(t < 1.0 for t in latencies) / len(latencies) if latencies else 0.0
    result.update(health_failed=failed, accepted_s=accepted_s)
    server.wait_healthy(time.perf_counter(), 60.0)  # the next figure starts from a calm server
    return result


# --- one round ------------------------------------------------------------------------------


def run_round(args, mode: dict, tmp: Path, round_no: int, data: dict) -> None:
    order = SERVERS if round_no % 2 else SERVERS[::-1]
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
            websocket_rows.websocket_rows(servers, put)
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
                port, path = servers["project"].port, shape_path(shape, nblocks, size)
                length = shape_bytes(shape, nblocks, size)
                put(
                    f"ab_{test}_{shape}",
                    "project",
                    ab(f"ab {test} {shape}", port, path, n, c, length),
                )
                rps = wrk(f"wrk {test} {shape}", port, path, c, mode["wrk_s"])
                put(f"wrk_{test}_{shape}", "project", rps)
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
        rps = ab("ab c10 static", servers["project"].port, path, n, c, nblocks * size)
        put("ab_c10_static", "project", rps)

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
        speed = curl_stream("stream 1024 static", servers["project"].port, path, total)
        put("stream_1024_static", "project", speed)

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
        if name != "nginx":
            put("rss_file", name, watch.growth_mib())


# --- summary --------------------------------------------------------------------------------


def median(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def ratios(data: dict, figure: str, base: str, top_figure: str | None = None) -> list[float]:
    """project/base in each round, each pair taken within that round."""
    tops = data.get(top_figure or figure, {}).get("project", [])
    bases = data.get(figure, {}).get(base, [])
    return [t / b for t, b in zip(tops, bases) if b and not math.isnan(t * b)]


def ratio(data: dict, figure: str, base: str, top_figure: str | None = None) -> float:
    return median(ratios(data, figure, base, top_figure))


def invalid(data: dict, figure: str) -> int:
    return sum(math.isnan(v) for values in data.get(figure, {}).values() for v in values)


ROWS = (
    # (figure, label, unit, scale, the project's figure when it differs: static data)
    ("ab_c10", "`ab -n 2000 -c 10`, 100 × 512 B", "req/s", 1, None),
    ("ab_c2", "`ab -n 2000 -c 2`, 16 × 1 KiB", "req/s", 1, None),
    ("wrk_c10", "`wrk -c10` keep-alive, 100 × 512 B", "req/s", 1, None),
    ("wrk_c2", "`wrk -c2` keep-alive, 16 × 1 KiB", "req/s", 1, None),
    ("cpu_health_rps", "`ab -c 2` /health (the CPU run)", "req/s", 1, None),
    ("cpu_c2_keepalive_rps", "`ab -k -c 2` keep-alive, 16 × 1 KiB (the CPU run)", "req/s", 1, None),
    # /sse and /ndjson: the project alone serves them; ratios are to the /streamhtml figures.
    ("ab_c10", "`ab -n 2000 -c 10` /sse, 100 events × 512 B", "req/s", 1, "ab_c10_sse"),
    ("ab_c10", "`ab -n 2000 -c 10` /ndjson, 100 lines × 512 B", "req/s", 1, "ab_c10_ndjson"),
    ("ab_c2", "`ab -n 2000 -c 2` /sse, 16 events × 1 KiB", "req/s", 1, "ab_c2_sse"),
    ("ab_c2", "`ab -n 2000 -c 2` /ndjson, 16 lines × 1 KiB", "req/s", 1, "ab_c2_ndjson"),
    ("wrk_c10", "`wrk -c10` keep-alive /sse, 100 events × 512 B", "req/s", 1, "wrk_c10_sse"),
    ("wrk_c10", "`wrk -c10` keep-alive /ndjson, 100 lines × 512 B", "req/s", 1, "wrk_c10_ndjson"),
    ("wrk_c2", "`wrk -c2` keep-alive /sse, 16 events × 1 KiB", "req/s", 1, "wrk_c2_sse"),
    ("wrk_c2", "`wrk -c2` keep-alive /ndjson, 16 lines × 1 KiB", "req/s", 1, "wrk_c2_ndjson"),
    ("ab_c10", "`ab -c 10` with use_static_data=1", "req/s", 1, "ab_c10_static"),
    *(
        (f"stream_{s}", f"one stream, {s // 1024} KiB blocks", "MiB/s", MIB, None)
        for s in BLOCK_SIZES
    ),
    ("stream_1024", "one stream, 1 KiB, use_static_data=1", "MiB/s", MIB, "stream_1024_static"),
    ("file", "one file from /files/ (sendfile)", "MiB/s", MIB, None),
    ("rss_file", "worker RSS growth, one file from /files/", "MiB", 1, None),
    *uploads.ROWS,
    *websocket_rows.ROWS,
    *(
        (f"rss_{s}", f"worker RSS growth, {s // 1024} KiB blocks", "MiB", 1, None)
        for s in RSS_BLOCK_SIZES
    ),
    *(
        row
        for n in SWEEP
        for row in (
            (f"sweep_{n}_bytes_s", f"{n} streams at once, total", "MiB/s", MIB, None),
            (f"sweep_{n}_p50", f"{n} streams: /health p50", "ms", 1e-3, None),
            (f"sweep_{n}_p99", f"{n} streams: /health p99", "ms", 1e-3, None),
            (f"sweep_{n}_accepted_s", f"{n} streams: all accepted after", "s", 1, None),
        )
    ),
    ("startup_s", "start to first 200 on /health", "s", 1, None),
)


def accepted(values: list[float]) -> str:
    late = [RAMP_MAX_S * 2 if math.isnan(v) else v for v in values]
    value = statistics.median(late) if late else math.nan
    return f"> {RAMP_MAX_S:g}" if value > RAMP_MAX_S else fmt(value, "s")


def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "–"
    if unit in ("s", "MiB"):
        return f"{value:.2f}"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def table(data: dict) -> list[str]:
    lines = [
        "| figure | unit | project | minimal app | nginx | project ÷ minimal | project ÷ nginx |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for figure, label, unit, scale, top_figure in ROWS:
        top = top_figure or figure
        cells = [fmt(median(data.get(top, {}).get("project", [])) / scale, unit)]
        for name in ("minimal", "nginx"):
            cells.append(fmt(median(data.get(figure, {}).get(name, [])) / scale, unit))
        if "accepted" in figure:  # a round that never accepted them all counts as the longest
            cells = [accepted(data.get(figure, {}).get(name, [])) for name in SERVERS]
        by_minimal = by_nginx = math.nan
        if unit not in ("MiB", "ms", "s"):  # a ratio of memory or latency figures says little
            by_minimal = ratio(data, figure, "minimal", top_figure=top)
            by_nginx = ratio(data, figure, "nginx", top_figure=top)
        flag = " (!)" if invalid(data, top) and "accepted" not in top else ""
        lines.append(
            f"| {label}{flag} | {unit} | {' | '.join(cells)} | {fmt(by_minimal, 'x')}"
            f" | {fmt(by_nginx, 'x')} |"
        )
    return lines


def cpu_table(data: dict, requests: int) -> list[str]:
    """µs of CPU per request, median of rounds; each round's figures beside the medians."""
    lines = [
        "| load | project | minimal app | nginx | project, each round | minimal app, each round |",
        "|---|---:|---:|---:|---|---|",
    ]
    for figure, label, _, _ in CPU_LOADS:
        values = data.get(f"cpu_{figure}", {})
        cells = [fmt(median(values.get(name, [])), "µs") for name in SERVERS]
        each = [", ".join(f"{v:.0f}" for v in values.get(name, [])) for name in SERVERS[:2]]
        lines.append(f"| {label} | {' | '.join(cells)} | {each[0]} | {each[1]} |")
    return lines


def verdict(value: float, limit: float | None, sense: str) -> str:
    if limit is None:
        return "–"
    if math.isnan(value):
        return "FAIL (no figure)"
    return "PASS" if (value >= limit if sense == "≥" else value <= limit) else "FAIL"


def targets(data: dict) -> tuple[list[str], bool]:
    """The issue's table: the median decides; every round's figure is shown beside it."""

    def project(figure: str, scale: float = 1) -> list[float]:
        return [v * scale for v in data.get(figure, {}).get("project", [])]

    rss = [max(pair) for pair in zip(*(project(f"rss_{s}") for s in RSS_BLOCK_SIZES))]
    rows = (
        ("the sample's `ab` test, req/s ÷ minimal app", ratios(data, "ab_c10", "minimal"),
         0.9, 1.0, "≥", "×"),
        ("one stream of 1 KiB blocks, bytes/s ÷ minimal app",
         ratios(data, "stream_1024", "minimal"), 0.9, 1.0, "≥", "×"),
        ("one stream of 64 KiB blocks, bytes/s ÷ nginx", ratios(data, "stream_65536", "nginx"),
         0.8, 0.9, "≥", "×"),
        ("worker RSS growth over one stream (1 and 64 KiB blocks)", rss, 8.0, 2.0, "≤", " MiB"),
        ("one file from /files/ (256 MiB), bytes/s ÷ nginx's sendfile",
         ratios(data, "file", "nginx"), 0.85, 0.95, "≥", "×"),
        ("worker RSS growth over one file from /files/", project("rss_file"), 8.0, 2.0, "≤",
         " MiB"),
        ("500 concurrent streams, /health p99", project("sweep_500_p99", 1000), 1000, 100,
         "≤", " ms"),
        ("start to healthy", project("startup_s"), None, 1.0, "≤", " s"),
        ("`ab -n 2000 -c 2`, 16 × 1 KiB, req/s ÷ minimal app (per-request cost)",
         ratios(data, "ab_c2", "minimal"), 1.3, 1.6, "≥", "×"),
        ("`/health`, `ab -c 2`, req/s ÷ minimal app's `/health`",
         ratios(data, "cpu_health_rps", "minimal"), None, 1.3, "≥", "×"),
    )  # fmt: skip
    lines = [
        "| figure | median | each round | must reach | aim | must | aim |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    all_must = True
    for label, values, must, aim, sense, unit in rows:
        value = median(values)
        all_must = all_must and verdict(value, must, sense) in ("PASS", "–")
        shown = "–" if math.isnan(value) else f"{value:.3g}{unit}"
        each = ", ".join(f"{v:.3g}" for v in values)
        must_text = "" if must is None else f"{sense} {must:g}{unit}"
        lines.append(
            f"| {label} | {shown} | {each} | {must_text} | {sense} {aim:g}{unit}"
            f" | {verdict(value, must, sense)} | {verdict(value, aim, sense)} |"
        )
    return lines, all_must


def plots(data: dict, where: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"project": "streamhtml", "minimal": "minimal Flask app (sync)", "nginx": "nginx"}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    names_here = {**names, "nginx": "nginx, the same bytes as a static file (sendfile)"}
    for name in SERVERS:
        ys = [median(data.get(f"stream_{s}", {}).get(name, [])) / MIB for s in BLOCK_SIZES]
        ax.plot([s // 1024 for s in BLOCK_SIZES], ys, marker="o", label=names_here[name])
    ax.set(
        xscale="log",
        xlabel="block size, KiB",
        ylabel="MiB/s, one stream",
        title="One stream: throughput against block size (median of rounds)",
    )
    ax.set_xticks([s // 1024 for s in BLOCK_SIZES], [str(s // 1024) for s in BLOCK_SIZES])
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(where / "throughput_by_block_size.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in SERVERS:
        ys = [median(data.get(f"sweep_{n}_p99", {}).get(name, [])) * 1000 for n in SWEEP]
        ax.plot(SWEEP, ys, marker="o", label=names[name])
    ax.axhline(HEALTH_TIMEOUT_S * 1000, color="red", linestyle=":", label="probe timeout")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent streams (wrk -c)",
        ylabel="/health p99, ms",
        title="/health p99 while streams run (median of rounds)",
    )
    ax.set_xticks(SWEEP, [str(n) for n in SWEEP])
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(where / "health_p99_by_concurrency.png", dpi=110)
    plt.close(fig)
    return ["throughput_by_block_size.png", "health_p99_by_concurrency.png"]


def output_of(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (done.stdout + done.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def machine() -> dict:
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return {
        "nproc": output_of(["nproc"]),
        "CPU": cpu.group(1) if cpu else "?",
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "gunicorn": importlib.metadata.version("gunicorn"),
        "Flask": importlib.metadata.version("flask"),
        "nginx": output_of([which("nginx") or "nginx", "-v"]),
        "wrk": output_of(["wrk", "-v"]),
        "ab": output_of(["ab", "-V"]),
        "curl": " ".join(output_of(["curl", "--version"]).split()[:2]),
    }


def project_revision(project: Path) -> str:
    head = output_of(["git", "-C", str(project), "rev-parse", "--short", "HEAD"])
    if head.startswith("fatal"):
        return f"{project} (not a git checkout)"
    dirty = subprocess.run(
        ["git", "-C", str(project), "status", "--porcelain"], capture_output=True, text=True
    ).stdout.strip()
    return f"{project} at {head}" + (" with uncommitted changes" if dirty else "")


def sum_of(data: dict, what: str, name: str) -> int:
    return int(sum(sum(data.get(f"sweep_{n}_{what}", {}).get(name, [])) for n in SWEEP))


def siege_section(run: dict) -> list[str]:
    figures = run.get("siege")
    if not figures:
        return []
    data = run["data"]
    sweep = None
    if data.get("sweep_500_p99", {}).get("project"):
        sweep = {
            "p99_ms": median(data["sweep_500_p99"]["project"]) * 1000,
            "in_time": median(data.get("sweep_500_in_time", {}).get("project", [math.nan])),
        }
    return [
        "## Siege: hostile clients, measured (`bench/siege.py`)",
        "",
        "One pass after the rounds, each measurement against a fresh instance started as the"
        " Procfile does, with `MEMORY_LIMIT` set to the manifest's memory.",
        "",
        *siege.rows(figures, sweep),
        "",
    ]


# The hand-kept record of the worker/threads sweep that chose the defaults, quoted verbatim.
SWEEP_RECORD = BENCH / "SWEEP.md"


def write_results(args, run: dict, lines, target_lines, pngs) -> None:
    mode, loads, data = run["mode"], run["loads"], run["data"]
    settings = " ".join(f"{k}={v}" for k, v in run["env"].items()) or "none"
    doc = [
        "# streamhtml benchmark results",
        "",
        f"Written by `python bench/run.py{' --quick' if run['quick'] else ''}"
        f" --rounds {mode['rounds']}` on {time.strftime('%Y-%m-%d %H:%M %Z')}; rerun with"
        " `make bench` (or `.venv/bin/python bench/run.py [--quick] [--rounds N]`).",
        "",
        "## Machine",
        "",
        *(f"- {k}: {v}" for k, v in run["facts"].items()),
        f"- load average (1 min) at start and end: {loads[0]:.2f}, {loads[1]:.2f}",
        f"- wall time of the run: {run['seconds']:.0f} s",
        "",
        "## How it was measured",
        "",
        f"{mode['rounds']} round(s). Each round starts the three servers afresh on free loopback"
        " ports, then runs every workload against each, the servers' order reversed every other"
        " round. A figure is the median over rounds; a ratio is the median of the per-round"
        " ratios. (!) marks a figure where some run failed its check (a non-200, a short body,"
        " a socket error) and was left out.",
        "",
        "- **project**: the Procfile's command through `bash -c`, repo root as cwd, the venv's"
        f" `bin` first on PATH, default settings plus `WEB_CONCURRENCY=2` (extra: {settings}).",
        "- **minimal app**: `bench/minimal_app.py`, a generator yielding one prebuilt block per"
        " chunk, under gunicorn's defaults (sync workers) with `--workers 2`.",
        "- **nginx**: a static file of the same size, `sendfile on`, 2 worker processes.",
        "- the `/sse`, `/ndjson` and `use_static_data=1` rows: only the project serves them; the"
        " baseline columns and the ratios beside them are the baselines' `/streamhtml` figures"
        " for the same nblocks and block_size.",
        f"- one stream: {mode['stream_bytes'] // MIB} MiB through"
        " `curl -s -o /dev/null -w '%{speed_download}'`; RSS: each worker's VmRSS sampled every"
        " 20 ms, peak minus the value before the stream, worst worker.",
        f"- concurrency sweep: `wrk -t1 -cN` on {SWEEP_BYTES // MIB} MiB streams of"
        f" {SWEEP_BLOCK // 1024} KiB blocks (wrk asks again on the same connection as each"
        " ends). The bench waits until the server has accepted every connection (its listen"
        ' socket\'s accept queue, from /proc/net/tcp, stays empty; "all accepted after"; at'
        f" most {RAMP_MAX_S:g} s, – if never), then for {mode['sweep_s']} s sends GET /health"
        " every 20 ms, each on a new connection in its own thread"
        f" ({HEALTH_TIMEOUT_S:g} s timeout; a failed probe counts as the timeout), then stops"
        " wrk. Throughput is wrk's, over the whole time, ramp included.",
        "",
        "## Results",
        "",
        *lines,
        "",
        "Reading it: on this VM nginx's sendfile did not beat Python's large `send()`s for one"
        " loopback stream read by curl, so a project ÷ nginx ratio above 1 says nginx is no"
        " ceiling here, not that the project beats sendfile in general. The minimal app's sync"
        " workers take one connection at a time each, so with more streams than workers it never"
        " accepts them all and /health waits behind them: that is the baseline's design.",
        "",
        "Sweep failures over all rounds (wrk's non-2xx responses; /health probes that failed or"
        " timed out): "
        + "; ".join(
            f"{name} {sum_of(data, 'non2xx', name)} and {sum_of(data, 'health_failed', name)}"
            for name in SERVERS
        )
        + ".",
        "",
        "## Worker CPU per request",
        "",
        f"CPU time (user + system, every thread) of the server's master and workers, from"
        f" `/proc/PID/stat` before and after `ab -n {mode['cpu_n']}` of each load, divided by"
        " the requests; median of rounds. nginx for scale: its workers serve `/health` from"
        " its configuration and the stream as a static file. The minimal app's sync workers"
        " close every connection, `-k` or not.",
        "",
        *cpu_table(data, mode["cpu_n"]),
        "",
        "## Targets (issue #5, and the per-request issue: the last two rows)",
        "",
        *target_lines,
        "",
        *siege_section(run),
        *exports.section(run.get("exports")),
        *([SWEEP_RECORD.read_text().rstrip("\n"), ""] if SWEEP_RECORD.exists() else []),
        "## Plots",
        "",
        *(f"![{png}]({png})" for png in pngs),
        "",
        "## Commands (first round; ports are picked afresh each run)",
        "",
        "nginx's configuration is `NGINX_CONF` in `bench/run.py`. Each sweep's wrk is stopped"
        " with SIGINT once /health has been measured, before its `-d` runs out.",
        "",
        "```",
        *(f"# {label}\n{line}" for label, line in run["commands"].items()),
        "```",
        "",
        "Raw output of every command and every server log: `bench/out/` (not committed).",
        "",
    ]
    args.results.write_text("\n".join(doc))


# --- main -----------------------------------------------------------------------------------


def main() -> int:
    global RAW
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
    parser.add_argument("--results", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument("--note", help="a line about the project tree for RESULTS.md")
    parser.add_argument("--report", type=Path, metavar="JSON", help="only rewrite the report")
    parser.add_argument(
        "--only",
        choices=("files", "uploads"),
        help="only these rows (files: /files/ and nginx's sendfile of the same file; uploads: "
        "1 GiB to /upload and to nginx discarding it, and WebSocket messages/s), no siege; "
        "pair it with --results elsewhere, the rest of the table is empty",
    )
    parser.add_argument(
        "--exports-only",
        action="store_true",
        help="only the exports' rows (bench/exports.py), to bench/out/exports.md",
    )
    args = parser.parse_args()
    args.env = dict(item.split("=", 1) for item in args.env)
    args.project = args.project.resolve()
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
    with open(OUT / "raw.log", "w") as RAW:
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
        for round_no in range(1, mode["rounds"] + 1):
            print(f"round {round_no} of {mode['rounds']}", flush=True)
            run_round(args, mode, tmp, round_no, data)
        siege_figures: dict = {}
        exports_run = None
        if not args.only:
            print("siege", flush=True)
            siege_figures = siege.measure(siege_starter(args, tmp), args.quick, print)
            print("exports", flush=True)
            exports_run = exports.measure(1 if args.quick else 3, OUT)
    loads.append(os.getloadavg()[0])
    run_facts = {"mode": mode, "data": data, "commands": COMMANDS, "loads": loads}
    run_facts["siege"] = siege_figures
    run_facts["exports"] = exports_run
    run_facts.update(env=args.env, quick=args.quick, only=args.only)
    tree = project_revision(args.project) + (f"; {args.note}" if args.note else "")
    run_facts["facts"] = {**machine(), "project tree": tree}
    run_facts["seconds"] = time.monotonic() - started
    (OUT / "results.json").write_text(json.dumps(run_facts, indent=1))
    return report(args, run_facts)


def report(args, run: dict) -> int:
    """Print the table and write RESULTS.md and the plots from one run's figures."""
    data = run["data"]
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
