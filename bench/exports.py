"""Exports of real rows (issue 20): 1,000,000 rows as CSV, from PostgreSQL and from SQLite.

    python bench/run.py --exports-only [--rounds N]     # these rows alone, RESULTS.md untouched

A throwaway PostgreSQL (tests/pg_support.py) is seeded with `python -m streamhtml.dataset
--rows 1000000`; then, in each round:
  (a) /export.csv of every row from the project (gunicorn, 2 workers), against psql's
      `\\copy (SELECT * FROM dataset ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)` to
      /dev/null on the same table (the physical limit): time, rate ratio, worker RSS growth;
  (b) the seed's naive pattern (a client-side cursor, fetchall, then ','.join per row) in the
      minimal Flask app, with its RSS growth;
  (c) the same 1,000,000 rows from the project's embedded SQLite, against `sqlite3 -csv
      -header FILE "SELECT * FROM dataset ORDER BY id"` to /dev/null;
  (d) /health p50/p99 while 10 exports run at once (each client reads as fast as it can).
A figure is the median over rounds.
"""

import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))
from pg_support import Postgres  # noqa: E402 - tests/ is not a package; pg_support is stdlib+psycopg
from rss import RssWatch, worker_pids  # noqa: E402

ROWS = 1_000_000
MIB = 1 << 20
COPY_SQL = "\\copy (SELECT * FROM dataset ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)"
SQLITE_SQL = "SELECT * FROM dataset ORDER BY id"
CONCURRENT_EXPORTS = 10
HEALTH_EVERY_S = 0.02
HEALTH_TIMEOUT_S = 5.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class Gunicorn:
    """A server in its own process group, stopped by its PID."""

    def __init__(self, argv: list[str], env: dict, log: Path, cwd: Path = ROOT):
        self.port = free_port()
        self.env = {**os.environ, **env, "PORT": str(self.port)}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [part.replace("{port}", str(self.port)) for part in argv],
                cwd=cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while status_of(self.port, "/health") != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy: see {log}")
            time.sleep(0.05)

    def workers(self) -> list[int]:
        return worker_pids(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)


def status_of(port: int, path: str, timeout_s: float = 1.0) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


def timed(argv: list[str], env: dict | None = None, stdout=subprocess.DEVNULL) -> float:
    """Seconds `argv` took; it must exit 0."""
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=stdout, stderr=subprocess.PIPE, check=True)
    return time.perf_counter() - started


def curl_download(port: int, path: str) -> tuple[float, int]:
    """(seconds, bytes) of one whole download through curl to /dev/null; nan when it failed."""
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{time_total}",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout.split()
    if len(out) != 3 or out[0] != "200":
        return math.nan, 0
    return float(out[2]), int(out[1])


def download_with_rss(server: Gunicorn, path: str) -> tuple[float, int, float]:
    with RssWatch(server.workers(), every_s=0.01) as watch:
        seconds, size = curl_download(server.port, path)
    return seconds, size, watch.growth_mib()


def health_under_exports(server: Gunicorn, path: str) -> tuple[float, float, int]:
    """/health p50 and p99 (s) while CONCURRENT_EXPORTS downloads run, and probes that failed.
    Probes every 20 ms, each on a new connection in its own thread, while all still run."""
    downloads = [
        subprocess.Popen(
            ["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{server.port}{path}"],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(CONCURRENT_EXPORTS)
    ]
    results: list[tuple[int, float]] = []

    def probe() -> None:
        started = time.perf_counter()
        status = status_of(server.port, "/health", HEALTH_TIMEOUT_S)
        results.append((status, time.perf_counter() - started))

    probes = []
    try:
        time.sleep(0.3)  # a ramp: the exports have started before the first probe is taken
        until = time.monotonic() + 6.0
        while time.monotonic() < until and all(d.poll() is None for d in downloads):
            thread = threading.Thread(target=probe, daemon=True)
            thread.start()
            probes.append(thread)
            time.sleep(HEALTH_EVERY_S)
        for thread in probes:
            thread.join(HEALTH_TIMEOUT_S + 5)
    finally:
        for download in downloads:
            download.kill()
            download.wait()
    latencies = sorted(t if s == 200 else max(t, HEALTH_TIMEOUT_S) for s, t in results)
    failed = sum(status != 200 for status, _ in results)
    p99 = latencies[max(0, math.ceil(0.99 * len(latencies)) - 1)] if latencies else math.nan
    return statistics.median(latencies) if latencies else math.nan, p99, failed


def median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def measure(rounds: int, out: Path, say=print) -> dict:
    """Every figure of this section, each a list over rounds, and the commands run."""
    venv_bin = Path(sys.executable).parent
    path = f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    web = next(
        line.split(":", 1)[1].strip()
        for line in (ROOT / "Procfile").read_text().splitlines()
        if line.startswith("web:")
    )
    figures: dict[str, list] = {}
    commands: dict[str, str] = {}

    def add(name: str, value) -> None:
        figures.setdefault(name, []).append(value)

    loads = [os.getloadavg()[0]]
    postgres = Postgres().start()
    servers: list[Gunicorn] = []
    tmp = Path(tempfile.mkdtemp(prefix="streamhtml-bench-exports-"))
    try:
        seed = [sys.executable, "-m", "streamhtml.dataset", "--rows", str(ROWS)]
        seed_env = {**os.environ, "DATABASE_URL": postgres.url}
        commands["seed"] = "DATABASE_URL=$URL " + shlex.join(["python", *seed[1:]])
        seed_s = timed(seed, seed_env)
        say(f"exports: seeded {ROWS} rows in PostgreSQL in {seed_s:.1f} s")
        figures["seed_s"] = [seed_s]
        project_env = {
            "PATH": path,
            "WEB_CONCURRENCY": "2",
            # Room for the 10 concurrent exports of (d): the default cap is 8 an instance.
            "STREAMHTML_MAX_EXPORT_STREAMS": str(CONCURRENT_EXPORTS + 2),
            "LOG_REQUESTS": "off",
        }
        pg_project = Gunicorn(
            ["bash", "-c", web], {**project_env, "DATABASE_URL": postgres.url}, out / "exp-pg.log"
        )
        servers.append(pg_project)
        sqlite_env = {**project_env, "STREAMHTML_DATASET_ROWS": str(ROWS), "TMPDIR": str(tmp)}
        sqlite_project = Gunicorn(["bash", "-c", web], sqlite_env, out / "exp-sqlite.log")
        servers.append(sqlite_project)
        minimal = Gunicorn(
            [
                str(venv_bin / "gunicorn"),
                "--workers",
                "2",
                "--timeout",
                "600",
                "--bind",
                "127.0.0.1:{port}",
                "--chdir",
                str(BENCH),
                "minimal_app:app",
            ],
            {"PATH": path, "XDG_RUNTIME_DIR": str(tmp), "DATABASE_URL": postgres.url},
            out / "exp-minimal.log",
            BENCH,
        )
        servers.append(minimal)
        started = time.monotonic()
        while status_of(sqlite_project.port, "/export.csv?limit=1", 5) != 200:
            if time.monotonic() - started > 300:
                raise RuntimeError("the embedded SQLite dataset was not made in 300 s")
            time.sleep(0.2)
        figures["sqlite_fill_s"] = [time.monotonic() - started]
        say(f"exports: embedded SQLite ready after {figures['sqlite_fill_s'][0]:.1f} s")
        sqlite_file = next(tmp.glob("streamhtml-dataset-*.sqlite"))

        psql = [str(postgres.bindir / "psql"), postgres.url, "-X", "-q", "-c", COPY_SQL]
        psql_env = {**os.environ, "PGTZ": "UTC"}
        commands["psql"] = shlex.join(["psql", "$URL", "-X", "-q", "-c", COPY_SQL]) + " >/dev/null"
        sqlite3 = ["sqlite3", "-csv", "-header", str(sqlite_file), SQLITE_SQL]
        commands["sqlite3"] = shlex.join(sqlite3) + " >/dev/null"
        commands["project"] = "curl -s -o /dev/null http://127.0.0.1:PORT/export.csv"
        commands["naive"] = "curl -s -o /dev/null http://127.0.0.1:PORT/export-naive.csv"
        commands["project pg"] = "DATABASE_URL=$URL WEB_CONCURRENCY=2 bash -c '<Procfile web>'"
        commands["project sqlite"] = (
            f"STREAMHTML_DATASET_ROWS={ROWS} TMPDIR=<temp> WEB_CONCURRENCY=2"
            " bash -c '<Procfile web>'"
        )
        commands["minimal"] = (
            "DATABASE_URL=$URL gunicorn --workers 2 --timeout 600 --chdir bench minimal_app:app"
        )
        # Warm: the pools, the page cache, each worker's first export.
        for _ in range(2):
            curl_download(pg_project.port, "/export.csv?limit=20000")
            curl_download(sqlite_project.port, "/export.csv?limit=20000")
        for round_no in range(1, rounds + 1):
            say(f"exports: round {round_no} of {rounds}")
            with open(os.devnull, "wb") as devnull:
                add("psql_s", timed(psql, psql_env, devnull))
                add("sqlite3_s", timed(sqlite3, None, devnull))
            seconds, size, rss = download_with_rss(pg_project, "/export.csv")
            add("pg_s", seconds), add("pg_bytes", size), add("pg_rss_mib", rss)
            seconds, size, rss = download_with_rss(sqlite_project, "/export.csv")
            add("sqlite_s", seconds), add("sqlite_bytes", size), add("sqlite_rss_mib", rss)
            seconds, size, rss = download_with_rss(minimal, "/export-naive.csv")
            add("naive_s", seconds), add("naive_bytes", size), add("naive_rss_mib", rss)
            p50, p99, failed = health_under_exports(pg_project, "/export.csv")
            add("health_p50_s", p50), add("health_p99_s", p99), add("health_failed", failed)
    finally:
        for server in servers:
            server.stop()
        postgres.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    loads.append(os.getloadavg()[0])
    return {"figures": figures, "commands": commands, "loads": loads, "rounds": rounds}


def section(run: dict | None) -> list[str]:
    """The RESULTS.md section of these rows."""
    if not run:
        return []
    f = {name: median(values) for name, values in run["figures"].items()}
    per_round = run["figures"]
    mib = lambda seconds, size: size / MIB / seconds if seconds else math.nan  # noqa: E731
    pg_ratio = median([p / e for p, e in zip(per_round["psql_s"], per_round["pg_s"])])
    sqlite_ratio = median([s / e for s, e in zip(per_round["sqlite3_s"], per_round["sqlite_s"])])
    naive_ratio = median([p / n for p, n in zip(per_round["psql_s"], per_round["naive_s"])])
    size = f["pg_bytes"]
    rows = [
        (
            "psql `\\copy ... TO STDOUT (FORMAT csv, HEADER)` >/dev/null",
            f["psql_s"],
            size,
            "1.00",
            "–",
        ),
        (
            "project `/export.csv`, PostgreSQL",
            f["pg_s"],
            f["pg_bytes"],
            f"{pg_ratio:.2f}",
            f"{f['pg_rss_mib']:.1f}",
        ),
        (
            "minimal app, naive (cursor, fetchall, `','.join`)",
            f["naive_s"],
            f["naive_bytes"],
            f"{naive_ratio:.2f}",
            f"{f['naive_rss_mib']:.1f}",
        ),
        ("`sqlite3 -csv -header` >/dev/null", f["sqlite3_s"], f["sqlite_bytes"], "1.00", "–"),
        (
            "project `/export.csv`, embedded SQLite",
            f["sqlite_s"],
            f["sqlite_bytes"],
            f"{sqlite_ratio:.2f}",
            f"{f['sqlite_rss_mib']:.1f}",
        ),
    ]
    loads = run["loads"]
    return [
        "## Exports: 1,000,000 rows as CSV (`bench/exports.py`)",
        "",
        f"Median of {run['rounds']} round(s); load average (1 min) at start and end"
        f" {loads[0]:.2f}, {loads[1]:.2f} (a shared machine). Seed: `python -m"
        f" streamhtml.dataset --rows {ROWS}` into a throwaway PostgreSQL (tests/pg_support.py),"
        f" {f['seed_s']:.1f} s; the embedded SQLite made by the app at start in"
        f" {f['sqlite_fill_s']:.1f} s. Rate ratio: the reference's time over this one's (1.00 is"
        " the reference's rate; PostgreSQL rows against psql, SQLite rows against sqlite3)."
        " RSS: the worst worker's VmRSS peak (sampled every 10 ms) minus its value before.",
        "",
        "| what | time | size | rate | ratio | worker RSS growth |",
        "|---|---|---|---|---|---|",
        *(
            f"| {label} | {seconds:.2f} s | {nbytes / MIB:.1f} MiB | "
            f"{mib(seconds, nbytes):.1f} MiB/s | {ratio_text} | {rss} MiB |"
            if rss != "–"
            else f"| {label} | {seconds:.2f} s | {nbytes / MIB:.1f} MiB | "
            f"{mib(seconds, nbytes):.1f} MiB/s | {ratio_text} | – |"
            for label, seconds, nbytes, ratio_text, rss in rows
        ),
        "",
        f"/health while {CONCURRENT_EXPORTS} exports of every row run at once (PostgreSQL, 2"
        f" workers, clients reading at full speed), GET every 20 ms on a new connection:"
        f" p50 {f['health_p50_s'] * 1000:.1f} ms, p99 {f['health_p99_s'] * 1000:.1f} ms,"
        f" {int(sum(per_round['health_failed']))} failed.",
        "",
        "Targets (issue 20): CSV from PostgreSQL at ≥ 0.6× psql's rate (aim 0.9×):"
        f" {pg_ratio:.2f}× — {'met' if pg_ratio >= 0.6 else 'NOT met'}; worker RSS growth"
        f" under 16 MiB: {f['pg_rss_mib']:.1f} MiB —"
        f" {'met' if f['pg_rss_mib'] < 16 else 'NOT met'};"
        f" /health p99 under 100 ms with 10 exports: {f['health_p99_s'] * 1000:.1f} ms —"
        f" {'met' if f['health_p99_s'] < 0.1 else 'NOT met'}.",
        "",
        "```",
        *(f"# {label}\n{line}" for label, line in run["commands"].items()),
        "```",
        "",
    ]
