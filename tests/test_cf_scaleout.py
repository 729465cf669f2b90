"""Scale-out: two instances behind a router, as `instances: 2` and gorouter run them.

nginx stands in for gorouter: a round-robin upstream on loopback (tests/nginx_support.py),
started by this test (Debian's nginx-light; `make test` installs it). Each instance starts from the
Procfile with the platform's environment and its own CF_INSTANCE_INDEX, which it reports in the
X-Instance-Index header and in /health. The app keeps no state between requests, so any instance
can serve any request: consecutive requests alternate, and losing an instance loses nothing.
"""

import json
import socket
from pathlib import Path

import pytest
from cf_support import cf_environment, manifest_app
from nginx_support import Nginx
from support import Server, read_body, read_head, request, send_request

from streamhtml.generators import static_block


def start_instances(root: Path, count: int = 2) -> list[Server]:
    manifest = manifest_app()
    instances = []
    try:
        for index in range(count):
            env = {**cf_environment(manifest, instance_index=index), "WEB_CONCURRENCY": "1"}
            instances.append(Server(root / f"instance-{index}.log", env=env).start())
    except BaseException:
        for instance in instances:
            instance.stop()
        raise
    return instances


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaleout")
    instances = start_instances(root)
    router = Nginx(root / "router", [instance.port for instance in instances], gzip=False)
    try:
        yield router.start(), instances
    finally:
        router.stop()
        for instance in instances:
            instance.stop()


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


def test_the_router_passes_blocks_on_as_they_come(cluster):
    # Through the router a paced stream still arrives block by block over its duration, not
    # all at the end (gorouter flushes at once; the app also sends X-Accel-Buffering: no).
    router, _ = cluster
    paced = request(router.port, "/streamhtml?nblocks=5&block_size=64&sleep_ms=150")
    assert paced.status == 200 and len(paced.body) == 5 * 64
    assert len(paced.chunks) >= 3
    assert paced.chunk_times[-1] - paced.chunk_times[0] >= 0.3


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


def test_losing_an_instance_loses_no_request(tmp_path):
    instances = start_instances(tmp_path)
    ports = [instance.port for instance in instances]
    router = Nginx(tmp_path / "router", ports, gzip=False).start()
    try:
        assert {served_by(request(router.port, "/health")) for _ in range(4)} == {"0", "1"}
        instances[1].stop()
        for _ in range(6):
            response = request(router.port, "/streamhtml?nblocks=4&block_size=128")
            assert response.status == 200 and len(response.body) == 4 * 128
            assert served_by(response) == "0"
    finally:
        router.stop()
        for instance in instances:
            instance.stop()
