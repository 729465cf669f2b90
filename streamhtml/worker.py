"""gunicorn's gthread worker, with fewer send() calls for streams whose blocks are all ready.

gunicorn writes each item a WSGI body yields with its own send(). Under gthread every send()
releases the GIL, so with several streams per process each small block costs a hand-off
between threads (bench/PROFILE.md: 4.6 futex calls per 512-byte chunk). For a stream that
does not pause, every block is ready at once, so this worker gathers the framed chunks and
sends them in writes of about SEND_BYTES. The bytes on the wire are exactly gunicorn's: each
item is still its own HTTP chunk. A paced stream (sleep_ms > 0) is sent item by item, so each
block leaves when it is made.
"""

from gunicorn.http import wsgi
from gunicorn.workers.gthread import ThreadWorker

from .live import COALESCE_KEY

SEND_BYTES = 64 * 1024
_CHUNK_END = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


class CoalescingResponse(wsgi.Response):
    def __init__(self, req, sock, cfg):
        super().__init__(req, sock, cfg)
        self.environ: dict | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def _coalescing(self) -> bool:
        return self.environ is not None and self.environ.get(COALESCE_KEY, False)

    def _emit_body(self, data: bytes) -> None:
        if not self._coalescing():
            super()._emit_body(data)
            return
        if self.chunked:
            self._pending += (b"%X\r\n" % len(data), data, _CHUNK_END)
        else:
            self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= SEND_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self.sock.sendall(data)

    def close(self) -> None:
        if self._pending and self.chunked:
            self._pending.append(_LAST_CHUNK)  # the end of the body rides on the last write
            self.flush()
            return
        self.flush()
        super().close()


_gunicorn_create = wsgi.create


def _create(req, sock, client, server, cfg, response_class=None, response_args=()):
    # HTTP/2 brings its own response class; only HTTP/1 responses are coalesced.
    coalescing = response_class is None
    resp, environ = _gunicorn_create(
        req,
        sock,
        client,
        server,
        cfg,
        response_class=CoalescingResponse if coalescing else response_class,
        response_args=response_args,
    )
    if coalescing:
        resp.environ = environ
    return resp, environ


class StreamingWorker(ThreadWorker):
    """gthread, building its HTTP/1 responses as CoalescingResponse."""

    def init_process(self):
        # gthread builds every response through wsgi.create(); in this worker process (only)
        # it builds ours. The master and other worker classes are untouched.
        wsgi.create = _create
        super().init_process()
