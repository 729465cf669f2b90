"""The gunicorn seams StreamingWorker builds on, each pinned, so an upgrade that moves one fails
here rather than quietly dropping a defence. The behaviour itself is tested on the wire
(test_timeouts.py, test_siege.py); these say which gthread code the worker relies on."""

import collections
import importlib.metadata
import io
import socket
from concurrent.futures import Future
from types import SimpleNamespace

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.errors import InvalidResponseHeader, InvalidResponseHeaderName
from gunicorn.workers.gthread import ThreadWorker
from packaging.requirements import Requirement
from support import REPO

from streamhtml import environ as env
from streamhtml.response import SEND_BYTES, StreamingResponse
from streamhtml.worker import StreamingWorker


def test_the_installed_gunicorn_is_the_range_the_worker_was_written_against():
    pinned = next(
        Requirement(line)
        for line in (REPO / "requirements.in").read_text().splitlines()
        if line.startswith("gunicorn")
    )
    assert pinned.specifier.contains(importlib.metadata.version("gunicorn"))


def test_every_gthread_method_the_worker_overrides_or_calls_still_exists():
    for name in (
        "accept",
        "enqueue_req",
        "set_accept_enabled",
        "murder_pending",
        "murder_keepalived",
        "finish_request",
        "handle",
        "handle_request",
        "handle_error",
        "init_process",
        "run",
        "notify",
        "is_parent_alive",
        "wait_for_and_dispatch_events",
    ):
        assert callable(getattr(ThreadWorker, name, None)), name
        assert getattr(StreamingWorker, name) is not None


def test_the_gunicorn_functions_the_worker_replaces_in_its_process_are_still_looked_up():
    # StreamingWorker.init_process swaps in faster equivalents of these two, remembered per
    # second and per peer; gunicorn must still call them through their modules.
    import inspect
    import ipaddress

    from gunicorn import util
    from gunicorn.http import message

    assert "util.http_date()" in inspect.getsource(wsgi.Response.default_headers)
    assert "_ip_in_allow_list(" in inspect.getsource(message.HeaderPolicy._peer_is_trusted_proxy)
    networks = [ipaddress.ip_network("10.0.0.0/8")]
    assert message._ip_in_allow_list("10.1.2.3", ["10.0.0.0/8"], networks)
    assert not message._ip_in_allow_list("127.0.0.1", ["10.0.0.0/8"], networks)
    assert util.http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


def test_gunicorn_builds_each_environ_on_its_base_environ_which_the_worker_makes_once():
    import inspect

    from streamhtml.worker import _base_environ

    assert "base_environ(cfg)" in inspect.getsource(wsgi.default_environ)
    cfg = Config()
    first, second = _base_environ(cfg), _base_environ(cfg)
    assert first is not second  # a copy each request: one request's keys never reach another
    first["wsgi.url_scheme"] = "https"
    assert "wsgi.url_scheme" not in second
    expected = wsgi.base_environ(cfg)
    assert set(second) == set(expected)
    for key, value in expected.items():
        if key == "wsgi.errors":
            assert second[key].streams == value.streams
        else:
            assert second[key] == value, key
    other = Config()
    other.set("workers", 5)
    assert _base_environ(other)["wsgi.multiprocess"] is True


def test_prometheus_clients_value_class_is_read_when_each_value_is_made():
    # metrics.py counts through its own value class, set on prometheus_client.values.
    import inspect

    from prometheus_client import metrics as prometheus_metrics

    assert "values.ValueClass(" in inspect.getsource(prometheus_metrics.Counter._metric_init)
    assert "values.ValueClass(" in inspect.getsource(prometheus_metrics.Histogram._metric_init)


def test_a_settled_config_answers_as_gunicorns_without_its_getattr():
    # StreamingWorker.init_process copies every setting onto the worker's Config
    # (worker._settle): gunicorn must still read settings as attributes, through __getattr__.
    from streamhtml.worker import _settle

    cfg = Config()
    cfg.set("keepalive", 75)
    properties = ("is_ssl", "worker_class_str", "address", "sendfile", "reuse_port")
    before = {name: getattr(cfg, name) for name in (*cfg.settings, *properties)}
    assert "keepalive" not in vars(cfg), "gunicorn keeps settings out of the instance"
    _settle(cfg)
    assert {name: getattr(cfg, name) for name in (*cfg.settings, *properties)} == before
    assert vars(cfg)["keepalive"] == 75


class Stop(Exception):
    pass


def bare_worker():
    worker = object.__new__(StreamingWorker)
    worker.cfg = Config()
    worker.log = SimpleNamespace(debug=lambda *a: None, exception=lambda *a: None)
    worker.nr, worker.max_requests, worker.alive = 0, 1000, True
    worker.keepalived_conns, worker.max_keepalived, worker.nr_conns = [], 100, 1
    return worker


def test_gthread_builds_each_http1_response_through_wsgi_create(monkeypatch):
    # StreamingWorker.init_process replaces wsgi.create to build StreamingResponse.
    asked = []

    def recording_create(*args, **kwargs):
        asked.append(kwargs.get("response_class"))
        raise Stop

    monkeypatch.setattr(wsgi, "create", recording_create)
    req = SimpleNamespace(method="GET", path="/", should_close=lambda: False)
    conn = SimpleNamespace(sock=None, client=("127.0.0.1", 1), server=("127.0.0.1", 2))
    with pytest.raises(Stop):
        ThreadWorker.handle_request(bare_worker(), req, conn)
    assert asked == [None], "gthread no longer builds its HTTP/1 responses with wsgi.create"


def test_gthread_closes_a_finished_connection_through_conn_close_graceful():
    # Connection.close(graceful=True) is where the worker moves lingering off the main loop.
    closed = []
    conn = SimpleNamespace(close=lambda graceful=False: closed.append(graceful))
    done = Future()
    done.set_result(False)
    ThreadWorker.finish_request(bare_worker(), conn, done)
    assert closed == [True]


def test_gthread_keeps_a_connection_alive_by_appending_it_last_to_keepalived_conns():
    # StreamingWorker.settle measures what a connection's client left unread right after
    # gthread's finish_request, when it is the last of keepalived_conns (streamhtml/answers.py).
    worker = bare_worker()
    worker.poller = SimpleNamespace(register=lambda *args: None)
    worker.keepalived_conns = collections.deque([SimpleNamespace()])
    conn = SimpleNamespace(
        sock=socket.socket(),
        parser=SimpleNamespace(unreader=SimpleNamespace(buf=io.BytesIO())),
        set_timeout=lambda: None,
    )
    with conn.sock:
        done = Future()
        done.set_result(True)
        ThreadWorker.finish_request(worker, conn, done)
    assert worker.keepalived_conns[-1] is conn


def test_gthread_takes_a_kept_alive_connection_that_speaks_out_of_keepalived_conns():
    # ...and forgets it as idle in enqueue_req, which gthread calls once it is readable.
    worker = bare_worker()
    worker.poller = SimpleNamespace(unregister=lambda sock: None)
    conn = SimpleNamespace()
    worker.keepalived_conns = collections.deque([conn])
    enqueued = []
    worker.enqueue_req = enqueued.append
    ThreadWorker.on_client_socket_readable(worker, conn, None)
    assert enqueued == [conn] and not worker.keepalived_conns


class RecordingSocket:
    """Takes everything; records each send, as sendall (gunicorn) or sendmsg (ours)."""

    def __init__(self):
        self.sends = []

    def sendall(self, data):
        self.sends.append(bytes(data))

    def sendmsg(self, parts):
        self.sends.append(b"".join(bytes(part) for part in parts))
        return len(self.sends[-1])

    def settimeout(self, seconds):
        pass

    def setsockopt(self, *args):
        pass


def wire_bytes(
    response_class, items, version=(1, 1), method="GET", coalesce=False, fields=(), whole=False
):
    """What the client gets for `items`, written one write() at a time, or (`whole`) handed
    to write_items() as the worker does."""
    sock = RecordingSocket()
    req = SimpleNamespace(version=version, method=method, should_close=lambda: False)
    resp = response_class(req, sock, Config())
    if response_class is StreamingResponse:
        resp.environ = {}
        if coalesce:
            env.mark_coalescable(resp.environ)
    resp.start_response("200 OK", [("Content-Type", "text/html"), *fields])
    if whole:
        resp.write_items(iter(items))
    else:
        for item in items:
            resp.write(item)
    resp.close()
    # The Date header differs between two calls a second apart: compare without it.
    joined = b"".join(sock.sends)
    return b"\r\n".join(line for line in joined.split(b"\r\n") if not line.startswith(b"Date:"))


BODIES = {
    "small blocks": [b"a" * 512] * 300,
    "one empty item among others": [b"x", b"", b"y"],
    "empty first": [b"", b"x" * 3, b"y"],
    "large blocks": [b"b" * 70_000] * 3,
    "mixed sizes": [b"c" * size for size in (1, 16_383, 16_384, 100_000, 7, 0, 9)],
    "views": [memoryview(b"d" * 2000)[:size] for size in (1000, 0, 2000, 5)],
    "no items": [],
}


@pytest.mark.parametrize("items", BODIES.values(), ids=BODIES.keys())
@pytest.mark.parametrize("version", [(1, 1), (1, 0)], ids=["HTTP/1.1", "HTTP/1.0"])
@pytest.mark.parametrize("coalesce", [False, True], ids=["item by item", "gathered"])
@pytest.mark.parametrize("whole", [False, True], ids=["write", "write_items"])
def test_the_bytes_on_the_wire_are_exactly_gunicorns(items, version, coalesce, whole):
    ours = wire_bytes(StreamingResponse, items, version, coalesce=coalesce, whole=whole)
    assert ours == wire_bytes(wsgi.Response, [bytes(item) for item in items], version)


@pytest.mark.parametrize("whole", [False, True], ids=["write", "write_items"])
@pytest.mark.parametrize("coalesce", [False, True], ids=["item by item", "gathered"])
@pytest.mark.parametrize(
    "method, fields",
    [("HEAD", ()), ("GET", [("Content-Length", "2500")]), ("GET", [("Content-Length", "0")])],
    ids=["HEAD", "a length shorter than the body", "a length of 0"],
)
def test_a_body_cut_to_its_length_or_omitted_is_exactly_gunicorns(method, fields, coalesce, whole):
    items = [b"x" * 1000] * 5
    ours = wire_bytes(
        StreamingResponse, items, method=method, fields=fields, coalesce=coalesce, whole=whole
    )
    assert ours == wire_bytes(wsgi.Response, items, method=method, fields=fields)


FIELDS = {
    "plain": [("Content-Type", "text/html"), ("X-Thing", "  padded\t")],
    "length": [("Content-Length", "3"), ("Content-Type", "text/plain")],
    "hop by hop": [("Connection", "close"), ("Keep-Alive", "timeout=5"), ("X-After", "1")],
    "upgrade": [("Connection", "Upgrade"), ("Upgrade", "websocket")],
    "lists": [["X-List", "1"], ("X-Tuple", "2")],
}


@pytest.mark.parametrize("fields", FIELDS.values(), ids=FIELDS.keys())
def test_response_fields_are_kept_as_gunicorn_keeps_them_first_time_and_after(fields):
    # StreamingResponse remembers fields that passed gunicorn's checks as they were.
    def kept(response_class):
        req = SimpleNamespace(version=(1, 1), method="GET", should_close=lambda: False)
        resp = response_class(req, RecordingSocket(), Config())
        resp.process_headers(fields)
        return resp.headers, resp.response_length, resp.upgrade

    expected = kept(wsgi.Response)
    assert kept(StreamingResponse) == expected
    assert kept(StreamingResponse) == expected, "different once remembered"


@pytest.mark.parametrize(
    "field", [("Bad Name", "x"), ("X-Bad", "line\r\nbreak"), (b"X-Bytes", "x"), ("X-Int", 1)]
)
def test_a_response_field_gunicorn_refuses_is_refused_every_time(field):
    refusals = (TypeError, InvalidResponseHeader, InvalidResponseHeaderName)
    for _ in range(2):
        with pytest.raises(refusals):
            wsgi.Response(SimpleNamespace(), None, Config()).process_headers([field])
        with pytest.raises(refusals):
            StreamingResponse(SimpleNamespace(), None, Config()).process_headers([field])


def write_all(resp, items, whole: bool) -> None:
    if whole:
        resp.write_items(iter(items))
    else:
        for item in items:
            resp.write(item)


@pytest.mark.parametrize("whole", [False, True], ids=["write", "write_items"])
def test_a_gathered_body_goes_out_in_writes_of_about_64_kib(whole):
    sock = RecordingSocket()
    req = SimpleNamespace(version=(1, 1), method="GET", should_close=lambda: False)
    resp = StreamingResponse(req, sock, Config())
    resp.environ = {}
    env.mark_coalescable(resp.environ)
    resp.start_response("200 OK", [])
    write_all(resp, [b"z" * 1024] * 2048, whole)
    resp.close()
    assert len(sock.sends) == 2 * 1024 * 1024 // SEND_BYTES + 1
    assert all(SEND_BYTES <= len(data) < SEND_BYTES + 2048 for data in sock.sends[:-1])
    assert resp.sent == 2048 * 1024


@pytest.mark.parametrize("whole", [False, True], ids=["write", "write_items"])
def test_a_large_item_is_sent_from_where_it_is_not_copied(whole):
    shared = bytearray(b"q" * 100_000)
    view = memoryview(shared)
    handed = []

    class Sock(RecordingSocket):
        def sendmsg(self, parts):
            handed.extend(parts)
            return sum(len(part) for part in parts)

    req = SimpleNamespace(version=(1, 1), method="GET", should_close=lambda: False)
    resp = StreamingResponse(req, Sock(), Config())
    resp.environ = {}
    env.mark_coalescable(resp.environ)
    resp.start_response("200 OK", [])
    write_all(resp, [b"small", view], whole)
    resp.close()
    assert any(part is view for part in handed), "the block was copied before sending"


@pytest.mark.parametrize("whole", [False, True], ids=["write", "write_items"])
def test_only_bytes_the_socket_took_count_as_sent(whole):
    class HalfThenGone(RecordingSocket):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def sendmsg(self, parts):
            self.calls += 1
            if self.calls > 1:
                raise BrokenPipeError
            return sum(len(part) for part in parts) // 2

    req = SimpleNamespace(version=(1, 0), method="GET", should_close=lambda: False)
    resp = StreamingResponse(req, HalfThenGone(), Config())
    resp.environ = {}
    env.mark_coalescable(resp.environ)
    resp.start_response("200 OK", [])
    head = len(b"".join(line.encode() for line in resp.default_headers())) + 2
    with pytest.raises(BrokenPipeError):
        # 66,000 bytes: the first write over SEND_BYTES flushes them
        write_all(resp, [b"w" * 1000] * 66, whole)
    assert resp.sent == (head + 66_000) // 2 - head


def test_the_worker_reads_heads_only_where_gunicorn_speaks_plain_http1():
    cfg = Config()
    assert not cfg.is_ssl and "h2" not in cfg.http_protocols
    assert socket.MSG_DONTWAIT  # head reads never block the main loop
