"""Fixtures: the app with small limits, and real gunicorn servers started as the Procfile does."""

import socket
import time
from dataclasses import dataclass

import pytest
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
    server: Server
    sock: socket.socket
    reader: object
    idle_since: float


@pytest.fixture(scope="session", autouse=True)
def connection_idle_since_the_start(request, tmp_path_factory):
    """A kept-alive connection left idle from the start of the session, for the tests marked
    `idle_since_start`: their long wait then overlaps the rest of the suite."""
    if not any(item.get_closest_marker("idle_since_start") for item in request.session.items):
        yield None
        return
    server = Server(tmp_path_factory.mktemp("idle") / "gunicorn.log").start()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    reader = sock.makefile("rb")
    send_request(sock, "/health")
    assert read_body(reader, read_head(reader), "GET").status == 200
    yield IdleConnection(server, sock, reader, time.monotonic())
    reader.close()
    sock.close()
    server.stop()
