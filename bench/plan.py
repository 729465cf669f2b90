"""What `make bench` measures: its servers, loads, sizes and modes, in one place for run.py and
report.py."""

from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
MIB = 1 << 20
SERVERS = ("project", "minimal", "nginx")
# The project's trees: the one measured, and with --against another served beside it.
TREES = ("project", "baseline")

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
