"""File bodies the worker sends with os.sendfile: the WSGI file wrapper it offers the app
(`environ["wsgi.file_wrapper"]`), and which bytes of which file a response body stands for.

Flask's send_file and send_from_directory wrap the file they open in the server's file
wrapper (Werkzeug's `wrap_file`), and for a Range wrap that in Werkzeug's `_RangeWrapper`.
StreamingResponse.sendfile (streamhtml/response.py) asks `file_range` what either is, and sends
those bytes from the page cache; anything else is iterated as before.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from typing import IO, NamedTuple

from werkzeug.wsgi import _RangeWrapper


class FileBody:
    """PEP 3333's `wsgi.file_wrapper`. Seekable, as Werkzeug's own FileWrapper is: gunicorn's
    is not, and Werkzeug then reads a Range's whole prefix to skip it. Iterating it reads the
    file (a server that cannot sendfile; Flask's test client); the worker sendfiles it."""

    __slots__ = ("file", "buffer_size", "_on_close")

    def __init__(self, file: IO[bytes], buffer_size: int = 8192):
        self.file = file
        self.buffer_size = buffer_size
        self._on_close: Callable[[], None] | None = None

    def call_on_close(self, func: Callable[[], None]) -> None:
        """Call `func` once, after the file is closed (the server closes the body at its end)."""
        self._on_close = func

    def seekable(self) -> bool:
        return bool(getattr(self.file, "seekable", lambda: False)())

    def seek(self, *args) -> None:
        self.file.seek(*args)

    def tell(self) -> int:
        return self.file.tell()

    def __iter__(self) -> FileBody:
        return self

    def __next__(self) -> bytes:
        data = self.file.read(self.buffer_size)
        if data:
            return data
        raise StopIteration

    def close(self) -> None:
        on_close, self._on_close = self._on_close, None
        try:
            self.file.close()
        finally:
            if on_close is not None:
                on_close()


class FileRange(NamedTuple):
    fd: int
    offset: int
    length: int


def file_body(body: object) -> FileBody | None:
    """The FileBody a response body is, or wraps for a Range; None for any other body."""
    if isinstance(body, _RangeWrapper):
        body = body.iterable
    return body if isinstance(body, FileBody) else None


def file_range(body: object, response_length: int | None) -> FileRange | None:
    """The file and the bytes of it that `body` yields, when it is a regular file's FileBody
    (or one in Werkzeug's _RangeWrapper) that has not been read from yet; else None.
    `response_length` (the Content-Length) caps the count, as it caps what is written."""
    count: int | None = None
    if isinstance(body, _RangeWrapper):
        if body.read_length or not isinstance(body.iterable, FileBody):
            return None
        offset, count, body = body.start_byte, body.byte_range, body.iterable
    elif not isinstance(body, FileBody):
        return None
    try:
        fd = body.file.fileno()
        status = os.fstat(fd)
        if count is None:
            offset = body.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None  # not a file of the operating system's: iterated instead
    if not stat.S_ISREG(status.st_mode):
        return None
    if count is None:
        count = max(0, status.st_size - offset)
    if response_length is not None:
        count = min(count, response_length)
    return FileRange(fd, offset, count)
