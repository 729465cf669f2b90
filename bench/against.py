"""`bench/run.py --against DIR`'s report: each row of two project trees measured in the same
rounds, one against the other, and the rows that fell."""

import math

from plan import CPU_LOADS
from report import ROWS, fmt, median

LOWER_IS_BETTER = ("MiB", "ms", "s", "µs")
FALL_SHARE = 0.02  # a row falls when worse in every round and its median worse by this much
# Memory rows are a fraction of a MiB, where ratios say little: they compare by difference.
FALL_MIB = 1.0


def against_rows():
    """(figure, label, unit, scale) of every row both trees serve: the table's, the CPU ones."""
    seen = set()
    for figure, label, unit, scale, top_figure in ROWS:
        figure = top_figure or figure
        if figure not in seen:
            seen.add(figure)
            yield figure, label, unit, scale
    for figure, label, _, _ in CPU_LOADS:
        yield f"cpu_{figure}", f"server CPU a request, {label}", "µs", 1


def against_report(run: dict) -> list[str]:
    """Both trees' figures: the rounds' rows, the siege's when it ran for both."""
    facts = run["facts"]
    lines = [
        "# One tree against another (`bench/run.py --against`)",
        "",
        f"- project: {facts['project tree']}",
        f"- baseline: {facts['baseline tree']}",
        f"- {run['mode']['rounds']} round(s), {run['seconds']:.0f} s; load average at start"
        f" and end: {run['loads'][0]:.2f}, {run['loads'][1]:.2f}",
        f"- machine: {facts['nproc']} × {facts['CPU']}, Python {facts['Python']}",
    ]
    if run["data"]:
        lines += rounds_against(run["data"], run["mode"]["rounds"])
    return lines + siege_against(run.get("siege"), run.get("baseline_siege"))


def rounds_against(data: dict, rounds: int) -> list[str]:
    """Each row's project ÷ baseline (− for MiB), per round and the median; the rows that fell."""
    lines = [
        "",
        "Both trees run in every round after the minimal app and nginx, one after the other,"
        " which first swapped every other round; a ratio is taken within a round. For req/s, MiB/s"
        " and msg/s higher is better; for MiB, ms, s and µs lower. A row **falls** when it is"
        f" worse in every round and its median ratio is worse by {FALL_SHARE:.0%} or more"
        f" (a memory row: its median difference is {FALL_MIB:g} MiB or more).",
        "",
        "| figure | unit | project | baseline | project ÷ baseline (− in MiB) | each round | |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    fell = []
    for figure, label, unit, scale in against_rows():
        values = data.get(figure, {})
        tops, bases = values.get("project", []), values.get("baseline", [])
        by_difference = unit == "MiB"
        pairs = [
            t - b if by_difference else t / b
            for t, b in zip(tops, bases)
            if (b or by_difference) and not math.isnan(t * b)
        ]
        neutral, lower = (0 if by_difference else 1), unit in LOWER_IS_BETTER
        worse = [p > neutral if lower else p < neutral for p in pairs]
        middle = median(pairs)
        step = FALL_MIB if by_difference else FALL_SHARE
        falls = (
            len(pairs) == rounds > 1
            and all(worse)
            and (middle >= neutral + step if lower else middle <= neutral - step)
        )
        if falls:
            fell.append(label)
        cells = [fmt(median(v) / scale, unit) for v in (tops, bases)]
        shown = f"{middle:+.2f}" if by_difference and not math.isnan(middle) else fmt(middle, "x")
        each = ", ".join(f"{p:+.2f}" if by_difference else f"{p:.3f}" for p in pairs)
        lines.append(
            f"| {label} | {unit} | {cells[0]} | {cells[1]} | {shown}"
            f" | {each} | {'**falls**' if falls else ''} |"
        )
    return [*lines, "", f"Rows that fell: {'; '.join(fell) if fell else 'none'}."]


def siege_against(ours: dict | None, theirs: dict | None) -> list[str]:
    """The siege's figures of both trees side by side: one measurement each, so no rule of
    rounds; a row is marked when fewer probes were answered in time, or it took 10 % and
    1 MiB (memory per stream: 10 % and 8 KiB) more memory."""
    if not ours or not theirs:
        return []
    lines = [
        "",
        "## Siege (`bench/siege.py`), both trees, one measurement each",
        "",
        "| figure | project | baseline | |",
        "|---|---:|---:|---|",
    ]

    def shown(value, unit: str) -> str:
        if value is None or math.isnan(value):
            return "–"
        return f"{value:.1%}" if unit == "share" else f"{value:,.3g} {unit}"

    def row(label: str, mine, other, unit: str, worse: bool) -> None:
        mark = "**worse**" if worse else ""
        lines.append(f"| {label} | {shown(mine, unit)} | {shown(other, unit)} | {mark} |")

    def known(*values) -> bool:
        return all(value is not None and not math.isnan(value) for value in values)

    def more(mine, other, share: float, least: float) -> bool:
        return known(mine, other) and mine > other * (1 + share) and mine - other > least

    for size, result in ours.get("memory", {}).items():
        other = theirs.get("memory", {}).get(size, {})
        for key, what in (("rss_kib", "RSS"), ("sockets_kib", "socket buffers")):
            mine, base = result.get(key), other.get(key)
            worse = more(mine, base, 0.1, 8)
            row(f"{what} per stalled stream, {size} B blocks", mine, base, "KiB", worse)
    for name, result in ours.get("attacks", {}).items():
        other = theirs.get("attacks", {}).get(name, {})
        row(f"{name}: /health p99", result.get("p99_ms"), other.get("p99_ms"), "ms", False)
        mine, base = result.get("in_time"), other.get("in_time")
        row(f"{name}: answered within 1 s", mine, base, "share", known(mine, base) and mine < base)
        for key, what in (("peak_rss_mib", "peak RSS"), ("peak_total_mib", "peak RSS + sockets")):
            mine, base = result.get(key), other.get(key)
            row(f"{name}: {what}", mine, base, "MiB", more(mine, base, 0.1, 1))
    return lines
