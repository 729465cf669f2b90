"""What the platform tells the app through the environment: which instance this is, its
memory quota, and where exports read rows (DATABASE_URL, a bound PostgreSQL service in
VCAP_SERVICES, or the embedded SQLite file). streamhtml/settings.py reads the environment and
hands it here; nothing here reads os.environ itself.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from .numbers import parse_bounded


class SettingsError(ValueError):
    """A setting in the environment is invalid; the message names the variable."""


@dataclass(frozen=True)
class Instance:
    """What the platform says about this instance (never refused: it is not the operator's)."""

    app_name: str = "streamhtml"
    instance_index: str | None = None
    memory_limit_bytes: int | None = None


# --- what the platform sets ------------------------------------------------------------------

_MEMORY = re.compile(r"([0-9]{1,9})\s*([KMGT]?)B?", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(text: str) -> int | None:
    """Bytes of a Cloud Foundry size such as `768m`, `768M`, `1G` or `512MB`; None if not one."""
    match = _MEMORY.fullmatch(text.strip())
    if not match:
        return None
    return int(match[1]) * _MEMORY_UNITS[match[2].upper()] or None


def _vcap_application(environ: Mapping[str, str]) -> dict:
    try:
        parsed = json.loads(environ.get("VCAP_APPLICATION", "{}"))
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def read_instance(environ: Mapping[str, str]) -> Instance:
    name = _vcap_application(environ).get("name")
    raw_index = environ.get("CF_INSTANCE_INDEX", "")
    return Instance(
        app_name=name if isinstance(name, str) and name else "streamhtml",
        instance_index=raw_index if parse_bounded(raw_index, 0, 1_000_000) is not None else None,
        memory_limit_bytes=parse_memory(environ.get("MEMORY_LIMIT", "")),
    )


# --- where exported rows come from --------------------------------------------------------

POSTGRES_SCHEMES = ("postgres", "postgresql")
# The embedded dataset's file name says its rows and layout, so a changed size or layout is
# a new file, never a stale one.
DATASET_LAYOUT = 1
# Credentials fields some brokers give as PEM text rather than files; libpq wants files.
PEM_FIELDS = ("sslrootcert", "sslcert", "sslkey")


@dataclass(frozen=True)
class Source:
    """The database exports read: PostgreSQL from a URL, or the embedded SQLite file.

    `url` holds credentials: it is never printed (repr) and never leaves through /info;
    `describe()` is what may be shown.
    """

    kind: str  # "postgresql" or "sqlite"
    origin: str  # "DATABASE_URL", "VCAP_SERVICES binding NAME", or "embedded"
    url: str = field(default="", repr=False)
    path: str = ""  # the SQLite file
    host: str = ""
    port: int | None = None
    database: str = ""
    pem: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    embedded: bool = False

    def describe(self) -> dict:
        if self.kind == "sqlite":
            return {"kind": "sqlite", "origin": self.origin, "path": self.path}
        return {
            "kind": "postgresql",
            "origin": self.origin,
            "host": self.host,
            "port": self.port,
            "database": self.database,
        }

    def secrets(self) -> tuple[str, ...]:
        """The strings no log line or error body may hold: the user and the password."""
        if self.kind != "postgresql":
            return ()
        parts = urlsplit(self.url)
        found = [unquote(part) for part in (parts.username, parts.password) if part]
        return tuple(text for text in found if len(text) >= 3)


def _postgres_source(url: str, origin: str, pem: tuple = ()) -> Source:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # Never the value itself in the message: it holds the password.
        raise SettingsError(f"{origin} is not a valid postgres:// URL") from None
    return Source(
        kind="postgresql",
        origin=origin,
        url=url,
        host=parts.hostname or "",
        port=port,
        database=unquote(parts.path.lstrip("/")),
        pem=pem,
    )


def embedded_dataset_path(rows: int, directory: str | None = None) -> str:
    name = f"streamhtml-dataset-v{DATASET_LAYOUT}-{rows}-rows.sqlite"
    return os.path.join(directory or tempfile.gettempdir(), name)


def _bound_postgres(environ: Mapping[str, str]) -> Source | None:
    """The first VCAP_SERVICES binding whose credentials hold a postgres:// uri (or url),
    whatever its label: labels and tags differ from broker to broker, the scheme does not."""
    raw = environ.get("VCAP_SERVICES", "")
    if not raw.strip():
        return None
    try:
        services = json.loads(raw)
    except ValueError:
        raise SettingsError("VCAP_SERVICES is not valid JSON") from None
    if not isinstance(services, dict):
        raise SettingsError("VCAP_SERVICES is not a JSON object")
    for bindings in services.values():
        for binding in bindings if isinstance(bindings, list) else ():
            credentials = binding.get("credentials") if isinstance(binding, dict) else None
            if not isinstance(credentials, dict):
                continue
            for key in ("uri", "url"):
                url = credentials.get(key)
                if isinstance(url, str) and url.split(":", 1)[0].lower() in POSTGRES_SCHEMES:
                    name = binding.get("name") or binding.get("label") or "?"
                    pem = tuple(
                        (key, credentials[key])
                        for key in PEM_FIELDS
                        if isinstance(credentials.get(key), str)
                        and "-----BEGIN" in credentials[key]
                    )
                    return _postgres_source(url, f"VCAP_SERVICES binding {name}", pem)
    return None


def resolve_source(environ: Mapping[str, str], dataset_rows: int) -> Source:
    """DATABASE_URL if set; else the first PostgreSQL binding; else the embedded SQLite."""
    url = environ.get("DATABASE_URL", "").strip()
    if url:
        scheme = url.split(":", 1)[0].lower()
        if scheme in POSTGRES_SCHEMES:
            return _postgres_source(url, "DATABASE_URL")
        if scheme == "sqlite" and url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
            path = unquote(url[len("sqlite:///") - 1 :])
            return Source(kind="sqlite", origin="DATABASE_URL", path=path)
        raise SettingsError("DATABASE_URL must start with postgres://, postgresql:// or sqlite:///")
    bound = _bound_postgres(environ)
    if bound is not None:
        return bound
    return Source(
        kind="sqlite",
        origin="embedded",
        path=embedded_dataset_path(dataset_rows),
        embedded=True,
    )
