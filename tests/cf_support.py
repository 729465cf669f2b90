"""Cloud Foundry rehearsal helpers: the vendor/ drift check, .cfignore, staging, the platform's env.

Only the standard library, `packaging` and `support` (standard library only) are imported at
module level, so `tools/vendor` can run the drift check from its throwaway virtualenv; pathspec,
yaml and the app's settings are imported where used.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from support import Server, procfile_command

REPO = Path(__file__).resolve().parent.parent

# cflinuxfs4 is Ubuntu 22.04 on x86_64 with glibc 2.35 (cf-notes.md): every manylinux tag up to
# 2_35 installs there, including the legacy aliases; 2_36+, musllinux and linux_x86_64 do not.
CFLINUXFS4_GLIBC = (2, 35)
CFLINUXFS4_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]

# Lines the buildpack would strip or that would let pip look beyond vendor/.
INDEX_OPTION = re.compile(
    r"^\s*(-i|-f|--index-url|--extra-index-url|--find-links|--trusted-host|--no-index)\b"
)
SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2", ".tgz", ".egg")

# The buildpack's vendored install (cf-notes.md), word for word but for the two paths.
PIP_INSTALL = (
    "python -m pip install -r requirements.txt --ignore-installed --exists-action=w "
    "--src={deps}/src --no-index --find-links=file://{app}/vendor --disable-pip-version-check "
    "--no-warn-script-location --no-build-isolation"
)
BUILDPACK_PIP_FAILED = (
    "Running pip install failed. You need to include all dependencies in the vendor directory."
)

# What the cf CLI leaves out of every upload, on top of .cfignore.
CF_DEFAULT_IGNORES = [
    ".cfignore",
    "/manifest.yml",
    ".gitignore",
    ".git",
    ".hg",
    ".svn",
    "_darcs",
    ".DS_Store",
]


def runtime_minor(repo: Path = REPO) -> tuple[int, int]:
    """The CPython minor runtime.txt asks the buildpack for, e.g. (3, 13) for python-3.13.x."""
    text = (repo / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-(\d+)\.(\d+)\.x", text)
    assert match, f"runtime.txt must read python-3.N.x, reads {text!r}"
    return int(match[1]), int(match[2])


def cflinuxfs4_tags(python: tuple[int, int]) -> set[Tag]:
    """Every wheel tag CPython `python` on cflinuxfs4 accepts: cpXY/abi3/none, manylinux<=2_35."""
    abi = f"cp{python[0]}{python[1]}"
    return {
        *cpython_tags(python, abis=[abi, "abi3", "none"], platforms=CFLINUXFS4_PLATFORMS),
        *compatible_tags(python, interpreter=abi, platforms=CFLINUXFS4_PLATFORMS),
    }


def cflinuxfs4_markers(python: tuple[int, int]) -> dict[str, str]:
    """Environment-marker values of CPython `python` on cflinuxfs4."""
    version = f"{python[0]}.{python[1]}"
    return {
        **default_environment(),
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "python_version": version,
        "python_full_version": f"{version}.0",
        "implementation_version": f"{version}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": "x86_64",
    }


def wheel_installable(filename: str, python: tuple[int, int]) -> bool:
    """Whether the wheel `filename` installs under CPython `python` on cflinuxfs4."""
    _, _, _, tags = parse_wheel_filename(filename)
    return not tags.isdisjoint(cflinuxfs4_tags(python))


@dataclass
class Pin:
    name: str
    requirement: Requirement
    hashes: set[str] = field(default_factory=set)
    line: int = 0


def logical_lines(text: str):
    """(first line number, text) of each requirements-file line, continuations joined."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            yield start, pending.strip()
        pending = ""
    if pending.strip():
        yield start, pending.strip()


def parse_pins(text: str) -> tuple[dict[str, Pin], list[str]]:
    """The pins of a requirements.txt and the problems found reading it."""
    pins: dict[str, Pin] = {}
    problems = []
    for number, line in logical_lines(text):
        where = f"requirements.txt:{number}"
        if INDEX_OPTION.match(line):
            problems.append(f"{where}: index option {line.split()[0]!r} (keep indexes out)")
            continue
        if line.startswith("-"):
            problems.append(f"{where}: option line {line!r} is not a pin")
            continue
        words = line.split()
        hashes = set()
        for word in words[1:]:
            if word.startswith("--hash=sha256:"):
                hashes.add(word[len("--hash=sha256:") :])
            else:
                problems.append(f"{where}: unexpected {word!r} (only --hash=sha256: belongs)")
        try:
            requirement = Requirement(words[0])
        except InvalidRequirement as error:
            problems.append(f"{where}: not a requirement: {error}")
            continue
        name = canonicalize_name(requirement.name)
        specs = list(requirement.specifier)
        if requirement.url or len(specs) != 1 or specs[0].operator != "==":
            problems.append(f"{where}: {name} is not pinned with ==")
        if not hashes:
            problems.append(f"{where}: {name} has no --hash=sha256:")
        if name in pins:
            problems.append(f"{where}: {name} pinned twice")
        pins[name] = Pin(name, requirement, hashes, number)
    return pins, problems


def pinned_version(pin: Pin) -> str | None:
    specs = list(pin.requirement.specifier)
    return specs[0].version if len(specs) == 1 and specs[0].operator == "==" else None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vendor_problems(
    repo: Path = REPO, vendor: Path | None = None, requirements: Path | None = None
) -> list[str]:
    """Every way requirements.txt and vendor/ disagree for Cloud Foundry; [] when they agree.

    A pin with no wheel, a wheel with no pin, a wheel that cannot install on cflinuxfs4 under
    runtime.txt's CPython, a wheel whose sha256 is not among its pin's hashes, anything in
    vendor/ that is not a wheel, an index line in requirements.txt, and a requirements.in entry
    the pins do not satisfy.
    """
    vendor = vendor or repo / "vendor"
    requirements = requirements or repo / "requirements.txt"
    python = runtime_minor(repo)
    markers = cflinuxfs4_markers(python)
    pins, problems = parse_pins(requirements.read_text())
    needed = {
        name
        for name, pin in pins.items()
        if pin.requirement.marker is None or pin.requirement.marker.evaluate(markers)
    }

    wheels_by_name: dict[str, list[str]] = {}
    files = sorted(path for path in vendor.iterdir()) if vendor.is_dir() else []
    if not vendor.is_dir():
        problems.append("vendor/ is missing")
    for path in files:
        if path.name.endswith(SDIST_SUFFIXES):
            problems.append(f"vendor/{path.name}: an sdist; the buildpack needs wheels only")
            continue
        if not path.is_file() or not path.name.endswith(".whl"):
            problems.append(f"vendor/{path.name}: not a wheel")
            continue
        try:
            name, version, _, _ = parse_wheel_filename(path.name)
        except InvalidWheelFilename as error:
            problems.append(f"vendor/{path.name}: bad wheel name: {error}")
            continue
        wheels_by_name.setdefault(name, []).append(path.name)
        pin = pins.get(name)
        if pin is None:
            problems.append(f"vendor/{path.name}: no pin for {name} in requirements.txt")
            continue
        if pinned_version(pin) is not None and str(version) != pinned_version(pin):
            problems.append(f"vendor/{path.name}: version {version}, pinned {pinned_version(pin)}")
        if not wheel_installable(path.name, python):
            problems.append(
                f"vendor/{path.name}: tags do not install on cflinuxfs4 "
                f"(glibc {CFLINUXFS4_GLIBC[0]}.{CFLINUXFS4_GLIBC[1]}, x86_64) "
                f"under CPython {python[0]}.{python[1]}"
            )
        if sha256(path) not in pin.hashes:
            problems.append(f"vendor/{path.name}: sha256 not among {name}'s pinned hashes")

    for name in sorted(needed - wheels_by_name.keys()):
        problems.append(f"requirements.txt:{pins[name].line}: {name} has no wheel in vendor/")

    direct = repo / "requirements.in"
    if direct.exists():
        for number, line in logical_lines(direct.read_text()):
            wanted = Requirement(line)
            pin = pins.get(canonicalize_name(wanted.name))
            version = pin and pinned_version(pin)
            if not version or not wanted.specifier.contains(version, prereleases=True):
                problems.append(
                    f"requirements.in:{number}: {line} not satisfied by requirements.txt "
                    f"({version or 'no pin'}): run make vendor"
                )
    return problems


# --- .cfignore ---


def cfignore_spec(repo: Path = REPO):
    import pathspec  # noqa: PLC0415 - dev-only dependency

    lines = CF_DEFAULT_IGNORES + (repo / ".cfignore").read_text().splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def uploaded(relative_path: str, repo: Path = REPO, spec=None) -> bool:
    """Whether `cf push` would upload this path (a directory path ends in /), per .cfignore."""
    spec = spec or cfignore_spec(repo)
    return not spec.match_file(relative_path)


def upload_files(repo: Path = REPO) -> list[str]:
    """The files `cf push` would upload from `repo`, relative, sorted; ignored dirs not entered."""
    spec = cfignore_spec(repo)
    found = []
    for directory, dirnames, filenames in os.walk(repo):
        base = Path(directory).relative_to(repo)
        dirnames[:] = sorted(
            name for name in dirnames if not spec.match_file(f"{(base / name).as_posix()}/")
        )
        for name in filenames:
            relative = (base / name).as_posix()
            if not spec.match_file(relative):
                found.append(relative)
    return sorted(found)


def make_droplet(destination: Path, repo: Path = REPO) -> Path:
    """Copy what `cf push` would upload into `destination` (the app dir, /home/vcap/app)."""
    for relative in upload_files(repo):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / relative, target)
    return destination


# --- staging, in one place, then the droplet run from another, as Diego does ---

# Where the real buildpack stages and where Diego runs the droplet (cf-notes.md), below a root
# of the rehearsal's own: /tmp/app and /tmp/deps while staging, /home/vcap/app and
# /home/vcap/deps once the droplet is unpacked in the container.
STAGE_APP = "tmp/app"
STAGE_DEPS = "tmp/deps"
RUN_HOME = "home/vcap"
# The unprivileged user the app runs as (vcap on the platform; nobody/nogroup here).
RUN_UID = RUN_GID = 65534
# The buildpack's console scripts start with this line, not an absolute interpreter path.
PORTABLE_SHEBANG = "#!/usr/bin/env python"
# The files whose presence at the app root makes the Python buildpack detect the app.
DETECT_FILES = ("requirements.txt", "setup.py", "Pipfile", "environment.yml")
# Python minors python-buildpack v1.9.5 offers on cflinuxfs4, and the one it falls back to.
OFFERED_PYTHON_MINORS = {(3, 10), (3, 11), (3, 12), (3, 13), (3, 14)}
DEFAULT_PYTHON_MINOR = (3, 10)
# What the copy of the interpreter leaves out of the standard library: not needed to run the
# app and slow to copy (the test suite alone is ~140 MB). site-packages gets only pip.
STDLIB_LEFT_OUT = {"test", "idlelib", "tkinter", "turtledemo", "site-packages"}


def buildpack_detects(app: Path) -> bool:
    """Whether the Python buildpack's detect step accepts `app` (a bare pyproject.toml does not)."""
    return any((app / name).is_file() for name in DETECT_FILES)


@dataclass(frozen=True)
class Layout:
    """The staging and run paths of one rehearsal, under `root`."""

    root: Path

    @property
    def stage_app(self) -> Path:
        return self.root / STAGE_APP

    @property
    def stage_deps(self) -> Path:
        return self.root / STAGE_DEPS

    @property
    def staging(self) -> Path:
        """Everything staging used: app, deps, pip's home and cache."""
        return self.stage_app.parent

    @property
    def home(self) -> Path:
        return self.root / RUN_HOME

    @property
    def app(self) -> Path:
        return self.home / "app"

    @property
    def deps(self) -> Path:
        return self.home / "deps"

    @property
    def tmp(self) -> Path:
        return self.home / "tmp"


def python_prefix(deps: Path) -> Path:
    """Where the buildpack puts its Python: <deps>/0/python."""
    return deps / "0" / "python"


def make_run_root() -> Path:
    """A fresh base directory the unprivileged user can traverse (pytest's are mode 0700)."""
    root = Path(tempfile.mkdtemp(prefix="streamhtml-cf-"))
    root.chmod(0o755)
    return root


@dataclass(frozen=True)
class Installation:
    """Where a CPython keeps its standard library and libpython."""

    executable: Path
    version: str  # "3.13"
    stdlib: Path
    libdir: Path | None

    @property
    def bundled_pip(self) -> list[Path]:
        return sorted((self.stdlib / "site-packages").glob("pip*"))


def installation(python: str) -> Installation:
    probe = subprocess.run(
        [
            python,
            "-c",
            "import sys, sysconfig; print(sys.version_info[0], sys.version_info[1]);"
            "print(sysconfig.get_paths()['stdlib']); print(sysconfig.get_config_var('LIBDIR'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    libdir = Path(probe[2]) if probe[2] not in ("", "None") else None
    version = ".".join(probe[0].split())
    return Installation(Path(os.path.realpath(python)), version, Path(probe[1]), libdir)


def install_python(source: str, prefix: Path) -> Path:
    """Copy the CPython `source` runs on into `prefix`, as the buildpack unpacks its own Python.

    A copy, not a virtualenv: the buildpack's Python is a whole installation from its tarball,
    and a virtualenv would leave the interpreter where the unprivileged user may not reach it
    (pyenv's, under /root). Only the interpreter, libpython, the standard library and the pip
    bundled with it are copied; nothing else installed into `source` comes along.
    """
    found = installation(source)
    if not found.bundled_pip:
        raise FileNotFoundError(f"no pip bundled in {found.stdlib / 'site-packages'}")
    stdlib, libdir, version = found.stdlib, found.libdir, found.version
    major = version.split(".")[0]
    bin_dir = prefix / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy2(found.executable, bin_dir / f"python{version}")
    for alias in (f"python{major}", "python"):
        (bin_dir / alias).symlink_to(f"python{version}")
    lib = prefix / "lib"
    lib.mkdir()
    for shared in libdir.glob("libpython*.so*") if libdir else []:
        shutil.copy2(shared, lib / shared.name, follow_symlinks=False)

    def left_out(directory: str, names: list[str]) -> set[str]:
        if Path(directory) != stdlib:
            return set()
        return {name for name in names if name in STDLIB_LEFT_OUT or name.startswith("config-")}

    shutil.copytree(stdlib, lib / f"python{version}", ignore=left_out, symlinks=True)
    site = lib / f"python{version}" / "site-packages"
    site.mkdir()
    for bundled in found.bundled_pip:
        shutil.copytree(bundled, site / bundled.name, symlinks=True)
    return prefix


def staging_environment(staging: Path, deps: Path, manifest_env: dict | None = None):
    """The environment pip gets at staging: the manifest's `env:` (the buildpack passes the
    whole staging environment through, PIP_* included), the buildpack's Python first on PATH,
    and none of this machine's variables or pip configuration files (PIP_CONFIG_FILE=/dev/null
    keeps /etc/pip.conf and the like out). pip's home and cache are under `staging`."""
    python = python_prefix(deps)
    return {
        **{key: str(value) for key, value in (manifest_env or {}).items()},
        "PATH": f"{python / 'bin'}:/usr/bin:/bin",
        "LD_LIBRARY_PATH": str(python / "lib"),
        "HOME": str(staging / "home"),
        "XDG_CACHE_HOME": str(staging / "cache"),
        "LANG": "en_US.UTF-8",
        "PIP_CONFIG_FILE": os.devnull,
    }


def unshare_network_works() -> str | None:
    """None when `unshare -n` can run a command with no network; otherwise why not."""
    if shutil.which("unshare") is None:
        return "unshare is not installed (util-linux)"
    probe = subprocess.run(
        ["unshare", "-n", "--", "cat", "/proc/self/net/dev"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"unshare -n fails here (needs root or user namespaces): {probe.stderr.strip()}"
    return None


def interfaces_without_network() -> list[str]:
    """The network interfaces a command run under `unshare -n` sees (only a down `lo`)."""
    table = subprocess.run(
        ["unshare", "-n", "--", "cat", "/proc/self/net/dev"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split(":")[0].strip() for line in table.splitlines() if ":" in line]


@dataclass
class StagingResult:
    command: str
    returncode: int
    output: str

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0


def stage_offline(app: Path, deps: Path, manifest_env: dict | None = None) -> StagingResult:
    """Run the buildpack's vendored pip install for `app` with the Python in `deps`, offline.

    The network is cut by running pip in a new, empty network namespace (`unshare -n`): it has
    only a loopback interface, which is down, so no name resolves and no address is reachable.
    pip gets only `staging_environment`. As the buildpack does, a failing pip is followed by
    its message asking for all dependencies.
    """
    command = PIP_INSTALL.format(deps=deps, app=app)
    env = staging_environment(app.parent, deps, manifest_env)
    Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        ["unshare", "-n", "--", *command.split()],
        cwd=app,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = run.stdout
    if run.returncode != 0:
        output += f"\n{BUILDPACK_PIP_FAILED}\n"
    return StagingResult(command, run.returncode, output)


def shebang(script: Path) -> str | None:
    with open(script, "rb") as file:
        first = file.readline()
    return first.decode(errors="replace").rstrip("\n") if first.startswith(b"#!") else None


def make_shebangs_portable(bin_dir: Path, staged_under: Path) -> dict[str, str]:
    """Point every script whose interpreter is under `staged_under` at `python` on PATH, as the
    buildpack's console scripts are; returns {script name: the shebang it had}."""
    rewritten = {}
    for script in sorted(bin_dir.iterdir()):
        if script.is_symlink() or not script.is_file():
            continue
        line = shebang(script)
        if line is None or not line[2:].strip().startswith(str(staged_under)):
            continue
        body = script.read_bytes().split(b"\n", 1)[1]
        script.write_bytes(PORTABLE_SHEBANG.encode() + b"\n" + body)
        rewritten[script.name] = line
    return rewritten


def chown_tree(top: Path, uid: int, gid: int) -> None:
    os.chown(top, uid, gid, follow_symlinks=False)
    for directory, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.chown(Path(directory) / name, uid, gid, follow_symlinks=False)


def move_droplet(layout: Layout) -> dict[str, str]:
    """Move the staged app and deps to where Diego runs them, as the unprivileged user's, and
    lock the staging paths away (mode 000), so nothing there can be used at run time.

    Returns the shebangs made portable ({script: old shebang}).
    """
    layout.home.mkdir(parents=True)
    layout.stage_app.rename(layout.app)
    layout.stage_deps.rename(layout.deps)
    rewritten = make_shebangs_portable(python_prefix(layout.deps) / "bin", layout.staging)
    layout.tmp.mkdir()
    chown_tree(layout.home, RUN_UID, RUN_GID)
    layout.staging.chmod(0)
    return rewritten


def find_python(minor: tuple[int, int]) -> str | None:
    """A CPython of exactly `minor`, as tools/find-python finds it, or None."""
    found = subprocess.run(
        ["sh", str(REPO / "tools" / "find-python")], capture_output=True, text=True
    ).stdout.strip()
    if not found:
        return None
    version = subprocess.run(
        [found, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True
    ).stdout.split()
    return found if [int(part) for part in version] == list(minor) else None


# --- the manifest and the platform's environment ---


def manifest_app(repo: Path = REPO) -> dict:
    import yaml  # noqa: PLC0415 - dev-only dependency

    manifest = yaml.safe_load((repo / "manifest.yml").read_text())
    (app,) = manifest["applications"]
    return app


def megabytes(size: str) -> int:
    match = re.fullmatch(r"(\d+)\s*(M|MB|G|GB)", str(size).strip(), re.IGNORECASE)
    assert match, f"not a CF size: {size!r}"
    return int(match[1]) * (1024 if match[2].upper().startswith("G") else 1)


def pip_variables(app: dict) -> list[str]:
    """The PIP_* names in the manifest's env. The buildpack hands the whole staging environment
    to pip, so one such as PIP_FIND_LINKS would be merged into the vendored install's options
    and could hide a wheel missing from vendor/ (cf-notes.md)."""
    return sorted(key for key in (app.get("env") or {}) if str(key).upper().startswith("PIP_"))


def settings_by_env() -> dict:
    """Every setting the app reads, by environment variable name. The one place these files
    import the app's settings API: adapt here if it is renamed."""
    from streamhtml.settings import all_settings  # noqa: PLC0415 - not needed by tools/vendor

    return {spec.env: spec for spec in all_settings()}


def cf_environment(app: dict, instance_index: int = 0, port: int | None = None) -> dict[str, str]:
    """What the Python buildpack's profile script and Diego give the start command, for the
    manifest entry `app`, over the manifest's own `env:`. With `port`, also the variables that
    name the instance's port (PORT itself included)."""
    memory = megabytes(app["memory"])
    manifest_env = {key: str(value) for key, value in (app.get("env") or {}).items()}
    instance_guid = str(uuid.uuid4())
    vcap_application = {
        "application_id": str(uuid.uuid4()),
        "application_name": app["name"],
        "application_uris": [f"{app['name']}.apps.example.com"],
        "application_version": str(uuid.uuid4()),
        "cf_api": "https://api.example.com",
        "host": "0.0.0.0",
        "instance_id": instance_guid,
        "instance_index": instance_index,
        "limits": {"disk": 1024, "fds": 16384, "mem": memory},
        "name": app["name"],
        "organization_name": "org",
        "space_name": "space",
        "uris": [f"{app['name']}.apps.example.com"],
        "version": str(uuid.uuid4()),
    }
    env = {
        **manifest_env,
        "PYTHONUNBUFFERED": "1",
        "PYTHONHASHSEED": "random",
        "FORWARDED_ALLOW_IPS": "*",
        # The buildpack's default, which a GUNICORN_CMD_ARGS of the operator's replaces.
        "GUNICORN_CMD_ARGS": manifest_env.get("GUNICORN_CMD_ARGS", "--access-logfile -"),
        "CF_INSTANCE_INDEX": str(instance_index),
        "INSTANCE_INDEX": str(instance_index),
        "CF_INSTANCE_GUID": instance_guid,
        # Diego writes the unit in lower case.
        "MEMORY_LIMIT": f"{memory}m",
        "VCAP_SERVICES": "{}",
    }
    if port is not None:
        # The cell's address and the host port mapped to the container's PORT; on loopback
        # here, the same port.
        vcap_application["port"] = port
        env.update(
            PORT=str(port),
            VCAP_APP_PORT=str(port),
            VCAP_APP_HOST="0.0.0.0",
            CF_INSTANCE_IP="127.0.0.1",
            CF_INSTANCE_PORT=str(port),
            CF_INSTANCE_ADDR=f"127.0.0.1:{port}",
            CF_INSTANCE_PORTS=json.dumps([{"external": port, "internal": port}]),
        )
    env["VCAP_APPLICATION"] = json.dumps(vcap_application)
    return env


def platform_environment(app: dict, layout: Layout, port: int, instance_index: int = 0):
    """The whole environment of the start command in the container, and nothing else:
    Diego's and the buildpack's variables with the paths of `layout`'s run tree."""
    python = python_prefix(layout.deps)
    return {
        **cf_environment(app, instance_index, port=port),
        "HOME": str(layout.app),
        "TMPDIR": str(layout.tmp),
        "DEPS_DIR": str(layout.deps),
        "LANG": "en_US.UTF-8",
        "PATH": f"{python / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "LD_LIBRARY_PATH": str(python / "lib"),
        "LIBRARY_PATH": str(python / "lib"),
        "PYTHONHOME": str(python),
        "PYTHONPATH": str(layout.deps / "0"),
    }


# bash adds these to what it passes on, on the platform too.
BASH_ADDS = {"PWD", "SHLVL", "_"}


class PlatformInstance(Server):
    """The start command as Diego runs it: `bash -c "<Procfile web:>"` as the unprivileged
    user (setpriv), under `env -i` with exactly `env`, from the app dir. The process started
    is gunicorn itself (setpriv, env and bash each exec the next), so stop() signals it."""

    def __init__(self, log_path: Path, env: dict[str, str], cwd: Path, uid=RUN_UID, gid=RUN_GID):
        self.port = int(env["PORT"])
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env)
        self.uid, self.gid = uid, gid
        self.process: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--",
            "env",
            "-i",
            *(f"{key}={value}" for key, value in self.env.items()),
            "bash",
            "-c",
            procfile_command(self.cwd),
        ]

    def start(self, wait: bool = True) -> "PlatformInstance":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv(),
                cwd=self.cwd,
                env={},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_until_healthy()
        return self


# --- what a running process is, read from /proc ---


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if item)


def proc_ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid (real, effective, saved, filesystem) and Groups of a process."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            found[key] = [int(part) for part in value.split()]
    return found


def proc_mapped_files(pid: int) -> set[str]:
    """The files a process has mapped (its interpreter, libraries, extension modules)."""
    files = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith("/"):
            files.add(fields[5].removesuffix(" (deleted)"))
    return files


def proc_open_files(pid: int) -> set[str]:
    files = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("/"):
            files.add(target.removesuffix(" (deleted)"))
    return files


def tree_state(top: Path) -> dict[str, tuple[int, int]]:
    """Every path under `top` with its size and mtime, to tell what a run wrote."""
    state = {}
    for path in [top, *top.rglob("*")]:
        stat = path.lstat()
        state[path.relative_to(top).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return state
