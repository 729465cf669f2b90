"""Scale-out: two instances behind a router, as `instances: 2` and gorouter run them.

nginx stands in for gorouter: a round-robin upstream on loopback, configured and started by this
test (Debian package nginx-light; `make test` installs it). Each instance is started from the
Procfile with the platform's environment and its own CF_INSTANCE_INDEX, which it reports in the
X-Instance-Index header and in /health. The app keeps no state between requests, so any instance
can serve any request: consecutive requests alternate, and losing an instance loses nothing.
"""

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cf_support import cf_environment, manifest_app
from support import Server, free_port, read_body, read_head, request, send_request

from streamhtml.generators import static_block

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream streamhtml {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://streamhtml;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto http;
        }}
    }}
}}
"""


def find_nginx() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail("nginx is missing: `make test` installs it (apt-get install nginx-light)")
    return found


class Router:
    """nginx in the foreground, one process, on a free loopback port; stopped by its PID."""

    def __init__(self, root: Path, backend_ports: list[int]):
        self.root = root
        self.port = free_port()
        servers = "\n".join(f"        server 127.0.0.1:{port};" for port in backend_ports)
        self.conf = root / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(root=root, port=self.port, servers=servers))
        self.process: subprocess.Popen | None = None

    def start(self) -> "Router":
        nginx = find_nginx()
        self.process = subprocess.Popen(
            [nginx, "-p", str(self.root), "-e", str(self.root / "error.log"), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.root / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen:\n{(self.root / 'error.log').read_text()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


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
    router = Router(root, [instance.port for instance in instances])
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
    router = Router(tmp_path, [instance.port for instance in instances]).start()
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
