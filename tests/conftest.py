"""Fixtures: the app with small limits, and real gunicorn servers started as the Procfile does."""

import os
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest
from files_support import make_files_dir
from pg_support import DEBIAN_ROOT, Postgres, find_bindir
from support import Server, read_body, read_head, send_request

from streamhtml.settings import Settings, small_limits, small_limits_env
from streamhtml.web import create_app


@pytest.fixture
def app():
    return create_app(Settings(limits=small_limits()))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def start_server(tmp_path):
    """Start gunicorn as the Procfile does, with extra environment; every one is stopped after."""
    started = []

    def start(env=None, wait=True):
        server = Server(tmp_path / f"gunicorn-{len(started)}.log", env=env)
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One shared gunicorn with default settings, for tests that only read."""
    running = Server(tmp_path_factory.mktemp("server") / "gunicorn.log").start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """One shared gunicorn with the small limits (streamhtml.settings declares them)."""
    log_path = tmp_path_factory.mktemp("small") / "gunicorn.log"
    running = Server(log_path, env=small_limits_env()).start()
    yield running
    running.stop()


@dataclass
class IdleConnection:
    """A kept-alive connection that sends its next request idle_for_s after its first one, from
    a thread of its own, so the moment is the same whatever order the tests run in."""

    server: Server
    idle_for_s: float = 95.0
    idle_s: float = 0.0
    status: int | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def run(self, sock: socket.socket) -> None:
        reader = sock.makefile("rb")
        try:
            send_request(sock, "/health")
            assert read_body(reader, read_head(reader), "GET").status == 200
            idle_since = time.monotonic()
            time.sleep(self.idle_for_s)
            self.idle_s = time.monotonic() - idle_since
            send_request(sock, "/health")
            self.status = read_head(reader).status
        except BaseException as error:  # handed to the test that asserts on it
            self.error = error
        finally:
            reader.close()
            sock.close()
            self.done.set()


@pytest.fixture(scope="session", autouse=True)
def connection_idle_since_the_start(request, tmp_path_factory):
    """A connection left idle from the start of the session, for the tests marked
    `idle_since_start`: their long wait then overlaps the rest of the suite."""
    if not any(item.get_closest_marker("idle_since_start") for item in request.session.items):
        yield None
        return
    server = Server(tmp_path_factory.mktemp("idle") / "gunicorn.log").start()
    idle = IdleConnection(server)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=idle.idle_for_s + 30)
    threading.Thread(target=idle.run, args=(sock,), daemon=True).start()
    yield idle
    idle.done.wait(idle.idle_for_s + 30)
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL for the whole run (tests/pg_support.py), started the first time a test
    asks for it, then stopped and its directory removed, on failure or Ctrl-C too. Skipped only
    when no PostgreSQL is installed and this is not CI, where `make tools` installs it."""
    bindir = find_bindir()
    if bindir is None:
        reason = (
            f"no PostgreSQL server binaries ({DEBIAN_ROOT}/*/bin, or initdb and pg_ctl on PATH): "
            "`make tools` installs them"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = Postgres(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def files_dir(tmp_path_factory):
    """Real files to serve under /files/, and names that must not be (tests/files_support.py)."""
    return make_files_dir(tmp_path_factory.mktemp("files"))


@pytest.fixture(scope="module")
def files_server(tmp_path_factory, files_dir):
    """One shared gunicorn with the small limits, serving `files_dir` under /files/."""
    log_path = tmp_path_factory.mktemp("files_server") / "gunicorn.log"
    env = {**small_limits_env(), "STREAMHTML_FILES_DIR": str(files_dir.root)}
    running = Server(log_path, env=env).start()
    yield running
    running.stop()
