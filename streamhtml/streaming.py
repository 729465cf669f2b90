"""Streaming routes, each declared once, and the one helper every one of them answers with.

A streaming route says what it is where it is written:

    @stream_route(blueprint, "/export.csv", "text/csv; charset=utf-8",
                  waits_on_io=True, cap=EXPORTS)
    def export_csv():
        ...
        return stream(lambda waiting: export(..., waiting), held_bytes=...)

and the rest follows from that declaration: the capacity tracker counts it (no list to keep,
and a stream from a route nobody declared is counted as "other", never a 500); a route that
waits on I/O runs whole on a pool thread, never on the worker's main loop, takes no producing
turn, and learns before its 200 whether its source answers; a declared cap is shared by every
route naming it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.datastructures import Headers

from . import capacity, clients
from . import environ as env
from .generators import Pace
from .settings import RESERVED_THREADS, Limits, Settings
from .stream import LiveStream, StreamFailed

STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
    "Expires": "0",
    # nginx and similar proxies pass blocks through as they come, even with gzip on.
    "X-Accel-Buffering": "no",
}
RETRY_AFTER_S = 1
# What one admitted stream holds beyond the block or chunk it is sending, as measured with
# clients that never read (docs/operations.md#memory): about 50 KiB of RSS (its thread's
# stack, its objects), and the kernel's send buffer, twice SO_SNDBUF, or up to tcp_wmem's
# 4 MiB when the kernel tunes it.
STREAM_RSS_BYTES = 64 * 1024
AUTOTUNED_SEND_BUFFER_BYTES = 4 * 1024 * 1024
# An unpaced stream this small is made in microseconds and fits a fresh connection's send
# buffer: the worker answers it from its main loop (streamhtml/worker.py), with no turn.
BRIEF_BYTES = 64 * 1024


@dataclass(frozen=True)
class Cap:
    """A cap on concurrent streams of the routes that name it, per instance: `setting` is
    the Limits field that holds the number; `what` names them in the 503."""

    what: str
    setting: str

    def env_name(self) -> str:
        from .settings import declared

        return dict(declared(Limits))[self.setting].env


CSV_DOWNLOADS = Cap("csv downloads", "max_csv_streams")
EXPORTS = Cap("exports", "max_export_streams")
UPLOADS = Cap("uploads", "max_uploads")


@dataclass(frozen=True)
class StreamRoute:
    rule: str
    content_type: str
    waits_on_io: bool = False
    cap: Cap | None = None


# Every streaming route declared in this process, by URL rule.
DECLARED: dict[str, StreamRoute] = {}


def stream_route(
    blueprint: Blueprint,
    rule: str,
    content_type: str,
    *,
    waits_on_io: bool = False,
    cap: Cap | None = None,
    methods: tuple[str, ...] = ("GET",),
    **options,
):
    """Declare a streaming route on `blueprint`; see the module's docstring. It answers GET
    and HEAD unless `methods` says otherwise (an upload, which streams the other way: POST
    and PUT); `options` go to Flask's add_url_rule (merge_slashes, say)."""
    declared = StreamRoute(rule, content_type, waits_on_io, cap)

    def decorator(view: Callable) -> Callable:
        DECLARED[rule] = declared
        served = _off_main_loop(view) if waits_on_io else view
        blueprint.add_url_rule(
            rule,
            view.__name__,
            served,
            methods=list(methods),
            provide_automatic_options=False,
            **options,
        )
        return served

    return decorator


def _off_main_loop(view: Callable) -> Callable:
    """A view that may wait on I/O never runs on the worker's main loop: asked there, it
    answers nothing, and the worker serves the whole request again on a pool thread."""

    @functools.wraps(view)
    def served(**kwargs):
        environ = request.environ
        if env.on_main_loop(environ):
            env.mark_needs_thread(environ)
            return Response(status=204)  # never sent: see StreamingWorker.handle_request
        return view(**kwargs)

    return served


def route_caps(limits: Limits) -> dict[str, capacity.RouteCap]:
    """Each declared cap, as the tracker counts it, by route."""
    by_cap: dict[Cap, list[str]] = {}
    for declared in DECLARED.values():
        if declared.cap is not None:
            by_cap.setdefault(declared.cap, []).append(declared.rule)
    caps = {}
    for cap, rules in by_cap.items():
        counted = capacity.RouteCap(cap.what, getattr(limits, cap.setting), tuple(rules))
        caps.update(dict.fromkeys(rules, counted))
    return caps


class LiveResponse(Response):
    """A live stream's answer. Werkzeug copies a response's headers before it is sent, to fix
    a Location, a Content-Location or a missing Content-Length; a stream has none of those,
    so its headers go out as they are."""

    def get_wsgi_headers(self, environ) -> Headers:
        return self.headers


_checked_stream_headers: dict[str, Headers] = {}  # by content type: a few constants


def stream_headers(content_type: str) -> Headers:
    """A stream's own headers, a fresh copy each call. Werkzeug checks every field it is
    given (2.6 µs for these five); they are the same for every stream of a content type, so
    they are checked once and copied as they are."""
    checked = _checked_stream_headers.get(content_type)
    if checked is None:
        checked = Headers([*STREAM_HEADERS.items(), ("Content-Type", content_type)])
        _checked_stream_headers[content_type] = checked
    fresh = Headers()
    fresh._list = checked._list.copy()
    return fresh


def stream_base_bytes(limits: Limits) -> int:
    """The charge of a stream whose size is not known: its process share and a whole send
    buffer (stream_charge_bytes with nothing held and no bound)."""
    return stream_charge_bytes(limits, 0)


# Beyond its body, what a stream's socket may be asked to hold: the response head, the SSE
# heartbeats of its longest life, and each item's chunk framing (a hex size and two CRLFs).
STREAM_EXTRA_BYTES = 4096
CHUNK_FRAMING_BYTES = 12


def stream_charge_bytes(
    limits: Limits, held_bytes: int, most_bytes: int | None = None, items: int | None = None
) -> int:
    """What one stream is charged against the memory budget: what it keeps in the process
    (STREAM_RSS_BYTES and `held_bytes`), and in the kernel the smaller of its send buffer and
    all it has left to send, doubled as the kernel doubles SO_SNDBUF for its bookkeeping. A
    stream of 512 bytes was charged a whole send buffer (320 KiB), and 408 such paced streams
    filled a 256M instance's budget under a cap of 500. `items` unknown: each may be a byte."""
    socket_bytes = 2 * limits.send_buffer_bytes or AUTOTUNED_SEND_BUFFER_BYTES
    if most_bytes is not None:
        framing = CHUNK_FRAMING_BYTES * (most_bytes if items is None else items)
        socket_bytes = min(socket_bytes, 2 * (STREAM_EXTRA_BYTES + most_bytes + framing))
    return STREAM_RSS_BYTES + socket_bytes + held_bytes


def client_of(environ, tracker: capacity.Tracker) -> str | None:
    """Who the per-client cap counts this request against; None when the operator set none."""
    if tracker.clients is None:
        return None
    return clients.client_of(environ.get("REMOTE_ADDR"), environ.get("HTTP_X_FORWARDED_FOR"))


def stream(
    make_chunks: Callable[..., Iterator],
    held_bytes: int,
    pace: Pace | None = None,
    preamble: bytes = b"",
    most_bytes: int | None = None,
    content_type: str | None = None,
) -> Response:
    """A live stream of `make_chunks()`, or a 503 when the instance cannot take one more.

    The route's declaration gives the content type and says whether it waits on I/O; such a
    route's `make_chunks(waiting)` takes a context for its waits (LiveStream.waiting), and
    its first item is made here, so a source that fails answers with an error, not a 200.
    `pace` says how it waits between items, if it does; `preamble` goes out first, at once;
    `most_bytes`, when known, bounds the body. HEAD gets the same headers and nothing else:
    no admission, no generator.
    """
    environ = request.environ
    route = env.route_of(environ) or request.path
    declared = DECLARED.get(route)
    waits_on_io = declared is not None and declared.waits_on_io
    content_type = content_type or (
        declared.content_type if declared else "application/octet-stream"
    )
    headers = stream_headers(content_type)
    if environ["REQUEST_METHOD"] == "HEAD":
        return Response(iter(()), headers=headers)
    extensions = current_app.extensions
    limits = extensions["streamhtml"].limits
    sock = env.client_socket(environ)
    if waits_on_io:
        # No turn: it waits on I/O, and a turn is for streams that keep a core busy.
        live = LiveStream(iter(()), sock, limits.max_stream_duration_s)
    else:
        chunks = make_chunks()
        if not env.sends_buffers(environ):
            chunks = map(bytes, chunks)  # a server that takes bytes only (sync, test client)
        turns = extensions["streamhtml.turns"]
        if pace is None:
            # Nothing to wait for between items: the worker may batch their sends.
            env.mark_coalescable(environ)
            if most_bytes is not None and most_bytes + len(preamble) <= BRIEF_BYTES:
                env.mark_brief(environ)
                turns = None
        live = LiveStream(chunks, sock, limits.max_stream_duration_s, pace, preamble, turns)
    streams = extensions["streamhtml.tracker"]
    charge = stream_charge_bytes(
        limits,
        held_bytes,
        None if most_bytes is None else most_bytes + len(preamble),
        None if pace is None else pace.items,
    )
    refused = streams.admit(live, route, charge, client_of(environ, streams))
    if refused:
        live.close()
        return over_capacity(refused, route)
    live.on_release(partial(streams.release, live))
    if waits_on_io:
        try:
            live.prime(make_chunks(live.waiting))
        except BaseException:
            live.close()
            raise
    env.attach_stream(environ, live)
    # direct_passthrough hands our iterable to gunicorn as is: no per-chunk wrapper in between.
    return LiveResponse(live, headers=headers, direct_passthrough=True)


def settings() -> Settings:
    return current_app.extensions["streamhtml"]


def over_capacity(reason: str, route: str | None = None) -> Response:
    current = settings()
    limits = current.limits
    declared = DECLARED.get(route or "")
    cap = declared.cap if declared else None
    why = {
        capacity.FULL: f"this instance is serving its maximum of {limits.max_streams} "
        "concurrent streams (STREAMHTML_MAX_STREAMS)",
        capacity.WORKER_FULL: f"this worker is serving its maximum of "
        f"{current.max_streams_per_worker} streams (GUNICORN_THREADS less {RESERVED_THREADS})",
        capacity.MEMORY_FULL: "the streams in progress hold this instance's memory budget "
        f"({limits.stream_memory_percent}% of MEMORY_LIMIT, STREAMHTML_STREAM_MEMORY_PERCENT)",
        capacity.SHUTTING_DOWN: "this instance is shutting down",
        capacity.CLIENT_FULL: f"this client holds its maximum of {limits.max_streams_per_client}"
        " concurrent streams on this instance (STREAMHTML_MAX_STREAMS_PER_CLIENT)",
    }.get(reason)
    if why is None and cap is not None:
        why = (
            f"this instance is serving its maximum of {getattr(limits, cap.setting)} "
            f"concurrent {cap.what} ({cap.env_name()})"
        )
    response = error_response(
        503, "over capacity", f"{why or reason}; retry in {RETRY_AFTER_S} s", reason=reason
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def source_failed(failed: StreamFailed) -> Response:
    """A stream's source failed before its first byte: 503, with the cause and Retry-After."""
    retry_after_s = getattr(failed, "retry_after_s", RETRY_AFTER_S)
    response = error_response(503, "source unavailable", failed.cause)
    response.headers["Retry-After"] = str(retry_after_s)
    return response


def uncached_json(**fields) -> Response:
    response = jsonify(**fields)
    response.headers["Cache-Control"] = "no-store"
    return response


def error_response(status: int, error: str, detail: str, **extra) -> Response:
    response = uncached_json(status=status, error=error, detail=detail, **extra)
    response.status_code = status
    return response
