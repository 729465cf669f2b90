"""The staging rehearsal: Cloud Foundry's offline, vendored install and start, done here.

1. Copy what `cf push` would upload (per .cfignore) into a temporary app directory.
2. Make a fresh virtualenv with runtime.txt's CPython minor, as the buildpack installs Python.
3. Run the buildpack's exact vendored pip command in it with the network cut: pip runs under
   `unshare -n`, in a new network namespace whose only interface is a loopback that is down, so
   nothing outside can be reached. pip also sees none of this machine's configuration
   (PIP_CONFIG_FILE=/dev/null, no PIP_* variables), so /opt/wheels and local indexes cannot help.
4. Start the Procfile's web: command through `bash -c` from the staged virtualenv, with the
   environment the buildpack and Diego give it, and probe it as the platform and a user would.
"""

import json
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cf_support import (
    BUILDPACK_PIP_FAILED,
    PIP_INSTALL,
    StagingResult,
    cf_environment,
    find_python,
    interfaces_without_network,
    make_droplet,
    make_venv,
    manifest_app,
    megabytes,
    parse_pins,
    pinned_version,
    runtime_minor,
    stage_offline,
    unshare_network_works,
    upload_files,
)
from packaging.utils import canonicalize_name
from support import Server, request

from streamhtml.generators import static_block


@dataclass
class Staged:
    app: Path
    venv: Path
    result: StagingResult


@pytest.fixture(scope="module")
def cf_python() -> str:
    minor = runtime_minor()
    python = find_python(minor)
    if python is None:
        pytest.skip(f"no CPython {minor[0]}.{minor[1]} (runtime.txt's) on PATH or under pyenv")
    return python


@pytest.fixture(scope="module")
def no_network():
    reason = unshare_network_works()
    if reason:
        pytest.skip(f"cannot cut the network for pip: {reason}")


@pytest.fixture(scope="module")
def staged(tmp_path_factory, cf_python, no_network) -> Staged:
    root = tmp_path_factory.mktemp("cf")
    app = make_droplet(root / "app")
    venv = make_venv(cf_python, root / "deps" / "python")
    return Staged(app, venv, stage_offline(app, venv, root / "deps"))


def test_pip_runs_where_there_is_no_network(no_network):
    assert interfaces_without_network() == ["lo"]


def test_the_droplet_is_what_cf_push_uploads(staged):
    copied = sorted(
        path.relative_to(staged.app).as_posix() for path in staged.app.rglob("*") if path.is_file()
    )
    assert copied == upload_files()
    assert not (staged.app / "tests").exists() and (staged.app / "vendor").is_dir()


def test_the_buildpacks_vendored_pip_install_succeeds_offline(staged):
    assert staged.result.command.startswith("python -m pip install -r requirements.txt ")
    assert "--no-index --find-links=file://" in staged.result.command
    assert staged.result.succeeded, staged.result.output
    assert BUILDPACK_PIP_FAILED not in staged.result.output

    frozen = subprocess.run(
        [staged.venv / "bin" / "python", "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = {canonicalize_name(item["name"]): item["version"] for item in json.loads(frozen)}
    pins, _ = parse_pins((staged.app / "requirements.txt").read_text())
    for name, pin in pins.items():
        assert installed.get(canonicalize_name(name)) == pinned_version(pin), name


def slow_streams(port: int, count: int) -> list[socket.socket]:
    """`count` open streams of ~2 s each, left unread, as slow clients would."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(
            b"GET /streamhtml?nblocks=10&block_size=256&sleep_ms=200 HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n\r\n"
        )
        sockets.append(sock)
    return sockets


def timed_health(port: int) -> tuple[float, dict]:
    started = time.monotonic()
    response = request(port, "/health", timeout_s=10)
    elapsed = time.monotonic() - started
    assert response.status == 200
    return elapsed, json.loads(response.body)


def rss_mib(pids: list[int]) -> float:
    total_kib = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def test_the_staged_app_starts_serves_and_stops_as_on_cloud_foundry(staged, tmp_path):
    assert staged.result.succeeded, staged.result.output
    manifest = manifest_app()
    env = {**cf_environment(manifest, instance_index=0), "HOME": str(staged.app)}
    env["TMPDIR"] = str(tmp_path)
    server = Server(tmp_path / "app.log", env=env, cwd=staged.app, bin_dir=staged.venv / "bin")

    # Started as Diego starts it: `bash -c "<Procfile web: command>"`, gunicorn from the venv.
    started = time.monotonic()
    server.start(wait=False)
    try:
        server.wait_until_healthy(timeout_s=manifest["timeout"])
        assert time.monotonic() - started < manifest["timeout"]
        cmdline = Path(f"/proc/{server.master_pid()}/cmdline").read_bytes().decode()
        assert str(staged.venv) in cmdline, cmdline

        # The platform's health check: each probe answers 200 within the invocation timeout,
        # idle and while slow clients hold streams open.
        budget = manifest["health-check-invocation-timeout"]
        for _ in range(5):
            elapsed, health = timed_health(server.port)
            assert elapsed < budget
        assert health["app"] == manifest["name"] and health["instance_index"] == "0"
        held = slow_streams(server.port, 50)
        try:
            for _ in range(5):
                elapsed, _ = timed_health(server.port)
                assert elapsed < budget, f"/health took {elapsed:.2f} s with 50 streams open"
        finally:
            for sock in held:
                sock.close()

        # A user's stream, the README's ab request, arrives whole, block by block.
        stream = request(server.port, "/streamhtml?nblocks=100&block_size=512")
        assert stream.status == 200 and stream.chunked
        assert stream.header("X-Instance-Index") == "0"
        assert [len(chunk) for chunk in stream.chunks] == [512] * 100
        assert all(chunk.endswith(b"<br>\n") and chunk[:-5].isalpha() for chunk in stream.chunks)
        static = request(server.port, "/streamhtml?nblocks=16&block_size=1024&use_static_data=1")
        assert static.chunks == [static_block(1024)] * 16

        assert rss_mib([server.master_pid(), *server.worker_pids()]) < megabytes(manifest["memory"])
        # GUNICORN_CMD_ARGS='--access-logfile -', as the buildpack sets it: requests are logged.
        server.wait_for_request(query="nblocks=100&block_size=512", status=200)
    finally:
        # Cloud Foundry stops an instance with SIGTERM, then SIGKILL 10 s later.
        stopping = time.monotonic()
        code = server.stop(signal.SIGTERM, timeout_s=10)
        stopped_in = time.monotonic() - stopping
    assert code == 0, server.log()
    assert stopped_in < 5, f"SIGTERM took {stopped_in:.1f} s"


def test_a_missing_wheel_fails_staging_with_the_buildpacks_message(staged, cf_python, tmp_path):
    app = tmp_path / "app"
    shutil.copytree(staged.app, app)
    (missing,) = (app / "vendor").glob("markupsafe-*.whl")
    missing.unlink()
    venv = make_venv(cf_python, tmp_path / "deps" / "python")

    result = stage_offline(app, venv, tmp_path / "deps")

    assert result.command == PIP_INSTALL.format(deps=tmp_path / "deps", app=app)
    assert not result.succeeded
    assert "markupsafe" in result.output.lower()
    assert BUILDPACK_PIP_FAILED in result.output
    print(result.output)  # shown with -rA or on failure: pip's error, then the buildpack's
