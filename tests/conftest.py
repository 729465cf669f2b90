import pytest
from support import Server

from streamhtml.settings import Limits, Settings
from streamhtml.web import create_app

# Small limits so every limit can be hit cheaply; wire tests pass the same as environment.
SMALL_LIMITS = Limits(
    max_block_size=4096,
    max_nblocks=1000,
    max_response_bytes=1_000_000,
    max_sleep_ms=2000,
    max_stream_duration_s=5,
    max_csv_rows=5000,
)
SMALL_LIMITS_ENV = {
    "STREAMHTML_MAX_BLOCK_SIZE": "4096",
    "STREAMHTML_MAX_NBLOCKS": "1000",
    "STREAMHTML_MAX_RESPONSE_BYTES": "1000000",
    "STREAMHTML_MAX_SLEEP_MS": "2000",
    "STREAMHTML_MAX_STREAM_DURATION_S": "5",
    "STREAMHTML_MAX_CSV_ROWS": "5000",
}


@pytest.fixture
def app():
    return create_app(Settings(limits=SMALL_LIMITS))


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
    """One shared gunicorn with the small limits."""
    log_path = tmp_path_factory.mktemp("small") / "gunicorn.log"
    running = Server(log_path, env=SMALL_LIMITS_ENV).start()
    yield running
    running.stop()
