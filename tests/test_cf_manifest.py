"""manifest.yml and the Procfile say what Cloud Foundry needs, and nothing it would misuse."""

import re

import pytest
from cf_support import REPO, manifest_app, megabytes, pip_variables, settings_by_env
from support import procfile_command

KNOWN_SETTINGS = settings_by_env()


def test_manifest_describes_two_http_checked_instances_on_cflinuxfs4():
    app = manifest_app()
    assert app["name"] == "streamhtml"
    assert app["instances"] == 2
    assert app["buildpacks"] == ["python_buildpack"]
    assert "buildpack" not in app, "the singular key is deprecated"
    assert app["stack"] == "cflinuxfs4"
    assert app["health-check-type"] == "http"
    assert app["health-check-http-endpoint"] == "/health"
    assert 1 <= app["health-check-invocation-timeout"] <= 10
    assert 10 <= app["timeout"] <= 180


@pytest.mark.parametrize(
    ("size", "mib"), [("768M", 768), ("768MB", 768), ("1G", 1024), ("2gb", 2048), ("512m", 512)]
)
def test_cf_sizes_read_as_megabytes(size, mib):
    assert megabytes(size) == mib


@pytest.mark.parametrize("size", ["768", "768Mi", "0.5G", "768 K", ""])
def test_what_is_not_a_cf_size_is_refused(size):
    with pytest.raises(AssertionError, match="not a CF size"):
        megabytes(size)


def test_memory_is_a_cf_size_within_sane_bounds():
    # That the staged app's RSS fits in it is measured by tests/test_cf_staging.py.
    assert 256 <= megabytes(manifest_app()["memory"]) <= 2048


def test_the_procfile_is_the_start_command():
    assert "command" not in manifest_app(), "a manifest command: would override the Procfile"
    # gunicorn is the process bash -c runs, so Cloud Foundry's SIGTERM reaches it directly.
    assert procfile_command().split()[0] == "gunicorn"


def test_the_manifest_sets_no_pip_variable():
    # The buildpack passes the staging environment to pip: a PIP_FIND_LINKS here would be merged
    # into the vendored install and could hide a wheel missing from vendor/
    # (test_cf_staging.py shows it happen).
    assert pip_variables(manifest_app()) == []


@pytest.mark.parametrize(
    ("env", "found"),
    [
        ({"PIP_FIND_LINKS": "/somewhere"}, ["PIP_FIND_LINKS"]),
        ({"pip_index_url": "https://pypi.org/simple", "LOG_LEVEL": "info"}, ["pip_index_url"]),
        ({"PIP_NO_INDEX": 0, "PIP_EXTRA_INDEX_URL": "x"}, ["PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"]),
        ({"WEB_CONCURRENCY": 2, "PIPELINE": "x"}, []),
        (None, []),
    ],
)
def test_pip_variables_are_found_in_a_doctored_manifest(env, found):
    assert pip_variables({**manifest_app(), "env": env}) == found


def test_env_entries_and_commented_examples_are_real_settings():
    env = manifest_app().get("env") or {}
    assert "WEB_CONCURRENCY" in env, "the buildpack does not set it: say how many workers"
    assert env.keys() <= KNOWN_SETTINGS.keys()
    # The commented `NAME: value` lines are settings an operator uncomments: each must be one
    # the app reads, shown with its default.
    text = (REPO / "manifest.yml").read_text()
    commented = dict(re.findall(r"^\s*#\s*([A-Z][A-Z0-9_]+):\s*(\S+)\s*$", text, re.M))
    assert commented, "the manifest shows no setting to uncomment"
    for name, value in commented.items():
        assert name in KNOWN_SETTINGS, name
        assert value == str(KNOWN_SETTINGS[name].default), f"{name}: the example shows the default"


def test_graceful_timeout_fits_inside_cloud_foundrys_10_s_before_sigkill():
    env = manifest_app().get("env") or {}
    spec = KNOWN_SETTINGS["GUNICORN_GRACEFUL_TIMEOUT"]
    assert int(env.get(spec.env, spec.default)) < 10
