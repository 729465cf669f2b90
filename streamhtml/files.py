"""GET /files/<path>: a regular file under STREAMHTML_FILES_DIR, through Flask's
send_from_directory (ETag, Last-Modified, Range, 304, HEAD), and never anything else.

What is refused, and why (SECURITY.md): a path with a NUL or another control character (400);
anything outside the directory, whether by `..`, an absolute path or a symlink that resolves
outside (resolved first, then checked); a directory (no listings); a name in which any part
starts with a dot, before or after resolving (`.env`, `.git/config`, `.htpasswd`); anything
that is not a regular file (a FIFO would hold a thread forever); a file the app may not read.
Each of these is the same 404, so a client cannot tell which it hit.
"""

from __future__ import annotations

import os
import re
import stat
from functools import partial

from flask import Response, request, send_from_directory
from werkzeug.exceptions import NotFound, RequestedRangeNotSatisfiable
from werkzeug.security import safe_join

from . import environ as env
from .capacity import Tracker
from .sendfile import file_body
from .stream import LiveStream

SETTING = "STREAMHTML_FILES_DIR"
# File answers are the operator's bytes, not the app's: a browser must not run an HTML file
# from this origin as a page of the app.
FILE_HEADERS = {"Content-Security-Policy": "sandbox; default-src 'none'"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SUFFIX_RANGE = re.compile(r"\s*bytes\s*=\s*-\s*([0-9]{1,19})\s*")
_NOT_FOUND = "no such file under /files/ (hidden names, directories and links out are refused)"


class FileRefused(Exception):
    """A /files request that gets a JSON error: its status, error, detail and extra headers."""

    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}


def not_found() -> FileRefused:
    return FileRefused(404, "Not Found", _NOT_FOUND)


def inside(root: str, name: str) -> tuple[str, int]:
    """The path of `name` relative to `root` (a resolved directory) once every link in it is
    resolved, and the file's size, when that is a visible regular file inside `root`; else
    FileRefused."""
    if _CONTROL.search(name):
        raise FileRefused(400, "invalid path", "a file path may not hold control characters")
    if _hidden(name) or name.endswith("/"):
        raise not_found()
    joined = safe_join(root, name)  # refuses `..`, absolute paths and backslashes
    if joined is None:
        raise not_found()
    real = os.path.realpath(joined)
    if os.path.commonpath((root, real)) != root or real == root:
        raise not_found()
    relative = os.path.relpath(real, root)
    if _hidden(relative):
        raise not_found()
    try:
        found = os.stat(real)
    except (OSError, ValueError):
        raise not_found() from None
    if not stat.S_ISREG(found.st_mode):
        raise not_found()
    return relative, found.st_size


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/"))


def send(root: str, name: str) -> Response:
    """send_from_directory's answer for `name` under `root`, conditional and with ranges."""
    if not root:
        raise FileRefused(
            404,
            "no files directory",
            f"this instance serves no files: set {SETTING} to a directory to serve its files "
            "under /files/",
        )
    relative, size = inside(root, name)
    environ = request.environ
    suffix = _SUFFIX_RANGE.fullmatch(environ.get("HTTP_RANGE", ""))
    if suffix and size and int(suffix[1]) > size:
        # RFC 9110 §14.1.2: a suffix longer than the file is the whole file; Werkzeug 3.1
        # refuses it with a 416.
        environ["HTTP_RANGE"] = "bytes=0-"
    try:
        response = send_from_directory(root, relative, conditional=True, etag=True)
    except RequestedRangeNotSatisfiable as refused:
        raise FileRefused(
            416,
            "Range Not Satisfiable",
            f"the file is {refused.length} bytes; Range asks for none of them (one range only)",
            {"Content-Range": f"bytes */{refused.length}"},
        ) from None
    except (NotFound, OSError):
        raise not_found() from None
    response.headers.update(FILE_HEADERS)
    return response


def admit(
    response: Response,
    streams: Tracker,
    cost_bytes: int,
    duration_s: int,
    client: str | None = None,
) -> str | None:
    """Count a file's answer with a body in as a stream, with a deadline `duration_s` away;
    None when admitted (or there is no body to send), else why it was refused (the file is
    closed). The worker sends it with sendfile (streamhtml/response.py), which marks the
    stream complete; closing the file releases it."""
    environ = request.environ
    body = file_body(response.response) if response.status_code in (200, 206) else None
    if body is None or environ["REQUEST_METHOD"] == "HEAD":
        return None  # HEAD, a 304: Werkzeug sends no body, and closes the file itself
    live = LiveStream(iter(()), env.client_socket(environ), duration_s)
    refused = streams.admit(live, env.route_of(environ) or request.path, cost_bytes, client)
    if refused:
        response.close()
        live.close()
        return refused
    live.on_release(partial(streams.release, live))
    body.call_on_close(live.close)
    env.attach_stream(environ, live)
    return None
