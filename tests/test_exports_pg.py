"""/export.csv and /export.ndjson against a real PostgreSQL, on the wire: gunicorn started as the
Procfile does, with DATABASE_URL (or a VCAP_SERVICES binding), over 1,000,000 rows seeded by
the real `python -m streamhtml.dataset`. What the database does is read off pg_stat_activity.

A query is made to wait by an admin transaction holding `LOCK TABLE dataset IN ACCESS
EXCLUSIVE MODE`: every page query of an export then waits (state active, wait_event_type
Lock) until the lock goes, so a hang-up, a terminated backend or a second export meets a
query that is surely running.
"""

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from urllib.parse import quote, urlsplit

import psycopg
import pytest
from psycopg import sql
from support import REPO, Server, read_body, read_chunk, read_head, request, send_request

ROWS = 1_000_000
COLUMNS = ("id", "created_at", "amount_cents", "name", "note")
# The same query the app pages through, written whole, as COPY writes it (the reference).
COPY_CSV = "COPY (SELECT {} FROM dataset ORDER BY id {}) TO STDOUT WITH (FORMAT csv, HEADER)"
APP_NAME = "streamhtml"  # the pool's application_name, how pg_stat_activity tells its queries
POOL_TIMEOUT_S = 1


# --- the database ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded(postgres):
    """The session's PostgreSQL with 1,000,000 rows, filled once by the real command."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "streamhtml.dataset", "--rows", str(ROWS), "--replace"],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": postgres.url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"seeded {ROWS} rows in {time.monotonic() - started:.1f} s")
    return postgres


class Admin:
    """One superuser session, kept open, to watch the app's queries and to lock the table."""

    def __init__(self, postgres):
        self.postgres = postgres
        self._conn: psycopg.Connection | None = None

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.postgres.admin_url, autocommit=True)
            self._conn.execute("SET TimeZone = 'UTC'")
        return self._conn

    def query(self, text, params=None) -> list[tuple]:
        try:
            cursor = self.conn.execute(text, params)
        except psycopg.OperationalError:
            # The server went down and came back since (a test stops it): a new session.
            self.close()
            cursor = self.conn.execute(text, params)
        return cursor.fetchall() if cursor.description else []

    def app_queries(self, waiting_on_lock: bool = False) -> list[tuple]:
        """The app's queries running now (pid, wait_event_type, query)."""
        text = (
            "SELECT pid, wait_event_type, query FROM pg_stat_activity "
            "WHERE application_name = %s AND state = 'active'"
        )
        if waiting_on_lock:
            text += " AND wait_event_type = 'Lock'"
        return self.query(text, (APP_NAME,))

    def copy_csv(self, limit: int | None = None) -> bytes:
        """The rows as psycopg's own COPY writes them, as the superuser, in UTC."""
        query = COPY_CSV.format(", ".join(COLUMNS), "" if limit is None else f"LIMIT {limit}")
        out = bytearray()
        with self.conn.cursor() as cursor, cursor.copy(query) as copy:
            for data in copy:
                out += data
        return bytes(out)

    def table_locked(self) -> "TableLock":
        return TableLock(self.postgres)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class TableLock:
    """The table held in ACCESS EXCLUSIVE mode by a transaction of its own, from entry until
    release() or exit: every query on it waits meanwhile."""

    def __init__(self, postgres):
        self.conn = psycopg.connect(postgres.admin_url)

    def __enter__(self) -> "TableLock":
        self.conn.execute("LOCK TABLE dataset IN ACCESS EXCLUSIVE MODE")
        return self

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()

    def __exit__(self, *exc) -> None:
        self.release()


@pytest.fixture(scope="module")
def admin(seeded):
    watching = Admin(seeded)
    yield watching
    watching.close()


def wait_for(condition, timeout_s: float, what: str = "condition"):
    """Poll `condition()` until it is truthy (returned) or the deadline passes (a failure)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.02)


# --- servers ---------------------------------------------------------------------------------


def started(tmp_path_factory, name: str, env: dict) -> Server:
    return Server(tmp_path_factory.mktemp(name) / "gunicorn.log", env=env).start()


def one_worker(name: str, **env: str):
    """A fixture: the module's server `<name>_server`, one worker on the seeded database (its
    RSS and its main loop are then the server's), with `env`."""

    @pytest.fixture(scope="module", name=f"{name}_server")
    def server(seeded, tmp_path_factory):
        running = started(
            tmp_path_factory, name, {"DATABASE_URL": seeded.url, "WEB_CONCURRENCY": "1", **env}
        )
        yield running
        running.stop()

    return server


# One producing turn, room for 12 exports.
pg_server = one_worker("pg", STREAMHTML_PRODUCING_STREAMS="1", STREAMHTML_MAX_EXPORT_STREAMS="12")
# One database connection, waited for POOL_TIMEOUT_S, and two exports at most.
narrow_server = one_worker(
    "narrow",
    STREAMHTML_DB_POOL_SIZE="1",
    STREAMHTML_DB_POOL_TIMEOUT_S=str(POOL_TIMEOUT_S),
    STREAMHTML_MAX_EXPORT_STREAMS="2",
)


@pytest.fixture
def quiet(admin):
    """Each test starts and ends with no app query running and no export in progress."""

    def settled(*servers: Server) -> None:
        wait_for(lambda: not admin.app_queries(), 10, "app queries still running")
        for server in servers:
            wait_for(lambda s=server: streams_in_progress(s) == 0, 10, "streams still live")

    return settled


def streams_in_progress(server: Server) -> int:
    return json.loads(request(server.port, "/health").body)["streams_in_progress"]


# --- clients ---------------------------------------------------------------------------------


def get(server: Server, path: str, method: str = "GET", timeout_s: float = 60):
    return request(server.port, path, method, timeout_s=timeout_s)


class Download:
    """One export read off the wire on a thread of its own: the head, then chunks as they come
    (`pause_s` apart: a slow reader), and how the body ended: "complete" (the final 0-chunk
    arrived) or "cut" (the connection closed without it)."""

    def __init__(self, server: Server, path: str, pause_s: float = 0.0, keep: bool = False):
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        send_request(self.sock, path)
        self.reader = self.sock.makefile("rb")
        self.pause_s = pause_s
        self.keep = keep
        self.head = None
        self.chunks: list[bytes] = []
        self.received = 0
        self.digest = hashlib.sha256()
        self.ended: str | None = None
        self.headed = threading.Event()
        self.done = threading.Event()
        self._hung_up = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            self.head = read_head(self.reader)
            self.headed.set()
            if self.head.status != 200:
                read_body(self.reader, self.head, "GET")
                self.ended = "complete"
                return
            while (chunk := read_chunk(self.reader)) is not None:
                self.received += len(chunk)
                self.digest.update(chunk)
                if self.keep:
                    self.chunks.append(chunk)
                if self.pause_s:
                    time.sleep(self.pause_s)  # a slow reader's pace, not a synchronisation
            self.ended = "complete"
        except (OSError, ValueError):
            self.ended = "hung up" if self._hung_up else "cut"
        finally:
            self.headed.set()
            self.done.set()

    def wait(self, timeout_s: float = 60) -> "Download":
        assert self.done.wait(timeout_s), f"download not over in {timeout_s} s"
        return self

    def hang_up(self) -> None:
        """Close the connection as a client process that leaves does: a reset when bytes it
        never read are left (mid-stream), else a FIN. Shutting the reading side first only
        wakes the thread blocked reading it; the peer is sent nothing by that."""
        self._hung_up = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)
        self._thread.join(10)
        assert not self._thread.is_alive()
        self.reader.close()
        self.sock.close()

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


@contextlib.contextmanager
def export_waiting_on_lock(admin: Admin, server: Server, path: str, mid_stream: bool):
    """An export whose page query waits on the table's lock: before its first byte (the lock
    is taken first), or mid-stream (taken once the head came, so the first page was read).
    Yields the download and the lock; on exit the lock goes, then the client hangs up."""
    download = lock = None
    try:
        if mid_stream:
            download = Download(server, path)
            assert download.headed.wait(30), "no head"
            assert download.head.status == 200, download.head
        lock = admin.table_locked().__enter__()
        if download is None:
            download = Download(server, path)
        wait_for(lambda: admin.app_queries(waiting_on_lock=True), 10, "a query waiting")
        yield download, lock
    finally:
        if lock is not None:
            lock.release()
        if download is not None:
            download.hang_up()


def rows_of_csv(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode(), newline="")))


def ids_of_csv(body: bytes) -> list[int]:
    rows = rows_of_csv(body)
    assert rows[0] == list(COLUMNS)
    return [int(row[0]) for row in rows[1:]]


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+) kB", status.read()).group(1))


# --- what an export sends ---------------------------------------------------------------------


def test_a_csv_slice_is_byte_identical_to_postgresqls_own_copy(pg_server, admin):
    limit = 123_457  # some 9 pages, the last one short
    response = get(pg_server, f"/export.csv?limit={limit}")

    assert response.status == 200 and response.chunked
    assert response.header("Content-Type") == "text/csv; charset=utf-8"
    assert response.header("Content-Disposition").startswith("attachment")
    assert response.body == admin.copy_csv(limit)


def test_an_ndjson_slice_reproduces_the_tables_rows(pg_server, admin):
    after_id, limit = 500_000, 12_000
    response = get(pg_server, f"/export.ndjson?after_id={after_id}&limit={limit}")

    assert response.status == 200 and response.header("Content-Type") == "application/x-ndjson"
    lines = response.body.decode().split("\n")
    assert lines[-1] == "", "every line ends with a newline"
    records = [json.loads(line) for line in lines[:-1]]
    table = admin.query(
        "SELECT id, created_at, amount_cents, name, note FROM dataset WHERE id > %s "
        "ORDER BY id LIMIT %s",
        (after_id, limit),
    )
    assert len(records) == len(table) == limit
    assert all(tuple(record) == COLUMNS for record in records), "id first, every column"
    as_read = [
        (r["id"], datetime.fromisoformat(r["created_at"]), r["amount_cents"], r["name"], r["note"])
        for r in records
    ]
    assert as_read == table
    notes = {record["note"] for record in records}
    assert None in notes and any(note and "\n" in note and '"' in note for note in notes)


def test_after_id_resumes_by_keyset_and_limit_bounds_the_rows(pg_server):
    first = get(pg_server, "/export.csv?limit=7000")
    last_id = ids_of_csv(first.body)[-1]
    rest = get(pg_server, f"/export.csv?after_id={last_id}&limit=7000")
    both = get(pg_server, "/export.csv?limit=14000")

    assert ids_of_csv(first.body) == list(range(1, 7001))
    assert ids_of_csv(rest.body) == list(range(7001, 14001))
    header, _, rest_rows = rest.body.partition(b"\n")
    assert first.body + rest_rows == both.body, "two resumed halves make the whole"

    assert ids_of_csv(get(pg_server, f"/export.csv?after_id={ROWS - 10}").body) == list(
        range(ROWS - 9, ROWS + 1)
    )
    end = get(pg_server, f"/export.csv?after_id={ROWS}")
    assert end.status == 200 and end.body == header + b"\n", "past the last row: the header"
    assert get(pg_server, f"/export.ndjson?after_id={ROWS}").body == b""
    ndjson = get(pg_server, "/export.ndjson?after_id=41&limit=3").body.decode().splitlines()
    assert [json.loads(line)["id"] for line in ndjson] == [42, 43, 44]


def test_head_gets_the_headers_and_no_body_without_a_query(pg_server, admin, quiet):
    with admin.table_locked():
        for path, content_type in (
            ("/export.csv", "text/csv; charset=utf-8"),
            ("/export.ndjson", "application/x-ndjson"),
        ):
            with socket.create_connection(("127.0.0.1", pg_server.port), timeout=5) as sock:
                # Connection: close, so anything sent past the head would be read as body.
                send_request(sock, path, "HEAD", {"Connection": "close"})
                with sock.makefile("rb") as reader:
                    head = read_head(reader)
                    assert reader.read() == b""
            assert head.status == 200 and head.header("Content-Type") == content_type
            assert not admin.app_queries(), "HEAD ran no query"
    quiet(pg_server)


def test_the_first_2000_postgresql_rows_are_byte_identical_to_the_embedded_sqlite_export(
    pg_server, start_server
):
    embedded = start_server(
        {"STREAMHTML_DATASET_ROWS": "2000", "STREAMHTML_EXPORT_BATCH_ROWS": "300"}
    )
    assert json.loads(get(embedded, "/info").body)["source"]["kind"] == "sqlite"
    # 503 with Retry-After until the app has made its dataset.
    wait_for(lambda: get(embedded, "/export.csv").status == 200, 60, "embedded dataset ready")

    for fmt in ("csv", "ndjson"):
        from_sqlite = get(embedded, f"/export.{fmt}")
        from_postgres = get(pg_server, f"/export.{fmt}?limit=2000")
        assert from_sqlite.status == from_postgres.status == 200
        assert len(from_sqlite.body) > 100_000
        assert from_postgres.body == from_sqlite.body, fmt


def test_a_user_provided_binding_in_vcap_services_is_the_source(seeded, admin, start_server):
    vcap = {
        "user-provided": [
            {"name": "rows-db", "label": "user-provided", "credentials": {"uri": seeded.url}}
        ]
    }
    server = start_server({"VCAP_SERVICES": json.dumps(vcap)})

    info = get(server, "/info")
    assert json.loads(info.body)["source"] == {
        "kind": "postgresql",
        "origin": "VCAP_SERVICES binding rows-db",
        "host": "127.0.0.1",
        "port": seeded.port,
        "database": "streamhtml",
    }
    assert seeded.app_password.encode() not in info.body
    assert get(server, "/export.csv?limit=50").body == admin.copy_csv(50)


# --- hang-ups and failures ------------------------------------------------------------------


def export_errors(server: Server) -> dict[str, float]:
    """streamhtml_export_errors_total by cause, as /metrics says now."""
    found = re.findall(
        rb'^streamhtml_export_errors_total\{cause="(\w+)"\} (\S+)$',
        get(server, "/metrics").body,
        re.M,
    )
    return {cause.decode(): float(value) for cause, value in found}


def no_query_left(admin: Admin) -> float:
    """Seconds until the app has no query running (polled, for up to 5 s)."""
    started_at = time.monotonic()
    wait_for(lambda: not admin.app_queries(), 5, "the query still runs")
    return time.monotonic() - started_at


@pytest.mark.parametrize("mid_stream", [False, True], ids=["before-the-first-byte", "mid-stream"])
def test_a_hang_up_cancels_the_running_query_within_a_second(pg_server, admin, quiet, mid_stream):
    quiet(pg_server)
    errors_before = export_errors(pg_server)
    marker = f"after_id={101 + mid_stream}"
    with export_waiting_on_lock(admin, pg_server, f"/export.csv?{marker}", mid_stream) as (
        download,
        _,
    ):
        assert (download.received > 0) == mid_stream and download.ended is None
        download.hang_up()
        # The lock is still held: only a cancel can have ended the query.
        assert no_query_left(admin) < 1.0

    line = pg_server.wait_for_request(query=marker)[-1]
    assert line["outcome"] == "client_gone", line
    assert export_errors(pg_server) == errors_before, "a client that left is no export error"
    # The connection went back to the pool clean: the next export has it.
    assert ids_of_csv(get(pg_server, "/export.csv?limit=3").body) == [1, 2, 3]
    quiet(pg_server)


def assert_unfinished(server: Server, download: "Download", marker: str, cause: str) -> None:
    """The export ended mid-stream without its final chunk, and its log line says why."""
    download.wait(10)
    assert download.ended == "cut", "no final 0-chunk: the client sees an incomplete download"
    assert download.received > 0
    line = server.wait_for_request(query=marker)[-1]
    assert line["outcome"] == "error" and line["status"] == 200, line
    assert cause in line["error"], line


def test_a_terminated_backend_mid_stream_leaves_the_body_unfinished_and_logs_why(
    pg_server, admin, quiet
):
    quiet(pg_server)
    marker = "after_id=103"
    with export_waiting_on_lock(admin, pg_server, f"/export.csv?{marker}", True) as (
        download,
        lock,
    ):
        (pid, _, _), *others = admin.app_queries(waiting_on_lock=True)
        assert not others
        admin.query("SELECT pg_terminate_backend(%s)", (pid,))
        lock.release()
        assert_unfinished(pg_server, download, marker, "terminating connection due to admin")
    assert ids_of_csv(get(pg_server, "/export.csv?limit=3").body) == [1, 2, 3], "still serves"
    quiet(pg_server)


STATEMENT_TIMEOUT_MS = 400
# Page queries that may take STATEMENT_TIMEOUT_MS at most.
impatient_server = one_worker(
    "impatient", STREAMHTML_DB_STATEMENT_TIMEOUT_MS=str(STATEMENT_TIMEOUT_MS)
)


def test_a_page_over_the_statement_timeout_is_a_503_before_the_first_byte(
    impatient_server, admin, quiet
):
    quiet(impatient_server)
    errors_before = export_errors(impatient_server).get("timeout", 0)
    with admin.table_locked():
        started_at = time.monotonic()
        refused = get(impatient_server, "/export.ndjson?limit=5", timeout_s=10)
        waited_s = time.monotonic() - started_at
    body = assert_json_503(refused, "query cancelled", "statement timeout")
    print(body["detail"])
    assert STATEMENT_TIMEOUT_MS / 1000 <= waited_s < STATEMENT_TIMEOUT_MS / 1000 + 2, waited_s
    wait_for(lambda: export_errors(impatient_server).get("timeout", 0) == errors_before + 1, 5)
    assert get(impatient_server, "/health").status == 200
    assert ids_of_csv(get(impatient_server, "/export.csv?limit=3").body) == [1, 2, 3]
    quiet(impatient_server)


def test_a_page_over_the_statement_timeout_mid_stream_leaves_the_body_unfinished(
    impatient_server, admin, quiet
):
    quiet(impatient_server)
    marker = "after_id=104"
    path = f"/export.csv?{marker}"
    with export_waiting_on_lock(admin, impatient_server, path, True) as (download, _):
        # The lock is still held: only the timeout ends the query.
        assert_unfinished(impatient_server, download, marker, "statement timeout")
    assert no_query_left(admin) < 1.0
    quiet(impatient_server)


def test_copy_out_reads_what_psycopgs_copy_reads_and_raises_what_psycopg_raises(seeded):
    """db.copy_out goes to libpq through psycopg's documented pgconn: the same bytes and row
    count as psycopg's own Copy, failures as psycopg's classes, and an idle connection after."""
    from streamhtml.db import copy_out

    query = (
        "COPY (SELECT * FROM dataset WHERE id > 990 ORDER BY id LIMIT 25) TO STDOUT (FORMAT csv)"
    )
    with psycopg.connect(seeded.url, autocommit=True) as connection:
        with connection.cursor() as cursor, cursor.copy(query) as copy:
            expected = b"".join(bytes(row) for row in copy)
        into = bytearray()
        assert copy_out(connection.pgconn, query.encode(), into) == 25
        assert bytes(into) == expected and expected.count(b"\n") >= 25

        connection.execute("SET statement_timeout = 50")
        failures = [
            ("COPY (SELECT pg_sleep(1)) TO STDOUT", psycopg.errors.QueryCanceled),
            ("COPY (SELECT nothing FROM dataset) TO STDOUT", psycopg.errors.UndefinedColumn),
            ("COPY (SELEC 1) TO STDOUT", psycopg.errors.SyntaxError),
            ("COPY (SELECT 1/(id - 3) FROM dataset) TO STDOUT", psycopg.errors.DivisionByZero),
        ]
        for failing, raised in failures:
            with pytest.raises(raised):
                copy_out(connection.pgconn, failing.encode(), bytearray())
            assert connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert connection.execute("SELECT 1").fetchone() == (1,), "the connection is usable"


@pytest.fixture(scope="module")
def credentials(seeded):
    """A role of its own with a password that holds URL-reserved characters, so the user and
    the password are strings found nowhere else: a leak of either is plain to see."""
    user = f"reader_{secrets.token_hex(4)}"
    password = f"pw:{secrets.token_urlsafe(12)}@/%"
    seeded.admin_query(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(user), sql.Literal(password)
        )
    )
    seeded.admin_query(sql.SQL("GRANT SELECT ON dataset TO {}").format(sql.Identifier(user)))
    url = urlsplit(seeded.url)
    hostport = f"{url.hostname}:{url.port}"
    return {
        "user": user,
        "password": password,
        "url": f"postgresql://{user}:{quote(password, safe='')}@{hostport}{url.path}",
        "wrong_url": f"postgresql://{user}:{quote('not-' + password, safe='')}@{hostport}"
        f"{url.path}",
    }


def secrets_of(credentials) -> list[bytes]:
    found = [credentials["user"], credentials["password"], quote(credentials["password"], safe="")]
    return [text.encode() for text in found] + [b"not-" + found[1].encode()]


@pytest.fixture(scope="module")
def own_role_server(credentials, tmp_path_factory):
    server = started(
        tmp_path_factory,
        "role",
        {"DATABASE_URL": credentials["url"], "STREAMHTML_DB_POOL_TIMEOUT_S": str(POOL_TIMEOUT_S)},
    )
    yield server
    server.stop()


def assert_json_503(response, *words: str) -> dict:
    assert response.status == 503, (response.status, response.body[:300])
    assert response.header("Content-Type") == "application/json"
    assert int(response.header("Retry-After")) >= 1
    body = json.loads(response.body)
    assert body["status"] == 503 and {"error", "detail"} <= set(body)
    for word in words:
        assert word in body["detail"], body
    return body


def test_database_down_gives_exports_a_503_naming_the_cause_and_health_stays_200(
    seeded, own_role_server, credentials
):
    server = own_role_server
    assert get(server, "/export.csv?limit=5").status == 200
    seeded.stop_server()
    try:
        # Four exports, some 4 s of outage: each worker's pool has failed and backed off.
        for path in ("/export.csv", "/export.ndjson?after_id=5&limit=5") * 2:
            started_at = time.monotonic()
            down = get(server, path, timeout_s=10)
            assert time.monotonic() - started_at < POOL_TIMEOUT_S + 3, "never a hang"
            body = assert_json_503(down, "database is unavailable", "Connection refused")
            assert all(secret not in down.body for secret in secrets_of(credentials)), body
            started_at = time.monotonic()
            assert get(server, "/health", timeout_s=5).status == 200
            assert time.monotonic() - started_at < 1.0
    finally:
        if not seeded.running():
            seeded.start_server()
    # Back with the database: every worker, not after its pool's backoff.
    back_at = time.monotonic()
    for _ in range(6):
        assert ids_of_csv(get(server, "/export.csv?limit=5").body) == [1, 2, 3, 4, 5]
    assert time.monotonic() - back_at < POOL_TIMEOUT_S + 2
    log = server.log().encode()
    assert all(secret not in log for secret in secrets_of(credentials))


def test_credentials_never_leak_into_info_metrics_errors_or_the_log(
    own_role_server, credentials, start_server
):
    server = own_role_server
    assert ids_of_csv(get(server, "/export.csv?limit=3").body) == [1, 2, 3]
    wrong = start_server(
        {"DATABASE_URL": credentials["wrong_url"], "STREAMHTML_DB_POOL_TIMEOUT_S": "1"}
    )

    refused = get(wrong, "/export.csv", timeout_s=10)
    body = assert_json_503(refused, "password authentication failed")
    seen = [
        refused.body,
        get(server, "/info").body,
        get(wrong, "/info").body,
        get(server, "/metrics").body,
        get(wrong, "/metrics").body,
    ]
    assert b'streamhtml_export_errors_total{cause="unavailable"}' in seen[-1]
    assert json.loads(seen[1])["source"]["database"] == "streamhtml"
    for seen_body in seen:
        assert all(secret not in seen_body for secret in secrets_of(credentials)), seen_body
    wrong.stop()
    assert "password authentication failed" in wrong.log(), "the failure is logged, redacted"
    for log in (server.log(), wrong.log()):
        assert all(secret not in log.encode() for secret in secrets_of(credentials))
    print(body["detail"])


# --- pool, turns, the main loop, caps --------------------------------------------------------


def test_an_exhausted_pool_gives_503_naming_its_setting_within_the_timeout(
    narrow_server, admin, quiet
):
    quiet(narrow_server)
    with export_waiting_on_lock(admin, narrow_server, "/export.csv?limit=10", False) as (
        holder,
        lock,
    ):
        started_at = time.monotonic()
        refused = get(narrow_server, "/export.ndjson?limit=10", timeout_s=POOL_TIMEOUT_S + 10)
        waited_s = time.monotonic() - started_at
        assert_json_503(refused, "STREAMHTML_DB_POOL_SIZE", "busy")
        assert POOL_TIMEOUT_S - 0.1 <= waited_s < POOL_TIMEOUT_S + 2, waited_s
        # The export holding the connection carries on once the database answers.
        lock.release()
        holder.wait(10)
        assert holder.ended == "complete" and holder.head.status == 200
    assert b'streamhtml_export_errors_total{cause="busy"}' in get(narrow_server, "/metrics").body
    quiet(narrow_server)


def test_past_the_exports_cap_an_export_gets_503_naming_the_setting(narrow_server, admin, quiet):
    quiet(narrow_server)
    # Two exports whose clients read nothing: admitted, live, holding no connection.
    held = [socket.socket() for _ in range(2)]
    try:
        for sock in held:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", narrow_server.port))
            send_request(sock, "/export.csv")
        wait_for(lambda: streams_in_progress(narrow_server) == 2, 10, "two exports live")

        refused = get(narrow_server, "/export.ndjson?limit=1")
        body = assert_json_503(refused, "STREAMHTML_MAX_EXPORT_STREAMS")
        assert body["reason"] == "exports full"
        assert get(narrow_server, "/streamhtml?nblocks=1").status == 200, "other routes are not"
    finally:
        for sock in held:
            sock.close()
    quiet(narrow_server)
    assert get(narrow_server, "/export.ndjson?limit=1").status == 200


def test_health_answers_on_the_same_worker_while_an_export_waits_on_the_database(
    pg_server, admin, quiet
):
    quiet(pg_server)
    (worker,) = pg_server.worker_pids()
    with export_waiting_on_lock(admin, pg_server, "/export.csv?limit=10", False):
        for _ in range(5):
            started_at = time.monotonic()
            health = get(pg_server, "/health", timeout_s=5)
            assert time.monotonic() - started_at < 1.0
            assert json.loads(health.body)["pid"] == worker
        assert admin.app_queries(waiting_on_lock=True), "the export still waits"
    quiet(pg_server)


def test_an_export_waiting_on_the_database_holds_no_producing_turn(pg_server, admin, quiet):
    # pg_server has one producing turn: an export holding it while it waits would stop this.
    quiet(pg_server)
    with export_waiting_on_lock(admin, pg_server, "/export.csv", True):
        unpaced = get(pg_server, "/streamhtml?nblocks=64&block_size=65536", timeout_s=10)
        assert unpaced.status == 200 and len(unpaced.body) >= 64 * 65536
        assert admin.app_queries(waiting_on_lock=True), "the export still waits"
    quiet(pg_server)


INJECTIONS = (
    "1;DROP TABLE dataset",
    "1 OR 1=1",
    "0) UNION SELECT 1--",
    "1'",
    "'; DELETE FROM dataset; --",
    "1/**/OR/**/1=1",
    "-1",
    "+1",
    "1e3",
    "0x10",
    " 1",
    "1 ",
    "１２",
    "",
    "1.5",
    "1\x00",
    "9" * 13,
    "$1",
)


def test_injection_attempts_in_every_parameter_get_400_and_leave_the_table_intact(pg_server, admin):
    for path in ("/export.csv", "/export.ndjson"):
        for name in ("after_id", "limit"):
            for value in INJECTIONS:
                response = get(pg_server, f"{path}?{name}={quote(value, safe='')}")
                assert response.status == 400, (path, name, value, response.body)
                body = json.loads(response.body)
                assert body["status"] == 400 and name in body["detail"], body
            twice = get(pg_server, f"{path}?{name}=1&{name}=2")
            assert twice.status == 400
        assert get(pg_server, f"{path}?limit=0").status == 400
    assert admin.query("SELECT count(*), max(id) FROM dataset") == [(ROWS, ROWS)]


def test_ten_slow_exports_run_while_health_answers_within_a_second(pg_server, admin, quiet):
    quiet(pg_server)
    downloads = [Download(pg_server, "/export.ndjson", pause_s=0.01) for _ in range(10)]
    try:
        wait_for(lambda: all(d.received for d in downloads), 10, "ten exports sending")
        assert streams_in_progress(pg_server) == 10
        latencies = []
        for _ in range(10):
            started_at = time.monotonic()
            assert get(pg_server, "/health", timeout_s=5).status == 200
            latencies.append(time.monotonic() - started_at)
        assert max(latencies) < 1.0, latencies
        assert [d.ended for d in downloads] == [None] * 10, "all still going"
    finally:
        for download in downloads:
            download.hang_up()
    quiet(pg_server)


def test_exporting_all_1000000_rows_keeps_the_workers_peak_memory_flat(pg_server, admin):
    (worker,) = pg_server.worker_pids()
    warm_up = get(pg_server, "/export.csv?limit=20000")  # the pool, a thread, a few pages
    assert warm_up.status == 200
    before_kib = peak_rss_kib(worker)

    whole = Download(pg_server, "/export.csv").wait(120)
    whole.hang_up()  # closes it: the body is read

    grew_mib = (peak_rss_kib(worker) - before_kib) / 1024
    print(f"1,000,000 rows: {whole.received} bytes, worker peak RSS +{grew_mib:.1f} MiB")
    assert whole.ended == "complete"
    reference = admin.copy_csv()
    assert whole.received == len(reference)
    assert whole.digest.digest() == hashlib.sha256(reference).digest(), "byte-identical to COPY"
    assert grew_mib < 16


def test_a_worker_that_served_exports_exits_at_once_on_sigterm(seeded, start_server):
    # Its pool's threads end with it: nothing waits for them to the graceful timeout (8 s).
    server = start_server({"DATABASE_URL": seeded.url})
    for _ in range(4):  # a request to each worker, likely: both have made their pools
        assert get(server, "/export.csv?limit=3").status == 200
    started_at = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started_at < 3.0
