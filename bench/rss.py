"""A server's worker processes, and their memory while something runs (VmRSS from /proc)."""

import subprocess
import threading
from pathlib import Path


def children(pid: int) -> list[int]:
    done = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(child) for child in done.stdout.split()]


def worker_pids(started: int) -> list[int]:
    """The workers of the gunicorn started as `started`: its children, or its grandchildren
    when `started` is a bash that did not exec."""
    pids = children(started)
    if Path(f"/proc/{started}/comm").read_text().strip() == "bash" and len(pids) == 1:
        pids = children(pids[0])
    return pids


def vm_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssWatch:
    """Peak VmRSS of each worker while a stream runs; growth = peak - before, worst worker."""

    def __init__(self, pids: list[int], every_s: float = 0.02):
        self.pids = pids
        self.every_s = every_s
        self.before = {pid: vm_rss_kib(pid) for pid in pids}
        self.peak = dict(self.before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            self._look()

    def _look(self) -> None:
        for pid in self.pids:
            self.peak[pid] = max(self.peak[pid], vm_rss_kib(pid))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self._look()

    def growth_mib(self) -> float:
        return max((self.peak[p] - self.before[p]) / 1024 for p in self.pids) if self.pids else 0
