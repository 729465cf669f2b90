"""Flask and Werkzeug, asked less per request: what the app's configuration makes constant is
worked out once (sessions, coroutine checks, the URL binding per host, the rule a path
matches). Each is pinned against the library's own answer in tests/test_routes.py."""

from __future__ import annotations

from functools import cached_property

from flask import Flask
from flask.sessions import NullSession, SessionInterface
from werkzeug.routing import Map, MapAdapter
from werkzeug.routing.matcher import StateMachineMatcher


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
