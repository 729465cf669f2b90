"""The harness of a real PostgreSQL (tests/pg_support.py): what the export tests rely on."""

import socket
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from pg_support import APP_DATABASE, APP_ROLE, Postgres


def test_the_app_connects_with_its_url_as_a_role_that_is_not_a_superuser(postgres):
    url = urlsplit(postgres.url)
    assert (url.scheme, url.hostname, url.port) == ("postgresql", "127.0.0.1", postgres.port)
    assert (url.username, url.path) == (APP_ROLE, f"/{APP_DATABASE}") and url.password

    with psycopg.connect(postgres.url) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), current_setting(%s)", ("is_superuser",)
        ).fetchone()
        assert row == (APP_ROLE, APP_DATABASE, "off")
        # It owns its database: it can make the tables it exports.
        conn.execute("CREATE TABLE harness_probe (id bigint PRIMARY KEY)")
        conn.execute("DROP TABLE harness_probe")

    # The password in the URL is what lets it in, even on loopback.
    wrong = postgres.url.replace(f":{url.password}@", ":wrong@")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)


def test_the_admin_sees_the_apps_sessions_and_can_terminate_them(postgres):
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("SELECT 'harness-marker'")
        (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
        seen = {backend["pid"]: backend for backend in postgres.app_backends()}
        assert pid in seen and seen[pid]["state"] == "idle"
        assert postgres.admin_query(
            "SELECT usesuper FROM pg_user WHERE usename = current_user"
        ) == [(True,)]

        assert postgres.terminate_app_backends() >= 1
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert pid not in {backend["pid"] for backend in postgres.app_backends()}


def test_a_stopped_server_refuses_connections_and_comes_back_with_its_data(postgres):
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS harness_kept (id bigint)")
    try:
        postgres.stop_server()
        assert not postgres.running()
        with pytest.raises(psycopg.OperationalError, match="refused"):
            psycopg.connect(postgres.url, connect_timeout=5)
    finally:
        if not postgres.running():
            postgres.start_server()  # the rest of the session needs it
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM harness_kept").fetchone() == (0,)
        conn.execute("DROP TABLE harness_kept")


def test_stop_leaves_no_server_and_no_directory(postgres):
    # A cluster of its own, from the same binaries (the fixture skips or fails when none).
    server = Postgres(postgres.bindir).start()
    directory, port = server.directory, server.port
    postmaster = server.postmaster_pid()
    assert directory.is_dir() and postmaster and Path(f"/proc/{postmaster}").exists()

    server.stop()

    assert server.directory is None and not directory.exists()
    # Exited: gone, or a zombie until init reaps it (pg_ctl leaves the server to init).
    stat = Path(f"/proc/{postmaster}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    server.stop()  # idempotent, as the fixture's teardown and atexit may both call it
