"""The exports of real rows: /export.csv and /export.ndjson, from PostgreSQL or SQLite.

Each is one declaration and a few lines: `waits_on_io=True` runs it on a pool thread, never
on the worker's main loop, with no producing turn, and makes its first page before the 200,
so a database that is down or busy is a 503 with Retry-After, not an empty download.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, request

from . import environ as env
from . import metrics, rows
from .params import parse_export_request
from .settings import Settings
from .streaming import EXPORTS, settings, stream, stream_route

routes = Blueprint("exports", __name__)


def attach(app: Flask, app_settings: Settings) -> None:
    """Open the row source of this app (the pool is made in each worker, on first use), and
    start making the embedded dataset when it is not there yet."""
    source = rows.open_source(app_settings.source, app_settings.limits)
    source.start()
    app.extensions["streamhtml.rows"] = source


@stream_route(routes, "/export.csv", "text/csv; charset=utf-8", waits_on_io=True, cap=EXPORTS)
def export_csv():
    response = export_of(rows.CSV)
    response.headers["Content-Disposition"] = 'attachment; filename="export.csv"'
    return response


@stream_route(routes, "/export.ndjson", "application/x-ndjson", waits_on_io=True, cap=EXPORTS)
def export_ndjson():
    return export_of(rows.NDJSON)


def export_of(fmt: str) -> Response:
    """Every row of `dataset` after `after_id` (at most `limit`), in id order."""
    wanted = parse_export_request(request.args)
    source = current_app.extensions["streamhtml.rows"]
    page_rows = settings().limits.export_batch_rows
    endpoint = env.route_of(request.environ) or request.path
    return stream(
        lambda waiting: rows.export(
            source,
            fmt,
            wanted.after_id,
            wanted.limit,
            page_rows,
            waiting,
            counted=lambda count: metrics.rows_exported(endpoint, count),
            failed=metrics.export_failed,
        ),
        rows.EXPORT_HELD_BYTES,
    )
