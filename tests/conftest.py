"""Fixtures: the app with small limits, and real gunicorn servers started as the Procfile does."""

import pytest
from support import Server

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
