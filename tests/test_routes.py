"""Route logic through Flask's test client; the wire itself is in test_wire.py."""

import pytest


def test_errors_share_one_json_shape(client):
    for path, status in [("/streamhtml?nblocks=x", 400), ("/nowhere", 404)]:
        reply = client.get(path)
        assert reply.status_code == status
        assert reply.mimetype == "application/json"
        assert set(reply.json) >= {"status", "error", "detail"}
        assert reply.json["status"] == status


def test_a_bad_parameter_names_itself_and_its_range(client):
    reply = client.get("/streamhtml?block_size=99999")
    assert reply.json["parameter"] == "block_size"
    assert "from 1 to 4096" in reply.json["detail"]


def test_an_unexpected_failure_is_a_json_500_without_a_traceback(app, client):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    reply = client.get("/boom")
    assert reply.status_code == 500
    assert reply.json["error"] == "internal server error"
    assert b"secret" not in reply.data and b"Traceback" not in reply.data


@pytest.mark.parametrize("flask_debug", ["1", "true"])
def test_flask_debug_in_the_environment_cannot_turn_on_the_debugger(monkeypatch, flask_debug):
    from streamhtml.web import create_app

    monkeypatch.setenv("FLASK_DEBUG", flask_debug)
    app = create_app()
    assert app.debug is False


def test_the_request_id_from_gorouter_is_echoed(client):
    request_id = "5f0c5e2a-3b5c-4d4e-8f7a-0123456789ab"
    reply = client.get("/health", headers={"X-Vcap-Request-Id": request_id})
    assert reply.headers["X-Vcap-Request-Id"] == request_id


def test_a_request_id_that_is_not_an_id_is_replaced(client):
    reply = client.get("/health", headers={"X-Vcap-Request-Id": "<script>alert(1)</script>"})
    assert "<" not in reply.headers["X-Vcap-Request-Id"]


def test_the_page_escapes_the_host_it_shows(client):
    reply = client.get("/", headers={"Host": 'evil"><script>x</script>'})
    assert b"<script>" not in reply.data


def test_info_reports_the_instance_and_the_limits_in_force(client):
    body = client.get("/info").json
    assert body["app"] == "streamhtml" and body["version"]
    assert body["limits"]["max_block_size"] == 4096
    assert body["limits"]["max_streams"] == 500
    assert body["streams_in_progress"] == 0


# Environs that bind the URL map differently: host, port, scheme, no Host at all, an upgrade
# to WebSocket, a mount point, non-ASCII paths and queries (WSGI's latin-1), bad hosts.
BINDING_CASES = {
    "plain host": {"HTTP_HOST": "localhost:8080"},
    "upper-case host": {"HTTP_HOST": "Example.COM"},
    "default http port": {"HTTP_HOST": "example.com:80"},
    "default https port": {"HTTP_HOST": "example.com:443", "wsgi.url_scheme": "https"},
    "https": {"wsgi.url_scheme": "https"},
    "no Host header": {"HTTP_HOST": None, "SERVER_NAME": "10.0.0.5", "SERVER_PORT": "8080"},
    "no Host header, another port": {
        "HTTP_HOST": None,
        "SERVER_NAME": "10.0.0.5",
        "SERVER_PORT": "9090",
    },
    "no Host header, another address": {
        "HTTP_HOST": None,
        "SERVER_NAME": "10.0.0.6",
        "SERVER_PORT": "8080",
    },
    "characters no host has": {"HTTP_HOST": "exa mple.com"},
    "WebSocket upgrade": {"HTTP_CONNECTION": "keep-alive, Upgrade", "HTTP_UPGRADE": "websocket"},
    "WebSocket without the upgrade": {"HTTP_CONNECTION": "close", "HTTP_UPGRADE": "websocket"},
    "another upgrade": {"HTTP_CONNECTION": "keep-alive, Upgrade", "HTTP_UPGRADE": "h2c"},
    "mount point": {"SCRIPT_NAME": "/mounted"},
    "empty path": {"PATH_INFO": ""},
    "UTF-8 path and query": {"PATH_INFO": "/caf\xc3\xa9", "QUERY_STRING": "q=\xc3\xa9"},
    "bytes that are not UTF-8": {"PATH_INFO": "/\xff", "QUERY_STRING": "\xfe"},
    "HEAD": {"REQUEST_METHOD": "HEAD"},
}


def binding_environ(app, **changes):
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(path="/streamhtml", query_string="nblocks=2").get_environ()
    environ.update(changes)
    return {name: value for name, value in environ.items() if value is not None}


def adapter_fields(adapter):
    return {
        name: getattr(adapter, name)
        for name in (
            "server_name",
            "script_name",
            "subdomain",
            "url_scheme",
            "path_info",
            "default_method",
            "query_args",
            "websocket",
        )
    }


def test_the_url_binding_the_app_remembers_is_flasks_own(app):
    from flask import Flask

    # One app for every case, twice over: a case must not be answered with another's binding.
    for _first_time_then_remembered in range(2):
        for case, changes in BINDING_CASES.items():
            environ = binding_environ(app, **changes)
            flasks_request = app.request_class(dict(environ))
            expected = adapter_fields(Flask.create_url_adapter(app, flasks_request))
            ours = app.request_class(dict(environ))
            assert adapter_fields(app.create_url_adapter(ours)) == expected, case
            assert ours.host == flasks_request.host, case
    assert 1 < len(app._bindings) <= len(BINDING_CASES)


def test_a_host_werkzeug_refuses_is_refused_every_time_and_not_remembered(app):
    from werkzeug.exceptions import BadHost

    environ = binding_environ(app, HTTP_HOST="a" * 64 + ".example")  # an over-long label
    for _ in range(2):
        with pytest.raises(BadHost):
            app.create_url_adapter(app.request_class(dict(environ)))
    assert app._bindings == {}


def test_a_client_inventing_hosts_cannot_grow_the_remembered_bindings(app, client):
    from streamhtml.speedups import MAX_REMEMBERED_BINDINGS

    for number in range(MAX_REMEMBERED_BINDINGS + 36):
        reply = client.get("/health", headers={"Host": f"h{number}.example"})
        assert reply.status_code == 200
    assert len(app._bindings) == MAX_REMEMBERED_BINDINGS
    environ = binding_environ(app, HTTP_HOST="late.example")
    assert app.create_url_adapter(app.request_class(environ)).server_name == "late.example"


# Paths and methods the URL map answers differently: a rule, a rule's other methods, a miss,
# trailing and doubled slashes (redirects), a rule with arguments (static files), a WebSocket.
MATCH_CASES = [
    ("/streamhtml", "GET", False),
    ("/streamhtml", "HEAD", False),
    ("/streamhtml", "OPTIONS", False),
    ("/streamhtml", "POST", False),
    ("/streamhtml", "GET", True),
    ("/streamhtml/", "GET", False),
    ("//streamhtml", "GET", False),
    ("/streamhtml//", "GET", False),
    ("/", "GET", False),
    ("", "GET", False),
    ("/health", "DELETE", False),
    ("/nowhere", "GET", False),
    ("/static/app.js", "GET", False),
    ("/static/other.css", "GET", False),
    ("/static/", "GET", False),
    ("/large.csv", "HEAD", False),
]


def match_answer(url_map, path, method, websocket):
    """What binding `url_map` and matching gives: the rule and arguments, or the refusal."""
    adapter = url_map.bind("localhost", path_info=path, default_method=method)
    try:
        rule, arguments = adapter.match(return_rule=True, websocket=websocket)
        return rule.rule, rule.endpoint, arguments
    except Exception as refusal:  # NotFound, MethodNotAllowed, a redirect: each its own
        # valid_methods is made from a set: its order changes with the hash seed.
        allowed = sorted(getattr(refusal, "valid_methods", None) or ())
        return type(refusal), allowed, getattr(refusal, "new_url", None)


def test_the_url_map_matches_each_path_as_werkzeugs_own_first_time_and_remembered(app):
    from werkzeug.routing import Map

    werkzeugs = Map([rule.empty() for rule in app.url_map.iter_rules()])
    for _first_time_then_remembered in range(2):
        for case in MATCH_CASES:
            assert match_answer(app.url_map, *case) == match_answer(werkzeugs, *case), case
    remembered = app.url_map._matcher._matched
    assert {path for _, path, _, _ in remembered} == {"/streamhtml", "/", "/large.csv"}


def test_a_remembered_match_gives_each_request_its_own_arguments(app):
    def arguments():
        return app.url_map.bind("localhost").match("/health", return_rule=True)[1]

    arguments()  # Werkzeug's answer, now remembered
    arguments()["changed"] = True
    assert arguments() == {}


def test_a_rule_added_later_is_matched_not_what_was_remembered_before_it():
    from werkzeug.routing import Map, Rule

    from streamhtml.speedups import RememberingMap

    ours = RememberingMap([Rule("/a/", endpoint="with a slash", strict_slashes=False)])
    assert ours.bind("localhost").match("/a") == ("with a slash", {})
    assert ours.bind("localhost").match("/a") == ("with a slash", {})  # remembered
    ours.add(Rule("/a", endpoint="without"))
    werkzeugs = Map([Rule("/a/", endpoint="with a slash", strict_slashes=False)])
    werkzeugs.add(Rule("/a", endpoint="without"))
    assert ours.bind("localhost").match("/a") == werkzeugs.bind("localhost").match("/a")


def test_a_client_asking_for_thousands_of_paths_cannot_grow_the_remembered_matches(app, client):
    for number in range(300):
        assert client.get(f"/static/missing-{number}.js").status_code == 404
        assert client.get(f"/nowhere-{number}").status_code == 404
    assert len(app.url_map._matcher._matched) == 0


def test_each_stream_gets_its_own_copy_of_the_checked_stream_headers(client):
    from werkzeug.datastructures import Headers

    from streamhtml.streaming import STREAM_HEADERS, stream_headers

    first = stream_headers("text/csv")
    first["Content-Disposition"] = "attachment"
    second = stream_headers("text/csv")
    assert "Content-Disposition" not in second
    # As Werkzeug would have made them, field by field (the copy is of Headers' own list).
    assert list(second.items()) == list(
        Headers([*STREAM_HEADERS.items(), ("Content-Type", "text/csv")]).items()
    )
    assert client.get("/large.csv?rows=2").headers["Content-Disposition"].startswith("attach")
    assert "Content-Disposition" not in client.get("/streamhtml?nblocks=1").headers


@pytest.mark.parametrize(
    "path",
    ["/", "/health", "/info", "/metrics", "/streamhtml?nblocks=2", "/nowhere", "/sse?nblocks=x"],
)
def test_every_answer_carries_the_common_headers_once(client, path):
    reply = client.get(path, headers={"X-Vcap-Request-Id": "5f0c5e2a-3b5c-4d4e-8f7a-0123"})
    assert reply.headers.getlist("X-Content-Type-Options") == ["nosniff"]
    assert reply.headers.getlist("X-Vcap-Request-Id") == ["5f0c5e2a-3b5c-4d4e-8f7a-0123"]
