"""Every setting, declared once, read from the environment in one place, validated, frozen.

Each setting is a dataclass field whose metadata holds its environment variable, bounds, doc
and the small value the tests run with. The loaders, the settings table in docs/operations.md
(`python -m streamhtml.settings`) and the tests' small limits are all derived from it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .platform_env import Instance as Instance
from .platform_env import SettingsError as SettingsError
from .platform_env import Source as Source
from .platform_env import embedded_dataset_path as embedded_dataset_path
from .platform_env import parse_memory as parse_memory
from .platform_env import read_instance, resolve_source
from .setting import Setting as Setting
from .setting import choice, directory, number

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "text")
# gthread is the worker this project hardens and measures (bench/SWEEP.md); sync is there for
# comparison only and has none of the defences of streamhtml/worker.py.
WORKER_CLASSES = ("gthread", "sync")

# Threads a worker keeps free of streams, so /health and refusals always find one.
RESERVED_THREADS = 16


@dataclass(frozen=True)
class Limits:
    """What one request, one stream and one instance may cost; every one a 4xx or 503 past it."""

    max_block_size: int = number(
        "STREAMHTML_MAX_BLOCK_SIZE", 1 * MiB, 1, 64 * MiB, "largest `block_size`, bytes", 4096
    )
    max_nblocks: int = number(
        "STREAMHTML_MAX_NBLOCKS", 1_048_576, 1, 1 << 31, "largest `nblocks`", 1000
    )
    max_response_bytes: int = number(
        "STREAMHTML_MAX_RESPONSE_BYTES",
        1 * GiB,
        1,
        1 << 40,
        "largest `nblocks × block_size`, bytes",
        1_000_000,
    )
    max_sleep_ms: int = number(
        "STREAMHTML_MAX_SLEEP_MS",
        30_000,
        0,
        600_000,
        "largest `sleep_ms`, so an idle-timeout load balancer never sees a silent minute",
        2000,
    )
    sse_heartbeat_s: int = number(
        "STREAMHTML_SSE_HEARTBEAT_S",
        15,
        1,
        300,
        "an /sse pause longer than this sends a `: keep-alive` comment every this many seconds",
        1,
    )
    max_stream_duration_s: int = number(
        "STREAMHTML_MAX_STREAM_DURATION_S",
        600,
        1,
        86_400,
        "a stream's deadline, seconds: `nblocks × sleep_ms` over it is a 400, and a stream "
        "still running at it is cut (`outcome=deadline`); under gorouter's 900 s cut",
        5,
    )
    max_csv_rows: int = number(
        "STREAMHTML_MAX_CSV_ROWS",
        1_000_000,
        1,
        1_000_000_000,
        "largest `rows` for /large.csv",
        5000,
    )
    max_streams: int = number(
        "STREAMHTML_MAX_STREAMS",
        500,
        1,
        100_000,
        "concurrent streams per instance, all workers together; more get 503",
    )
    max_csv_streams: int = number(
        "STREAMHTML_MAX_CSV_STREAMS",
        4,
        1,
        100_000,
        "concurrent /large.csv downloads per instance (each one keeps a core busy); more get 503",
    )
    producing_streams: int = number(
        "STREAMHTML_PRODUCING_STREAMS",
        2,
        1,
        1024,
        "unpaced streams of a worker that make their next bytes at the same moment; the others "
        "wait their turn, so /health never queues behind dozens of them for the GIL",
    )
    stream_memory_percent: int = number(
        "STREAMHTML_STREAM_MEMORY_PERCENT",
        50,
        1,
        90,
        "share of `MEMORY_LIMIT` that streams may hold, percent; past it new streams get 503",
    )
    stall_timeout_s: int = number(
        "STREAMHTML_STALL_TIMEOUT_S",
        60,
        1,
        3600,
        "a response whose client accepts no byte for this long is cut (`outcome=stalled`)",
        3,
    )
    header_timeout_s: int = number(
        "STREAMHTML_HEADER_TIMEOUT_S",
        10,
        1,
        3600,
        "a connection that has not sent a whole request head this long after it opened, or "
        "after its first byte when kept alive, is closed",
        2,
    )
    send_buffer_bytes: int = number(
        "STREAMHTML_SEND_BUFFER_BYTES",
        128 * KiB,
        0,
        64 * MiB,
        "kernel send buffer per connection (SO_SNDBUF; the kernel doubles it), 0 for the "
        "kernel's autotuning; a client that stops reading holds this much of the memory quota",
    )
    max_upload_bytes: int = number(
        "STREAMHTML_MAX_UPLOAD_BYTES",
        1 * GiB,
        0,
        1 << 40,
        "largest request body `/upload` reads, bytes: a `Content-Length` over it gets 413 "
        "before any byte is read, a chunked body is cut with 413 when it passes it",
        1_000_000,
    )
    body_stall_timeout_s: int = number(
        "STREAMHTML_BODY_STALL_TIMEOUT_S",
        30,
        1,
        3600,
        "an upload whose body sends no byte for this long is cut with 408 (`outcome=stalled`)",
        2,
    )
    max_uploads: int = number(
        "STREAMHTML_MAX_UPLOADS",
        16,
        1,
        100_000,
        "concurrent `/upload` bodies per instance, each counted as a stream; more get 503",
        2,
    )
    ws_ping_interval_s: int = number(
        "STREAMHTML_WS_PING_INTERVAL_S",
        25,
        1,
        3600,
        "a WebSocket that has sent nothing this long sends a ping, so load balancers with "
        "idle timeouts (60 s is common) keep it open; a ping unanswered for the stall timeout "
        "ends it",
        1,
    )
    ws_max_message_bytes: int = number(
        "STREAMHTML_WS_MAX_MESSAGE_BYTES",
        1 * MiB,
        1,
        64 * MiB,
        "largest WebSocket message a client may send, bytes; a larger one is closed with 1009",
        65536,
    )
    max_streams_per_client: int = number(
        "STREAMHTML_MAX_STREAMS_PER_CLIENT",
        0,
        0,
        100_000,
        "concurrent streams per client (its address; behind a proxy gunicorn's "
        "`FORWARDED_ALLOW_IPS` trusts, the nearest untrusted address in X-Forwarded-For) per "
        "instance; more get 503; 0: no per-client limit",
    )
    answer_timeout_s: int = number(
        "STREAMHTML_ANSWER_TIMEOUT_S",
        10,
        1,
        3600,
        "an answer that is not a stream (a page, JSON, a file) has this long, seconds, from "
        "when the socket first could not take it, to be taken whole; then it is cut "
        "(`outcome=deadline`)",
        2,
    )
    max_waiting_answers: int = number(
        "STREAMHTML_MAX_WAITING_ANSWERS",
        16,
        1,
        4096,
        "answers that are not streams that may wait on a worker's threads at once for clients "
        "that do not take them; past it such an answer is cut at once (`outcome=deadline`)",
    )
    max_head_bytes: int = number(
        "STREAMHTML_MAX_HEAD_BYTES",
        16 * KiB,
        1 * KiB,
        1 * MiB,
        "largest request head (request line and headers), bytes; a longer one gets 431",
    )
    max_export_streams: int = number(
        "STREAMHTML_MAX_EXPORT_STREAMS",
        8,
        1,
        100_000,
        "concurrent /export.csv and /export.ndjson downloads per instance; more get 503",
        3,
    )
    export_batch_rows: int = number(
        "STREAMHTML_EXPORT_BATCH_ROWS",
        15_000,
        1,
        1_000_000,
        "rows an export reads in one query (keyset pages of at most this many rows, and of "
        "about 1 MiB); between pages it holds no database connection",
        200,
    )
    dataset_rows: int = number(
        "STREAMHTML_DATASET_ROWS",
        100_000,
        0,
        100_000_000,
        "rows of the embedded SQLite dataset, made at start when no database is bound",
        2000,
    )
    db_pool_size: int = number(
        "STREAMHTML_DB_POOL_SIZE",
        4,
        1,
        1000,
        "PostgreSQL connections per worker at most; instances x workers x this must fit "
        "the service plan's connection limit",
    )
    db_pool_timeout_s: int = number(
        "STREAMHTML_DB_POOL_TIMEOUT_S",
        5,
        1,
        600,
        "how long an export waits for a database connection before its 503",
        1,
    )
    db_statement_timeout_ms: int = number(
        "STREAMHTML_DB_STATEMENT_TIMEOUT_MS",
        30_000,
        0,
        3_600_000,
        "PostgreSQL statement_timeout of each export query, ms (0: none); a page over it "
        "ends the export unfinished",
    )


@dataclass(frozen=True)
class Content:
    """What the app serves besides the streams it makes."""

    files_dir: str = directory(
        "STREAMHTML_FILES_DIR",
        "the directory whose files `/files/<path>` serves (sendfile, Range, 304s); unset, "
        "`/files/` answers a JSON 404 that names this variable",
    )


@dataclass(frozen=True)
class Server:
    """gunicorn's settings (gunicorn.conf.py reads these and nothing else)."""

    port: int = number(
        "PORT", 8080, 1, 65_535, "TCP port, bound on 0.0.0.0 (Cloud Foundry sets it)"
    )
    workers: int = number("WEB_CONCURRENCY", 2, 1, 64, "gunicorn worker processes")
    worker_class: str = choice(
        "GUNICORN_WORKER_CLASS",
        "gthread",
        WORKER_CLASSES,
        "worker class; sync is for comparison only and has none of the defences",
    )
    # 516: one worker can carry the instance's whole stream cap (500) with its 16 spare threads,
    # as gunicorn hands a burst of connections to whichever worker accepts first, and under
    # 500 at once one worker took 497 or more of them in 2 runs of 7 (tests/test_reliability.py).
    threads: int = number(
        "GUNICORN_THREADS",
        516,
        RESERVED_THREADS + 1,
        4096,
        f"threads per worker; a worker admits at most this many streams less {RESERVED_THREADS}",
    )
    worker_connections: int = number(
        "GUNICORN_WORKER_CONNECTIONS",
        4000,
        100,
        100_000,
        "open connections per worker; past it the oldest idle one is closed to make room",
    )
    timeout_s: int = number(
        "GUNICORN_TIMEOUT", 30, 1, 3600, "seconds before a silent worker is restarted"
    )
    graceful_timeout_s: int = number(
        "GUNICORN_GRACEFUL_TIMEOUT",
        8,
        0,
        3600,
        "seconds in-flight requests get after SIGTERM; under Cloud Foundry's 10 s SIGKILL",
    )
    keepalive_s: int = number(
        "GUNICORN_KEEPALIVE",
        120,
        0,
        3600,
        "seconds an idle keep-alive connection is kept; over gorouter's 90 s, so it closes first",
    )
    backlog: int = number("GUNICORN_BACKLOG", 2048, 1, 65_535, "listen queue length")
    log_level: str = choice("LOG_LEVEL", "info", LOG_LEVELS, "gunicorn's and the app's log level")
    log_requests: str = choice(
        "LOG_REQUESTS", "on", ("on", "off"), "one log line per request; metrics count either way"
    )
    log_format: str = choice(
        "LOG_FORMAT",
        "json",
        LOG_FORMATS,
        "one JSON line per record for Cloud Foundry, or plain text for a terminal",
    )


@dataclass(frozen=True)
class Settings:
    limits: Limits = Limits()
    content: Content = Content()
    server: Server = Server()
    instance: Instance = Instance()
    # Where exports read rows; the default is an embedded SQLite file of the default size.
    source: Source = field(
        default_factory=lambda: resolve_source({}, Limits().dataset_rows), compare=False, repr=False
    )

    @property
    def max_streams_per_worker(self) -> int:
        if self.server.worker_class != "gthread":
            return 1  # a sync worker serves one request at a time
        return self.server.threads - RESERVED_THREADS

    @property
    def stream_memory_budget_bytes(self) -> int | None:
        """What streams may hold on this instance, or None when the platform set no limit."""
        if self.instance.memory_limit_bytes is None:
            return None
        return self.instance.memory_limit_bytes * self.limits.stream_memory_percent // 100


def declared(group: type) -> Iterator[tuple[str, Setting]]:
    """(field name, Setting) of every setting declared on a dataclass."""
    for item in fields(group):
        yield item.name, item.metadata["setting"]


def all_settings() -> list[Setting]:
    return [spec for group in (Limits, Content, Server) for _, spec in declared(group)]


def _read_group(group: type, environ: Mapping[str, str]) -> Any:
    return group(**{name: spec.read(environ) for name, spec in declared(group)})


def small_limits() -> Limits:
    """The limits the tests run with."""
    values: dict[str, Any] = {
        name: spec.small for name, spec in declared(Limits) if spec.small is not None
    }
    return Limits(**values)


def small_limits_env() -> dict[str, str]:
    """The same small limits, as the environment a test server starts with."""
    return {spec.env: str(spec.small) for _, spec in declared(Limits) if spec.small is not None}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    server = _read_group(Server, environ)
    if server.worker_connections < server.threads:
        # gthread keeps idle connections only above its threads: none would be kept alive.
        raise SettingsError(
            f"GUNICORN_WORKER_CONNECTIONS ({server.worker_connections}) must be at least "
            f"GUNICORN_THREADS ({server.threads})"
        )
    limits = _read_group(Limits, environ)
    return Settings(
        limits=limits,
        content=_read_group(Content, environ),
        server=server,
        instance=read_instance(environ),
        source=resolve_source(environ, limits.dataset_rows),
    )


# --- the table in docs/operations.md ---------------------------------------------------------


def markdown_table() -> str:
    rows = ["| variable | default | accepted | what it sets |", "|---|---|---|---|"]
    for spec in all_settings():
        default = f"`{spec.default}`" if spec.default != "" else "unset"
        rows.append(f"| `{spec.env}` | {default} | {spec.accepted} | {spec.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
