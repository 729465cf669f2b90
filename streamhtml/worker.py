"""gunicorn's gthread worker, hardened so that slow, silent or never-reading clients cannot stop it.

gthread (docs/operations.md says why this project runs it) gives every request a thread, and
in gunicorn 27.0 a thread also waits for a request head that has not arrived, blocks in a
send to a client that never reads, and the main loop lingers up to 2 s over each connection it
closes. This worker changes that through gthread's own seams, each pinned by
tests/test_worker_seams.py to the gunicorn range in requirements.in:

- Request heads are read in the worker's poller. A thread is handed a connection only once
  its whole head is in, so half-sent heads cost a poller entry, never a thread; a head not
  whole within STREAMHTML_HEADER_TIMEOUT_S, or over STREAMHTML_MAX_HEAD_BYTES, ends the
  connection (`accept`, `enqueue_req`).
- A whole head that is plainly valid is parsed in one pass (streamhtml/heads.py); every
  other is parsed, and accepted or refused, by gunicorn's own parser (`new_parser`).
- At GUNICORN_WORKER_CONNECTIONS the oldest connection that holds no request is closed to
  make room, instead of the worker ceasing to accept (`accept`, `set_accept_enabled`).
- Closing lingers in the poller (`TConn.close`), not on the main loop.
- A request whose answer is ready at once is answered on the main loop, where its head was
  read, without a trip to a pool thread and back (`handle_request`): every body but a live
  stream's is in memory, and a brief stream (`environ.mark_brief`) is made in microseconds.
  Nothing there waits: sends do not block, and an answer the socket cannot take whole, a
  live stream, a file body (sent with os.sendfile, streamhtml/sendfile.py), or a request
  with a body goes to a pool thread as before; so does every request while BUSY_POOL
  connections are on pool threads.
- gunicorn's Date header and its forwarded_allow_ips check of the peer are remembered (per
  second, per address) in the worker process; the main loop's heartbeat and sweeps run at most
  every CHORES_EVERY_S instead of once a request.
- Every HTTP/1 response is a StreamingResponse (streamhtml/response.py), which gunicorn
  builds through `wsgi.create`: sends with a stall timeout and a deadline, batched, and on the
  main loop never waiting.

TLS and HTTP/2 in gunicorn itself are not used on Cloud Foundry (gorouter terminates TLS);
with them configured the worker leaves head reading to gthread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import socket
import sys
import threading
import time
from datetime import datetime
from functools import partial

from gunicorn import http, util
from gunicorn.http import message, wsgi
from gunicorn.workers.gthread import TConn, ThreadWorker

from . import answers, capacity, clients, heads, memory, metrics, observe
from . import environ as env
from .observe import RequestRecord, log
from .outcomes import CLIENT_GONE, COMPLETE
from .response import StreamingResponse, WouldBlock, reset_on_close
from .sendfile import FileBody
from .settings import load_settings
from .stream import PEEK_NOW, StreamFailed

RECV_BYTES = 64 * 1024
# As gunicorn's util.close_graceful: how long and how much a closing connection is drained.
LINGER_S = 2.0
LINGER_MAX_DRAIN = 64 * 1024
# Connections taken per wake-up of the listener, so a flood is accepted (and judged) quickly.
ACCEPT_BATCH = 64
# gunicorn's workers race for every connection, and one of them could take all of a client's
# keep-alive connections while another sat idle (wrk -c10 then ran at half speed). A worker
# holding more connections than another accepting one, by more than half again, leaves the
# waiting connection to that one for up to ACCEPT_YIELD_S, giving up the CPU between looks;
# then it takes all that waits. Sleeping 100 µs between looks, or pausing the listener for
# 2 ms, cost 3-15 % of the throughput of short requests on fresh connections; sched_yield
# costs nothing measurable there.
ACCEPT_YIELD_S = 0.001
# How long a thread may hold the GIL while others wait for it (CPython's default is 5 ms).
# With a hundred streams making bytes as fast as their clients read, /health waits for the
# GIL at every step it takes; at 1 ms its p99 fell from about 600 ms to about 45 ms, at no
# cost in throughput (docs/operations.md#the-worker).
GIL_SWITCH_INTERVAL_S = 0.001
# How often the worker may hand freed memory back (memory.trim) once streams have ended.
TRIM_EVERY_S = 10.0
# Connections hold memory too (a head read so far, a parser, the objects of a request): once
# this many have gone since the last trim, the worker trims again, at most every
# TRIM_AFTER_CONNECTIONS_S. After 8,000 connections sent 16,000 bytes of head each and left,
# RSS stayed at 60 % of the quota until some stream ended.
CONNECTIONS_GONE_TO_TRIM = 256
TRIM_AFTER_CONNECTIONS_S = 1.0
# How often the worker measures again what idle clients left unread (answers.UnreadAnswers).
UNREAD_SWEEP_S = 1.0
# How often the worker says how many connections it dropped, at most.
DROP_REPORT_S = 10.0
# Pipelined requests answered on the main loop in one go; a pool thread takes any after them.
INLINE_PIPELINED = 8
# With this many connections out on pool threads (streams, mostly), the main loop answers
# nothing itself and hands every request to the pool, as gthread does: while streams hold the
# GIL, answers made on the main loop would queue one behind another, /health's among them
# (500 streams: /health p99 from 190 to 590 ms, the last stream accepted 0.7 s later).
BUSY_POOL = 8
# gthread's main loop does its chores (the heartbeat's utime(), getppid(), the timeout sweeps)
# on every turn, that is, once a request; at most this often is plenty, as every timeout they
# serve is a second or more.
CHORES_EVERY_S = 0.05

_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")


class HandOff(Exception):  # noqa: N818 - not an error: a change of thread
    """The main loop stops here: a pool thread carries on with `rest` (returns keep-alive)."""

    def __init__(self, rest):
        super().__init__()
        self.rest = rest


_request = threading.local()
_gunicorn_create = wsgi.create
_gunicorn_http_date = util.http_date
_date: tuple[int, str] = (-1, "")


_gunicorn_ip_in_allow_list = message._ip_in_allow_list
_peers_judged: dict = {}


def _ip_in_allow_list(ip_str, allow_list, networks) -> bool:
    """gunicorn's check of a peer against forwarded_allow_ips (or proxy_allow_ips), which
    parses the address every request, remembered per address and list (a setting: one list
    for the worker's life). A flood of other peers only refills it. The request line asks
    it too (observe.ForwardedTrust)."""
    key = (ip_str, id(allow_list))
    known = _peers_judged.get(key)
    if known is None:
        if len(_peers_judged) >= 1024:
            _peers_judged.clear()
        known = _peers_judged[key] = _gunicorn_ip_in_allow_list(ip_str, allow_list, networks)
    return known


def _http_date(timestamp: float | None = None) -> str:
    """gunicorn's util.http_date, formatted once a second instead of once a response."""
    global _date
    if timestamp is not None:
        return _gunicorn_http_date(timestamp)
    now = int(time.time())
    date = _date
    if date[0] != now:
        date = _date = (now, _gunicorn_http_date(now))
    return date[1]


_gunicorn_base_environ = wsgi.base_environ
_base: tuple[object, dict] = (None, {})


def _base_environ(cfg) -> dict:
    """gunicorn's base_environ, made once and copied: gunicorn makes it afresh for every
    request, wsgi.errors with it (a logger lookup and a scan of its handlers), and the same
    error stream serves every request of a worker."""
    global _base
    made_for, made = _base
    if made_for is not cfg:
        made = _gunicorn_base_environ(cfg)
        _base = (cfg, made)
    return made.copy()


def _settle(cfg) -> None:
    """Make every setting a plain attribute of `cfg`. gunicorn reads them through
    Config.__getattr__, a dict lookup and a call each, some 20 times a request; in a worker
    process they no longer change."""
    for name, setting in cfg.settings.items():
        if not hasattr(type(cfg), name):  # a property of Config keeps its own answer
            cfg.__dict__[name] = setting.get()


def adopt(cfg) -> None:
    """In this worker process (only): settle the configuration, and have gunicorn build
    every HTTP/1 response through ours and use the remembered equivalents above."""
    _settle(cfg)
    wsgi.create = _create
    wsgi.base_environ = _base_environ
    util.http_date = _http_date
    message._ip_in_allow_list = _ip_in_allow_list
    clients.trust_proxies(cfg.forwarded_allow_ips, cfg.forwarded_allow_networks())


def _create(req, sock, client, server, cfg, response_class=None, response_args=()):
    if response_class is not None:  # HTTP/2 brings its own response class
        return _gunicorn_create(req, sock, client, server, cfg, response_class, response_args)
    # gunicorn says 100 Continue to every request that expects it, before any route sees it:
    # the route that reads the body says it once it has admitted it (an upload over its size
    # limit gets its 413 instead), and a route that reads none never invites the body.
    expects_continue = req._expected_100_continue
    req._expected_100_continue = False
    resp, environ = _gunicorn_create(
        req, sock, client, server, cfg, response_class=StreamingResponse
    )
    resp.environ = environ
    # Seekable, and sent with os.sendfile by StreamingResponse (streamhtml/sendfile.py).
    environ["wsgi.file_wrapper"] = FileBody
    env.mark_sends_buffers(environ)
    env.mark_received(environ, getattr(_request, "received_at_s", None) or time.time())
    if _has_body(req):
        # Only /upload reads a body, whole or not; closing after the answer spares a thread
        # the drain, and leaves nothing of a body cut short to be read as the next request.
        resp.force_close()
        env.mark_body(environ, req.unreader.take_buffered, expects_continue)
    return resp, environ


def _has_body(req) -> bool:
    for name, value in req.headers:
        if name == "TRANSFER-ENCODING" or (name == "CONTENT-LENGTH" and value.strip() != "0"):
            return True
    return False


class Connection(TConn):
    """gthread's connection, with the head bytes read so far in the poller."""

    def __init__(self, worker: StreamingWorker, cfg, sock, client, server):
        super().__init__(cfg, sock, client, server)
        self.worker = worker
        self.head = bytearray()
        self.deadline = 0.0
        self.received_at_s = 0.0
        self.drained = 0
        self.whole_head = b""
        self.inline = False  # a request on it is being answered on the main loop
        # The last request asked to close and sent no body: once it is answered, nothing more
        # is due from the client (see nothing_pending).
        self.client_done = False

    def close(self, graceful: bool = False) -> None:
        if graceful and self.sock not in reset_on_close and not self.nothing_pending():
            self.worker.close_later(self)
        else:
            reset_on_close.discard(self.sock)
            util.close(self.sock)

    def nothing_pending(self) -> bool:
        """Whether close() can send no reset: the lingering close (RFC 9112 §9.6) is for a
        client that may still be sending, and one that asked to close, sent no body and has
        nothing more buffered here or in the kernel is not. nginx skips it on the same terms;
        it saves the poller a registration, a wake-up and a read per HTTP/1.0 request."""
        if not self.client_done or (self.parser and self.parser.unreader.buf.getvalue()):
            return False
        if self.sock.gettimeout() != 0.0:
            # With a timeout, Python waits for the socket to be readable before any recv().
            self.sock.setblocking(False)
        try:
            return not self.sock.recv(1, PEEK_NOW)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False


class StreamingWorker(ThreadWorker):
    """gthread with heads read in the poller, lingering closes off the main loop, eviction
    at the connection cap, and StreamingResponse for every HTTP/1 response."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        limits = load_settings().limits
        self.header_timeout_s = float(limits.header_timeout_s)
        self.max_head_bytes = limits.max_head_bytes
        self.stall_timeout_s = float(limits.stall_timeout_s)
        self.send_buffer_bytes = limits.send_buffer_bytes
        self.reads_heads = not self.cfg.is_ssl and "h2" not in self.cfg.http_protocols
        # Insertion-ordered, and every entry gets the same timeout: oldest first is soonest due.
        self.heads: dict[Connection, None] = {}
        self.lingering: dict[Connection, None] = {}
        self.dropped: dict[str, int] = {}
        self.dropped_reported_at = time.monotonic()
        self.trimmed_at = time.monotonic()
        self.ended_at_trim = 0
        self.most_conns_since_trim = 0
        self.notified_at = self.parent_checked_at = self.swept_at = 0.0
        self.addresses: dict = {}  # each listener's own address, asked once
        self.on_pool = 0  # connections a pool thread is serving
        self.waiting_answers = answers.WaitingAnswers(
            limits.max_waiting_answers, float(limits.answer_timeout_s)
        )
        self.unread = answers.UnreadAnswers(capacity.publish_unread_bytes)
        self.memory_budget_bytes = load_settings().stream_memory_budget_bytes
        self.unread_swept_at = 0.0

    def init_process(self):
        # gthread builds every HTTP/1 response through wsgi.create(); in this worker process
        # (only) it builds ours. The master and other worker classes are untouched.
        adopt(self.cfg)
        StreamingResponse.stall_timeout_s = self.stall_timeout_s
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        for listener in self.sockets:
            self.addresses[listener] = listener.getsockname()
            if self.send_buffer_bytes:
                # Autotuning lets one stalled stream pin up to 4 MiB of kernel memory, which
                # Cloud Foundry counts against the instance's memory quota. Linux gives every
                # accepted connection the listener's buffer size, fixed as set here.
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_bytes)
        super().init_process()

    def handle(self, conn):
        _request.received_at_s = getattr(conn, "received_at_s", None)
        return super().handle(conn)

    # --- answering on the main loop ---------------------------------------------------------

    def answer(self, conn: Connection) -> None:
        """Answer the requests whose heads are in, here on the main loop, until one needs a
        pool thread; then gthread's finish_request keeps the connection or closes it."""
        keepalive: object = False
        for _ in range(INLINE_PIPELINED):
            keepalive = self.answer_one(conn)
            if keepalive is HandOff:
                return
            unreader = conn.parser.unreader
            if not (keepalive and self.alive and unreader.buf.getvalue()):
                break
            # Pipelined: the next head may be whole in what was read already.
            buffered = unreader.take_buffered()
            unreader.unread(buffered)
            if not 0 < _head_length(buffered) <= self.max_head_bytes:
                break  # gthread's finish_request hands it to enqueue_req: judged there
            if self.on_pool >= BUSY_POOL and not answers.is_health(buffered):
                break  # the pool takes it, through enqueue_req and dispatch
            if not self.may_answer(conn):
                return
            conn.whole_head = buffered
            conn.received_at_s = time.time()
        else:
            self.to_pool(conn)  # more pipelined requests: a pool thread takes them
            return
        self.settle(conn, _Settled(keepalive))

    def answer_one(self, conn: Connection) -> object:
        """One request, as gthread's handle() would serve it: keep-alive or not, or HandOff
        once a pool thread has it."""
        if conn.sock.gettimeout() != 0.0:
            conn.sock.setblocking(False)  # nothing on the main loop may wait
        req = self.covered(conn, None, partial(self.next_request, conn))
        if req is HandOff or not req:
            return req or False
        return self.covered(conn, req, partial(self.answer_inline, conn, req))

    def next_request(self, conn: Connection) -> object:
        try:
            return next(conn.parser)
        except BlockingIOError:
            # gunicorn wants more than the head we saw whole (a bare-LF head, say): the pool
            # reads it as gthread would, from the start.
            self.reparse_on_thread(conn)
            return HandOff

    def answer_inline(self, conn: Connection, req) -> object:
        if _has_body(req):
            # Reading a body may wait: the whole request goes to a pool thread.
            self.hand_off(conn, req, partial(self.handle_request, req, conn))
            return HandOff
        try:
            conn.inline = True
            try:
                return self.handle_request(req, conn)
            finally:
                conn.inline = False
        except HandOff as handed:
            self.hand_off(conn, req, handed.rest)
            return HandOff

    def covered(self, conn: Connection, req, run) -> object:
        """run(), under the error cover of gthread's handle(): an error ends the connection."""
        try:
            return run()
        except (http.errors.NoMoreData, StopIteration):
            return False
        except OSError as error:
            if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
            return False
        except Exception as error:
            self.handle_error(req, conn.sock, conn.client, error)
            return False

    def reparse_on_thread(self, conn: Connection) -> None:
        conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(conn.whole_head)
        self.to_pool(conn)

    def to_pool(self, conn: Connection) -> None:
        """A pool thread serves `conn` from here, as gthread would."""
        self.on_pool += 1
        ThreadWorker.enqueue_req(self, conn)

    def finish_request(self, conn, fs):
        # Every request that went to the pool comes back here, on the main loop.
        self.on_pool -= 1
        self.settle(conn, fs)

    def settle(self, conn, fs) -> None:
        """gthread's finish_request; a connection it keeps idle is measured for what its
        client left unread."""
        super().finish_request(conn, fs)
        kept = self.keepalived_conns
        measured = kept and kept[-1] is conn and self.memory_budget_bytes is not None
        if measured and self.unread.note(conn, idle=True):
            self.evict_unread()

    def unread_over_budget(self) -> bool:
        budget = self.memory_budget_bytes
        return budget is not None and (
            capacity.unread_answer_bytes() > budget // answers.UNREAD_SHARE
            or capacity.held_bytes_of_instance() > budget
        )

    def evict_unread(self) -> None:
        """Reset idle connections whose clients left answers unread, oldest first, while
        those hold more than their share of the memory budget, or the budget is full."""
        while self.unread.idle and self.unread_over_budget():
            conn = self.unread.oldest_idle()
            self.unread.forget(conn)
            with contextlib.suppress(ValueError):
                self.keepalived_conns.remove(conn)
                self.unregister(conn)
                self.drop_unread(conn)

    def drop_unread(self, conn) -> None:
        self.unread.forget(conn)
        self.nr_conns -= 1
        answers.reset(conn.sock)
        self.count_drop("unread_answers")

    def may_answer(self, conn: Connection) -> bool:
        """Whether to answer the next request of a connection that has been answered before.
        A client that left earlier answers unread while unread answers fill their share of
        the memory budget gets no more: its connection is reset (so is the oldest idle one
        first). Measured here, on the main loop, where every request but a fresh
        connection's first one passes (1,500 connections pipelining 40 GET / each and never
        reading filled 256 KiB of send buffer each, 375 MiB of a 384 MiB quota). So does
        one whose answers back up (answers.BACKLOG_BYTES) while every place to wait is taken:
        its next answer would have to wait, and cannot."""
        if self.memory_budget_bytes is None or not (held := self.unread.note(conn)):
            return True
        self.evict_unread()
        backlogged = held >= answers.BACKLOG_BYTES and self.waiting_answers.full()
        if not backlogged and not self.unread_over_budget():
            return True
        self.drop_unread(conn)
        return False

    def hand_off(self, conn: Connection, req, rest) -> None:
        """A pool thread runs `rest` (which returns keep-alive), with handle()'s error cover;
        gthread's finish_request gets the result on the main loop, as for any request."""
        self.on_pool += 1
        future = self.tpool.submit(self.carry_on, conn, req, rest)
        future.add_done_callback(
            lambda done: self.method_queue.defer(self.finish_request, conn, done)
        )

    def carry_on(self, conn: Connection, req, rest) -> object:
        _request.received_at_s = conn.received_at_s
        conn.sock.setblocking(True)
        return self.covered(conn, req, lambda: self._keepalive_after(conn, rest()))

    def handle_request(self, req, conn):
        """gthread's handle_request, for HTTP/1 on either thread: on the main loop it stops
        (HandOff) where the rest might wait, and a pool thread carries on from there."""
        inline = getattr(conn, "inline", False)
        environ: env.Environ = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            if inline:
                _request.received_at_s = conn.received_at_s
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, self.cfg)
            environ["wsgi.multithread"] = True
            conn.client_done = req.should_close() and not _has_body(req)
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive: bool = False
                resp.force_close()
            crowded = len(self.keepalived_conns) >= self.max_keepalived
            if not self.alive or not self.cfg.keepalive or crowded:
                resp.force_close()
            if inline:
                env.mark_on_main_loop(environ)
            respiter = self.wsgi(environ, resp.start_response)
            if inline and env.needs_thread(environ):
                # A route that waits on I/O (streamhtml/streaming.py) answered nothing here:
                # the whole request is served again on a pool thread.
                if hasattr(respiter, "close"):
                    respiter.close()
                resp.environ = {}  # as end_request does: no reference cycle left behind
                self.nr -= 1
                raise HandOff(partial(self.handle_request, req, conn))
            body = iter(respiter)
            rest = partial(self.send_body, req, conn, resp, environ, respiter, body, request_start)
            stream = env.stream_of(environ)
            if stream is not None and not env.brief(environ):
                if not inline:
                    return rest()
                raise HandOff(rest)  # a live stream may pause or wait for a turn
            # An answer made at once: sent without waiting, on either thread. Only if the
            # client has not taken it may it wait, on a pool thread, capped and with a deadline
            # of its own (answers.WaitingAnswers).
            resp.inline = True
            if inline:
                resp._timeout_s = 0.0  # the socket is non-blocking here
            try:
                return rest()
            except WouldBlock:
                resp.inline = False
                waiting = self.waiting_answers.take(resp, rest)
                if waiting is None or not inline:
                    return (waiting or rest)()  # None: no place to wait, cut at its first send
                raise HandOff(waiting) from None
        except (OSError, HandOff, StopIteration):
            raise
        except (Exception, SystemExit):
            self.end_started_response(resp, conn, inline)
            raise

    def send_body(self, req, conn, resp, environ, respiter, body, request_start) -> bool:
        """The body, the access line, the hooks: the end of gthread's handle_request."""
        try:
            try:
                resp.flush()  # what the main loop could not send, if anything
                # As gthread's write_file, and for a Range of a file too (Werkzeug wraps it):
                # a file body goes out by sendfile when it can (StreamingResponse.sendfile).
                if not resp.sendfile(respiter):
                    resp.write_items(body)
                resp.close()
            except WouldBlock:
                raise
            except BaseException:
                self.end_request(req, resp, environ, respiter, request_start)
                raise
            self.end_request(req, resp, environ, respiter, request_start)
        except (OSError, WouldBlock):
            raise
        except (Exception, SystemExit):
            # Which thread this is, not how the answer was sent: an answer is sent without
            # waiting on a pool thread too (resp.inline), and there it closes as gthread does.
            self.end_started_response(resp, conn, getattr(conn, "inline", False))
            raise
        if resp.should_close():
            self.log.debug("Closing connection.")
            return False
        stream = env.stream_of(environ)
        # A stream that saw its client hang up leaves nobody to answer what it had pipelined.
        return stream is None or stream.outcome != CLIENT_GONE

    def end_started_response(self, resp, conn: Connection, inline: bool) -> None:
        """As gthread: a response already started cannot take a 500; the connection closes
        (here, on the main loop, through the poller's lingering close)."""
        if resp is not None and resp.headers_sent:
            if not isinstance(sys.exc_info()[1], StreamFailed):
                # A source that failed mid-stream is on the request's own line (its cause,
                # outcome=error); anything else is a bug, with its traceback.
                self.log.exception("Error handling request")
            if not inline:
                util.close_graceful(conn.sock)
            raise StopIteration() from None

    def end_request(self, req, resp, environ, respiter, request_start) -> None:
        try:
            self.log.access(resp, req, environ, datetime.now() - request_start)
            if hasattr(respiter, "close"):
                respiter.close()
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
            # gunicorn's wsgi.early_hints in the environ holds the response, which holds the
            # environ: cleared here, the request's objects go at once, not at the collector's
            # next pass (some 25 objects a request, a collection every ~60 requests).
            resp.environ = {}

    def handle_error(self, req, client, addr, exc):
        # gunicorn logs a request it could not parse only when it got as far as a request
        # object, and then twice (a warning and an access line). Here every such request is
        # one access line, with the reason (logs.py drops gunicorn's warning).
        observe.note_error(str(exc) or type(exc).__name__)
        try:
            super().handle_error(req or _UnparsedRequest(), client, addr, exc)
        finally:
            observe.note_error(None)

    # --- accepting -----------------------------------------------------------------------

    def accept(self, listener):
        if not self.reads_heads:
            return super().accept(listener)
        waited_out = False  # the others left a connection waiting: they are busy, take them all
        for _ in range(ACCEPT_BATCH):
            if self.nr_conns >= self.worker_connections and not self.evict_idle():
                return
            if not waited_out and self.holds_more_than_a_peer():
                if self.a_peer_takes_it(listener):
                    return
                waited_out = True
            try:
                client, address = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.count_drop("no_file_descriptors")
                    self.evict_idle()
                    return
                raise
            self.nr_conns += 1
            capacity.publish_connections(self.nr_conns)
            conn = Connection(self, self.cfg, client, address, self.addresses[listener])
            conn.deadline = time.monotonic() + self.header_timeout_s
            held = self.nr_conns
            self.read_head(conn)
            if self.nr_conns < held:
                # Answered and closed already (a short request, HTTP/1.0): the poller says
                # whether another connection waits, in the wait the loop makes anyway, where
                # another accept() would most often fail.
                return

    def set_accept_enabled(self, enabled):
        # At the connection cap gthread stops accepting; while some connection is only
        # idling, accept() closes it to make room instead.
        if not enabled and self.alive and self.reads_heads and self.has_idle():
            enabled = True
        super().set_accept_enabled(enabled)

    def holds_more_than_a_peer(self) -> bool:
        if not self.nr_conns:
            return False  # the common case on fresh connections, without reading the page
        fewest = capacity.fewest_connections_elsewhere()
        return fewest is not None and self.nr_conns > fewest + fewest // 2

    def a_peer_takes_it(self, listener) -> bool:
        """Whether another worker takes the waiting connection within ACCEPT_YIELD_S."""
        waiting = select.poll()
        waiting.register(listener, select.POLLIN)
        gives_up_at = time.monotonic() + ACCEPT_YIELD_S
        while time.monotonic() < gives_up_at and self.holds_more_than_a_peer():
            os.sched_yield()
            if not waiting.poll(0):
                return True
        return False

    def wait_for_and_dispatch_events(self, timeout):
        # Every turn of the main loop passes here: say how many connections this worker holds.
        accepting = self._accepting and self.alive
        capacity.publish_connections(self.nr_conns if accepting else None)
        super().wait_for_and_dispatch_events(timeout)

    def has_idle(self) -> bool:
        return bool(self.lingering or self.heads or self.keepalived_conns)

    def evict_idle(self) -> bool:
        """Close the oldest connection that holds no request being served; False if none."""
        if self.lingering:
            self.finish_linger(next(iter(self.lingering)))
        elif self.heads:
            self.drop_head(next(iter(self.heads)), "evicted")
        elif self.keepalived_conns:
            conn = self.keepalived_conns.popleft()
            self.unregister(conn)
            self.nr_conns -= 1
            util.close(conn.sock)
            self.count_drop("evicted")
        else:
            return False
        return True

    # --- reading heads in the poller ---------------------------------------------------------

    def enqueue_req(self, conn):
        # gthread calls this for a kept-alive connection that became readable and for one
        # whose buffer already holds the start of its next request (pipelining).
        self.unread.busy(conn)
        if not self.reads_heads or not isinstance(conn, Connection):
            return self.to_pool(conn)
        if conn.parser is not None:
            conn.head += conn.parser.unreader.take_buffered()
        conn.deadline = time.monotonic() + self.header_timeout_s
        if conn.head:
            self.judge_head(conn, _head_length(conn.head))
        else:
            self.read_head(conn)

    def read_head(self, conn: Connection, _sock=None) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            self.wait_for_head(conn)
            return
        except OSError:
            data = b""
        if not data:  # the client left before sending a whole head
            self.drop_head(conn, None)
            return
        conn.head += data
        self.judge_head(conn, _head_length(conn.head, len(data)))

    def judge_head(self, conn: Connection, head_bytes: int) -> None:
        """Serve a whole head, refuse one too large, or wait for more."""
        if (head_bytes or len(conn.head)) > self.max_head_bytes:
            self.refuse_head(conn)
        elif head_bytes:
            self.dispatch(conn)
        else:
            self.wait_for_head(conn)

    def wait_for_head(self, conn: Connection) -> None:
        if conn not in self.heads:
            self.heads[conn] = None
            self.poller.register(conn.sock, _READ, partial(self.read_head, conn))

    def stop_waiting(self, conn: Connection) -> None:
        if self.heads.pop(conn, False) is None:
            self.unregister(conn)

    def dispatch(self, conn: Connection) -> None:
        """The whole head is in: hand the connection to a thread, bytes and all."""
        self.stop_waiting(conn)
        if conn.parser is None:
            # conn.init() for plain HTTP/1, the only kind read here, less its switch of the
            # socket to blocking: the main loop answers with it non-blocking.
            conn.initialized = True
            conn.parser = self.new_parser(conn.sock, conn.client)
        elif not self.may_answer(conn):
            return
        conn.whole_head = bytes(conn.head)
        conn.parser.unreader.unread(conn.whole_head)
        conn.head = bytearray()
        conn.received_at_s = time.time()
        if self.on_pool >= BUSY_POOL and not answers.is_health(conn.whole_head):
            # /health is answered here whatever the pool holds: it never queues behind it.
            self.to_pool(conn)
        else:
            self.answer(conn)

    def new_parser(self, sock, client):
        # gunicorn's choice of parser, with a plain HTTP/1 head parsed in one pass
        # (streamhtml/heads.py) and every other by gunicorn's own.
        if getattr(self.cfg, "protocol", "http") != "http":
            return http.get_parser(self.cfg, sock, client)
        return heads.PlainFirstParser(self.cfg, sock, client)

    def drop_head(self, conn: Connection, reason: str | None) -> None:
        self.stop_waiting(conn)
        self.nr_conns -= 1
        util.close(conn.sock)
        if reason:
            self.count_drop(reason)

    def refuse_head(self, conn: Connection) -> None:
        self.stop_waiting(conn)
        detail = f"the request head is over {self.max_head_bytes} bytes (STREAMHTML_MAX_HEAD_BYTES)"
        body = json.dumps(
            {"status": 431, "error": "Request Header Fields Too Large", "detail": detail}
        ).encode()
        head = (
            "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
            "Content-Type: application/json\r\nCache-Control: no-store\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with contextlib.suppress(OSError):
            conn.sock.send(head + body, socket.MSG_DONTWAIT)
        observe.publish(_refusal_record(conn, 431, len(body)))
        self.nr_conns -= 1
        self.close_later(conn)

    def notify(self):
        now = time.monotonic()
        if now >= self.notified_at + CHORES_EVERY_S or not self.alive:
            self.notified_at = now
            super().notify()

    def is_parent_alive(self):
        now = time.monotonic()
        if now < self.parent_checked_at + CHORES_EVERY_S:
            return True
        self.parent_checked_at = now
        return super().is_parent_alive()

    def murder_pending(self):
        # gthread's own timeout sweep, run on every turn of the main loop; ours ride along.
        now = time.monotonic()
        if now < self.swept_at + CHORES_EVERY_S and self.alive:
            return
        self.swept_at = now
        super().murder_pending()
        while self.heads:
            conn = next(iter(self.heads))
            idle_at_stop = not self.alive and not conn.head
            if conn.deadline > now and not idle_at_stop:
                break
            self.drop_head(conn, None if idle_at_stop else "head_timeout")
        while self.lingering:
            conn = next(iter(self.lingering))
            if conn.deadline > now:
                break
            self.finish_linger(conn)
        self.report_drops(now)
        self.trim_after_streams_end(now)
        if self.unread.held and now - self.unread_swept_at >= UNREAD_SWEEP_S:
            self.unread_swept_at = now
            self.unread.sweep()
            self.evict_unread()

    def trim_after_streams_end(self, now: float) -> None:
        # Streams that end leave freed memory inside malloc's arenas; after a burst of
        # allocating streams a trim gave 26 MiB back (docs/operations.md#memory). So do
        # connections that go, a flood of them all at once.
        self.most_conns_since_trim = max(self.most_conns_since_trim, self.nr_conns)
        since_s = now - self.trimmed_at
        gone = self.most_conns_since_trim - self.nr_conns
        if since_s >= TRIM_AFTER_CONNECTIONS_S and gone >= CONNECTIONS_GONE_TO_TRIM:
            self.trim(now)
            return
        if since_s < TRIM_EVERY_S:
            return
        ended = capacity.ended_in_this_process()
        if ended != self.ended_at_trim:
            memory.trim()
        self.ended_at_trim = ended
        self.trimmed_at = now
        self.most_conns_since_trim = self.nr_conns

    def trim(self, now: float) -> None:
        memory.trim()
        self.ended_at_trim = capacity.ended_in_this_process()
        self.trimmed_at = now
        self.most_conns_since_trim = self.nr_conns

    # --- closing without blocking the main loop ------------------------------------------

    def close_later(self, conn: Connection) -> None:
        """Close as RFC 9112 §9.6 asks, from the poller: send FIN, drain what the client
        still sends for up to LINGER_S, then close, so the last response is not reset."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            util.close(conn.sock)
            return
        self.nr_conns += 1
        conn.deadline = time.monotonic() + LINGER_S
        conn.drained = 0
        self.lingering[conn] = None
        self.poller.register(conn.sock, _READ, partial(self.drain, conn))

    def drain(self, conn: Connection, _sock=None) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.drained += len(data)
        if not data or conn.drained >= LINGER_MAX_DRAIN:
            self.finish_linger(conn)

    def finish_linger(self, conn: Connection) -> None:
        if self.lingering.pop(conn, False) is None:
            self.unregister(conn)
            self.nr_conns -= 1
        util.close(conn.sock)

    def unregister(self, conn) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    # --- saying what was dropped, briefly --------------------------------------------------

    def count_drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        metrics.connection_dropped(reason)

    def report_drops(self, now: float) -> None:
        # One line per interval, however many: a flood must not become a flood of log lines.
        if not self.dropped or now - self.dropped_reported_at < DROP_REPORT_S:
            return
        summary = ", ".join(f"{count} {reason}" for reason, count in sorted(self.dropped.items()))
        log.warning(
            "closed connections in the last %.0f s: %s", now - self.dropped_reported_at, summary
        )
        self.dropped.clear()
        self.dropped_reported_at = now


_READ = 1  # selectors.EVENT_READ


class _Settled:
    """What gthread's finish_request reads of a request's future, for one answered here."""

    def __init__(self, keepalive: object):
        self._keepalive = keepalive

    def result(self) -> object:
        return self._keepalive

    def cancelled(self) -> bool:
        return False


class _UnparsedRequest:
    """What gunicorn's error path needs of a request whose first line did not parse."""

    method = ""
    path = ""
    query = ""
    uri = ""
    version = (1, 1)
    body = None
    headers: list = []
    proxy_protocol_info = None

    def should_close(self) -> bool:
        return True


def _head_length(buffered: bytearray, new_bytes: int | None = None) -> int:
    """Bytes of the request head at the front of `buffered`, 0 while it is incomplete.

    Only the tail, the `new_bytes` just read and the 3 before them, can hold an end that was
    not there before.
    """
    start = 0 if new_bytes is None else max(0, len(buffered) - new_bytes - 3)
    ends = [found + len(end) for end in _HEAD_ENDS if (found := buffered.find(end, start)) != -1]
    return min(ends) if ends else 0


def _refusal_record(conn: Connection, status: int, body_bytes: int) -> RequestRecord:
    peer = conn.client[0] if isinstance(conn.client, tuple) else None
    return RequestRecord(
        request_id=observe.new_request_id(),
        method="",
        route=None,
        path="",
        query=None,
        status=status,
        bytes_sent=body_bytes,
        duration_ms=0.0,
        outcome=COMPLETE,
        streamed=False,
        queue_ms=None,
        error="request head too large",
        peer_addr=peer,
        forwarded_for=None,
        forwarded_trusted=False,
        user_agent=None,
    )
