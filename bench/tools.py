"""The bench's tools: servers in process groups on free ports, ab, wrk and curl runs parsed, CPU
from /proc; every command and its output go to the raw log."""

import contextlib
import http.client
import math
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from plan import (
    BENCH,
    HEALTH_TIMEOUT_S,
    MIB,
    RAMP_MAX_S,
    SWEEP_BLOCK,
    SWEEP_BYTES,
    stream_path,
)
from rss import worker_pids

APT = {"wrk": "wrk", "ab": "apache2-utils", "nginx": "nginx-light", "curl": "curl"}

RAW = None  # the raw log: raw_log() opens it
COMMANDS: dict[str, str] = {}  # label -> the first command line run under it


@contextlib.contextmanager
def raw_log(path: Path):
    """Every command run and its output, into `path`, while the block runs."""
    global RAW
    with open(path, "w") as RAW:
        yield RAW


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


def log_output(text: str) -> None:
    RAW.write(text)


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
            time.sleep(0.002)  # the figure is start to first 200: poll finely
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
    log_output(out + f"health: n={len(latencies)} failed={failed} accepted_s={accepted_s}\n")
    result = parse_wrk(out)
    result.update(p50=percentile(latencies, 0.5), p99=percentile(latencies, 0.99))
    result["in_time"] = sum(t < 1.0 for t in latencies) / len(latencies) if latencies else 0.0
    result.update(health_failed=failed, accepted_s=accepted_s)
    server.wait_healthy(time.perf_counter(), 60.0)  # the next figure starts from a calm server
    return result
