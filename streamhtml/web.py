"""The Flask app: thin routes over the generators, one JSON error shape, the request hooks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from functools import cached_property, partial

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request
from flask.sessions import NullSession, SessionInterface
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.routing import Map, MapAdapter
from werkzeug.routing.matcher import StateMachineMatcher

from . import __version__, capacity, clients, metrics, observe
from . import environ as env
from .generators import (
    CSV_CHUNK_BYTES,
    RING_MAX_BLOCK,
    SSE_HEARTBEAT,
    SSE_HEARTBEAT_S,
    Pace,
    csv_chunks,
    html_blocks,
    ndjson_lines,
    sse_events,
    sse_retry,
    sse_retry_ms,
)
from .params import (
    BadParameter,
    StreamRequest,
    parse_csv_request,
    parse_last_event_id,
    parse_ndjson_request,
    parse_stream_request,
)
from .settings import RESERVED_THREADS, Limits, Settings, load_settings
from .stream import LiveStream, Turns

STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
    "Expires": "0",
    # nginx and similar proxies pass blocks through as they come, even with gzip on.
    "X-Accel-Buffering": "no",
}
# The routes whose responses are live streams, admitted and counted by the tracker.
STREAM_ROUTES = ("/streamhtml", "/large.csv", "/sse", "/ndjson")
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
NDJSON_CONTENT_TYPE = "application/x-ndjson"
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
# An SSE event's framing past its data: `id: N`, `event: block`, `data: `, blank line.
SSE_FRAMING_BYTES = 64


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
    return STREAM_RSS_BYTES + (2 * limits.send_buffer_bytes or AUTOTUNED_SEND_BUFFER_BYTES)


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


PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

routes = Blueprint("streamhtml", __name__)


def settings() -> Settings:
    return current_app.extensions["streamhtml"]


def tracker() -> capacity.Tracker:
    return current_app.extensions["streamhtml.tracker"]


def get(rule: str):
    # GET also answers HEAD; OPTIONS and every other method get the JSON 405.
    return routes.route(rule, methods=["GET"], provide_automatic_options=False)


@get("/")
def index():
    response = Response(render_template("index.html", version=__version__))
    response.headers["Content-Security-Policy"] = PAGE_CSP
    return response


def instance_fields() -> dict:
    """Which instance and worker answered, so a person on a scaled route can tell."""
    current = settings()
    return {
        "app": current.instance.app_name,
        "version": __version__,
        "instance_index": current.instance.instance_index,
        "pid": observe.process_id(),
        "streams_in_progress": tracker().in_progress(),
    }


def uncached_json(**fields) -> Response:
    response = jsonify(**fields)
    response.headers["Cache-Control"] = "no-store"
    return response


@get("/health")
def health():
    return uncached_json(status="ok", **instance_fields())


@get("/info")
def info():
    current = settings()
    limits = {**asdict(current.limits), "max_streams_per_worker": current.max_streams_per_worker}
    limits["stream_memory_budget_bytes"] = current.stream_memory_budget_bytes
    return uncached_json(**instance_fields(), limits=limits)


@get("/metrics")
def prometheus_metrics():
    body, content_type = metrics.exposition(tracker())
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})


@get("/streamhtml")
def streamhtml():
    wanted = parse_stream_request(request.args, settings().limits)
    # A block up to RING_MAX_BLOCK may be a private copy; larger ones are shared views.
    held_bytes = wanted.block_size if wanted.block_size <= RING_MAX_BLOCK else 0
    return stream(
        lambda: html_blocks(wanted.nblocks, wanted.block_size, static=wanted.static),
        "text/html; charset=utf-8",
        held_bytes,
        pace_of(wanted, wanted.nblocks),
        most_bytes=wanted.total_bytes,
    )


@get("/sse")
def sse():
    wanted = parse_stream_request(request.args, settings().limits)
    after_id = parse_last_event_id(request.args, request.headers, wanted.nblocks)
    if after_id is not None and after_id == wanted.nblocks:
        # 204 is how a server tells an EventSource to stop reconnecting: nothing is left.
        return Response(status=204, headers=STREAM_HEADERS)
    after_id = after_id or 0
    return stream(
        lambda: sse_events(wanted.nblocks, wanted.block_size, after_id, static=wanted.static),
        SSE_CONTENT_TYPE,
        wanted.block_size,  # events are made from views of shared letters: one at a time
        pace_of(wanted, wanted.nblocks - after_id, heartbeat=SSE_HEARTBEAT),
        preamble=sse_retry(sse_retry_ms(wanted.sleep_ms)),
        most_bytes=(wanted.nblocks - after_id) * (wanted.block_size + SSE_FRAMING_BYTES),
    )


@get("/ndjson")
def ndjson():
    wanted = parse_ndjson_request(request.args, settings().limits)
    return stream(
        lambda: ndjson_lines(wanted.nblocks, wanted.block_size, epoch_ms, static=wanted.static),
        NDJSON_CONTENT_TYPE,
        2 * wanted.block_size,  # the line being sent, and the pad it was made from
        pace_of(wanted, wanted.nblocks),
        most_bytes=wanted.total_bytes,
    )


def epoch_ms() -> int:
    return time.time_ns() // 1_000_000


def pace_of(wanted: StreamRequest, items: int, heartbeat: bytes = b"") -> Pace | None:
    """How a stream of `items` waits between them; None when it does not (sleep_ms=0)."""
    if not wanted.sleep_ms:
        return None
    every_s = SSE_HEARTBEAT_S if heartbeat else 0.0
    return Pace(items, wanted.sleep_ms / 1000.0, heartbeat, every_s)


@get("/large.csv")
def large_csv():
    wanted = parse_csv_request(request.args, settings().limits)
    response = stream(
        lambda: csv_chunks(wanted.rows, wanted.seed), "text/csv; charset=utf-8", CSV_CHUNK_BYTES
    )
    response.headers["Content-Disposition"] = 'attachment; filename="large.csv"'
    return response


def stream(
    make_chunks: Callable[[], Iterator],
    content_type: str,
    held_bytes: int,
    pace: Pace | None = None,
    preamble: bytes = b"",
    most_bytes: int | None = None,
) -> Response:
    """A live stream of `make_chunks()`, or a 503 when the instance cannot take one more.

    `pace` says how it waits between items, if it does; `preamble` goes out first, at once;
    `most_bytes`, when known, bounds the body. HEAD gets the same headers and nothing else: no
    admission, no generator.
    """
    headers = stream_headers(content_type)
    environ = request.environ
    if environ["REQUEST_METHOD"] == "HEAD":
        return Response(iter(()), headers=headers)
    chunks = make_chunks()
    if not env.sends_buffers(environ):
        chunks = map(bytes, chunks)  # a server that takes bytes only (sync, test client)
    extensions = current_app.extensions
    turns = extensions["streamhtml.turns"]
    if pace is None:
        # Nothing to wait for between items: the worker may batch their sends.
        env.mark_coalescable(environ)
        if most_bytes is not None and most_bytes + len(preamble) <= BRIEF_BYTES:
            env.mark_brief(environ)
            turns = None
    limits = extensions["streamhtml"].limits
    live = LiveStream(
        chunks, env.client_socket(environ), limits.max_stream_duration_s, pace, preamble, turns
    )
    streams = extensions["streamhtml.tracker"]
    route = env.route_of(environ) or request.path
    charge = stream_charge_bytes(
        limits,
        held_bytes,
        None if most_bytes is None else most_bytes + len(preamble),
        None if pace is None else pace.items,
    )
    client = None
    if streams.clients is not None:
        client = clients.client_of(environ.get("REMOTE_ADDR"), environ.get("HTTP_X_FORWARDED_FOR"))
    refused = streams.admit(live, route, charge, client)
    if refused:
        live.close()
        return over_capacity(refused)
    live.on_release(partial(streams.release, live))
    env.attach_stream(environ, live)
    # direct_passthrough hands our iterable to gunicorn as is: no per-chunk wrapper in between.
    return LiveResponse(live, headers=headers, direct_passthrough=True)


def over_capacity(reason: str) -> Response:
    current = settings()
    limits = current.limits
    why = {
        capacity.FULL: f"this instance is serving its maximum of {limits.max_streams} "
        "concurrent streams (STREAMHTML_MAX_STREAMS)",
        capacity.WORKER_FULL: f"this worker is serving its maximum of "
        f"{current.max_streams_per_worker} streams (GUNICORN_THREADS less {RESERVED_THREADS})",
        capacity.CSV_FULL: f"this instance is serving its maximum of {limits.max_csv_streams} "
        "concurrent /large.csv downloads (STREAMHTML_MAX_CSV_STREAMS)",
        capacity.MEMORY_FULL: "the streams in progress hold this instance's memory budget "
        f"({limits.stream_memory_percent}% of MEMORY_LIMIT, STREAMHTML_STREAM_MEMORY_PERCENT)",
        capacity.SHUTTING_DOWN: "this instance is shutting down",
        capacity.CLIENT_FULL: f"this client holds its maximum of {limits.max_streams_per_client}"
        " concurrent streams on this instance (STREAMHTML_MAX_STREAMS_PER_CLIENT)",
    }[reason]
    response = error_response(
        503, "over capacity", f"{why}; retry in {RETRY_AFTER_S} s", reason=reason
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def error_response(status: int, error: str, detail: str, **extra) -> Response:
    response = uncached_json(status=status, error=error, detail=detail, **extra)
    response.status_code = status
    return response


def bad_parameter(exc: BadParameter):
    return error_response(400, f"invalid {exc.kind}", exc.detail, **{exc.field: exc.parameter})


def http_error(exc: HTTPException):
    if isinstance(exc, InternalServerError):
        return server_error(exc)
    # Flask keeps a routing error (404, 405) on the request, and its tracebacks (its own and
    # Werkzeug's NoMatch behind it) hold frames that hold the request: a cycle only the
    # garbage collector would free, some 90 objects a request. Nothing reads them.
    exc.__traceback__ = exc.__context__ = None
    details = {
        404: "no such endpoint; GET / lists them",
        405: "only GET and HEAD are allowed here",
    }
    status = exc.code or 500
    response = error_response(status, exc.name, details.get(status, exc.description or ""))
    if status == 405:
        response.headers["Allow"] = "GET, HEAD"
    return response


def server_error(exc: Exception):
    # The traceback goes to the log, never to the client.
    observe.log.error("unhandled error on %s", request.path, exc_info=exc)
    return error_response(500, "internal server error", "the server failed; see its log")


class NoSessions(SessionInterface):
    """No route keeps a session: every request shares one null session. Flask's default
    looks for a signing key and makes a new null session every request."""

    shared = NullSession()

    def open_session(self, app, request):
        return self.shared

    def save_session(self, app, session, response):
        pass  # never called: Flask saves no null session


# How many Host (and scheme, port, script) combinations the app remembers its URL binding
# for; a client inventing hosts past this gets Flask's own binding, never a bigger table.
MAX_REMEMBERED_BINDINGS = 64
# What Werkzeug's binding of the URL map reads from the environ, bar the path and the query.
BINDING_KEYS = (
    "HTTP_HOST",
    "SERVER_NAME",
    "SERVER_PORT",
    "wsgi.url_scheme",
    "HTTP_CONNECTION",
    "HTTP_UPGRADE",
    "SCRIPT_NAME",
)


def _decoded(value: str | None) -> str | None:
    # Werkzeug's _wsgi_decoding_dance, as its bind_to_environ applies it.
    return None if value is None else value.encode("latin1").decode(errors="replace")


# How many matches of a rule without arguments the URL map remembers. Only a rule's own path
# (with a method it allows) matches it, so a handful are ever made; the cap is a backstop.
MAX_REMEMBERED_MATCHES = 256


class RememberingMatcher(StateMachineMatcher):
    """Werkzeug's matcher, remembering which rule without arguments a path matched.

    Werkzeug walks its state machine through a recursive closure every time, some 2 µs, and
    leaves the closure in a reference cycle for the garbage collector. A rule without
    arguments always gives the same answer, and no arguments, for the same path and method;
    a rule with arguments (the static files), a miss, a redirect are Werkzeug's each time.
    """

    def __init__(self, merge_slashes: bool):
        super().__init__(merge_slashes)
        self._matched: dict[tuple, object] = {}

    def add(self, rule) -> None:
        self._matched.clear()
        super().add(rule)

    def match(self, domain, path, method, websocket):
        key = (domain, path, method, websocket)
        rule = self._matched.get(key)
        if rule is not None:
            return rule, {}
        rule, values = super().match(domain, path, method, websocket)
        if not rule.arguments and len(self._matched) < MAX_REMEMBERED_MATCHES:
            self._matched[key] = rule
        return rule, values


class RememberingMap(Map):
    """Werkzeug's URL map, with a matcher that remembers (RememberingMatcher)."""

    def __init__(self, rules=None, **options):
        super().__init__(None, **options)
        self._matcher = RememberingMatcher(self.merge_slashes)
        for rule in rules or ():
            self.add(rule)


class App(Flask):
    """Flask, asking once per function, not every request, whether it is a coroutine, and
    working out once per host, not every request, how the URL map binds to it and which
    rule a path matches."""

    url_map_class: type[Map] = RememberingMap

    def ensure_sync(self, func):
        runnable = self._runnable.get(func)
        if runnable is None:
            runnable = self._runnable[func] = super().ensure_sync(func)
        return runnable

    @cached_property
    def _runnable(self) -> dict:
        return {}

    def create_url_adapter(self, request):
        # Flask validates the host, lowers it, IDNA-encodes it and works out the subdomain on
        # every request; for a given Host, scheme and port the answer is always the same.
        # Only the configuration this app runs with takes the shortcut.
        config = self.config
        if (
            request is None
            or config["TRUSTED_HOSTS"] is not None
            or config["SERVER_NAME"] is not None
            or self.subdomain_matching
            or self.url_map.host_matching
        ):
            return super().create_url_adapter(request)
        environ = request.environ
        key = tuple(map(environ.get, BINDING_KEYS))
        binding = self._bindings.get(key)
        if binding is None:
            adapter = super().create_url_adapter(request)  # raises for a bad host: not kept
            if adapter is not None and len(self._bindings) < MAX_REMEMBERED_BINDINGS:
                self._bindings[key] = (
                    request.host,
                    adapter.server_name,
                    adapter.script_name,
                    adapter.subdomain,
                    adapter.url_scheme,
                )
            return adapter
        request.host, server_name, script_name, subdomain, scheme = binding
        path_info = _decoded(environ.get("PATH_INFO"))
        return MapAdapter(
            self.url_map,
            server_name,
            script_name,
            subdomain,
            scheme,
            "/" if path_info is None else path_info,
            environ["REQUEST_METHOD"],
            _decoded(environ.get("QUERY_STRING")),
        )

    @cached_property
    def _bindings(self) -> dict[tuple, tuple]:
        return {}


def create_app(app_settings: Settings | None = None) -> Flask:
    app_settings = app_settings or load_settings()
    app = App(__name__)
    app.session_interface = NoSessions()
    # Flask reads FLASK_DEBUG from the environment; no setting may turn on the debugger.
    app.config.update(DEBUG=False, PROPAGATE_EXCEPTIONS=False, TESTING=False)
    app.extensions["streamhtml"] = app_settings
    limits = app_settings.limits
    caps = capacity.Caps(
        max_streams=limits.max_streams,
        max_streams_here=app_settings.max_streams_per_worker,
        max_csv_streams=limits.max_csv_streams,
        memory_budget_bytes=app_settings.stream_memory_budget_bytes,
        small_stream_bytes=stream_base_bytes(limits) + RING_MAX_BLOCK,
        max_streams_per_client=limits.max_streams_per_client or None,
    )
    per_client = clients.ClientCap(caps.max_streams_per_client, capacity.worker_slot())
    app.extensions["streamhtml.tracker"] = capacity.new_tracker(caps, STREAM_ROUTES, per_client)
    app.extensions["streamhtml.turns"] = Turns(limits.producing_streams)
    app.register_blueprint(routes)
    app.register_error_handler(BadParameter, bad_parameter)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, server_error)
    instance_index = app_settings.instance.instance_index

    @app.before_request
    def note_request():
        current = request._get_current_object()  # type: ignore[attr-defined]
        environ = current.environ
        env.mark_request_id(environ, observe.request_id(environ.get("HTTP_X_VCAP_REQUEST_ID")))
        rule = current.url_rule
        if rule is not None:
            env.mark_route(environ, rule.rule)

    @app.after_request
    def common_headers(response: Response) -> Response:
        environ = request.environ
        fields = [
            ("X-Content-Type-Options", "nosniff"),
            (observe.REQUEST_ID_HEADER, env.request_id_of(environ) or observe.new_request_id()),
        ]
        if instance_index is not None:
            fields.append(("X-Instance-Index", instance_index))
        queue_ms = env.queue_ms(environ)
        if queue_ms is not None:
            fields.append(("Server-Timing", f"queue;dur={queue_ms:.1f}"))
        # Added to Werkzeug's list as they are: no route sets these fields, and each value is
        # ours (a constant, a checked or generated id, a number), so Werkzeug's check of each
        # value and its search for a field to replace (1-2 µs a field) find nothing; gunicorn
        # still checks every field it sends.
        response.headers._list.extend(fields)
        return response

    return app
