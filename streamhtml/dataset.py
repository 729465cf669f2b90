"""The table `dataset` that exports read: its layout, its rows, and how it is made.

`python -m streamhtml.dataset --rows N` fills whichever database the settings resolve to
(DATABASE_URL, a PostgreSQL binding in VCAP_SERVICES, else the embedded SQLite file): on Cloud
Foundry, `cf run-task` runs it against the bound database. The embedded SQLite file is made
by the app itself at start (streamhtml/rows.py starts this module as a child process), built
beside its final name and renamed into place, so a reader sees no file or a whole one.

The rows are the same for the same N in every database: `id` 1..N, a timestamp, a number, a
text, and a nullable note in which some rows hold commas, double quotes, newlines and
non-ASCII characters, so CSV quoting and JSON escaping are exercised.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

COLUMNS = ("id", "created_at", "amount_cents", "name", "note")
TABLE = "dataset"
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
_ADJECTIVES = ("amber", "brisk", "calm", "dusty", "eager", "faint", "gentle", "hollow")
_NOUNS = ("anchor", "basket", "candle", "drum", "easel", "feather", "garnet", "harbor", "ink")
# Every sort of text a CSV or JSON writer can get wrong, and None (SQL NULL).
_NOTES = (
    None,
    "plain note",
    "has, a comma",
    'says "hello"',
    "two\nlines",
    "crlf\r\nline",
    "Zoë's café, naïve",
    "東京 · München · Ελλάδα",
    "emoji 🚀 and tab\there",
    None,
    'all of them: ,"\n',
    "back\\slash",
)

_SQLITE_SCHEMA = (
    f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, "
    "amount_cents INTEGER NOT NULL, name TEXT NOT NULL, note TEXT)"
)
_POSTGRES_SCHEMA = (
    "CREATE TABLE {table} (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, "
    "amount_cents bigint NOT NULL, name text NOT NULL, note text)"
)


def timestamp_text(row_id: int) -> str:
    """A row's created_at as PostgreSQL writes a timestamptz in UTC (COPY, DateStyle ISO)."""
    return (EPOCH + timedelta(seconds=row_id * 37)).strftime("%Y-%m-%d %H:%M:%S+00")


def dataset_rows(count: int, first: int = 1) -> Iterator[tuple]:
    """Rows `first`..`count`, each the same every time."""
    adjectives, nouns, notes = len(_ADJECTIVES), len(_NOUNS), len(_NOTES)
    for row_id in range(first, count + 1):
        yield (
            row_id,
            timestamp_text(row_id),
            (row_id * 7919) % 1_000_003 - 250_000,
            f"{_ADJECTIVES[row_id % adjectives]} {_NOUNS[row_id // 3 % nouns]} {row_id}",
            _NOTES[row_id % notes],
        )


class DatasetExists(RuntimeError):
    """The table already has rows, and replacing them was not asked for."""


# --- SQLite ------------------------------------------------------------------------------------


class ParentGone(RuntimeError):
    """The worker that asked for the dataset is gone: the half-made file goes with it."""


def _while_parent_lives(rows: Iterator[tuple], parent: int | None) -> Iterator[tuple]:
    for number, row in enumerate(rows):
        if parent is not None and number % 10_000 == 0 and os.getppid() != parent:
            raise ParentGone(f"the process that asked for the dataset ({parent}) is gone")
        yield row


def fill_sqlite(path: str, rows: int, replace: bool = False, parent: int | None = None) -> None:
    """Make the SQLite file at `path` with `rows` rows: built aside, then renamed into place.
    With `parent`, making it stops (and leaves nothing) once that process is gone."""
    if os.path.exists(path) and not replace:
        raise DatasetExists(f"{path} already exists; pass --replace to make it again")
    building = f"{path}.building-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(building)
    try:
        db = sqlite3.connect(building)
        try:
            # Nothing reads the file until it is renamed: no journal, no waiting for the disk.
            db.execute("PRAGMA journal_mode = OFF")
            db.execute("PRAGMA synchronous = OFF")
            db.execute(_SQLITE_SCHEMA)
            placeholders = ", ".join("?" * len(COLUMNS))
            made = _while_parent_lives(dataset_rows(rows), parent)
            db.executemany(f"INSERT INTO {TABLE} VALUES ({placeholders})", made)
            db.commit()
        finally:
            db.close()
        os.replace(building, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(building)


def make_in_background(path: str, rows: int, failed: Callable[[str], None]) -> None:
    """Make the embedded SQLite file at `path` in a child process (this module), so neither
    /health nor any request waits for it; `failed(why)` if it could not. Every worker may
    ask: the child that gets the lock makes the file, the others end at once."""
    import subprocess  # here, not at the top: a worker whose dataset is made never needs it

    command = [sys.executable, "-m", "streamhtml.dataset", "--rows", str(rows)]
    command += ["--sqlite", path, "--quiet-if-busy", "--parent", str(os.getpid())]
    try:
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    except OSError as error:
        failed(f"could not start: {error}")
        return

    def wait() -> None:
        # The child's words reach the log through the app's, one line, not as raw text.
        _, said = child.communicate()
        if child.returncode:
            failed(
                f"({child.returncode}) " + " ".join(said.decode(errors="replace").split())[-500:]
            )

    threading.Thread(target=wait, name="dataset-filler", daemon=True).start()


# --- PostgreSQL -------------------------------------------------------------------------------


def fill_postgres(connect, rows: int, replace: bool = False) -> None:
    """Fill `dataset` through `connect()` (a psycopg connection): built as a new table and
    swapped in within one transaction, so running exports see the old rows or the new."""
    from psycopg import sql

    with connect() as db:
        exists = db.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()[0]
        if exists and not replace:
            held = db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(TABLE)))
            count = held.fetchone()[0]
            raise DatasetExists(
                f"table {TABLE} already exists with {count} rows; pass --replace to rebuild it"
            )
        building = sql.Identifier(f"{TABLE}_building")
        with db.transaction():
            db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(building))
            db.execute(sql.SQL(_POSTGRES_SCHEMA).format(table=building))
            names = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
            copy_in = sql.SQL("COPY {} ({}) FROM STDIN").format(building, names)
            with db.cursor() as cursor, cursor.copy(copy_in) as copy:
                for row in dataset_rows(rows):
                    copy.write_row(row)
            if exists:
                db.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(TABLE)))
            db.execute(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(building, sql.Identifier(TABLE))
            )
            db.execute(
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(f"{TABLE}_building_pkey"), sql.Identifier(f"{TABLE}_pkey")
                )
            )
        db.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(TABLE)))


def main(argv: list[str] | None = None) -> int:
    import argparse  # the command's alone: the app imports this module too

    parser = argparse.ArgumentParser(
        prog="python -m streamhtml.dataset",
        description="Create and fill the table `dataset` in the database the settings resolve "
        "to (DATABASE_URL, a PostgreSQL binding in VCAP_SERVICES, else the embedded SQLite).",
    )
    parser.add_argument("--rows", type=int, required=True, help="how many rows (ids 1..N)")
    parser.add_argument(
        "--replace", action="store_true", help="rebuild the table if it exists (else refuse)"
    )
    # How the app makes its embedded dataset at start: this file, once, by whichever of its
    # workers gets the lock first; the others, and a file already made, end quietly.
    parser.add_argument("--sqlite", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--quiet-if-busy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 <= args.rows <= 1_000_000_000:
        parser.error("--rows must be from 0 to 1000000000")

    from .db import connect_once, redact, take_fill_lock
    from .settings import SettingsError, Source, load_settings

    if args.sqlite:
        source = Source(kind="sqlite", origin="embedded", path=args.sqlite, embedded=True)
        lock = take_fill_lock(args.sqlite)
        if lock is None or (args.quiet_if_busy and os.path.exists(args.sqlite)):
            return 0
    else:
        try:
            source = load_settings().source
        except SettingsError as error:
            print(f"dataset: invalid setting: {error}", file=sys.stderr)
            return 2
    quiet = bool(args.sqlite)  # made by the app: only a failure is worth a line
    where = ", ".join(f"{key}={value}" for key, value in source.describe().items())
    if not quiet:
        print(f"dataset: filling {TABLE} with {args.rows} rows ({where})", flush=True)
    try:
        if source.kind == "sqlite":
            fill_sqlite(source.path, args.rows, args.replace, args.parent)
        else:
            fill_postgres(lambda: connect_once(source), args.rows, args.replace)
    except DatasetExists as error:
        print(f"dataset: {error}", file=sys.stderr)
        return 1
    except ParentGone:
        return 0  # the app stopped; another start makes it again
    except Exception as error:  # noqa: BLE001 - one line, credentials removed, for cf logs
        print(f"dataset: failed: {redact(str(error), source)}", file=sys.stderr)
        return 1
    if not quiet:
        print(f"dataset: done, {args.rows} rows in {TABLE}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
