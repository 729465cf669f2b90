"""Test harness: a real gunicorn started as the Procfile starts it, and a raw HTTP/1.1 reader."""

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The interpreter running the tests lives in the venv that has gunicorn.
VENV_BIN = Path(sys.executable).parent


# Every server of a test run shares one temporary directory, removed at the end: the embedded
# dataset (streamhtml/rows.py) is made once for the run, not once per server, and none is
# left in the machine's /tmp.
SESSION_TMPDIR = tempfile.mkdtemp(prefix="streamhtml-tests-")
atexit.register(shutil.rmtree, SESSION_TMPDIR, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def procfile_command(repo: Path = REPO) -> str:
    """The command of the Procfile's one `web:` line."""
    lines = [line for line in (repo / "Procfile").read_text().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("web:"), lines
    return lines[0][len("web:") :].strip()


class Server:
    """gunicorn run as Cloud Foundry runs it: `bash -c "<Procfile web command>"` with PORT set.

    Output goes to a log file the test can read; stop() sends a signal and waits, killing the
    whole process group if it must, so no test leaves a process behind.
    """

    def __init__(self, log_path: Path, env: dict | None = None, cwd: Path = REPO, bin_dir=VENV_BIN):
        self.port = free_port()
        self.log_path = log_path
        self.cwd = cwd
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PORT": str(self.port),
            "WEB_CONCURRENCY": "2",
            "TMPDIR": SESSION_TMPDIR,
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "Server":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", procfile_command(self.cwd)],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_until_healthy()
        return self

    def wait_until_healthy(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({self.process.returncode}):\n{self.log()}")
            try:
                if request(self.port, "/health", timeout_s=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn not healthy after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout_s: float = 10.0) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log())
            if match:
                return match
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r} in:\n{self.log()}")

    def records(self) -> list[dict]:
        """The JSON log lines written so far, as dicts (other lines are skipped)."""
        found = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):  # a line still being written
                    found.append(json.loads(line))
        return found

    def requests_logged(self, **fields) -> list[dict]:
        return [
            record
            for record in self.records()
            if record.get("logger") == "gunicorn.access"
            and all(record.get(key) == value for key, value in fields.items())
        ]

    def wait_for_request(self, timeout_s: float = 10.0, count: int = 1, **fields) -> list[dict]:
        """Wait until `count` request lines carry `fields`; return them."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.requests_logged(**fields)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"fewer than {count} request lines with {fields} in:\n{self.log()}")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.master_pid())], capture_output=True, text=True
        ).stdout
        return [int(pid) for pid in out.split()]

    def master_pid(self) -> int:
        # bash -c execs a lone command, so the Procfile's gunicorn is the process we started.
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
            raise


@dataclass
class RawResponse:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    chunks: list[bytes] = field(default_factory=list)
    chunk_times: list[float] = field(default_factory=list)
    chunked: bool = False
    body: bytes = b""

    def header(self, name: str) -> str | None:
        found = [value for key, value in self.headers if key.lower() == name.lower()]
        assert len(found) <= 1, f"{name} sent {len(found)} times"
        return found[0] if found else None


def static_block(block_size: int) -> bytes:
    """The block `use_static_data=1` repeats, as the app makes it: the same letters for
    every block of a size."""
    from streamhtml.generators import html_blocks

    return bytes(next(html_blocks(1, block_size, static=True)))


def send_request(sock: socket.socket, path: str, method: str = "GET", headers=None, version="1.1"):
    headers = {"Host": "127.0.0.1", **(headers or {})}
    lines = [f"{method} {path} HTTP/{version}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def read_head(reader) -> RawResponse:
    status_line = reader.readline().decode("latin-1")
    if not status_line:
        raise ConnectionError("connection closed before a status line")
    version, status, reason = (status_line.rstrip("\r\n").split(" ", 2) + [""])[:3]
    headers = []
    while (line := reader.readline().decode("latin-1").rstrip("\r\n")) != "":
        key, _, value = line.partition(":")
        headers.append((key, value.strip()))
    return RawResponse(status=int(status), reason=reason, version=version, headers=headers)


def read_chunk(reader) -> bytes | None:
    """One chunk's payload off the wire exactly as framed; None at the terminating chunk."""
    size_line = reader.readline()
    if not size_line.endswith(b"\r\n"):
        raise ConnectionError(f"stream cut inside a chunk size line: {size_line!r}")
    size = int(size_line.strip(), 16)
    if size == 0:
        assert reader.readline() == b"\r\n", "no trailer end after the last chunk"
        return None
    data = reader.read(size)
    if len(data) != size or reader.read(2) != b"\r\n":
        raise ConnectionError("stream cut inside a chunk")
    return data


def read_body(reader, response: RawResponse, method: str) -> RawResponse:
    if method == "HEAD" or response.status in (204, 304):
        return response
    if (response.header("Transfer-Encoding") or "").lower() == "chunked":
        response.chunked = True
        while (chunk := read_chunk(reader)) is not None:
            response.chunks.append(chunk)
            response.chunk_times.append(time.monotonic())
        response.body = b"".join(response.chunks)
    elif response.header("Content-Length") is not None:
        response.body = reader.read(int(response.header("Content-Length")))
    else:
        response.body = reader.read()
    return response


def request(
    port: int, path: str, method: str = "GET", headers=None, version="1.1", timeout_s: float = 30
) -> RawResponse:
    """One request on a fresh connection, read to its end, chunk boundaries kept."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        send_request(sock, path, method, headers, version)
        with sock.makefile("rb") as reader:
            return read_body(reader, read_head(reader), method)


def scrape(port: int) -> dict[str, float]:
    """Every sample of /metrics by its name and labels, as written."""
    reply = request(port, "/metrics")
    assert reply.status == 200
    assert reply.header("Content-Type").startswith("text/plain; version=0.0.4")
    samples = {}
    for line in reply.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def wait_for_samples(port: int, until, timeout_s: float = 10.0) -> dict[str, float]:
    """Scrape /metrics until `until(samples)` holds; return those samples. A request is
    counted once its last byte is handed over, so a scrape may come before the count."""
    deadline = time.monotonic() + timeout_s
    while not until(samples := scrape(port)):
        assert time.monotonic() < deadline, f"gave up waiting; /metrics shows {samples}"
        time.sleep(0.05)
    return samples


# Loaded by every Python process started with collector_watch_env() (gunicorn's master, and
# so its forked workers): each collection that frees objects appends "pid freed" to a file.
# Objects a collection frees were in reference cycles: nothing else reaches the collector.
COLLECTOR_WATCH = """\
import gc
import os

_log = os.environ.get("STREAMHTML_TEST_COLLECTOR_LOG")


def _note(phase, info):
    if phase == "stop" and info["collected"]:
        fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, b"%d %d\\n" % (os.getpid(), info["collected"]))
        finally:
            os.close(fd)


if _log:
    gc.callbacks.append(_note)
"""


def collector_watch_env(directory: Path) -> dict:
    """Environment for a Server whose processes note what their garbage collector frees
    (read it back with freed_by_collector)."""
    (directory / "sitecustomize.py").write_text(COLLECTOR_WATCH)
    return {
        "PYTHONPATH": str(directory),
        "STREAMHTML_TEST_COLLECTOR_LOG": str(directory / "collected.log"),
    }


def freed_by_collector(env: dict, pid: int) -> int:
    """Objects the garbage collector of process `pid` has freed so far."""
    log = Path(env["STREAMHTML_TEST_COLLECTOR_LOG"])
    if not log.exists():
        return 0
    freed = 0
    for line in log.read_text().splitlines():
        noted_pid, count = map(int, line.split())
        freed += count if noted_pid == pid else 0
    return freed


def wait_until(predicate, timeout_s: float = 10.0, what: str = "") -> None:
    """Poll `predicate()` until it holds; fail, saying `what` was awaited, after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def wait_for(condition, timeout_s: float, every_s: float = 0.05) -> float:
    """Seconds until `condition()` held; fails the test after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "condition not met in time"
        time.sleep(every_s)
    return time.monotonic() - started


def streams_in_progress(port: int) -> int:
    """Streams the instance counts now, as /health says."""
    return json.loads(request(port, "/health").body)["streams_in_progress"]


def without_proxies(environ) -> dict:
    """The environment without any *_proxy variable: each test says which proxies it uses."""
    return {
        name: value
        for name, value in environ.items()
        if not name.lower().endswith("_proxy") and name != "REQUEST_METHOD"
    }


def probe(*args: str, timeout_s: float = 60, env=None) -> subprocess.CompletedProcess:
    """The probe run as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "streamhtml.probe", *args],
        cwd=REPO,
        env={**without_proxies(os.environ), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
