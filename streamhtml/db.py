"""Connecting to the databases exports read: one connection, credentials kept out of words,
PEM material from a binding written where libpq can read it, the embedded dataset's lock, and
a page's COPY read through libpq, its last row's id found.

Shared by streamhtml/rows.py (the app) and streamhtml/dataset.py (the fill command).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile

from .settings import Source


def redact(text: str, source: Source) -> str:
    """`text` with the source's user and password taken out."""
    for secret in source.secrets():
        text = text.replace(secret, "***")
    return text


def pem_files(source: Source) -> dict[str, str]:
    """Write PEM material from the binding's credentials to private files libpq can read."""
    if not source.pem:
        return {}
    directory = tempfile.mkdtemp(prefix="streamhtml-pg-tls-")
    paths = {}
    for key, text in source.pem:
        path = os.path.join(directory, key + ".pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as pem:
            pem.write(text)
        paths[key] = path
    return paths


def connect_once(source: Source):
    """One psycopg connection to the source, outside any pool (the dataset command)."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    return psycopg.connect(make_conninfo(source.url, **pem_files(source)), autocommit=True)


def take_fill_lock(path: str):
    """The lock one maker of the embedded dataset holds; None when another holds it."""
    lock = open(path + ".lock", "a")  # noqa: SIM115 - held until the process ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def copy_out(pgconn, query: bytes, into: bytearray) -> int:
    """Run `query`, a `COPY ... TO STDOUT`, on psycopg's libpq connection (`Connection.pgconn`,
    documented for features psycopg does not wrap) and append what it writes to `into`; the
    rows the server counted. psycopg's own Copy makes a Python object and a generator step of
    each row: twice the CPU, on a core the server's COPY needs (make bench --exports-only).
    A failure is raised as psycopg raises it (`errors.lookup` of its SQLSTATE), and a
    connection left mid-COPY is not idle, so the pool closes it rather than reuse it."""
    import select

    import psycopg
    from psycopg import errors, pq

    waiting = select.poll()
    waiting.register(pgconn.socket, select.POLLIN)
    pgconn.send_query(query)
    while pgconn.flush():  # non-blocking: the query may leave in pieces
        waiting.modify(pgconn.socket, select.POLLIN | select.POLLOUT)
        waiting.poll()
        pgconn.consume_input()
    waiting.modify(pgconn.socket, select.POLLIN)
    pgconn.consume_input()
    while pgconn.is_busy():
        waiting.poll()
        pgconn.consume_input()
    results = [pgconn.get_result()]
    if results[0] is not None and results[0].status == pq.ExecStatus.COPY_OUT:
        take = pgconn.get_copy_data
        while True:
            size, row = take(1)
            if size > 0:
                into += row
            elif size == 0:  # nothing whole in libpq's buffer: wait for the socket
                waiting.poll()
                pgconn.consume_input()
            else:
                break
        results = []
    while (result := pgconn.get_result()) is not None:
        results.append(result)
    rows = -1
    for result in results:
        if result is None or result.status == pq.ExecStatus.FATAL_ERROR:
            message = pgconn.error_message if result is None else result.error_message
            text = message.decode("utf-8", "replace").strip() or "the COPY failed"
            if pgconn.status != pq.ConnStatus.OK:
                raise psycopg.OperationalError(text)
            sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE) if result else None
            try:
                failure = errors.lookup(sqlstate.decode()) if sqlstate else psycopg.DatabaseError
            except KeyError:
                failure = psycopg.DatabaseError
            raise failure(text)
        if result.status == pq.ExecStatus.COMMAND_OK and result.command_tuples is not None:
            rows = result.command_tuples
    return rows


def page_last_id(data: bytes, csv: bool) -> int:
    """The id of a page's last row, the next page's start. A CSV field holds a newline only
    inside quotes, and quotes come in pairs (one inside a field is doubled): a newline ends a
    row when an even number of quotes come before it, or, the page being whole rows, after it
    (only the tail is counted). JSON text holds no raw newline at all."""
    end = len(data) - 1  # the last row's own newline
    while True:
        start = data.rfind(b"\n", 0, end) + 1
        if start == 0 or not csv or data.count(b'"', start) % 2 == 0:
            break
        end = start - 1
    line = data[start:]
    if csv:
        return int(line[: line.index(b",")])  # the id leads, never quoted: digits only
    return int(json.loads(line)["id"])
