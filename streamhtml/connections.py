"""StreamingWorker's connection side: accepting (and sharing bursts with the other workers),
request heads read in the poller, so half-sent heads cost a poller entry and never a thread,
eviction at GUNICORN_WORKER_CONNECTIONS instead of refusing, the lingering close off the main
loop, the main loop's chores, and what was dropped, said briefly."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import socket
import time
from functools import partial

from gunicorn import http, util
from gunicorn.workers.gthread import TConn, ThreadWorker

from . import answers, capacity, heads, memory, metrics, observe
from .observe import log
from .response import reset_on_close
from .settings import load_settings
from .stream import PEEK_NOW

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
# How often the worker says how many connections it dropped, at most.
DROP_REPORT_S = 10.0
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
# gthread's main loop does its chores (the heartbeat's utime(), getppid(), the timeout sweeps)
# on every turn, that is, once a request; at most this often is plenty, as every timeout they
# serve is a second or more.
CHORES_EVERY_S = 0.05

_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
_READ = 1  # selectors.EVENT_READ


class Connection(TConn):
    """gthread's connection, with the head bytes read so far in the poller."""

    def __init__(self, worker: ConnectionSide, cfg, sock, client, server):
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


class ConnectionSide(ThreadWorker):
    """gthread's worker, with its connection side changed; StreamingWorker adds the
    answering side, whose hooks are declared here."""

    unread: answers.UnreadAnswers
    memory_budget_bytes: int | None

    def answer(self, conn: Connection) -> None:
        raise NotImplementedError  # StreamingWorker's: answer whole heads on the main loop

    def to_pool(self, conn: Connection) -> None:
        raise NotImplementedError  # StreamingWorker's: a pool thread serves the connection

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        limits = load_settings().limits
        self.header_timeout_s = float(limits.header_timeout_s)
        self.max_head_bytes = limits.max_head_bytes
        self.reads_heads = not self.cfg.is_ssl and "h2" not in self.cfg.http_protocols
        # Insertion-ordered, and every entry gets the same timeout: oldest first is soonest due.
        self.heads: dict[Connection, None] = {}
        self.lingering: dict[Connection, None] = {}
        self.dropped: dict[str, int] = {}
        self.dropped_reported_at = time.monotonic()
        self.addresses: dict = {}  # each listener's own address, asked once
        self.trimmed_at = time.monotonic()
        self.ended_at_trim = 0
        self.most_conns_since_trim = 0
        self.notified_at = self.parent_checked_at = self.swept_at = 0.0
        self.unread_swept_at = 0.0

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
        peer = conn.client[0] if isinstance(conn.client, tuple) else None
        observe.publish(observe.refusal_record(peer, 431, len(body), "request head too large"))
        self.nr_conns -= 1
        self.close_later(conn)

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

    # --- the main loop's chores, and what unread answers may hold --------------------------

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
        metrics.flush_counts()
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


def _head_length(buffered: bytearray, new_bytes: int | None = None) -> int:
    """Bytes of the request head at the front of `buffered`, 0 while it is incomplete.

    Only the tail, the `new_bytes` just read and the 3 before them, can hold an end that was
    not there before.
    """
    start = 0 if new_bytes is None else max(0, len(buffered) - new_bytes - 3)
    ends = [found + len(end) for end in _HEAD_ENDS if (found := buffered.find(end, start)) != -1]
    return min(ends) if ends else 0
