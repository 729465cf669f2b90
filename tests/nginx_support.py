"""An nginx reverse proxy in front of the test gunicorn, run from a config of its own.

Debian's nginx-light (`make test` installs it). Everything nginx writes (pid, logs, temp files)
stays in the test's directory; it runs in the foreground as one process, and stop() ends that
process by its PID.
"""

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from support import free_port

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")

# What a compressing proxy in front of an app typically has. gzip compresses text/html always
# (gzip_types adds other types); gzip_proxied any compresses for proxied requests too.
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
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    gzip {gzip};
    gzip_proxied any;

    upstream backends {{
{servers}
    }}

    server {{
        listen 127.0.0.1:{port}{tls};{certificate}
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
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


class Nginx:
    """nginx in front of one app server, or round-robin over several (a stand-in router)."""

    def __init__(
        self,
        directory: Path,
        upstream: int | list[int],
        honour_accel_buffering: bool = True,
        tls: bool = False,
        gzip: bool = True,
    ):
        self.dir = directory
        self.tls = tls
        self.gzip = gzip
        self.port = free_port()
        self.upstream_ports = [upstream] if isinstance(upstream, int) else list(upstream)
        self.extra = "" if honour_accel_buffering else IGNORE_ACCEL_BUFFERING
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
            extra=self.extra,
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

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # nginx's fast shutdown
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
