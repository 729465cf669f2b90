""".cfignore: `cf push` uploads what the droplet needs and nothing else.

The cf CLI reads .cfignore with gitignore syntax and always leaves out .git, .gitignore, .cfignore
and manifest.yml; `cf_support.uploaded` applies the same rules with pathspec's gitignore matcher.
"""

import pytest
from cf_support import REPO, cfignore_spec, upload_files, uploaded

# The droplet's whole need: the start command, the interpreter choice, the offline install, the app.
RUNTIME_FILES = {"Procfile", "runtime.txt", "requirements.txt", "app.py", "gunicorn.conf.py"}
RUNTIME_DIRS = ("streamhtml/", "vendor/")


@pytest.fixture(scope="module")
def spec():
    return cfignore_spec(REPO)


@pytest.mark.parametrize(
    "path",
    [
        *sorted(RUNTIME_FILES),
        "streamhtml/__init__.py",
        "streamhtml/web.py",
        "streamhtml/templates/index.html",
        "vendor/",
        *(f"vendor/{wheel.name}" for wheel in sorted((REPO / "vendor").glob("*.whl"))),
    ],
)
def test_uploaded(spec, path):
    assert uploaded(path, spec=spec), f"{path} must reach the droplet"


@pytest.mark.parametrize(
    "path",
    [
        # tests, benchmarks, tooling, CI, docs
        "tests/",
        "tests/test_cf_vendor.py",
        "tests/support.py",
        "bench/",
        "bench/out/result.json",
        "tools/vendor",
        "tools/find-python",
        ".ci/run",
        ".github/workflows/ci.yml",
        "docs/deploy-cloud-foundry.md",
        "docs/images/screenshot.png",
        "Makefile",
        "README.md",
        "pyproject.toml",
        "requirements.in",
        "requirements-dev.txt",
        "manifest.yml",
        # virtualenvs and caches, wherever they are
        ".venv/",
        ".venv/bin/python",
        "venv/lib/python3.13/site-packages/flask/__init__.py",
        "streamhtml/__pycache__/web.cpython-313.pyc",
        "__pycache__/app.cpython-313.pyc",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/CACHEDIR.TAG",
        ".hypothesis/constants/0123456789abcdef",
        "gunicorn.log",
        # version control and local secrets
        ".git/HEAD",
        ".gitignore",
        ".cfignore",
        ".env",
    ],
)
def test_left_out(spec, path):
    assert not uploaded(path, spec=spec), f"{path} must stay out of the upload"


def test_the_upload_from_this_tree_is_the_runtime_and_nothing_more():
    files = upload_files(REPO)
    assert set(files) >= RUNTIME_FILES
    assert any(name.startswith("vendor/") and name.endswith(".whl") for name in files)
    extra = [
        name for name in files if name not in RUNTIME_FILES and not name.startswith(RUNTIME_DIRS)
    ]
    assert extra == [], "left out of .cfignore, or needed at run time (then add it above)"
    assert not [name for name in files if "__pycache__" in name or name.endswith(".pyc")]
