"""gunicorn's gthread worker, hardened so that slow, silent or never-reading clients cannot stop it.

gthread (docs/operations.md says why this project runs it) gives every request a thread, and
in gunicorn 27.0 a thread also waits for a request head that has not arrived, blocks in a
send to a client that never reads, and the main loop lingers up to 2 s over each connection it
closes. This worker changes that through gthread's own seams, each pinned by
tests/test_worker_seams.py to the gunicorn range in requirements.in:

- Request heads are read in the worker's poller (streamhtml/connections.py: accepting,
  heads, eviction, the lingering close). A thread is handed a connection only once its whole
  head is in.
- A whole head that is plainly valid is parsed in one pass (streamhtml/heads.py); every
  other is parsed, and accepted or refused, by gunicorn's own parser (`new_parser`).
- A request whose answer is ready at once is answered on the main loop, where its head was
  read, without a trip to a pool thread and back (`handle_request`): every body but a live
  stream's is in memory, and a brief stream (`environ.mark_brief`) is made in microseconds.
  Nothing there waits: sends do not block, and an answer the socket cannot take whole, a
  live stream, a file body (sent with os.sendfile, streamhtml/sendfile.py), or a request
  with a body goes to a pool thread as before; so does every request while BUSY_POOL
  connections are on pool threads.
- gunicorn's functions the worker process replaces are in streamhtml/adoption.py; the main
  loop's heartbeat and sweeps run at most every CHORES_EVERY_S instead of once a request.
- Every HTTP/1 response is a StreamingResponse (streamhtml/response.py), which gunicorn
  builds through `wsgi.create`: sends with a stall timeout and a deadline, batched, and on the
  main loop never waiting.

TLS and HTTP/2 in gunicorn itself are not used on Cloud Foundry (gorouter terminates TLS);
with them configured the worker leaves head reading to gthread.
"""

from __future__ import annotations

import errno
import socket
import sys
import time
from datetime import datetime
from functools import partial

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.workers.gthread import ThreadWorker

from . import answers, capacity, observe
from . import environ as env
from .adoption import _has_body, adopt, this_request
from .connections import Connection, ConnectionSide, _head_length
from .outcomes import CLIENT_GONE
from .response import StreamingResponse, WouldBlock
from .settings import load_settings
from .stream import StreamFailed

# How long a thread may hold the GIL while others wait for it (CPython's default is 5 ms).
# With a hundred streams making bytes as fast as their clients read, /health waits for the
# GIL at every step it takes; at 1 ms its p99 fell from about 600 ms to about 45 ms, at no
# cost in throughput (docs/operations.md#the-worker).
GIL_SWITCH_INTERVAL_S = 0.001
# Pipelined requests answered on the main loop in one go; a pool thread takes any after them.
INLINE_PIPELINED = 8
# With this many connections out on pool threads (streams, mostly), the main loop answers
# nothing itself and hands every request to the pool, as gthread does: while streams hold the
# GIL, answers made on the main loop would queue one behind another, /health's among them
# (500 streams: /health p99 from 190 to 590 ms, the last stream accepted 0.7 s later).
BUSY_POOL = 8


# What answering a request on the main loop returns once a pool thread has it.
HANDED_OFF = object()


class HandOff(Exception):  # noqa: N818 - not an error: a change of thread
    """The main loop stops here: a pool thread carries on with `rest` (returns keep-alive)."""

    def __init__(self, rest):
        super().__init__()
        self.rest = rest


class StreamingWorker(ConnectionSide):
    """gthread with heads read in the poller, lingering closes off the main loop, eviction
    at the connection cap, and StreamingResponse for every HTTP/1 response."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        limits = load_settings().limits
        self.stall_timeout_s = float(limits.stall_timeout_s)
        self.send_buffer_bytes = limits.send_buffer_bytes
        self.on_pool = 0  # connections a pool thread is serving
        self.waiting_answers = answers.WaitingAnswers(
            limits.max_waiting_answers, float(limits.answer_timeout_s)
        )
        self.unread = answers.UnreadAnswers(capacity.publish_unread_bytes)
        self.memory_budget_bytes = load_settings().stream_memory_budget_bytes

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
        this_request.received_at_s = getattr(conn, "received_at_s", None)
        return super().handle(conn)

    # --- answering on the main loop ---------------------------------------------------------

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

    def answer(self, conn: Connection) -> None:
        """Answer the requests whose heads are in, here on the main loop, until one needs a
        pool thread; then gthread's finish_request keeps the connection or closes it."""
        keepalive: object = False
        for _ in range(INLINE_PIPELINED):
            keepalive = self.answer_one(conn)
            if keepalive is HANDED_OFF:
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
        """One request, as gthread's handle() would serve it: keep-alive or not, or HANDED_OFF
        once a pool thread has it."""
        if conn.sock.gettimeout() != 0.0:
            conn.sock.setblocking(False)  # nothing on the main loop may wait
        req = self.covered(conn, None, partial(self.next_request, conn))
        if req is HANDED_OFF or not req:
            return req or False
        return self.covered(conn, req, partial(self.answer_inline, conn, req))

    def next_request(self, conn: Connection) -> object:
        try:
            return next(conn.parser)
        except BlockingIOError:
            # gunicorn wants more than the head we saw whole (a bare-LF head, say): the pool
            # reads it as gthread would, from the start.
            self.reparse_on_thread(conn)
            return HANDED_OFF

    def answer_inline(self, conn: Connection, req) -> object:
        if _has_body(req):
            # Reading a body may wait: the whole request goes to a pool thread.
            self.hand_off(conn, req, partial(self.handle_request, req, conn))
            return HANDED_OFF
        try:
            conn.inline = True
            try:
                return self.handle_request(req, conn)
            finally:
                conn.inline = False
        except HandOff as handed:
            self.hand_off(conn, req, handed.rest)
            return HANDED_OFF

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
        this_request.received_at_s = conn.received_at_s
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
                this_request.received_at_s = conn.received_at_s
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, self.cfg)
            environ["wsgi.multithread"] = True
            conn.client_done = req.should_close() and env.body_of(environ) is None
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
