"""Test support for /files: a directory of real files (a sparse 1 GiB one among them), with
every kind of name a client might try to get out of it with, and a look at worker RSS."""

import os
import random
from dataclasses import dataclass
from pathlib import Path

GiB = 1 << 30
SECRET = b"outside the files directory: never served\n"


@dataclass
class FilesDir:
    root: Path
    small: bytes  # small.bin: distinct bytes, so an offset that is off by one shows
    medium: bytes  # medium.bin: several sendfile calls' worth
    big_size: int = GiB  # big.bin: sparse, all zeros, cheap on disk


def make_files_dir(base: Path) -> FilesDir:
    root = base / "served"
    outside = base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    rng = random.Random(21)
    small = rng.randbytes(300_000)
    medium = rng.randbytes(5 * 1024 * 1024 + 7)
    (root / "small.bin").write_bytes(small)
    (root / "medium.bin").write_bytes(medium)
    with open(root / "big.bin", "wb") as big:
        big.truncate(GiB)
    (root / "empty.txt").write_bytes(b"")
    (root / "page.html").write_bytes(b"<script>alert(1)</script>")
    (root / ".env").write_bytes(SECRET)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(SECRET)
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    os.symlink(root / "small.bin", root / "link_in")
    os.symlink(outside / "secret.txt", root / "link_out")
    os.symlink("../outside/secret.txt", root / "sub" / "relative_out")
    os.symlink(outside, root / "dir_out")
    os.symlink(root / ".env", root / "link_hidden")
    os.mkfifo(root / "fifo")
    return FilesDir(root, small, medium)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def read_syscalls(pid: int) -> int:
    """Read calls the process made, sendfile's included (one per call): /proc/PID/io syscr."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    raise AssertionError(f"no syscr for {pid}")
