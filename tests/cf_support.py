"""Cloud Foundry rehearsal helpers: the vendor/ drift check, .cfignore, staging, the platform's env.

Only the standard library and `packaging` are imported at module level, so `tools/vendor` can run
the drift check from its throwaway virtualenv; pathspec and yaml are imported where used.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

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


# --- staging ---


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


def clean_pip_env(home: Path) -> dict[str, str]:
    """An environment in which pip sees no configuration of this machine: no PIP_* variables,
    no config files (PIP_CONFIG_FILE=/dev/null), no /opt/wheels, a fresh cache."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PIP_", "UV_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_HOME=str(home / ".config"),
    )
    return env


@dataclass
class StagingResult:
    command: str
    returncode: int
    output: str

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0


def stage_offline(app: Path, venv: Path, deps: Path) -> StagingResult:
    """Run the buildpack's vendored pip install for `app` into `venv`, with the network cut.

    The network is cut by running pip in a new, empty network namespace (`unshare -n`): it has
    only a loopback interface, which is down, so no name resolves and no address is reachable.
    As the buildpack does, a failing pip is followed by its message asking for all dependencies.
    """
    command = PIP_INSTALL.format(deps=deps, app=app)
    argv = ["unshare", "-n", "--", str(venv / "bin" / "python"), *command.split()[1:]]
    env = clean_pip_env(deps / "home")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    (deps / "home").mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        argv, cwd=app, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = run.stdout
    if run.returncode != 0:
        output += f"\n{BUILDPACK_PIP_FAILED}\n"
    return StagingResult(command, run.returncode, output)


def make_venv(python: str, destination: Path) -> Path:
    """A fresh virtualenv with the interpreter's bundled pip (ensurepip: no network needed)."""
    subprocess.run(
        [python, "-m", "venv", str(destination)],
        env=clean_pip_env(destination.parent),
        check=True,
        capture_output=True,
    )
    return destination


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


def cf_environment(app: dict, instance_index: int = 0) -> dict[str, str]:
    """What the Python buildpack's profile script and Diego give the start command."""
    memory = megabytes(app["memory"])
    app_id = str(uuid.uuid4())
    vcap_application = {
        "application_id": app_id,
        "application_name": app["name"],
        "application_uris": [f"{app['name']}.apps.example.com"],
        "application_version": str(uuid.uuid4()),
        "cf_api": "https://api.example.com",
        "limits": {"disk": 1024, "fds": 16384, "mem": memory},
        "name": app["name"],
        "organization_name": "org",
        "space_name": "space",
        "uris": [f"{app['name']}.apps.example.com"],
        "version": str(uuid.uuid4()),
    }
    return {
        **{key: str(value) for key, value in (app.get("env") or {}).items()},
        "PYTHONUNBUFFERED": "1",
        "FORWARDED_ALLOW_IPS": "*",
        "GUNICORN_CMD_ARGS": "--access-logfile -",
        "VCAP_APPLICATION": json.dumps(vcap_application),
        "CF_INSTANCE_INDEX": str(instance_index),
        "CF_INSTANCE_GUID": str(uuid.uuid4()),
        "MEMORY_LIMIT": f"{memory}M",
    }
