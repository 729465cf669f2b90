"""The staging rehearsal: Cloud Foundry's offline, vendored install and start, done here.

1. Copy what `cf push` would upload (per .cfignore) to the staging app dir, `<root>/tmp/app`.
2. Unpack runtime.txt's CPython into `<root>/tmp/deps/0/python`, as the buildpack unpacks its
   own (a copy of this machine's CPython of that minor, with only its bundled pip).
3. Run the buildpack's exact vendored pip command with that Python, the network cut: pip runs
   under `unshare -n`, in a new network namespace whose only interface is a loopback that is
   down. pip sees the manifest's `env:` (the buildpack passes the staging environment on) and
   nothing of this machine's: no host variable, no pip configuration file.
4. Move the droplet as Diego does: app and deps run from `<root>/home/vcap/{app,deps}`, owned
   by the unprivileged user, with pip's absolute shebangs made `#!/usr/bin/env python` as the
   buildpack's are; the staging paths are locked away (mode 000).
5. Start the Procfile's web: command through `bash -c`, as uid/gid 65534, under `env -i` with
   only the platform's variables, and probe it as the platform and a user would.
6. As that user, with those variables, import the staged psycopg: its binary implementation
   runs on the libpq its wheel bundles (none of this machine's), and reaches a real PostgreSQL
   through psycopg_pool.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cf_support import (
    BASH_ADDS,
    BUILDPACK_PIP_FAILED,
    DEFAULT_PYTHON_MINOR,
    OFFERED_PYTHON_MINORS,
    PIP_INSTALL,
    PORTABLE_SHEBANG,
    RUN_GID,
    RUN_UID,
    Layout,
    PlatformInstance,
    StagingResult,
    buildpack_detects,
    find_python,
    install_python,
    installation,
    interfaces_without_network,
    make_droplet,
    make_run_root,
    manifest_app,
    megabytes,
    move_droplet,
    parse_pins,
    pinned_version,
    platform_environment,
    proc_environ,
    proc_ids,
    proc_mapped_files,
    proc_open_files,
    python_prefix,
    runtime_minor,
    stage_offline,
    tree_state,
    unshare_network_works,
    upload_files,
)
from packaging.utils import canonicalize_name
from support import free_port, procfile_command, request, static_block

# --- what the buildpack's detect and release steps read, checked on the upload ---


def test_the_buildpack_detects_the_upload_by_its_requirements_txt(tmp_path):
    assert "requirements.txt" in upload_files(), "detect looks for it at the app root"
    assert buildpack_detects(make_droplet(tmp_path / "app"))
    # What it would not detect: a bare pyproject.toml, or requirements.txt below the root.
    (tmp_path / "other" / "sub").mkdir(parents=True)
    (tmp_path / "other" / "pyproject.toml").touch()
    (tmp_path / "other" / "sub" / "requirements.txt").touch()
    assert not buildpack_detects(tmp_path / "other")


def test_the_start_command_is_the_uploaded_procfiles_one_web_line():
    assert "Procfile" in upload_files()
    # procfile_command asserts the file holds exactly one line, `web: ...`.
    assert procfile_command().split()[0] == "gunicorn"


def test_runtime_txt_pins_an_offered_python_with_a_patch_wildcard():
    assert "runtime.txt" in upload_files()
    minor = runtime_minor()  # asserts the python-3.N.x form; python-3.13 alone may not match
    assert minor == (3, 13), "vendor/'s compiled wheels are built for this minor"
    assert minor in OFFERED_PYTHON_MINORS and minor != DEFAULT_PYTHON_MINOR


# --- staging and the run ---


@dataclass
class Droplet:
    layout: Layout
    result: StagingResult
    upload: list[str]  # the files of the staged app dir, before any start
    shebangs: dict[str, str]  # {script: its shebang as pip wrote it}, made portable


@pytest.fixture(scope="module")
def cf_python() -> str:
    minor = runtime_minor()
    python = find_python(minor)
    if python is None:
        pytest.skip(f"no CPython {minor[0]}.{minor[1]} (runtime.txt's) on PATH or under pyenv")
    if not installation(python).bundled_pip:
        pytest.skip(f"{python} has no pip in its own site-packages to stage with")
    return python


@pytest.fixture(scope="module")
def no_network():
    reason = unshare_network_works()
    if reason:
        pytest.skip(f"cannot cut the network for pip: {reason}")


@pytest.fixture(scope="module")
def unprivileged():
    if os.geteuid() != 0:
        pytest.skip("running the app as uid 65534 needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed (util-linux)")


@pytest.fixture(scope="module")
def droplet(cf_python, no_network, unprivileged) -> Droplet:
    layout = Layout(make_run_root())
    try:
        make_droplet(layout.stage_app)
        install_python(cf_python, python_prefix(layout.stage_deps))
        result = stage_offline(layout.stage_app, layout.stage_deps, manifest_app().get("env"))
        upload = sorted(
            path.relative_to(layout.stage_app).as_posix()
            for path in layout.stage_app.rglob("*")
            if path.is_file()
        )
        shebangs = move_droplet(layout)
        yield Droplet(layout, result, upload, shebangs)
    finally:
        shutil.rmtree(layout.root)  # root may remove what is mode 000 or the user's


def test_pip_runs_where_there_is_no_network(no_network):
    assert interfaces_without_network() == ["lo"]


def test_the_droplet_is_what_cf_push_uploads(droplet):
    assert droplet.upload == upload_files()
    assert "tests" not in {name.split("/")[0] for name in droplet.upload}
    assert any(name.startswith("vendor/") for name in droplet.upload)


def test_the_buildpacks_vendored_pip_install_succeeds_offline(droplet):
    assert droplet.result.command.startswith("python -m pip install -r requirements.txt ")
    assert "--no-index --find-links=file://" in droplet.result.command
    assert droplet.result.succeeded, droplet.result.output
    assert BUILDPACK_PIP_FAILED not in droplet.result.output

    frozen = subprocess.run(
        [python_prefix(droplet.layout.deps) / "bin" / "python", "-m", "pip", "list"]
        + ["--format=json"],
        env={"LD_LIBRARY_PATH": str(python_prefix(droplet.layout.deps) / "lib")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = {canonicalize_name(item["name"]): item["version"] for item in json.loads(frozen)}
    pins, _ = parse_pins((droplet.layout.app / "requirements.txt").read_text())
    for name, pin in pins.items():
        assert installed.get(canonicalize_name(name)) == pinned_version(pin), name


def run_in_droplet(layout: Layout, script: str) -> dict:
    """Run `python -c script` as the start command runs: the unprivileged user, the relocated
    Python, only the platform's variables, from the app dir. The script prints one JSON line."""
    env = platform_environment(manifest_app(), layout, port=free_port())
    run = subprocess.run(
        ["setpriv", f"--reuid={RUN_UID}", f"--regid={RUN_GID}", "--clear-groups", "--"]
        + ["env", "-i", *(f"{key}={value}" for key, value in env.items())]
        + ["python", "-c", script],
        cwd=layout.app,
        env={},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)


# What the droplet's psycopg loads: its C implementation and the libpq mapped to make it run.
PSYCOPG_PROBE = """
import json
import psycopg, psycopg_pool
mapped = [line.split(None, 5) for line in open("/proc/self/maps")]
paths = {fields[5].strip() for fields in mapped if len(fields) == 6}
libpq = sorted(path for path in paths if "libpq" in path)
try:
    psycopg.connect("postgresql://nobody:secret@127.0.0.1:%d/none", connect_timeout=5)
    error = None
except psycopg.OperationalError as caught:
    error = str(caught)
print(json.dumps({"impl": psycopg.pq.__impl__, "libpq_version": psycopg.pq.version(),
                  "libpq": libpq, "error": error, "pool": psycopg_pool.__version__}))
"""


def test_the_staged_psycopg_runs_on_the_libpq_its_binary_wheel_bundles(droplet):
    # cflinuxfs4 may have no libpq: the vendored psycopg-binary carries its own, and that one,
    # not this machine's (which is installed), is what the app loads.
    assert droplet.result.succeeded, droplet.result.output
    closed_port = free_port()
    seen = run_in_droplet(droplet.layout, PSYCOPG_PROBE % closed_port)

    assert seen["impl"] == "binary"
    assert seen["libpq_version"] >= 140000
    assert seen["libpq"], "libpq is mapped once psycopg's binary implementation is imported"
    for path in seen["libpq"]:
        assert Path(path).is_relative_to(droplet.layout.deps), path
        assert "psycopg_binary" in path, path
    # libpq works: it tried the closed port and said so.
    assert "refused" in seen["error"], seen["error"]
    assert seen["pool"]


POOL_PROBE = """
import json
from psycopg_pool import ConnectionPool
with ConnectionPool(%r, min_size=1, max_size=1) as pool:
    with pool.connection(timeout=10) as conn:
        row = conn.execute("SELECT current_user, current_setting('is_superuser')").fetchone()
print(json.dumps({"row": list(row)}))
"""


def test_the_staged_app_reaches_postgresql_through_a_psycopg_pool(droplet, postgres):
    assert droplet.result.succeeded, droplet.result.output
    seen = run_in_droplet(droplet.layout, POOL_PROBE % postgres.url)
    assert seen["row"] == ["streamhtml", "off"]


def test_pips_absolute_shebangs_are_made_portable_as_the_buildpacks_are(droplet):
    # pip wrote the staging path into gunicorn's first line: moved, the script would not start.
    staged_python = python_prefix(droplet.layout.stage_deps) / "bin" / "python"
    assert droplet.shebangs["gunicorn"] == f"#!{staged_python}"
    gunicorn = python_prefix(droplet.layout.deps) / "bin" / "gunicorn"
    assert gunicorn.read_text().splitlines()[0] == PORTABLE_SHEBANG


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


def bytecode_caches(changed: set[str], upload: list[str]) -> set[str]:
    """Of the app dir's `changed` paths, those CPython's bytecode cache accounts for: a
    `__pycache__/<module>.cpython-3NN.pyc` beside an uploaded `<module>.py`, its `__pycache__`
    and the directory that gained it."""
    caches = set()
    for name in changed:
        path = Path(name)
        stem = path.name.split(".cpython-")[0]
        if path.parent.name == "__pycache__" and path.name.endswith(".pyc"):
            source = (path.parent.parent / f"{stem}.py").as_posix()
            if source in upload:
                caches |= {name, path.parent.as_posix(), path.parent.parent.as_posix()}
    return caches


def assert_runs_as_the_platform_would(pid: int, layout: Layout, env: dict[str, str]) -> None:
    """The process is the unprivileged user's, runs the relocated Python, sees only `env`."""
    ids = proc_ids(pid)
    assert ids["Uid"] == [RUN_UID] * 4 and ids["Gid"] == [RUN_GID] * 4, ids
    assert ids["Groups"] == [], ids

    python = python_prefix(layout.deps)
    exe = os.readlink(f"/proc/{pid}/exe")
    assert Path(exe).is_relative_to(python / "bin"), exe
    # `#!/usr/bin/env python` found python on PATH, and gunicorn where pip put it, moved.
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert argv[:2] == ["python", str(python / "bin" / "gunicorn")], argv

    # Nothing from the staging paths, nor this machine's own Python: libpython and every
    # extension module come from the moved deps.
    used = proc_mapped_files(pid) | proc_open_files(pid)
    assert not {path for path in used if Path(path).is_relative_to(layout.staging)}
    assert not {path for path in used if "/.pyenv/" in path}
    assert any(Path(path).is_relative_to(python / "lib") for path in used if "libpython" in path)

    seen = proc_environ(pid)
    assert seen.keys() - env.keys() <= BASH_ADDS, seen.keys() - env.keys()
    assert {key: seen[key] for key in env} == env


def test_the_staged_app_starts_serves_and_stops_as_on_cloud_foundry(droplet, tmp_path):
    assert droplet.result.succeeded, droplet.result.output
    layout = droplet.layout
    manifest = manifest_app()
    env = platform_environment(manifest, layout, port=free_port(), instance_index=0)
    # The staging paths are locked away; the app dir is as the upload left it.
    assert layout.staging.stat().st_mode & 0o777 == 0
    before = tree_state(layout.app)
    server = PlatformInstance(tmp_path / "app.log", env, cwd=layout.app)

    # Started as Diego starts it: `bash -c "<Procfile web: command>"`.
    started = time.monotonic()
    server.start(wait=False)
    try:
        server.wait_until_healthy(timeout_s=manifest["timeout"])
        assert time.monotonic() - started < manifest["timeout"]
        for pid in [server.master_pid(), *server.worker_pids()]:
            assert_runs_as_the_platform_would(pid, layout, env)
        assert len(server.worker_pids()) == int(manifest["env"]["WEB_CONCURRENCY"])
        # No variable of this machine reached it (the test runner's own, for one).
        host_only = os.environ.keys() - env.keys() - {"PWD", "SHLVL", "_"}
        assert host_only and not host_only & proc_environ(server.master_pid()).keys()

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

    after = tree_state(layout.app)
    changed = {name for name in after.keys() | before.keys() if after.get(name) != before.get(name)}
    caches = bytecode_caches(changed, droplet.upload)
    # Only CPython's bytecode caches of the uploaded modules: the app itself writes nothing
    # there (gunicorn's control socket, under $HOME, is off; metrics go to TMPDIR).
    assert sorted(changed - caches) == [], f"the run wrote inside the app dir: {changed - caches}"


def stage_without_markupsafe(root: Path, cf_python: str, manifest_env: dict) -> StagingResult:
    """Stage a copy of the upload whose vendor/ lacks markupsafe's wheel, kept in root/kept."""
    layout = Layout(root)
    app = make_droplet(layout.stage_app)
    (missing,) = (app / "vendor").glob("markupsafe-*.whl")
    (root / "kept").mkdir()
    missing.rename(root / "kept" / missing.name)
    install_python(cf_python, python_prefix(layout.stage_deps))
    return stage_offline(app, layout.stage_deps, manifest_env)


def test_a_missing_wheel_fails_staging_with_the_buildpacks_message(cf_python, no_network, tmp_path):
    result = stage_without_markupsafe(tmp_path, cf_python, manifest_app().get("env"))

    layout = Layout(tmp_path)
    assert result.command == PIP_INSTALL.format(deps=layout.stage_deps, app=layout.stage_app)
    assert not result.succeeded
    assert "markupsafe" in result.output.lower()
    assert BUILDPACK_PIP_FAILED in result.output
    print(result.output)  # shown with -rA or on failure: pip's error, then the buildpack's


def test_a_pip_variable_in_the_manifest_would_hide_that_missing_wheel(
    cf_python, no_network, tmp_path
):
    # Why tests/test_cf_manifest.py forbids PIP_* in env: the buildpack hands the staging
    # environment to pip, which merges PIP_FIND_LINKS into the vendored install's options.
    manifest_env = {**manifest_app().get("env"), "PIP_FIND_LINKS": str(tmp_path / "kept")}

    result = stage_without_markupsafe(tmp_path, cf_python, manifest_env)

    assert result.succeeded, result.output
    assert "markupsafe" in result.output.lower()
