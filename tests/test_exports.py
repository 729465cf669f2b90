"""Exports of real rows from the embedded SQLite dataset, on the wire; where the rows come from;
the dataset itself; and a streaming route added the documented way.

PostgreSQL's side is in tests/test_exports_pg.py.
"""

import contextlib
import csv
import io
import json
import os
import signal
import socket
import sqlite3
import textwrap
import time

import pytest
from support import REPO, Server, read_body, read_head, request, send_request

from streamhtml.dataset import COLUMNS, DatasetExists, dataset_rows, fill_sqlite
from streamhtml.db import page_last_id, redact
from streamhtml.rows import CSV
from streamhtml.settings import (
    Limits,
    SettingsError,
    load_settings,
    resolve_source,
    small_limits,
)

SMALL_ROWS = small_limits().dataset_rows


def get_ready(port: int, path: str, timeout_s: float = 20.0):
    """The answer to `path` once the embedded dataset is made (503 with Retry-After until)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = request(port, path)
        if response.status != 503 or time.monotonic() > deadline:
            return response
        assert response.header("Retry-After")
        time.sleep(0.05)


def as_text(row: tuple) -> list[str]:
    """A row as the csv module reads it back: None is the empty field."""
    return ["" if value is None else str(value) for value in row]


def csv_rows(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode(), newline="")))


# --- on the wire, from the embedded SQLite ------------------------------------------------------


def test_the_csv_export_is_every_row_in_id_order_quoted_as_rfc_4180(small_server):
    response = get_ready(small_server.port, "/export.csv")
    assert response.status == 200 and response.chunked
    assert response.header("Content-Type") == "text/csv; charset=utf-8"
    assert response.header("Content-Disposition") == 'attachment; filename="export.csv"'
    rows = csv_rows(response.body)
    assert rows[0] == list(COLUMNS)
    assert rows[1:] == [as_text(row) for row in dataset_rows(SMALL_ROWS)]
    # The awkward notes made it through: commas, quotes, CR LF, non-ASCII.
    body = response.body.decode()
    assert '"crlf\r\nline"' in body and '"says ""hello"""' in body and "東京" in body


def test_the_ndjson_export_is_one_object_a_line_with_its_id(small_server):
    response = get_ready(small_server.port, "/export.ndjson")
    assert response.status == 200
    assert response.header("Content-Type") == "application/x-ndjson"
    lines = response.body.decode().splitlines()
    assert len(lines) == SMALL_ROWS
    records = [json.loads(line) for line in lines]
    expected = [dict(zip(COLUMNS, row, strict=True)) for row in dataset_rows(SMALL_ROWS)]
    for record, row in zip(records, expected, strict=True):
        assert record["created_at"] == row["created_at"].replace(" ", "T") + ":00"
        assert {**record, "created_at": row["created_at"]} == row


@pytest.mark.parametrize(
    ("query", "first_id", "count"),
    [
        ("after_id=1500", 1501, SMALL_ROWS - 1500),
        ("limit=10", 1, 10),
        ("after_id=7&limit=450", 8, 450),  # across pages of 200 rows (small limits)
        (f"after_id={SMALL_ROWS - 5}&limit=100", SMALL_ROWS - 4, 5),
        (f"after_id={SMALL_ROWS}", None, 0),
    ],
)
def test_an_export_resumes_after_an_id_and_stops_at_a_limit(small_server, query, first_id, count):
    for path, ids_of in (
        ("/export.csv", lambda body: [int(row[0]) for row in csv_rows(body)[1:]]),
        ("/export.ndjson", lambda body: [json.loads(x)["id"] for x in body.splitlines()]),
    ):
        response = get_ready(small_server.port, f"{path}?{query}")
        assert response.status == 200, response.body
        ids = ids_of(response.body)
        assert ids == ([] if first_id is None else list(range(first_id, first_id + count)))


def test_head_of_an_export_has_its_headers_and_no_body(small_server):
    get_ready(small_server.port, "/export.csv")
    response = request(small_server.port, "/export.csv?after_id=5", method="HEAD")
    assert response.status == 200 and response.body == b""
    assert response.header("Content-Disposition") == 'attachment; filename="export.csv"'


@pytest.mark.parametrize(
    "query",
    [
        "after_id=-1",
        "after_id=1e3",
        "after_id=0x10",
        "after_id=",
        "after_id=1&after_id=2",
        "after_id=1%20OR%201=1",
        "after_id=1;DROP%20TABLE%20dataset",
        "after_id=%27%20OR%20%271%27=%271",
        "after_id=%D9%A3",
        "after_id=1000000000000",
        "limit=0",
        "limit=-5",
        "limit=5)%20UNION%20SELECT%201--",
        "limit=9999999999999",
    ],
)
def test_a_bad_or_hostile_parameter_is_a_json_400_and_the_table_is_untouched(small_server, query):
    for path in ("/export.csv", "/export.ndjson"):
        response = request(small_server.port, f"{path}?{query}")
        assert response.status == 400, (query, response.body)
        body = json.loads(response.body)
        assert body["error"] == "invalid query parameter"
        assert body["parameter"] in ("after_id", "limit")
    after = get_ready(small_server.port, "/export.csv")
    assert len(csv_rows(after.body)) == SMALL_ROWS + 1


def test_info_says_where_rows_come_from(small_server):
    source = json.loads(request(small_server.port, "/info").body)["source"]
    assert source["kind"] == "sqlite" and source["origin"] == "embedded"
    assert source["path"].endswith(f"-{SMALL_ROWS}-rows.sqlite")


def test_the_embedded_dataset_is_the_table_it_is_said_to_be(small_server):
    path = json.loads(request(small_server.port, "/info").body)["source"]["path"]
    get_ready(small_server.port, "/export.csv?limit=1")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        assert db.execute("SELECT * FROM dataset ORDER BY id").fetchall() == list(
            dataset_rows(SMALL_ROWS)
        )


def test_exports_answer_503_while_the_dataset_is_being_made_and_health_stays_up(tmp_path):
    # A dataset big enough to take seconds, in a directory of its own: not ready at once.
    env = {"STREAMHTML_DATASET_ROWS": "3000000", "TMPDIR": str(tmp_path)}
    server = Server(tmp_path / "gunicorn.log", env=env).start()
    try:
        response = request(server.port, "/export.csv")
        assert response.status == 503
        assert response.header("Retry-After") == "2"
        body = json.loads(response.body)
        assert "still being made" in body["detail"] and body["error"] == "source unavailable"
        started = time.monotonic()
        assert request(server.port, "/health").status == 200
        assert time.monotonic() - started < 1.0
    finally:
        server.stop()
        # The child making the dataset is in the server's process group: end it too.
        with pytest.raises(ProcessLookupError):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                os.killpg(server.process.pid, signal.SIGKILL)
                time.sleep(0.05)


def test_a_full_instance_refuses_an_export_naming_the_setting(start_server):
    # The default dataset (100,000 rows, some 7 MB) outlasts the socket buffers of readers
    # that never read, so each export stays open.
    server = start_server({"STREAMHTML_MAX_EXPORT_STREAMS": "2", "WEB_CONCURRENCY": "1"})
    get_ready(server.port, "/export.csv?limit=1")
    held = []
    try:
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            send_request(sock, "/export.csv")
            held.append(sock)
        deadline = time.monotonic() + 20
        while json.loads(request(server.port, "/health").body)["streams_in_progress"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        refused = request(server.port, "/export.ndjson")
        assert refused.status == 503 and refused.header("Retry-After") == "1"
        body = json.loads(refused.body)
        assert body["reason"] == "exports full"
        assert "STREAMHTML_MAX_EXPORT_STREAMS" in body["detail"]
        assert request(server.port, "/streamhtml?nblocks=2").status == 200
    finally:
        for sock in held:
            sock.close()


# --- where rows come from ------------------------------------------------------------------------

PG_URL = "postgres://alice:s3cret-pw@db.example.internal:6432/exports?sslmode=require"


def vcap(*bindings) -> str:
    services: dict = {}
    for label, name, credentials in bindings:
        services.setdefault(label, []).append(
            {"name": name, "label": label, "credentials": credentials}
        )
    return json.dumps(services)


def test_database_url_wins_over_a_binding():
    environ = {
        "DATABASE_URL": PG_URL,
        "VCAP_SERVICES": vcap(("postgres", "db", {"uri": "postgresql://b:c@other/x"})),
    }
    source = load_settings(environ).source
    assert (source.kind, source.origin, source.host, source.port) == (
        "postgresql",
        "DATABASE_URL",
        "db.example.internal",
        6432,
    )
    assert source.database == "exports"


@pytest.mark.parametrize("label", ["postgres", "csb-aws-postgresql", "user-provided", "elephant"])
def test_the_first_binding_with_a_postgres_uri_is_used_whatever_its_label(label):
    environ = {
        "VCAP_SERVICES": vcap(
            ("p-mysql", "cache", {"uri": "mysql://u:p@mysql/x"}),
            (label, "exports-db", {"url": "postgresql://u:p@pg.internal/rows"}),
            ("postgres", "second", {"uri": "postgres://u:p@second/rows"}),
        )
    }
    source = load_settings(environ).source
    assert source.origin == "VCAP_SERVICES binding exports-db"
    assert (source.host, source.database) == ("pg.internal", "rows")


def test_without_a_database_the_embedded_sqlite_file_is_in_the_temporary_directory(tmp_path):
    environ = {"STREAMHTML_DATASET_ROWS": "1234"}
    source = resolve_source(environ, load_settings(environ).limits.dataset_rows)
    assert source.kind == "sqlite" and source.embedded
    assert source.path.endswith("streamhtml-dataset-v1-1234-rows.sqlite")


def test_pem_material_in_a_binding_is_kept_for_libpq_files():
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    environ = {"VCAP_SERVICES": vcap(("postgres", "db", {"uri": PG_URL, "sslrootcert": pem}))}
    assert dict(load_settings(environ).source.pem) == {"sslrootcert": pem}


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"DATABASE_URL": "mysql://alice:s3cret-pw@host/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgres://alice:s3cret-pw@host:notaport/db"}, "DATABASE_URL"),
        ({"VCAP_SERVICES": "{not json s3cret-pw"}, "VCAP_SERVICES"),
        ({"VCAP_SERVICES": "[]"}, "VCAP_SERVICES"),
    ],
)
def test_a_bad_source_is_refused_naming_the_variable_never_echoing_it(environ, named):
    with pytest.raises(SettingsError) as refused:
        load_settings(environ)
    assert named in str(refused.value) and "s3cret-pw" not in str(refused.value)


def test_credentials_stay_out_of_what_the_source_shows():
    source = load_settings({"DATABASE_URL": PG_URL}).source
    shown = json.dumps(source.describe()) + repr(source) + repr(load_settings({}))
    assert "s3cret-pw" not in shown and "alice" not in shown
    assert redact("password for user alice: s3cret-pw", source) == "password for user ***: ***"


def test_a_pages_last_row_is_found_past_quoted_newlines_that_look_like_rows():
    # PostgreSQL's page is one block of CSV; the next page starts after its last row's id.
    lines = b'id,note\n1,plain\n2,"x\n3,looks like a row"\n'
    assert page_last_id(lines, csv=True) == 2
    doubled = b'1,"a""\n9,b"\n2,"c\n""\n7,d"\n'
    assert page_last_id(doubled, csv=True) == 2
    assert page_last_id(b"id,note\n5,x\n", csv=True) == 5
    ndjson = b'{"id":4,"note":"a\\nb"}\n{"id":5,"note":null}\n'
    assert page_last_id(ndjson, csv=False) == 5
    assert page_last_id(b'{"id":1}\n', csv=False) == 1


def test_sqlite_pages_stay_small_whatever_the_batch_and_every_row_is_sent(tmp_path):
    from streamhtml.rows import SqliteSource, export
    from streamhtml.settings import Limits, Source

    path = str(tmp_path / "rows.sqlite")
    fill_sqlite(path, 12_000)
    source = SqliteSource(Source("sqlite", "DATABASE_URL", path=path), Limits())
    pages: list[int] = []
    body = b"".join(export(source, CSV, 0, None, 15_000, counted=pages.append))
    # The first page is FIRST_PAGE_ROWS; then rows as Python objects: most_page_rows at most.
    assert pages == [16, 5000, 5000, 1984]
    assert [row[0] for row in csv.reader(io.StringIO(body.decode(), newline=""))][1:] == [
        str(number) for number in range(1, 12_001)
    ]


def test_a_table_of_wide_rows_is_read_in_pages_near_page_bytes_from_the_second_on(tmp_path):
    # A template user's table of 200 KB rows: 15,000 rows a page would be 3 GB.
    from streamhtml.rows import FIRST_PAGE_ROWS, PAGE_BYTES, SqliteSource, export
    from streamhtml.settings import Limits, Source

    path = str(tmp_path / "wide.sqlite")
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE dataset (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL,"
            " amount_cents INTEGER NOT NULL, name TEXT NOT NULL, note TEXT)"
        )
        wide = [(k, "2026-01-01 00:00:00", k, f"n{k}", "x" * 200_000) for k in range(1, 61)]
        db.executemany("INSERT INTO dataset VALUES (?, ?, ?, ?, ?)", wide)
        db.commit()
    source = SqliteSource(Source("sqlite", "DATABASE_URL", path=path), Limits())
    pages: list[tuple[int, int]] = []
    held = [0]

    def counted(rows: int) -> None:
        pages.append((rows, held[0]))
        held[0] = 0

    for chunk in export(source, CSV, 0, None, 15_000, counted=counted):
        held[0] += len(chunk)
    assert sum(rows for rows, _ in pages) == 60
    assert pages[0][0] == FIRST_PAGE_ROWS
    assert len(pages) > 3 and all(size <= 1.25 * PAGE_BYTES for _, size in pages[1:]), pages


# --- the dataset -------------------------------------------------------------------------------


def test_the_rows_are_the_same_every_time_and_hold_every_awkward_text():
    rows = list(dataset_rows(500))
    assert rows == list(dataset_rows(500)) and [row[0] for row in rows] == list(range(1, 501))
    notes = {row[4] for row in rows}
    assert None in notes
    for awkward in (",", '"', "\n", "\r\n", "é", "東"):
        assert any(note and awkward in note for note in notes), awkward


def test_the_sqlite_dataset_is_refused_again_unless_replaced(tmp_path):
    path = str(tmp_path / "rows.sqlite")
    fill_sqlite(path, 10)
    with pytest.raises(DatasetExists, match="--replace"):
        fill_sqlite(path, 20)
    fill_sqlite(path, 20, replace=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*), max(id) FROM dataset").fetchone() == (20, 20)
    assert os.listdir(tmp_path) == ["rows.sqlite"]  # nothing built aside is left


def test_the_dataset_command_fills_a_sqlite_database_url_and_refuses_a_second_time(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "mine.sqlite"
    environ = {**os.environ, "DATABASE_URL": f"sqlite:///{path}"}
    command = [sys.executable, "-m", "streamhtml.dataset", "--rows", "25"]
    made = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert "done, 25 rows" in made.stdout
    again = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "--replace" in again.stderr


# --- a streaming route added the documented way ------------------------------------------------

TEMPLATE_APP = textwrap.dedent(
    '''
    """A streaming route added as DEVELOPMENT.md says: one declaration, one stream() call."""
    import time

    from flask import Blueprint, request

    from streamhtml.params import int_param
    from streamhtml.streaming import stream, stream_route
    from streamhtml.web import create_app

    mine = Blueprint("mine", __name__)


    @stream_route(mine, "/my-export.txt", "text/plain; charset=utf-8", waits_on_io=True)
    def my_export():
        rows = int_param(request.args, "rows", 5, 0, 1000)
        first_wait_s = int_param(request.args, "first_wait_ms", 0, 0, 10000) / 1000

        def lines(waiting):
            for number in range(rows):
                with waiting(lambda: None):  # a query would pass its cancel here
                    time.sleep(first_wait_s if number == 0 else 0.2)
                yield b"row %d\\n" % number

        return stream(lines, held_bytes=64 * 1024)


    @mine.route("/undeclared.txt")
    def undeclared():
        return stream(lambda: iter([b"a\\n", b"b\\n"]), 1024, content_type="text/plain")


    app = create_app(blueprints=[mine])
    '''
)


@pytest.fixture
def template_server(tmp_path):
    (tmp_path / "template_app.py").write_text(TEMPLATE_APP)
    config = REPO / "gunicorn.conf.py"
    (tmp_path / "Procfile").write_text(f"web: gunicorn --config {config} template_app:app\n")
    started = []

    def start(env=None):
        server = Server(tmp_path / f"gunicorn-{len(started)}.log", env=env, cwd=tmp_path)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def in_progress(server, endpoint: str) -> int:
    text = request(server.port, "/metrics").body.decode()
    wanted = f'streamhtml_streams_in_progress{{endpoint="{endpoint}"}} '
    return int(
        float(next(line for line in text.splitlines() if line.startswith(wanted))[len(wanted) :])
    )


def wait_for(predicate, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while not (result := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return result


def test_a_declared_route_is_admitted_counted_and_logged_like_the_others(template_server):
    server = template_server({"LOG_FORMAT": "json"})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        send_request(sock, "/my-export.txt?rows=5")
        wait_for(lambda: in_progress(server, "/my-export.txt") == 1)
        with sock.makefile("rb") as reader:
            response = read_body(reader, read_head(reader), "GET")
    assert response.status == 200 and response.body == b"".join(b"row %d\n" % n for n in range(5))
    (line,) = server.wait_for_request(route="/my-export.txt")
    assert line["outcome"] == "complete" and line["bytes_sent"] == 30
    wait_for(lambda: in_progress(server, "/my-export.txt") == 0)
    # A stream from a route nobody declared is served and counted as "other", never a 500.
    assert request(server.port, "/undeclared.txt").body == b"a\nb\n"


def test_a_declared_route_that_hangs_up_while_waiting_frees_its_slot_at_once(template_server):
    server = template_server({"LOG_FORMAT": "json"})
    sock = socket.create_connection(("127.0.0.1", server.port))
    send_request(sock, "/my-export.txt?rows=100")
    wait_for(lambda: in_progress(server, "/my-export.txt") == 1)
    sock.close()
    closed_at = time.monotonic()
    wait_for(lambda: in_progress(server, "/my-export.txt") == 0, timeout_s=2)
    assert time.monotonic() - closed_at < 1.0
    (line,) = server.wait_for_request(route="/my-export.txt")
    assert line["outcome"] == "client_gone"


def test_a_declared_route_that_waits_never_holds_the_workers_main_loop(template_server):
    server = template_server({"WEB_CONCURRENCY": "1"})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        # Its first row takes 3 s to come (a slow query before the 200).
        send_request(sock, "/my-export.txt?rows=1&first_wait_ms=3000")
        wait_for(lambda: in_progress(server, "/my-export.txt") == 1)
        started = time.monotonic()
        assert request(server.port, "/health", timeout_s=2).status == 200
        assert time.monotonic() - started < 1.0
        with sock.makefile("rb") as reader:
            assert read_body(reader, read_head(reader), "GET").body == b"row 0\n"


def test_a_declared_route_is_cut_at_shutdown(template_server):
    server = template_server({"LOG_FORMAT": "json", "GUNICORN_GRACEFUL_TIMEOUT": "2"})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        send_request(sock, "/my-export.txt?rows=1000")
        wait_for(lambda: in_progress(server, "/my-export.txt") == 1)
        server.stop()
    (line,) = server.wait_for_request(route="/my-export.txt")
    assert line["outcome"] == "cut_by_shutdown"


def test_the_defaults_hold_a_sane_dataset_and_pool():
    limits = Limits()
    assert 0 < limits.dataset_rows <= 1_000_000 and limits.db_pool_size * 2 < 20
