"""The Flask app: thin routes over the generators, one JSON error shape, the per-request hook."""

import os
from dataclasses import asdict
from functools import partial

from flask import Blueprint, Flask, Response, current_app, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError

from . import __version__, live, metrics, observe
from .connection import ClientWatcher
from .generators import csv_chunks, html_blocks, paced
from .params import BadParameter, parse_csv_request, parse_stream_request
from .settings import Settings, load_settings

STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
    "Expires": "0",
    # nginx and similar proxies pass blocks through as they come, even with gzip on.
    "X-Accel-Buffering": "no",
}
RETRY_AFTER_S = 1
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

routes = Blueprint("streamhtml", __name__)


def settings() -> Settings:
    return current_app.extensions["streamhtml"]


def tracker() -> live.Tracker:
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
        "pid": os.getpid(),
        "streams_in_progress": tracker().instance_live(),
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
    return uncached_json(**instance_fields(), limits=limits)


@get("/metrics")
def prometheus_metrics():
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})


@get("/streamhtml")
def streamhtml():
    wanted = parse_stream_request(request.args, settings().limits)
    if request.method == "HEAD":
        return stream_response(iter(()), "text/html; charset=utf-8")
    blocks = html_blocks(wanted.nblocks, wanted.block_size, static=wanted.static)
    if not wanted.sleep_ms:
        # Nothing to wait for between blocks: no watcher, and the worker may batch sends.
        request.environ[live.COALESCE_KEY] = True
        return stream_response(blocks, "text/html; charset=utf-8")
    watcher = ClientWatcher(request.environ.get("gunicorn.socket"))
    blocks = paced(blocks, partial(watcher.pause, wanted.sleep_ms / 1000.0))
    return stream_response(blocks, "text/html; charset=utf-8", watcher)


@get("/large.csv")
def large_csv():
    wanted = parse_csv_request(request.args, settings().limits)
    rows = iter(()) if request.method == "HEAD" else csv_chunks(wanted.rows, wanted.seed)
    response = stream_response(rows, "text/csv; charset=utf-8")
    response.headers["Content-Disposition"] = 'attachment; filename="large.csv"'
    return response


def stream_response(chunks, content_type: str, watcher: ClientWatcher | None = None) -> Response:
    """A streamed response, or a 503 when the instance is at capacity."""
    if request.method != "HEAD":
        stopped_early = (lambda: watcher.outcome) if watcher else (lambda: None)
        chunks = live.LiveStream(
            chunks,
            request.environ.get("gunicorn.socket"),
            partial(metrics.stream_ended, request.path),
            stopped_early,
        )
        if not chunks.admit_to(tracker()):
            return over_capacity()
        metrics.stream_started(request.path)
        # The request log (streamhtml/logs.py) reads the stream's outcome from here.
        request.environ[live.STREAM_ENVIRON_KEY] = chunks
    # direct_passthrough hands our iterable to gunicorn as is: no per-chunk wrapper in between,
    # and gunicorn frames each item as one HTTP chunk.
    return Response(
        chunks, content_type=content_type, headers=STREAM_HEADERS, direct_passthrough=True
    )


def over_capacity() -> Response:
    response = error_response(
        503,
        "over capacity",
        f"this instance is serving its maximum of {settings().limits.max_streams} concurrent "
        f"streams (STREAMHTML_MAX_STREAMS); retry in {RETRY_AFTER_S} s",
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def error_response(status: int, error: str, detail: str, **extra) -> Response:
    response = uncached_json(status=status, error=error, detail=detail, **extra)
    response.status_code = status
    return response


def bad_parameter(exc: BadParameter):
    return error_response(400, "invalid query parameter", exc.detail, parameter=exc.parameter)


def http_error(exc: HTTPException):
    if isinstance(exc, InternalServerError):
        return server_error(exc)
    details = {
        404: "no such endpoint; GET / lists them",
        405: "only GET and HEAD are allowed here",
    }
    response = error_response(exc.code, exc.name, details.get(exc.code, exc.description))
    if exc.code == 405:
        response.headers["Allow"] = "GET, HEAD"
    return response


def server_error(exc: Exception):
    # The traceback goes to the log, never to the client.
    observe.log.error("unhandled error on %s", request.path, exc_info=exc)
    return error_response(500, "internal server error", "the server failed; see its log")


def create_app(app_settings: Settings | None = None) -> Flask:
    app_settings = app_settings or load_settings()
    app = Flask(__name__)
    # Flask reads FLASK_DEBUG from the environment; no setting may turn on the debugger.
    app.config.update(DEBUG=False, PROPAGATE_EXCEPTIONS=False, TESTING=False)
    app.extensions["streamhtml"] = app_settings
    app.extensions["streamhtml.tracker"] = live.new_tracker(
        app_settings.limits.max_streams, app_settings.max_streams_per_worker
    )
    app.register_blueprint(routes)
    app.register_error_handler(BadParameter, bad_parameter)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, server_error)

    @app.before_request
    def assign_request_id():
        g.request_id = observe.request_id(request.headers.get(observe.REQUEST_ID_HEADER))

    @app.after_request
    def common_headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers[observe.REQUEST_ID_HEADER] = g.get("request_id") or observe.request_id(
            None
        )
        if app_settings.instance.instance_index is not None:
            response.headers["X-Instance-Index"] = app_settings.instance.instance_index
        return response

    return app
