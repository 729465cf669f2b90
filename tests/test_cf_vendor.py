"""The drift test: requirements.txt and vendor/ agree, or Cloud Foundry's offline staging fails.

The Python buildpack installs requirements.txt from vendor/ alone (`--no-index --find-links`),
so every pin needs a wheel there that installs on cflinuxfs4 under runtime.txt's CPython, with a
hash among the pin's. `make vendor` (tools/vendor) regenerates both; this test catches a hand
edit, a forgotten refresh or a wrong wheel. The checker is `cf_support.vendor_problems`; below it
also runs on deliberately broken copies, to show each kind of drift is caught.
"""

import shutil
from pathlib import Path

import pytest
from cf_support import (
    REPO,
    logical_lines,
    parse_pins,
    runtime_minor,
    vendor_problems,
    wheel_installable,
)
from packaging.utils import canonicalize_name, parse_wheel_filename

RUNTIME_FILES = ("runtime.txt", "requirements.txt", "requirements.in")


def test_requirements_txt_and_vendor_agree():
    assert vendor_problems(REPO) == [], "run `make vendor` (tools/vendor) and commit the result"


def test_requirements_txt_is_a_generated_hashed_lock_without_index_options():
    text = (REPO / "requirements.txt").read_text()
    assert "make vendor" in text.split("\n\n")[0], "the header says how to regenerate it"
    pins, problems = parse_pins(text)
    assert problems == []
    assert {"flask", "gunicorn", "werkzeug", "jinja2", "markupsafe"} <= pins.keys()
    for pin in pins.values():
        (spec,) = pin.requirement.specifier
        assert spec.operator == "==" and pin.hashes, pin.name
    for _, line in logical_lines(text):
        assert not line.startswith(("-i", "-f", "--index-url", "--extra-index-url", "--find-links"))


def test_vendor_holds_one_wheel_per_pin_and_nothing_else():
    pins, _ = parse_pins((REPO / "requirements.txt").read_text())
    wheels = sorted(path.name for path in (REPO / "vendor").iterdir())
    assert all(name.endswith(".whl") for name in wheels), wheels
    assert sorted(canonicalize_name(parse_wheel_filename(name)[0]) for name in wheels) == sorted(
        pins
    ), "vendor/ has only runtime.txt's CPython wheels: one per pin, no extras for other minors"


def test_runtime_txt_asks_for_a_python_the_buildpack_offers_and_is_not_the_default():
    # Offered on cflinuxfs4 (cf-notes.md): 3.10 .. 3.14; 3.10 is the end-of-life default.
    assert runtime_minor() in {(3, 11), (3, 12), (3, 13), (3, 14)}


CP313 = (3, 13)


@pytest.mark.parametrize(
    ("filename", "installs"),
    [
        # What cflinuxfs4 (x86_64, glibc 2.35) takes under CPython 3.13:
        ("pure-1.0-py3-none-any.whl", True),
        ("pure-1.0-py2.py3-none-any.whl", True),
        ("ext-1.0-cp313-cp313-manylinux_2_35_x86_64.whl", True),
        ("ext-1.0-cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
        ("ext-1.0-cp313-cp313-manylinux2014_x86_64.whl", True),
        ("ext-1.0-cp313-cp313-manylinux2010_x86_64.whl", True),
        ("ext-1.0-cp313-cp313-manylinux1_x86_64.whl", True),
        ("ext-1.0-cp313-cp313-manylinux_2_5_x86_64.whl", True),
        ("ext-1.0-cp39-abi3-manylinux_2_28_x86_64.whl", True),
        ("ext-1.0-cp313-none-manylinux_2_17_x86_64.whl", True),
        # One acceptable tag among several is enough:
        ("ext-1.0-cp313-cp313-manylinux_2_28_x86_64.manylinux_2_39_x86_64.whl", True),
        # What it does not:
        ("ext-1.0-cp313-cp313-manylinux_2_36_x86_64.whl", False),
        ("ext-1.0-cp313-cp313-manylinux_2_39_x86_64.whl", False),
        ("ext-1.0-cp313-cp313-musllinux_1_2_x86_64.whl", False),
        ("ext-1.0-cp313-cp313-linux_x86_64.whl", False),
        ("ext-1.0-cp312-cp312-manylinux_2_17_x86_64.whl", False),
        ("ext-1.0-cp314-cp314-manylinux_2_17_x86_64.whl", False),
        ("ext-1.0-cp313-cp313t-manylinux_2_17_x86_64.whl", False),
        ("ext-1.0-cp314-abi3-manylinux_2_17_x86_64.whl", False),
        ("ext-1.0-cp313-cp313-manylinux_2_17_aarch64.whl", False),
        ("ext-1.0-cp313-cp313-macosx_11_0_arm64.whl", False),
        ("ext-1.0-cp313-cp313-win_amd64.whl", False),
        ("ext-1.0-pp310-pypy310_pp73-manylinux_2_17_x86_64.whl", False),
        ("old-1.0-py2-none-any.whl", False),
    ],
)
def test_which_wheel_tags_install_on_cflinuxfs4_under_cpython_3_13(filename, installs):
    assert wheel_installable(filename, CP313) is installs


@pytest.fixture
def app_copy(tmp_path) -> Path:
    """A copy of the files the drift check reads, to break on purpose."""
    for name in RUNTIME_FILES:
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "vendor", tmp_path / "vendor")
    assert vendor_problems(tmp_path) == [], "the untouched copy agrees"
    return tmp_path


def wheel(app: Path, project: str) -> Path:
    (found,) = [
        path
        for path in (app / "vendor").iterdir()
        if canonicalize_name(parse_wheel_filename(path.name)[0]) == project
    ]
    return found


def rename_tags(app: Path, project: str, tags: str) -> None:
    path = wheel(app, project)
    name, version, _, _ = parse_wheel_filename(path.name)
    path.rename(path.with_name(f"{name}-{version}-{tags}.whl"))


def rename_version(app: Path, project: str, version: str) -> None:
    path = wheel(app, project)
    name, _, _, _ = parse_wheel_filename(path.name)
    tags = path.name.removesuffix(".whl").split("-", 2)[2]
    path.rename(path.with_name(f"{name}-{version}-{tags}.whl"))


def prepend(path: Path, line: str) -> None:
    path.write_text(f"{line}\n{path.read_text()}")


BREAKAGES = {
    "pin with no wheel": (
        lambda app: wheel(app, "markupsafe").unlink(),
        "markupsafe has no wheel in vendor/",
    ),
    "wheel with no pin": (
        lambda app: shutil.copy2(
            wheel(app, "blinker"), app / "vendor" / "extra-1.0-py3-none-any.whl"
        ),
        "no pin for extra",
    ),
    "wheel for manylinux_2_36": (
        lambda app: rename_tags(app, "markupsafe", "cp313-cp313-manylinux_2_36_x86_64"),
        "tags do not install on cflinuxfs4",
    ),
    "wheel for musllinux": (
        lambda app: rename_tags(app, "markupsafe", "cp313-cp313-musllinux_1_2_x86_64"),
        "tags do not install on cflinuxfs4",
    ),
    "wheel for plain linux_x86_64": (
        lambda app: rename_tags(app, "markupsafe", "cp313-cp313-linux_x86_64"),
        "tags do not install on cflinuxfs4",
    ),
    "wheel for another cpXY": (
        lambda app: rename_tags(app, "markupsafe", "cp312-cp312-manylinux_2_17_x86_64"),
        "tags do not install on cflinuxfs4",
    ),
    "runtime.txt moved to another minor": (
        lambda app: (app / "runtime.txt").write_text("python-3.12.x\n"),
        "under CPython 3.12",
    ),
    "wheel whose sha256 is not pinned": (
        lambda app: wheel(app, "flask").write_bytes(wheel(app, "flask").read_bytes() + b"\0"),
        "sha256 not among flask's pinned hashes",
    ),
    "wheel of another version than pinned": (
        lambda app: rename_version(app, "click", "0.1"),
        "click-0.1-py3-none-any.whl: version 0.1, pinned",
    ),
    "sdist in vendor": (
        lambda app: (app / "vendor" / "flask-3.1.3.tar.gz").write_bytes(b""),
        "flask-3.1.3.tar.gz: an sdist",
    ),
    "--extra-index-url line": (
        lambda app: prepend(app / "requirements.txt", "--extra-index-url file:///opt/pypi/simple"),
        "index option '--extra-index-url'",
    ),
    "-i line": (
        lambda app: prepend(app / "requirements.txt", "-i https://pypi.org/simple"),
        "index option '-i'",
    ),
    "--find-links line": (
        lambda app: prepend(app / "requirements.txt", "--find-links=/opt/wheels"),
        "index option '--find-links=/opt/wheels'",
    ),
    "pin without hashes": (
        lambda app: prepend(app / "requirements.txt", "six==1.17.0"),
        "six has no --hash=sha256:",
    ),
    "range instead of a pin": (
        lambda app: prepend(app / "requirements.txt", "six>=1 --hash=sha256:" + "0" * 64),
        "six is not pinned with ==",
    ),
    "requirements.in no longer satisfied": (
        lambda app: (app / "requirements.in").write_text("flask\ngunicorn>=28\n"),
        "gunicorn>=28 not satisfied by requirements.txt",
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_drift_check_catches(app_copy, breakage):
    break_it, expected = BREAKAGES[breakage]
    break_it(app_copy)
    problems = vendor_problems(app_copy)
    assert problems, f"{breakage} went unnoticed"
    assert any(expected in problem for problem in problems), problems
