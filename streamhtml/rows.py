"""Rows of the table `dataset`, read page by page from SQLite or PostgreSQL, as CSV or NDJSON.

An export is a series of keyset pages (`WHERE id > last ORDER BY id LIMIT n`), never OFFSET,
as Datasette streams its CSV: each page is one short query, under the statement timeout, read
whole (about PAGE_BYTES) and sent before the next is asked for. So a slow reader slows the
reading, memory holds one page, and a client that never reads holds no database connection:
a connection is taken from the pool for one page and given back at once. PostgreSQL writes
the page itself (`COPY (...) TO STDOUT`, CSV or one JSON object per line), the fastest path;
SQLite's rows are written here.

No Flask here: the routes (streamhtml/exports.py) hand `export()` to the stream helper.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import io
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from . import capacity
from .dataset import COLUMNS, TABLE, make_in_background
from .db import copy_out, page_last_id, pem_files, redact
from .settings import Limits, Source
from .stream import StreamFailed

CSV = "csv"
NDJSON = "ndjson"
CHUNK_BYTES = 64 * 1024
# A page is read whole before it is sent: its rows are chosen to come to about this much.
# Pages of 1 MiB ran at 0.93x psql's rate, of 512 KiB at 0.86x (fewer turns of query and send).
PAGE_BYTES = 1024 * 1024
# The first page's rows: their width is not known until a page is read, and a table of wide
# rows read STREAMHTML_EXPORT_BATCH_ROWS at a time (100 KB rows, 15,000 of them) would hold
# 1.5 GB. From the second page on, a page's rows are chosen by the width of the last page's.
FIRST_PAGE_ROWS = 16
# What an export holds at most besides its socket: a page, and the chunk being sent.
EXPORT_HELD_BYTES = 2 * PAGE_BYTES
# How long a client is told to wait while the embedded dataset is being made.
FILLING_RETRY_AFTER_S = 2
# A pooled connection idle this long is checked (a round trip) before a page is read on it.
CHECK_IDLE_S = 1.0
# A cancel is a connection of its own to the server; past this it is given up.
CANCEL_TIMEOUT_S = 2.0
# Failed connection attempts are logged at most this often, whatever the request rate.
CONNECT_ERROR_LOG_EVERY_S = 10.0
# How long a worker's exit waits for its pool's threads: a small share of the graceful timeout.
POOL_CLOSE_TIMEOUT_S = 1.0

log = logging.getLogger("streamhtml")

Waiting = Callable[[Callable[[], Any]], contextlib.AbstractContextManager]


def not_waiting(cancel: Callable[[], Any]) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


class SourceError(StreamFailed):
    """The database could not give a page. Before the first byte it is a 503 naming `cause`;
    after it, the export ends unfinished (no final chunk) and is logged with `cause`."""

    def __init__(self, cause: str, kind: str, retry_after_s: int = 1):
        super().__init__(cause)
        self.kind = kind  # a short label for metrics: unavailable, busy, timeout, failed, filling
        self.retry_after_s = retry_after_s


@dataclass
class Page:
    chunks: list[bytes | memoryview]
    rows: int
    last_id: int | None


def _chunked(data: bytes) -> list[bytes | memoryview]:
    """The page's bytes as chunks of about CHUNK_BYTES (a chunk is one send, one HTTP chunk)."""
    if len(data) <= CHUNK_BYTES:
        return [data] if data else []
    view = memoryview(data)
    return [view[start : start + CHUNK_BYTES] for start in range(0, len(data), CHUNK_BYTES)]


# --- SQLite -------------------------------------------------------------------------------------


def _json_row(row: tuple) -> str:
    record = dict(zip(COLUMNS, row, strict=True))
    # As PostgreSQL's row_to_json writes a timestamptz in UTC: 2026-01-01T00:00:37+00:00.
    record["created_at"] = record["created_at"].replace(" ", "T", 1) + ":00"
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


class SqliteSource:
    """The rows in a SQLite file: the embedded dataset, or a file DATABASE_URL names."""

    # Each row is Python objects here before it is CSV: 15,000 of them grew a worker by 19 MiB
    # where 5,000 grew it by 7 (make bench --exports-only), at the same speed.
    most_page_rows = 5000

    def __init__(self, source: Source, limits: Limits):
        self.source = source
        self.rows_to_make = limits.dataset_rows
        self._ready = False
        self._fill_failed = False

    def start(self) -> None:
        """At app start: make the embedded dataset if it is not there, in a child process, so
        neither /health nor any request waits for it."""
        if self.source.embedded and not os.path.exists(self.source.path):
            make_in_background(self.source.path, self.rows_to_make, self._filling_failed)

    def _filling_failed(self, why: str) -> None:
        self._fill_failed = True
        log.error("making the embedded dataset failed: %s", why)

    def check_ready(self) -> None:
        if self._ready:
            return
        if os.path.exists(self.source.path):
            self._ready = True
            return
        if self.source.embedded and self._fill_failed:
            raise SourceError("the embedded dataset could not be made; see the log", "failed")
        if self.source.embedded:
            raise SourceError(
                f"the embedded dataset ({self.rows_to_make} rows) is still being made; "
                f"retry in {FILLING_RETRY_AFTER_S} s",
                "filling",
                FILLING_RETRY_AFTER_S,
            )
        raise SourceError(f"no SQLite file at {self.source.path}", "unavailable")

    def page(
        self, fmt: str, after_id: int, rows: int, header: bool, waiting: Waiting, first=False
    ) -> Page:
        self.check_ready()
        names = ", ".join(COLUMNS)
        query = f"SELECT {names} FROM {TABLE} WHERE id > ? ORDER BY id LIMIT ?"
        try:
            db = sqlite3.connect(f"file:{self.source.path}?mode=ro", uri=True, timeout=5.0)
            try:
                with waiting(db.interrupt):
                    records = db.execute(query, (after_id, rows)).fetchall()
            finally:
                db.close()
        except sqlite3.Error as error:
            raise SourceError(f"SQLite: {error}", "failed") from None
        if fmt == CSV:
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            if header:
                writer.writerow(COLUMNS)
            writer.writerows(records)
            body = text.getvalue()
        else:
            body = "".join(_json_row(record) + "\n" for record in records)
        data = body.encode()
        return Page(_chunked(data), len(records), records[-1][0] if records else None)


# --- PostgreSQL ---------------------------------------------------------------------------------


# Exports only read, in UTC, with ISO dates: one round trip when a connection is made.
SESSION_SETTINGS = (
    "SELECT set_config('statement_timeout', %s, false), "
    "set_config('TimeZone', 'UTC', false), set_config('DateStyle', 'ISO', false), "
    "set_config('default_transaction_read_only', 'on', false)"
)


class PostgresSource:
    """The rows in PostgreSQL, through a pool of at most STREAMHTML_DB_POOL_SIZE connections
    per worker, made in the worker on first use (never in the master, never shared by a fork).
    """

    most_page_rows = 1_000_000  # PostgreSQL writes the page: only its bytes are held

    def __init__(self, source: Source, limits: Limits):
        self.source = source
        self.pool_size = limits.db_pool_size
        self.pool_timeout_s = float(limits.db_pool_timeout_s)
        self.statement_timeout_ms = limits.db_statement_timeout_ms
        self._pool: Any = None
        self._pool_pid = 0
        self._lock = threading.Lock()
        self.last_connect_error: str | None = None
        # When a connection last failed as a connection (the server went, or dropped it):
        # every connection given back before then is checked before its next page.
        self.stale_at = 0.0
        self._logged_at = 0.0

    def start(self) -> None:
        # psycopg's own logger would print connection errors as libpq words them, user
        # name included; they are logged here instead, redacted and at most every 10 s.
        logging.getLogger("psycopg").setLevel(logging.CRITICAL)

    def _made_pool(self):
        pool = self._pool
        if pool is not None and self._pool_pid == os.getpid():
            return pool
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = self._new_pool()
                self._pool_pid = os.getpid()
                # Closed while the interpreter still runs threads: left to the pool's __del__
                # at finalization, it waits 5 s for each of its (by then frozen) threads, and
                # the worker outlives the graceful timeout until it is killed.
                atexit.register(self.close)
            return self._pool

    def _new_pool(self):
        import psycopg
        from psycopg_pool import ConnectionPool

        owner = self
        timeout_ms = str(self.statement_timeout_ms)

        class Connection(psycopg.Connection):
            # When it was last given back to the pool (see `check` below).
            given_back_at = 0.0

            # Each connection attempt's failure is kept (redacted), so a 503 can say why.
            @classmethod
            def connect(cls, *args, **kwargs):
                try:
                    made = super().connect(*args, **kwargs)
                except psycopg.Error as error:
                    owner._connect_failed(error)
                    raise
                owner.last_connect_error = None
                return made

        def configure(connection) -> None:
            connection.execute(SESSION_SETTINGS, (timeout_ms,))

        def check(connection) -> None:
            # A round trip before every page was a seventh of an export's time. A connection
            # given back moments ago (the last page of this export, most often) is taken as it
            # is: should the server have dropped it in between, that page fails, as a page
            # whose backend is terminated fails; one idle for longer is checked first.
            given_back_at = connection.given_back_at
            if time.monotonic() - given_back_at >= CHECK_IDLE_S or given_back_at <= self.stale_at:
                ConnectionPool.check_connection(connection)

        pool = ConnectionPool(
            self.source.url,
            connection_class=Connection,
            kwargs={
                "autocommit": True,
                "application_name": "streamhtml",
                "connect_timeout": max(1, int(self.pool_timeout_s)),
                **pem_files(self.source),
            },
            min_size=1,
            max_size=self.pool_size,
            timeout=self.pool_timeout_s,
            # psycopg_pool retries a failed connection with a doubling delay (1, 2, 4, 8 s...)
            # for reconnect_timeout (5 min by default), and starts no other attempt meanwhile:
            # after an outage of a minute, exports would still get 503 for half a minute more.
            # Given up after as long as a client waits, the next export tries again at once.
            reconnect_timeout=self.pool_timeout_s,
            configure=configure,
            check=check,
            name="streamhtml",
            open=False,
        )
        pool.open(wait=False)
        return pool

    def _connect_failed(self, error: Exception) -> None:
        cause = redact(" ".join(str(error).split()), self.source)
        self.last_connect_error = cause
        now = time.monotonic()
        if now - self._logged_at >= CONNECT_ERROR_LOG_EVERY_S:
            self._logged_at = now
            log.warning("database connection failed: %s", cause)

    @contextlib.contextmanager
    def _connection(self):
        from psycopg_pool import PoolTimeout

        pool = self._made_pool()
        capacity.count_db(waiting=1)
        try:
            connection = pool.getconn()
        except PoolTimeout:
            cause = self.last_connect_error
            if cause:
                raise SourceError(f"the database is unavailable: {cause}", "unavailable") from None
            raise SourceError(
                f"all {self.pool_size} database connections of this worker are busy "
                f"(STREAMHTML_DB_POOL_SIZE); waited {self.pool_timeout_s:g} s",
                "busy",
            ) from None
        finally:
            capacity.count_db(waiting=-1)
        capacity.count_db(in_use=1)
        try:
            yield connection
        finally:
            capacity.count_db(in_use=-1)
            connection.given_back_at = time.monotonic()
            pool.putconn(connection)

    def _copy_query(self, fmt: str, after_id: int, rows: int, header: bool):
        from psycopg import sql

        names = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
        select = sql.SQL("SELECT {} FROM {} WHERE id > {} ORDER BY id LIMIT {}").format(
            names, sql.Identifier(TABLE), sql.Literal(after_id), sql.Literal(rows)
        )
        if fmt == CSV:
            options = "FORMAT csv, HEADER" if header else "FORMAT csv"
            return sql.SQL("COPY ({}) TO STDOUT WITH ({})").format(select, sql.SQL(options))
        # One JSON object a line, as PostgreSQL writes it: CSV with a quote and a delimiter
        # that JSON text never holds raw (it escapes every control character), so each line
        # leaves exactly as row_to_json made it.
        return sql.SQL(
            "COPY (SELECT row_to_json(page) FROM ({}) page) TO STDOUT "
            "WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
        ).format(select)

    def page(
        self, fmt: str, after_id: int, rows: int, header: bool, waiting: Waiting, first=False
    ) -> Page:
        import psycopg

        query = self._copy_query(fmt, after_id, rows, header)
        # libpq gives a row at a time; each is appended here and dropped at once. A page held
        # as a list of row objects set the garbage collector scanning them again and again, a
        # quarter of an export's time (make bench --exports-only).
        written = bytearray()
        try:
            with (
                self._connection() as connection,
                waiting(partial(connection.cancel_safe, timeout=CANCEL_TIMEOUT_S)),
            ):
                # COPY's own count: the rows, never the header.
                count = copy_out(connection.pgconn, query.as_bytes(connection), written)
        except psycopg.errors.QueryCanceled as error:
            cause = redact(" ".join(str(error).split()), self.source)
            raise SourceError(f"PostgreSQL: query cancelled: {cause}", "timeout") from None
        except psycopg.OperationalError as error:
            self.stale_at = time.monotonic()
            if first:
                # Nothing is sent yet: once more, on a connection checked first, so a server
                # that restarted is a page, and one that is down is a 503 that says so.
                return self.page(fmt, after_id, rows, header, waiting)
            cause = redact(" ".join(str(error).split()) or type(error).__name__, self.source)
            raise SourceError(f"PostgreSQL: {cause}", "failed") from None
        except psycopg.Error as error:
            cause = redact(" ".join(str(error).split()) or type(error).__name__, self.source)
            raise SourceError(f"PostgreSQL: {cause}", "failed") from None
        data = bytes(written)
        last_id = page_last_id(data, fmt == CSV) if count > 0 else None
        return Page(_chunked(data), max(count, 0), last_id)

    def close(self) -> None:
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.close(timeout=POOL_CLOSE_TIMEOUT_S)
        self._pool = None


RowSource = SqliteSource | PostgresSource


def open_source(source: Source, limits: Limits) -> RowSource:
    if source.kind == "postgresql":
        return PostgresSource(source, limits)
    return SqliteSource(source, limits)


def export(
    rows_source: RowSource,
    fmt: str,
    after_id: int,
    limit: int | None,
    page_rows: int,
    waiting: Waiting = not_waiting,
    counted: Callable[[int], None] | None = None,
    failed: Callable[[str], None] | None = None,
) -> Iterator[bytes | memoryview]:
    """The rows after `after_id`, at most `limit`, as chunks of CSV (a header first) or NDJSON.

    Each page is read whole, then sent; the next is read once the last chunk of this one
    was taken. `waiting(cancel)` covers each read: a hang-up meanwhile calls cancel().
    """
    sent = 0
    page_rows = min(page_rows, rows_source.most_page_rows)
    rows_next = min(page_rows, FIRST_PAGE_ROWS)
    header = fmt == CSV
    hung_up: list[bool] = []

    def watched(cancel: Callable[[], Any]) -> contextlib.AbstractContextManager:
        def on_hang_up() -> None:
            # A query cancelled because the client left is no failure of the database.
            hung_up.append(True)
            cancel()

        return waiting(on_hang_up)

    first = True  # no byte is sent before the first page
    while limit is None or sent < limit:
        asked = rows_next if limit is None else min(rows_next, limit - sent)
        try:
            page = rows_source.page(fmt, after_id, asked, header, watched, first=first)
        except SourceError as error:
            if failed is not None and not hung_up:
                failed(error.kind)
            raise
        header = first = False
        yield from page.chunks
        sent += page.rows
        if counted is not None:
            counted(page.rows)
        if page.rows < asked or page.last_id is None:
            return
        after_id = page.last_id
        # Wide rows make smaller pages: a page stays near PAGE_BYTES, whatever the table.
        page_bytes = sum(map(len, page.chunks)) or 1
        rows_next = max(1, min(page_rows, page.rows * PAGE_BYTES // page_bytes))
