"""Scale-out: two instances behind a router, as `instances: 2` and gorouter run them.

nginx stands in for gorouter (tests/nginx_support.py, `gorouter_like`; Debian's nginx-light,
which `make test` installs): round-robin over the instances on loopback, a keep-alive pool to
each, a fresh X-Vcap-Request-Id per request, X-Request-Start, no compression, no buffering. It
does not imitate gorouter's ~8 KiB re-chunking, `max_conns`, or its refusal of a Host that is an
IP; the helper's docstring lists the rest.

Each instance starts from the Procfile with the platform's environment and its own
CF_INSTANCE_INDEX, which it reports in the X-Instance-Index header and in /health. The app keeps
no state between requests, so any instance can serve any request: consecutive requests
alternate, and losing an instance loses nothing. The router's id for a request is the one the
client sees and the one the instance that served it logs.

The idle keep-alive race: gorouter keeps an idle connection to an instance 90 s, gunicorn 120 s
(GUNICORN_KEEPALIVE), so the router closes first. The tests here run the wrong order (the app's
keep-alive shorter than the router's) to show what happens then behind nginx.
"""

import json
import socket
import time
from pathlib import Path

import pytest
from cf_support import cf_environment, manifest_app
from nginx_support import Nginx, ScriptedUpstream, closed_first_by, gorouter_like
from support import Server, read_body, read_head, request, send_request, static_block


def start_instances(root: Path, count: int = 2, env: dict | None = None) -> list[Server]:
    manifest = manifest_app()
    instances = []
    try:
        for index in range(count):
            platform = cf_environment(manifest, instance_index=index)
            env_here = {**platform, "WEB_CONCURRENCY": "1", **(env or {})}
            instances.append(Server(root / f"instance-{index}.log", env=env_here).start())
    except BaseException:
        for instance in instances:
            instance.stop()
        raise
    return instances


def stop_all(router: Nginx, instances: list[Server]) -> None:
    router.stop()
    for instance in instances:
        instance.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaleout")
    instances = start_instances(root)
    router = gorouter_like(root / "router", [instance.port for instance in instances])
    try:
        yield router.start(), instances
    finally:
        stop_all(router, instances)


def served_by(response) -> str:
    return response.header("X-Instance-Index")


def test_consecutive_requests_alternate_between_the_two_instances(cluster):
    router, _ = cluster
    seen = []
    for _ in range(8):
        response = request(router.port, "/health")
        assert response.status == 200
        health = json.loads(response.body)
        assert health["instance_index"] == served_by(response)
        assert health["app"] == "streamhtml"
        seen.append(health["instance_index"])
    assert sorted(set(seen)) == ["0", "1"]
    assert all(a != b for a, b in zip(seen, seen[1:], strict=False)), seen


def test_streams_arrive_intact_through_the_router_from_both_instances(cluster):
    router, _ = cluster
    served = set()
    for _ in range(4):
        static = request(router.port, "/streamhtml?nblocks=64&block_size=1024&use_static_data=1")
        assert static.status == 200 and static.chunked
        # A proxy may re-chunk the body; the bytes and their order must not change.
        assert static.body == static_block(1024) * 64
        served.add(served_by(static))

        stream = request(router.port, "/streamhtml?nblocks=100&block_size=512")
        assert stream.status == 200 and len(stream.body) == 100 * 512
        blocks = [stream.body[i : i + 512] for i in range(0, len(stream.body), 512)]
        assert all(block.endswith(b"<br>\n") and block[:-5].isalpha() for block in blocks)
        served.add(served_by(stream))
    assert served == {"0", "1"}


def test_the_router_passes_paced_blocks_on_one_by_one_as_they_come(cluster):
    # gorouter flushes each read at once; so does the stand-in (proxy_buffering off). A block
    # made 150 ms after the last is read, and sent on, alone.
    router, _ = cluster
    paced = request(router.port, "/streamhtml?nblocks=5&block_size=64&sleep_ms=150")
    assert paced.status == 200 and len(paced.body) == 5 * 64
    assert [len(chunk) for chunk in paced.chunks] == [64] * 5
    gaps_s = [later - earlier for earlier, later in zip(paced.chunk_times, paced.chunk_times[1:])]
    assert all(gap_s >= 0.1 for gap_s in gaps_s), gaps_s


def test_one_client_connection_is_served_by_both_instances_alike(cluster):
    router, instances = cluster
    path = "/streamhtml?nblocks=8&block_size=256&use_static_data=1"
    direct = [request(instance.port, path).body for instance in instances]
    assert direct[0] == direct[1], "both instances answer the same request the same way"

    # Requests on one kept-alive connection: each may go to either instance, none needs the last.
    answers = []
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        for _ in range(4):
            send_request(sock, path)
            answers.append(read_body(reader, read_head(reader), "GET"))
        reader.close()
    assert {served_by(answer) for answer in answers} == {"0", "1"}
    assert all(answer.status == 200 and answer.body == direct[0] for answer in answers)


def test_the_router_overwrites_the_clients_request_id_and_the_instance_logs_the_routers(cluster):
    router, instances = cluster
    clients_id = "chosen-by-the-client-0001"
    response = request(router.port, "/health", headers={"X-Vcap-Request-Id": clients_id})
    assert response.status == 200

    routers_id = response.header("X-Vcap-Request-Id")
    assert routers_id != clients_id
    line = router.access_line(routers_id)
    # The instance the router's access log names is the one whose log has that id.
    instance = next(i for i in instances if line["upstream"] == f"127.0.0.1:{i.port}")
    [logged] = instance.wait_for_request(request_id=routers_id, path="/health")
    assert logged["instance_index"] == served_by(response)
    assert not any(i.requests_logged(request_id=clients_id) for i in instances)


def test_sequential_requests_reach_the_instances_over_the_routers_pooled_connections(cluster):
    router, instances = cluster
    requests = 8
    used = set()
    for _ in range(requests):
        assert request(router.port, "/health").status == 200
        # A pool keeps the connection open after the response; without one nginx closes it.
        pooled = router.upstream_connections()
        assert pooled, "the router closed its connection to the instance after the response"
        used |= pooled
    assert {port for _, port in used} == {instance.port for instance in instances}
    # Round-robin over two instances, each kept-alive connection reused: about one per instance.
    assert len(used) <= requests // 2, f"{len(used)} connections for {requests} requests"


def test_losing_an_instance_loses_no_request(tmp_path):
    instances = start_instances(tmp_path)
    router = gorouter_like(tmp_path / "router", [instance.port for instance in instances])
    try:
        router.start()
        assert {served_by(request(router.port, "/health")) for _ in range(4)} == {"0", "1"}
        instances[1].stop()
        for _ in range(6):
            response = request(router.port, "/streamhtml?nblocks=4&block_size=128")
            assert response.status == 200 and len(response.body) == 4 * 128
            assert served_by(response) == "0"
    finally:
        stop_all(router, instances)


# The idle keep-alive race, in the wrong order: the app's keep-alive (2 s) shorter than the
# router's (30 s), so the app is the one that closes an idle connection.
APP_KEEPALIVE_S = 2
ROUTER_IDLE_S = 30


def test_when_the_app_closes_an_idle_connection_first_nginx_drops_it_and_the_next_get_works(
    tmp_path,
):
    # Measured: nginx watches its idle pooled connections, sees the app's close at once and
    # forgets the connection, so the next request opens a new one; no error, no retry. Only a
    # request sent in the instant of the close meets it (the next test).
    [instance] = start_instances(tmp_path, 1, {"GUNICORN_KEEPALIVE": str(APP_KEEPALIVE_S)})
    router = gorouter_like(tmp_path / "router", instance.port, upstream_idle_s=ROUTER_IDLE_S)
    try:
        router.start()
        assert request(router.port, "/health").status == 200
        [first] = router.upstream_connections()

        # gunicorn closes idle connections on its once-a-second check after the keep-alive;
        # nginx then holds no socket to the instance at all, not even a half-closed one.
        deadline = time.monotonic() + APP_KEEPALIVE_S + 3
        while router.upstream_sockets() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not router.upstream_sockets(), router.upstream_sockets()
        routers_port, app_port = first
        assert closed_first_by(app_port, routers_port), "the app should have closed, not nginx"

        assert request(router.port, "/health").status == 200
        assert router.upstream_connections() - {first}, "not a new connection"
        assert "upstream prematurely closed" not in router.log()
    finally:
        stop_all(router, [instance])


def test_a_request_sent_as_the_app_closes_is_retried_for_a_get_and_lost_for_a_post(tmp_path):
    # The race itself, made certain by an upstream that hangs up on each connection's second
    # request. nginx, like Go's transport behind gorouter, retries a GET on a new connection
    # (proxy_next_upstream: a GET is idempotent) but answers 502 to a POST: the race is hidden
    # for GETs only. The right order (the router's idle timeout shorter) avoids it.
    upstream = ScriptedUpstream(hang_up_on=2).start()
    router = gorouter_like(tmp_path / "router", upstream.port, upstream_idle_s=ROUTER_IDLE_S)
    try:
        router.start()
        assert request(router.port, "/first").status == 200
        retried = request(router.port, "/second")
        assert retried.status == 200 and retried.body == b"ok"
        assert upstream.connections == 2, "the GET should have been retried on a new connection"

        lost = request(router.port, "/third", method="POST", headers={"Content-Length": "0"})
        assert lost.status == 502
        assert upstream.connections == 2, "the POST was not retried"
        assert router.log().count("upstream prematurely closed connection") == 2
    finally:
        router.stop()
        upstream.stop()
