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
