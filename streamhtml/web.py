"""The Flask app: thin routes over the generators, one JSON error shape, the request hooks.

The streaming routes are declared with `stream_route` (streamhtml/streaming.py), which says
what each is; the exports of real rows live in streamhtml/exports.py, and the Flask and
Werkzeug speed-ups in streamhtml/speedups.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict

from flask import Blueprint, Flask, Response, current_app, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.routing import WebsocketMismatch

from . import (
    __version__,
    capacity,
    clients,
    exports,
    files,
    metrics,
    observe,
    uploads,
    websockets,
)
from . import environ as env
from .generators import (
    CSV_CHUNK_BYTES,
    RING_MAX_BLOCK,
    SSE_HEARTBEAT,
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
from .settings import Settings, load_settings
from .speedups import App, NoSessions
from .stream import StreamFailed, Turns
from .streaming import (
    CSV_DOWNLOADS,
    DECLARED,
    STREAM_HEADERS,
    client_of,
    error_response,
    over_capacity,
    route_caps,
    settings,
    source_failed,
    stream,
    stream_base_bytes,
    stream_route,
    uncached_json,
)

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
NDJSON_CONTENT_TYPE = "application/x-ndjson"
# An SSE event's framing past its data: `id: N`, `event: block`, `data: `, blank line.
SSE_FRAMING_BYTES = 64

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

routes = Blueprint("streamhtml", __name__)


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


@get("/health")
def health():
    return uncached_json(status="ok", **instance_fields())


@get("/info")
def info():
    current = settings()
    limits = {**asdict(current.limits), "max_streams_per_worker": current.max_streams_per_worker}
    limits["stream_memory_budget_bytes"] = current.stream_memory_budget_bytes
    # Where exports read rows: kind, host and database, never a user or a password.
    return uncached_json(**instance_fields(), limits=limits, source=current.source.describe())


@get("/metrics")
def prometheus_metrics():
    body, content_type = metrics.exposition(tracker())
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})


@stream_route(routes, "/streamhtml", "text/html; charset=utf-8")
def streamhtml():
    wanted = parse_stream_request(request.args, settings().limits)
    # A block up to RING_MAX_BLOCK may be a private copy; larger ones are shared views.
    held_bytes = wanted.block_size if wanted.block_size <= RING_MAX_BLOCK else 0
    return stream(
        lambda: html_blocks(wanted.nblocks, wanted.block_size, static=wanted.static),
        held_bytes,
        pace_of(wanted, wanted.nblocks),
        most_bytes=wanted.total_bytes,
    )


@stream_route(routes, "/sse", SSE_CONTENT_TYPE)
def sse():
    wanted = parse_stream_request(request.args, settings().limits)
    after_id = parse_last_event_id(request.args, request.headers, wanted.nblocks)
    if after_id is not None and after_id == wanted.nblocks:
        # 204 is how a server tells an EventSource to stop reconnecting: nothing is left.
        return Response(status=204, headers=STREAM_HEADERS)
    after_id = after_id or 0
    return stream(
        lambda: sse_events(wanted.nblocks, wanted.block_size, after_id, static=wanted.static),
        wanted.block_size,  # events are made from views of shared letters: one at a time
        pace_of(wanted, wanted.nblocks - after_id, heartbeat=SSE_HEARTBEAT),
        preamble=sse_retry(sse_retry_ms(wanted.sleep_ms)),
        most_bytes=(wanted.nblocks - after_id) * (wanted.block_size + SSE_FRAMING_BYTES),
    )


@stream_route(routes, "/ndjson", NDJSON_CONTENT_TYPE)
def ndjson():
    wanted = parse_ndjson_request(request.args, settings().limits)
    return stream(
        lambda: ndjson_lines(wanted.nblocks, wanted.block_size, epoch_ms, static=wanted.static),
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
    every_s = float(settings().limits.sse_heartbeat_s) if heartbeat else 0.0
    return Pace(items, wanted.sleep_ms / 1000.0, heartbeat, every_s)


@stream_route(routes, "/large.csv", "text/csv; charset=utf-8", cap=CSV_DOWNLOADS)
def large_csv():
    wanted = parse_csv_request(request.args, settings().limits)
    response = stream(lambda: csv_chunks(wanted.rows, wanted.seed), CSV_CHUNK_BYTES)
    response.headers["Content-Disposition"] = 'attachment; filename="large.csv"'
    return response


# Slashes are not merged: `/files//etc/passwd` is an absolute path, refused, not redirected.
# `/files/` itself is refused as any directory is (or says what to set). Its content type is
# the file's; stream() is not used: the worker sends the file itself (streamhtml/sendfile.py).
@get("/files/")
@stream_route(
    routes, "/files/<path:name>", "application/octet-stream", waits_on_io=True, merge_slashes=False
)
def send_file_from_directory(name: str = ""):
    current = settings()
    response = files.send(current.content.files_dir, name)
    limits = current.limits
    cost_bytes = stream_base_bytes(limits)  # its send buffer and thread: no block of its own
    streams = tracker()
    client = client_of(request.environ, streams)
    refused = files.admit(response, streams, cost_bytes, limits.max_stream_duration_s, client)
    return over_capacity(refused) if refused else response


def bad_parameter(exc: BadParameter):
    return error_response(400, f"invalid {exc.kind}", exc.detail, **{exc.field: exc.parameter})


def file_refused(exc: files.FileRefused):
    response = error_response(exc.status, exc.error, exc.detail)
    response.headers.update(exc.headers)
    return response


def http_error(exc: HTTPException):
    if isinstance(exc, InternalServerError):
        return server_error(exc)
    # Flask keeps a routing error (404, 405) on the request, and its tracebacks (its own and
    # Werkzeug's NoMatch behind it) hold frames that hold the request: a cycle only the
    # garbage collector would free, some 90 objects a request. Nothing reads them.
    exc.__traceback__ = exc.__context__ = None
    # Every route answers GET and HEAD but /upload, which takes POST and PUT.
    allowed = sorted(getattr(exc, "valid_methods", None) or ("GET", "HEAD"))
    details = {
        404: "no such endpoint; GET / lists them",
        405: f"only {' and '.join(allowed)} are allowed here",
    }
    status = exc.code or 500
    detail = details.get(status, exc.description or "")
    if isinstance(exc, WebsocketMismatch):
        detail = "/ws/ endpoints take WebSocket handshakes only, and no other endpoint takes one"
    response = error_response(status, exc.name, detail)
    if status == 405:
        response.headers["Allow"] = ", ".join(allowed)
    return response


def server_error(exc: Exception):
    # The traceback goes to the log, never to the client.
    observe.log.error("unhandled error on %s", request.path, exc_info=exc)
    return error_response(500, "internal server error", "the server failed; see its log")


def create_app(app_settings: Settings | None = None, blueprints: Iterable[Blueprint] = ()) -> Flask:
    """The app. `blueprints` are yours: their streaming routes, declared with stream_route
    (DEVELOPMENT.md, "Adding a streaming route"), are counted like the app's own."""
    app_settings = app_settings or load_settings()
    app = App(__name__)
    app.session_interface = NoSessions()
    # Flask reads FLASK_DEBUG from the environment; no setting may turn on the debugger.
    app.config.update(DEBUG=False, PROPAGATE_EXCEPTIONS=False, TESTING=False)
    app.extensions["streamhtml"] = app_settings
    limits = app_settings.limits
    for blueprint in (routes, exports.routes, uploads.routes, websockets.routes, *blueprints):
        app.register_blueprint(blueprint)
    # Every streaming route is declared by now: the tracker counts what was declared.
    caps = capacity.Caps(
        max_streams=limits.max_streams,
        max_streams_here=app_settings.max_streams_per_worker,
        memory_budget_bytes=app_settings.stream_memory_budget_bytes,
        small_stream_bytes=stream_base_bytes(limits) + RING_MAX_BLOCK,
        route_caps=route_caps(limits),
        max_streams_per_client=limits.max_streams_per_client or None,
    )
    per_client = clients.ClientCap(caps.max_streams_per_client, capacity.worker_slot())
    app.extensions["streamhtml.tracker"] = capacity.new_tracker(caps, tuple(DECLARED), per_client)
    app.extensions["streamhtml.turns"] = Turns(limits.producing_streams)
    exports.attach(app, app_settings)
    app.register_error_handler(BadParameter, bad_parameter)
    app.register_error_handler(StreamFailed, source_failed)
    app.register_error_handler(files.FileRefused, file_refused)
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
