"""make bench's report: the tables, the targets, the plots and RESULTS.md, from a run's
figures."""

import importlib.metadata
import math
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path

import exports
import siege
import uploads
import websocket_rows
from plan import (
    BENCH,
    BLOCK_SIZES,
    CPU_LOADS,
    HEALTH_TIMEOUT_S,
    MIB,
    RAMP_MAX_S,
    RSS_BLOCK_SIZES,
    SERVERS,
    SWEEP,
    SWEEP_BLOCK,
    SWEEP_BYTES,
)

from tools import which

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
