"""Security posture on the wire: no debugger, no files written, safe headers."""

import os
import shutil
import time

from support import REPO, Server, request

# What Cloud Foundry uploads and runs (see .cfignore): the app, its config and its package.
RUNTIME_FILES = ["app.py", "gunicorn.conf.py", "Procfile", "streamhtml"]


def snapshot(*roots):
    return {
        os.path.join(folder, name)
        for root in roots
        for folder, _, names in os.walk(root)
        for name in names
    }


def test_the_app_writes_no_files_at_run_time(tmp_path):
    droplet, home, tmp = tmp_path / "app", tmp_path / "home", tmp_path / "tmp"
    for folder in (droplet, home, tmp):
        folder.mkdir()
    for name in RUNTIME_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, droplet / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, droplet / name)
    environment = {"HOME": str(home), "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}
    before = snapshot(droplet, home, tmp)
    server = Server(tmp_path / "server.log", env=environment, cwd=droplet).start()
    try:
        for path in ["/", "/health", "/streamhtml?nblocks=50", "/large.csv?rows=2000", "/x"]:
            assert request(server.port, path).status in (200, 404)
    finally:
        server.stop()
    # The one file it makes: the embedded dataset, in the temporary directory, and its lock;
    # one left half-made when the server stopped goes once its maker sees it is alone.
    deadline = time.monotonic() + 10
    while any(".building-" in path for path in snapshot(tmp)):
        assert time.monotonic() < deadline, snapshot(tmp)
        time.sleep(0.05)
    made = snapshot(droplet, home, tmp) - before
    dataset = str(tmp / "streamhtml-dataset-v1-100000-rows.sqlite")
    assert made <= {dataset, dataset + ".lock"}, made


def test_flask_debug_in_the_environment_does_not_reach_the_debugger(start_server):
    server = start_server({"FLASK_DEBUG": "1", "FLASK_ENV": "development"})
    console = request(server.port, "/console")
    assert console.status == 404
    assert console.header("Content-Type") == "application/json"
    debugger = request(server.port, "/?__debugger__=yes&cmd=resource&f=debugger.js")
    assert "javascript" not in (debugger.header("Content-Type") or "")
    assert b"Werkzeug" not in debugger.body


def test_the_page_and_streams_refuse_sniffing_and_the_page_has_a_csp(server):
    page = request(server.port, "/")
    stream = request(server.port, "/streamhtml?nblocks=1")
    assert page.header("X-Content-Type-Options") == stream.header("X-Content-Type-Options")
    assert stream.header("X-Content-Type-Options") == "nosniff"
    csp = page.header("Content-Security-Policy")
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
