"""Every setting, read from the environment in one place, validated, frozen."""

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from .numbers import parse_bounded

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "text")
# gthread serves many streams per worker and keeps long streams alive past `timeout`;
# sync is offered for comparison only (one client per worker, streams cut at `timeout`).
WORKER_CLASSES = ("gthread", "sync")


class SettingsError(ValueError):
    """A setting in the environment is invalid; the message names the variable."""


@dataclass(frozen=True)
class IntSetting:
    env: str
    default: int
    lowest: int
    highest: int
    doc: str


@dataclass(frozen=True)
class ChoiceSetting:
    env: str
    default: str
    choices: tuple[str, ...]
    doc: str


# The table the README documents: (field name -> how it is read).
LIMITS = {
    "max_block_size": IntSetting(
        "STREAMHTML_MAX_BLOCK_SIZE", 1 * MiB, 1, 64 * MiB, "largest block_size, bytes"
    ),
    "max_nblocks": IntSetting("STREAMHTML_MAX_NBLOCKS", 1_048_576, 1, 1 << 31, "largest nblocks"),
    "max_response_bytes": IntSetting(
        "STREAMHTML_MAX_RESPONSE_BYTES",
        1 * GiB,
        1,
        1 << 40,
        "largest nblocks x block_size, bytes",
    ),
    "max_sleep_ms": IntSetting(
        "STREAMHTML_MAX_SLEEP_MS", 30_000, 0, 600_000, "largest sleep_ms between blocks"
    ),
    "max_stream_duration_s": IntSetting(
        "STREAMHTML_MAX_STREAM_DURATION_S",
        600,
        1,
        86_400,
        "largest nblocks x sleep_ms, seconds (gorouter cuts at 900 s)",
    ),
    "max_csv_rows": IntSetting(
        "STREAMHTML_MAX_CSV_ROWS", 10_000_000, 1, 1_000_000_000, "largest rows for /large.csv"
    ),
    "max_streams": IntSetting(
        "STREAMHTML_MAX_STREAMS",
        500,
        1,
        100_000,
        "concurrent streams per instance, all workers together; more get 503",
    ),
}
# Threads a worker keeps free of streams, so /health and refusals always find one.
RESERVED_THREADS = 16

SERVER = {
    "port": IntSetting("PORT", 8080, 1, 65_535, "TCP port, bound on 0.0.0.0"),
    "workers": IntSetting("WEB_CONCURRENCY", 2, 1, 64, "gunicorn worker processes"),
    "worker_class": ChoiceSetting(
        "GUNICORN_WORKER_CLASS", "gthread", WORKER_CLASSES, "gunicorn worker class"
    ),
    "threads": IntSetting(
        "GUNICORN_THREADS", 512, 1, 4096, "threads per gthread worker = concurrent requests"
    ),
    "timeout_s": IntSetting(
        "GUNICORN_TIMEOUT", 30, 1, 3600, "worker silent-for-this-long is restarted, seconds"
    ),
    "graceful_timeout_s": IntSetting(
        "GUNICORN_GRACEFUL_TIMEOUT", 8, 0, 3600, "time in-flight requests get after SIGTERM"
    ),
    "keepalive_s": IntSetting(
        "GUNICORN_KEEPALIVE", 75, 0, 3600, "idle keep-alive connection lifetime, seconds"
    ),
    "backlog": IntSetting("GUNICORN_BACKLOG", 2048, 1, 65_535, "listen queue length"),
    "log_level": ChoiceSetting("LOG_LEVEL", "info", LOG_LEVELS, "log level"),
    "log_format": ChoiceSetting(
        "LOG_FORMAT", "json", LOG_FORMATS, "json lines for Cloud Foundry, or text for a terminal"
    ),
}


def _read(spec, environ: Mapping[str, str]):
    raw = environ.get(spec.env)
    if raw is None or raw == "":
        return spec.default
    if isinstance(spec, ChoiceSetting):
        if raw.lower() not in spec.choices:
            raise SettingsError(f"{spec.env} must be one of {', '.join(spec.choices)}; got {raw!r}")
        return raw.lower()
    value = parse_bounded(raw.strip(), spec.lowest, spec.highest)
    if value is None:
        raise SettingsError(
            f"{spec.env} must be a whole number from {spec.lowest} to {spec.highest}; got {raw!r}"
        )
    return value


def _read_table(table, environ):
    return {name: _read(spec, environ) for name, spec in table.items()}


@dataclass(frozen=True)
class Limits:
    max_block_size: int = LIMITS["max_block_size"].default
    max_nblocks: int = LIMITS["max_nblocks"].default
    max_response_bytes: int = LIMITS["max_response_bytes"].default
    max_sleep_ms: int = LIMITS["max_sleep_ms"].default
    max_stream_duration_s: int = LIMITS["max_stream_duration_s"].default
    max_csv_rows: int = LIMITS["max_csv_rows"].default
    max_streams: int = LIMITS["max_streams"].default


@dataclass(frozen=True)
class Instance:
    """What a person hitting a scaled route needs to tell instances apart."""

    app_name: str = "streamhtml"
    instance_index: str | None = None


@dataclass(frozen=True)
class Settings:
    limits: Limits = Limits()
    instance: Instance = Instance()
    # A worker admits at most this many streams, whatever the instance total.
    max_streams_per_worker: int = SERVER["threads"].default - RESERVED_THREADS


@dataclass(frozen=True)
class ServerSettings:
    port: int
    workers: int
    worker_class: str
    threads: int
    timeout_s: int
    graceful_timeout_s: int
    keepalive_s: int
    backlog: int
    log_level: str
    log_format: str


def _app_name(environ: Mapping[str, str]) -> str:
    # VCAP_APPLICATION is the platform's, not the operator's: a bad one is not worth a refusal.
    try:
        name = json.loads(environ.get("VCAP_APPLICATION", "{}")).get("name")
    except (ValueError, AttributeError):
        name = None
    return name if isinstance(name, str) and name else "streamhtml"


def _instance_index(environ: Mapping[str, str]) -> str | None:
    raw = environ.get("CF_INSTANCE_INDEX", "")
    return raw if parse_bounded(raw, 0, 1_000_000) is not None else None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    return Settings(
        limits=Limits(**_read_table(LIMITS, environ)),
        instance=Instance(app_name=_app_name(environ), instance_index=_instance_index(environ)),
        max_streams_per_worker=_streams_per_worker(environ),
    )


def _streams_per_worker(environ: Mapping[str, str]) -> int:
    if _read(SERVER["worker_class"], environ) != "gthread":
        return 1  # a sync worker serves one request at a time
    return max(1, _read(SERVER["threads"], environ) - RESERVED_THREADS)


def load_server_settings(environ: Mapping[str, str] | None = None) -> ServerSettings:
    environ = os.environ if environ is None else environ
    return ServerSettings(**_read_table(SERVER, environ))


def all_specs():
    """Every environment setting, for the README table and its test."""
    return [*LIMITS.values(), *SERVER.values()]
