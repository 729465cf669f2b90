"""Baseline 1: the least Flask can do per chunk. No validation, no limits, no logging.

Served by the bench with gunicorn's defaults (sync workers):
    gunicorn --workers 2 --bind 127.0.0.1:PORT --chdir bench minimal_app:app
"""

import functools

from flask import Flask, Response, request

app = Flask(__name__)


@functools.lru_cache(maxsize=64)
def block(size: int) -> bytes:
    # The same shape as the project's blocks: letters, then "<br>\n".
    return (b"x" * (size - 5) + b"<br>\n") if size >= 5 else b"x" * size


@app.route("/streamhtml")
def streamhtml():
    nblocks = int(request.args.get("nblocks", 10))
    chunk = block(int(request.args.get("block_size", 1024)))

    def generate():
        for _ in range(nblocks):
            yield chunk

    return Response(generate(), content_type="text/html; charset=utf-8")


@app.route("/health")
def health():
    return "ok\n"


@app.route("/export-naive.csv")
def export_naive():
    """The seed's pattern over the real table (bench/exports.py): a client-side cursor, every
    row in memory (fetchall), then one ','.join line a row. DATABASE_URL names the database."""
    import os

    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        rows = conn.execute("SELECT * FROM dataset ORDER BY id").fetchall()

    def generate():
        for row in rows:
            yield ",".join(map(str, row)) + "\n"

    return Response(generate(), content_type="text/csv")
