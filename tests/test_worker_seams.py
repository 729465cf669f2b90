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
from gunicorn.http.parser import RequestParser
from gunicorn.workers.gthread import ThreadWorker
from packaging.requirements import Requirement
from support import REPO

from streamhtml import environ as env
from streamhtml.heads import PlainFirstParser, PlainRequest
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
    # An override of a method gthread no longer has would never be called: the defence it
    # carries would go without a word.
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
        "_keepalive_after",
    ):
        assert callable(getattr(ThreadWorker, name, None)), name


def request_of(head: bytes, peer=("127.0.0.1", 40000), cfg=None, parser=RequestParser):
    """The request gunicorn's parser (or `parser`) makes of `head`, from `peer`."""
    return next(parser(cfg or Config(), iter([head]), peer))


def test_gunicorn_dates_each_response_through_util_http_date(monkeypatch):
    # adopt() puts adoption._http_date (formatted once a second) in util.http_date's place.
    from gunicorn import util

    from streamhtml.adoption import _http_date

    monkeypatch.setattr(util, "http_date", lambda timestamp=None: "Recorded Date")
    req = SimpleNamespace(version=(1, 1), method="GET", should_close=lambda: False)
    resp = wsgi.Response(req, RecordingSocket(), Config())
    resp.start_response("200 OK", [])
    assert "Date: Recorded Date\r\n" in resp.default_headers()
    monkeypatch.undo()
    assert _http_date(0) == util.http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    before = util.http_date()
    ours = _http_date()
    assert ours in (before, util.http_date()), "not gunicorn's format, or not the time now"


@pytest.mark.parametrize("trusted", [True, False])
def test_gunicorn_asks_ip_in_allow_list_whether_a_peer_may_say_the_scheme(monkeypatch, trusted):
    # adopt() puts adoption._ip_in_allow_list (remembered per address) in its place; the
    # request line (observe.ForwardedTrust) asks it too.
    from gunicorn.http import message

    cfg = Config()
    asked = []

    def recording(ip_str, allow_list, networks):
        asked.append((ip_str, allow_list, networks))
        return trusted

    monkeypatch.setattr(message, "_ip_in_allow_list", recording)
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\r\n"
    for parser in (RequestParser, PlainFirstParser):
        asked.clear()
        req = request_of(head, ("192.0.2.7", 1), cfg, parser)
        assert req.scheme == ("https" if trusted else "http"), parser
        assert asked == [("192.0.2.7", cfg.forwarded_allow_ips, cfg.forwarded_allow_networks())]


def test_the_remembered_peer_check_answers_as_gunicorns():
    import ipaddress

    from gunicorn.http import message

    from streamhtml.adoption import _ip_in_allow_list

    lists = (["10.0.0.0/8"], ["127.0.0.1", "::1"], ["*"], [])
    for allow_list in lists:
        networks = [ipaddress.ip_network(item) for item in allow_list if item != "*"]
        for peer in ("10.1.2.3", "127.0.0.1", "::1", "192.0.2.1", "", "not an address"):
            for _first_then_remembered in range(2):
                ours = _ip_in_allow_list(peer, allow_list, networks)
                assert ours == message._ip_in_allow_list(peer, allow_list, networks), peer


def test_gunicorn_builds_each_environ_on_its_base_environ(monkeypatch):
    # adopt() puts adoption._base_environ (made once, copied) in wsgi.base_environ's place.
    cfg = Config()
    asked = []

    def recording(cfg):
        asked.append(cfg)
        return {"streamhtml.test.base": True}

    monkeypatch.setattr(wsgi, "base_environ", recording)
    req = request_of(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", cfg=cfg)
    _, environ = wsgi.create(req, RecordingSocket(), ("127.0.0.1", 1), ("127.0.0.1", 2), cfg)
    assert asked == [cfg]
    assert environ["streamhtml.test.base"] is True
    assert environ["PATH_INFO"] == "/x"


def test_the_base_environ_the_worker_makes_once_is_gunicorns_copied_each_request():
    from streamhtml.adoption import _base_environ

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


def test_a_settled_config_answers_as_gunicorns_without_its_getattr():
    # StreamingWorker.init_process copies every setting onto the worker's Config
    # (adoption._settle): gunicorn must still read settings as attributes, through __getattr__.
    from streamhtml.adoption import _settle

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


@pytest.fixture
def real_worker():
    """Makes a StreamingWorker as gunicorn's arbiter makes it, before it forks."""
    made = []

    def make(cfg: Config) -> StreamingWorker:
        log = SimpleNamespace(debug=lambda *a: None, info=lambda *a: None)
        made.append(StreamingWorker(0, 1, [], None, 30, cfg, log))
        return made[-1]

    yield make
    for worker in made:
        worker.tmp.close()


def test_the_worker_reads_heads_only_where_gunicorn_speaks_plain_http1(real_worker, tmp_path):
    assert real_worker(Config()).reads_heads
    tls = Config()
    tls.set("certfile", str(tmp_path / "cert.pem"))
    h2 = Config()
    h2.set("http_protocols", "h2,h1")
    assert not real_worker(tls).reads_heads
    assert not real_worker(h2).reads_heads


def test_gthread_says_whether_it_accepts_in_its_accepting_flag(real_worker):
    # wait_for_and_dispatch_events publishes the connections held only while accepting.
    import selectors

    worker = real_worker(Config())
    assert worker._accepting is False
    with selectors.DefaultSelector() as worker.poller:
        ThreadWorker.set_accept_enabled(worker, True)
        assert worker._accepting is True
        ThreadWorker.set_accept_enabled(worker, False)
        assert worker._accepting is False


def test_an_unreader_hands_over_what_it_holds_without_reading_more():
    # The worker takes a kept-alive connection's buffered bytes into its head (enqueue_req),
    # and a pipelined request's (answer), through take_buffered.
    from gunicorn.http.unreader import IterUnreader

    def never():
        raise AssertionError("read the source")
        yield b""

    unreader = IterUnreader(never())
    unreader.unread(b"GET / HTTP/1.1\r\n")
    assert unreader.take_buffered() == b"GET / HTTP/1.1\r\n"
    assert unreader.take_buffered() == b""
    assert unreader.buf.getvalue() == b""  # what Connection.nothing_pending reads


@pytest.mark.parametrize("keepalive", [True, False])
def test_gthread_keeps_a_connection_only_once_the_unread_body_is_drained(real_worker, keepalive):
    # A pool thread ends every request handed to it with gthread's _keepalive_after.
    drained = []

    def finish_body(deadline):
        drained.append(deadline)
        return "drained"

    conn = SimpleNamespace(parser=SimpleNamespace(finish_body=finish_body))
    kept = real_worker(Config())._keepalive_after(conn, keepalive)
    assert kept is keepalive
    assert len(drained) == (1 if keepalive else 0)


@pytest.mark.parametrize(
    "method, status, omitted",
    [("GET", "200 OK", False), ("HEAD", "200 OK", True), ("GET", "204 No Content", True)]
    + [("GET", "304 Not Modified", True), ("POST", "201 Created", False)],
)
def test_gunicorn_says_which_responses_omit_their_body(method, status, omitted):
    # StreamingResponse.write_items skips a body gunicorn would not send (its _omits_body).
    req = SimpleNamespace(version=(1, 1), method=method, should_close=lambda: False)
    resp = wsgi.Response(req, RecordingSocket(), Config())
    resp.start_response(status, [])
    assert resp._omits_body is omitted


def test_the_plain_head_parser_applies_gunicorns_header_policy_to_every_field(monkeypatch):
    from gunicorn.http import message

    applied = []
    policy = message.Request._apply_header_policy

    def recording(self, name, *args, **kwargs):
        applied.append(name)
        return policy(self, name, *args, **kwargs)

    monkeypatch.setattr(message.Request, "_apply_header_policy", recording)
    head = b"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: b\r\nX_Under: c\r\n\r\n"
    ours = request_of(head, parser=PlainFirstParser)
    assert type(ours) is PlainRequest, "not the one-pass path"
    assert applied == ["HOST", "USER-AGENT", "X_UNDER"]
    assert ours.headers == request_of(head).headers


class RecordingResponse:
    """What gthread's handle_request and the worker's copy of it do to a response."""

    def __init__(self, calls: list):
        self.calls = calls
        self.headers_sent = False
        self.closing = False
        self.inline = False  # StreamingResponse's: not on the main loop

    def start_response(self, status, headers, exc_info=None):
        self.calls.append(("start_response", status))
        return self.write

    def write(self, item):
        self.headers_sent = True
        self.calls.append(("write", bytes(item)))

    def write_items(self, items):  # StreamingResponse's one loop over the body
        for item in items:
            self.write(item)

    def flush(self):  # StreamingResponse: sends what the main loop left queued, if anything
        pass

    def sendfile(self, respiter):  # StreamingResponse's: these bodies are not files
        return False

    def close(self):
        self.calls.append("close")

    def force_close(self):
        self.calls.append("force_close")
        self.closing = True

    def should_close(self):
        return self.closing


class Body(list):
    def __init__(self, items, calls, fail_after=None):
        super().__init__(items)
        self.calls, self.fail_after = calls, fail_after

    def __iter__(self):
        for number, item in enumerate(super().__iter__()):
            if number == self.fail_after:
                raise RuntimeError("the app failed")
            yield item

    def close(self):
        self.calls.append("body closed")


APP_CASES = {
    "an answer": dict(items=[b"a", b"b"]),
    "keep-alive off": dict(items=[b"a"], keepalive=0),
    "the last request before a restart": dict(items=[b"a"], max_requests=1),
    "too many kept alive": dict(items=[b"a"], max_keepalived=0),
    "a failure before the first byte": dict(items=[b"a"], fail_after=0),
    "a failure after the first byte": dict(items=[b"a", b"b"], fail_after=1),
}


def served_by(handle_request, worker_class, monkeypatch, case):
    """What handle_request does, in order, for one request of `case`, and how it ends."""
    from gunicorn import util

    calls: list = []
    environ = {"wsgi.file_wrapper": wsgi.FileWrapper}
    monkeypatch.setattr(wsgi, "create", lambda *args: (RecordingResponse(calls), environ))
    monkeypatch.setattr(util, "close_graceful", lambda sock: calls.append("close_graceful"))

    def app(environ, start_response):
        calls.append("app")
        start_response("200 OK", [])
        return Body(case["items"], calls, case.get("fail_after"))

    worker = object.__new__(worker_class)
    worker.cfg = SimpleNamespace(
        keepalive=case.get("keepalive", 2),
        pre_request=lambda worker, req: calls.append("pre_request"),
        post_request=lambda worker, req, environ, resp: calls.append("post_request"),
    )
    # Debug lines are left out: they are not what the request does.
    worker.log = SimpleNamespace(
        debug=lambda *args: None,
        **{
            level: (lambda *args, level=level: calls.append(level))
            for level in ("info", "exception", "access")
        },
    )
    worker.nr, worker.max_requests, worker.alive = 0, case.get("max_requests", 1000), True
    worker.keepalived_conns, worker.max_keepalived = [], case.get("max_keepalived", 100)
    worker.wsgi = app
    req = SimpleNamespace(headers=[], should_close=lambda: False)
    conn = SimpleNamespace(sock=None, client=("127.0.0.1", 1), server=("127.0.0.1", 2))
    try:
        ended = handle_request(worker, req, conn)
    except BaseException as error:  # noqa: BLE001 - how it ended is what is compared
        ended = type(error)
    # The post_request hook runs once either way, but after a failure the copy runs it
    # before the connection is closed, gthread after: compared apart from the order.
    hooks = calls.count("post_request")
    return ended, [call for call in calls if call != "post_request"], hooks, worker.alive


@pytest.mark.parametrize("case", APP_CASES.values(), ids=APP_CASES.keys())
def test_the_workers_handle_request_does_what_gthreads_does(monkeypatch, case):
    # StreamingWorker.handle_request is a copy of gthread's, split where the main loop hands
    # a request to a pool thread: served on a pool thread it must do what gthread's does, in
    # the same order, hooks, access line and errors included.
    ours = served_by(StreamingWorker.handle_request, StreamingWorker, monkeypatch, case)
    gthreads = served_by(ThreadWorker.handle_request, ThreadWorker, monkeypatch, case)
    assert ours == gthreads
