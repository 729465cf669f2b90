"""An nginx reverse proxy in front of the test gunicorn, run from a config of its own.

Debian's nginx-light (`make test` installs it). Everything nginx writes (pid, logs, temp files)
stays in the test's directory; it runs in the foreground as one process, and stop() ends that
process by its PID.

Two kinds of nginx:

- `Nginx`: a generic proxy in front of an app, gzip on by default and no upstream connection
  pool, as many front ends are configured; `gzip_types=(...)` compresses more than text/html,
  `read_timeout_s` cuts a response the app leaves silent that long.
- `Nginx(..., router=True)` (or `gorouter_like(...)`): a stand-in for Cloud Foundry's gorouter,
  close to what the app sees behind the real one (as measured against gorouter on loopback):
  - a keep-alive pool to each instance, idle connections kept 90 s as gorouter hard-codes
    (configurable, for the idle keep-alive race);
  - a fresh `X-Vcap-Request-Id` that overwrites the client's, copied to the response only when
    the app sent none, and written in nginx's access log beside the upstream address;
  - `X-Request-Start` in milliseconds since the epoch, `X-Forwarded-For`, `X-Forwarded-Proto`;
  - no compression, no buffering: each read from the app is passed on at once, and each read
    of a request body from the client too (Go's reverse proxy streams bodies both ways), of any
    size;

  It does not imitate: gorouter's re-chunking of unpaced streams into ~8 KiB chunks (nginx
  re-chunks by whatever its reads return, so chunk sizes differ; the bytes do not); a UUID
  request id (nginx's `$request_id` is 32 hex digits, which the app accepts too);
  `backends.max_conns` and its 503 "Connection Limit Reached"; the refusal of a `Host` that is
  the client's own IP; route lookup by `Host` (every request goes to the one upstream group);
  `X-Cf-Applicationid`/`X-Cf-Instanceid`/`X-Cf-Instanceindex`; the 900 s `endpoint_timeout`;
  gorouter's 900 s cut of a whole request (nginx's `proxy_read_timeout` is 60 s between two
  reads); Go's retry rules: nginx retries by its own (`proxy_next_upstream`: on errors and
  timeouts, idempotent methods only), which for a GET sent into a connection the app is closing
  comes to the same (retried on a new connection; a POST gets 502).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from support import free_port

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")

# gorouter keeps idle connections to an instance this long, hard-coded (proxy/proxy.go).
GOROUTER_IDLE_S = 90
# gorouter's deployed default: up to 100 idle connections per backend.
GOROUTER_IDLE_CONNECTIONS = 100

CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;

events {{
    worker_connections 256;
}}

http {{
{http_extra}    access_log {dir}/access.log{log_format};
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    gzip {gzip};
    gzip_proxied any;{gzip_types}

    # A WebSocket handshake is passed on as one (Upgrade, Connection: upgrade); any other
    # request goes with an empty Connection, as before, so the upstream pool can keep it.
    map $http_upgrade $upstream_connection {{
        default upgrade;
        "" "";
    }}

    upstream backends {{
{servers}{pool}
    }}

    server {{
        listen 127.0.0.1:{port}{tls};{certificate}
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $upstream_connection;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
{extra}
        }}
    }}
}}
"""

# A self-signed certificate for 127.0.0.1, for the https:// tests.
CERTIFICATE = """
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;"""

# proxy_buffering stays on (nginx's default): with the app's `X-Accel-Buffering: no` ignored,
# nginx and its gzip filter hold the paced blocks and send them in one burst at the end.
IGNORE_ACCEL_BUFFERING = "            proxy_ignore_headers X-Accel-Buffering;"

# The router's id and the upstream it picked, on each access-log line, so a test can match the
# router's line to the app's. `$msec` is "seconds.millis"; the map makes it milliseconds, as
# gorouter stamps X-Request-Start. The second map is the router's id only when the app's
# response has none: add_header skips an empty value, so an app's own id is never doubled.
ROUTER_HTTP = """\
    log_format router 'request_id=$request_id upstream=$upstream_addr status=$status '
                      '"$request" bytes=$bytes_sent';
    map $msec $request_start_ms {
        "~^(?<seconds>\\d+)\\.(?<millis>\\d+)$" "$seconds$millis";
    }
    map $upstream_http_x_vcap_request_id $request_id_if_app_sent_none {
        "" $request_id;
        default "";
    }
"""

ROUTER_POOL = """
        keepalive {connections};
        keepalive_timeout {idle_s}s;"""

# proxy_buffering off: nginx passes each read from the app on at once, as Go's reverse proxy
# does for a body of unknown length; proxy_set_header replaces whatever the client sent.
# proxy_buffer_size 8k: an unpaced stream leaves in reads of up to 8 KiB, near gorouter's chunks.
ROUTER_LOCATION = """\
            proxy_buffering off;
            proxy_request_buffering off;
            client_max_body_size 0;
            proxy_buffer_size 8k;
            proxy_set_header X-Vcap-Request-Id $request_id;
            proxy_set_header X-Request-Start $request_start_ms;
            add_header X-Vcap-Request-Id $request_id_if_app_sent_none always;"""

ACCESS_LINE = re.compile(r"request_id=(?P<request_id>[0-9a-f]{32}) upstream=(?P<upstream>\S+) ")


class Nginx:
    """nginx in front of one app server, or round-robin over several (a stand-in router).

    router=True makes it the gorouter stand-in (the module docstring says what that imitates);
    upstream_idle_s is how long its pool keeps an idle connection to an instance.
    """

    def __init__(
        self,
        directory: Path,
        upstream: int | list[int],
        honour_accel_buffering: bool = True,
        tls: bool = False,
        gzip: bool = True,
        router: bool = False,
        upstream_idle_s: int = GOROUTER_IDLE_S,
        gzip_types: tuple[str, ...] = (),
        read_timeout_s: int | None = None,
        request_buffering: bool | None = None,
    ):
        assert not (router and gzip), "gorouter never compresses: pass gzip=False with router"
        self.dir = directory
        self.tls = tls
        self.gzip = gzip
        # nginx compresses text/html only, unless told more types (text/event-stream, ...).
        self.gzip_types = gzip_types
        self.router = router
        self.upstream_idle_s = upstream_idle_s
        self.port = free_port()
        self.upstream_ports = [upstream] if isinstance(upstream, int) else list(upstream)
        extras = [] if honour_accel_buffering else [IGNORE_ACCEL_BUFFERING]
        if read_timeout_s is not None:
            # nginx cuts a response whose app is silent this long (its default is 60 s), as
            # idle-timeout load balancers do.
            extras.append(f"            proxy_read_timeout {read_timeout_s}s;")
        if request_buffering is not None:
            # Whether nginx reads a request body whole before it sends the request on (on,
            # its default) or passes it on as it arrives; bodies of any size either way.
            buffering = "on" if request_buffering else "off"
            extras.append(f"            proxy_request_buffering {buffering};")
            extras.append("            client_max_body_size 0;")
        self.extra = "\n".join(extras)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def certificate(self) -> Path:
        return self.dir / "cert.pem"

    def config(self) -> str:
        return CONFIG.format(
            dir=self.dir,
            port=self.port,
            tls=" ssl" if self.tls else "",
            certificate=CERTIFICATE.format(dir=self.dir) if self.tls else "",
            servers="\n".join(f"        server 127.0.0.1:{port};" for port in self.upstream_ports),
            gzip="on" if self.gzip else "off",
            gzip_types=f"\n    gzip_types {' '.join(self.gzip_types)};" if self.gzip_types else "",
            http_extra=ROUTER_HTTP if self.router else "",
            log_format=" router" if self.router else "",
            pool=self.pool() if self.router else "",
            extra="\n".join(filter(None, [self.extra, ROUTER_LOCATION if self.router else ""])),
        )

    def pool(self) -> str:
        return ROUTER_POOL.format(
            connections=GOROUTER_IDLE_CONNECTIONS, idle_s=self.upstream_idle_s
        )

    def make_certificate(self) -> None:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
            + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
            + ["-keyout", str(self.dir / "key.pem"), "-out", str(self.certificate)],
            check=True,
            capture_output=True,
        )

    def start(self, timeout_s: float = 10.0) -> "Nginx":
        assert NGINX, "nginx not found: make test installs it (Debian's nginx-light)"
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self.make_certificate()
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config())
        # -e: the error log before the config is read, so nginx never opens /var/log/nginx.
        command = [NGINX, "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")]
        with open(self.dir / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited ({self.process.returncode}):\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx not listening after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        parts = [self.dir / "stdout.log", self.dir / "error.log"]
        return "".join(path.read_text(errors="replace") for path in parts if path.exists())

    def access_lines(self, at_least: int = 1, timeout_s: float = 3.0) -> list[dict]:
        """The router's access-log lines: each one's request_id and upstream address.

        nginx writes a line once the response is done, which can be just after the client has
        read it: wait up to `timeout_s` for `at_least` lines.
        """
        path = self.dir / "access.log"
        deadline = time.monotonic() + timeout_s
        while True:
            text = path.read_text(errors="replace") if path.exists() else ""
            lines = [match.groupdict() for match in ACCESS_LINE.finditer(text)]
            if len(lines) >= at_least or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def access_line(self, request_id: str, timeout_s: float = 3.0) -> dict:
        """The router's access-log line for one request id, once nginx has written it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [line for line in self.access_lines(0) if line["request_id"] == request_id]
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no access line for {request_id} in {self.access_lines(0)}")

    def upstream_connections(self) -> set[tuple[int, int]]:
        """(nginx's port, instance port) of each established connection nginx has to an instance.

        Read from /proc: nginx (one process, master_process off) has no variable naming its
        connection to the upstream, and behind a proxy the app logs no client port.
        """
        return {
            (local, remote)
            for local, remote, state in self.upstream_sockets()
            if state == TCP_ESTABLISHED
        }

    def upstream_sockets(self) -> set[tuple[int, int, str]]:
        """Every TCP socket nginx holds to an instance, in any state (hex, as /proc has it)."""
        return tcp_sockets(self.process.pid, set(self.upstream_ports))

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # nginx's fast shutdown
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def gorouter_like(directory: Path, upstream: int | list[int], **options) -> Nginx:
    """The gorouter stand-in: Nginx(router=True), never compressing."""
    return Nginx(directory, upstream, gzip=False, router=True, **options)


# /proc/net/tcp's state codes: an open connection, and the state the side that closed first
# is left in (for a minute on Linux, by then owned by no process).
TCP_ESTABLISHED = "01"
TCP_TIME_WAIT = "06"


def tcp_table() -> list[tuple[int, int, str, str]]:
    """(local port, remote port, state, inode) of every IPv4 TCP socket on the host."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        rows.append((local_port, remote_port, fields[3], fields[9]))
    return rows


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def tcp_sockets(pid: int, remote_ports: set[int]) -> set[tuple[int, int, str]]:
    """(local port, remote port, state) of the process's IPv4 TCP sockets to remote_ports."""
    inodes = socket_inodes(pid)
    return {
        (local, remote, state)
        for local, remote, state, inode in tcp_table()
        if inode in inodes and remote in remote_ports
    }


def closed_first_by(local_port: int, remote_port: int) -> bool:
    """Whether the side local_port of the connection local_port-remote_port closed it first."""
    return (local_port, remote_port, TCP_TIME_WAIT) in {row[:3] for row in tcp_table()}


class ScriptedUpstream:
    """A bare HTTP/1.1 upstream for checking the router itself: it records each request head and
    answers `200 ok`, except that the request numbered `hang_up_on` on a connection (counting
    from 1) is met with a close and no answer, as when the app closes an idle keep-alive
    connection at the moment the router sends into it."""

    def __init__(self, hang_up_on: int | None = None):
        self.hang_up_on = hang_up_on
        self.heads: list[list[str]] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

    def start(self) -> "ScriptedUpstream":
        threading.Thread(target=self.accept, daemon=True).start()
        return self

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:  # stop() closed the listener
                return
            self.connections += 1
            threading.Thread(target=self.serve, args=(sock,), daemon=True).start()

    def serve(self, sock: socket.socket) -> None:
        with sock, sock.makefile("rb") as reader:
            number = 0
            while head := read_request_head(reader):
                number += 1
                if number == self.hang_up_on:
                    return
                self.heads.append(head)
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def stop(self) -> None:
        # shutdown() wakes the accept() blocked in the other thread; close() alone would not.
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def read_request_head(reader) -> list[str]:
    """A request line and its header lines (bodies are not expected); [] at end of connection."""
    lines = []
    while (line := reader.readline()) not in (b"\r\n", b""):
        lines.append(line.decode("latin-1").rstrip("\r\n"))
    return lines


def request_header(head: list[str], name: str) -> str | None:
    """One header's value from a head read_request_head returned; None if absent."""
    values = [
        value.strip()
        for key, _, value in (line.partition(":") for line in head[1:])
        if key.lower() == name.lower()
    ]
    assert len(values) <= 1, f"{name} sent {len(values)} times: {head}"
    return values[0] if values else None
