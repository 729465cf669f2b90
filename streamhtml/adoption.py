"""gunicorn, adopted by this project in each worker process (only): the process-wide
replacements StreamingWorker makes of gunicorn's functions, and the response every HTTP/1
request is answered with.

gthread builds every HTTP/1 response through `wsgi.create`; here it builds a
StreamingResponse (streamhtml/response.py). gunicorn's Date header and its
forwarded_allow_ips check of the peer are remembered (per second, per address), its base
environ made once, its settings read as plain attributes. Each is a row of DEVELOPMENT.md's
seam table, pinned by tests/test_worker_seams.py.
"""

from __future__ import annotations

import threading
import time

from gunicorn import util
from gunicorn.http import message, wsgi

from . import clients
from . import environ as env
from .response import StreamingResponse
from .sendfile import FileBody

# When the request being answered on this thread was whole (the worker's main loop sets it,
# or a pool thread as it takes a connection over).
this_request = threading.local()
_gunicorn_create = wsgi.create
_gunicorn_http_date = util.http_date
_date: tuple[int, str] = (-1, "")


_gunicorn_ip_in_allow_list = message._ip_in_allow_list
_peers_judged: dict = {}


def _ip_in_allow_list(ip_str, allow_list, networks) -> bool:
    """gunicorn's check of a peer against forwarded_allow_ips (or proxy_allow_ips), which
    parses the address every request, remembered per address and list (a setting: one list
    for the worker's life). A flood of other peers only refills it. The request line asks
    it too (observe.ForwardedTrust)."""
    key = (ip_str, id(allow_list))
    known = _peers_judged.get(key)
    if known is None:
        if len(_peers_judged) >= 1024:
            _peers_judged.clear()
        known = _peers_judged[key] = _gunicorn_ip_in_allow_list(ip_str, allow_list, networks)
    return known


def _http_date(timestamp: float | None = None) -> str:
    """gunicorn's util.http_date, formatted once a second instead of once a response."""
    global _date
    if timestamp is not None:
        return _gunicorn_http_date(timestamp)
    now = int(time.time())
    date = _date
    if date[0] != now:
        date = _date = (now, _gunicorn_http_date(now))
    return date[1]


_gunicorn_base_environ = wsgi.base_environ
_base: tuple[object, dict] = (None, {})


def _base_environ(cfg) -> dict:
    """gunicorn's base_environ, made once and copied: gunicorn makes it afresh for every
    request, wsgi.errors with it (a logger lookup and a scan of its handlers), and the same
    error stream serves every request of a worker."""
    global _base
    made_for, made = _base
    if made_for is not cfg:
        made = _gunicorn_base_environ(cfg)
        _base = (cfg, made)
    return made.copy()


def _settle(cfg) -> None:
    """Make every setting a plain attribute of `cfg`. gunicorn reads them through
    Config.__getattr__, a dict lookup and a call each, some 20 times a request; in a worker
    process they no longer change."""
    for name, setting in cfg.settings.items():
        if not hasattr(type(cfg), name):  # a property of Config keeps its own answer
            cfg.__dict__[name] = setting.get()


def adopt(cfg) -> None:
    """In this worker process (only): settle the configuration, and have gunicorn build
    every HTTP/1 response through ours and use the remembered equivalents above."""
    _settle(cfg)
    wsgi.create = _create
    wsgi.base_environ = _base_environ
    util.http_date = _http_date
    message._ip_in_allow_list = _ip_in_allow_list
    clients.trust_proxies(cfg.forwarded_allow_ips, cfg.forwarded_allow_networks())


def _create(req, sock, client, server, cfg, response_class=None, response_args=()):
    if response_class is not None:  # HTTP/2 brings its own response class
        return _gunicorn_create(req, sock, client, server, cfg, response_class, response_args)
    # gunicorn says 100 Continue to every request that expects it, before any route sees it:
    # the route that reads the body says it once it has admitted it (an upload over its size
    # limit gets its 413 instead), and a route that reads none never invites the body.
    expects_continue = req._expected_100_continue
    req._expected_100_continue = False
    resp, environ = _gunicorn_create(
        req, sock, client, server, cfg, response_class=StreamingResponse
    )
    resp.environ = environ
    # Seekable, and sent with os.sendfile by StreamingResponse (streamhtml/sendfile.py).
    environ["wsgi.file_wrapper"] = FileBody
    env.mark_sends_buffers(environ)
    env.mark_received(environ, getattr(this_request, "received_at_s", None) or time.time())
    if _has_body(req):
        # Only /upload reads a body, whole or not; closing after the answer spares a thread
        # the drain, and leaves nothing of a body cut short to be read as the next request.
        resp.force_close()
        env.mark_body(environ, req.unreader.take_buffered, expects_continue)
    return resp, environ


def _has_body(req) -> bool:
    for name, value in req.headers:
        if name == "TRANSFER-ENCODING" or (name == "CONTENT-LENGTH" and value.strip() != "0"):
            return True
    return False
