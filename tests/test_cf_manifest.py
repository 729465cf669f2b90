"""manifest.yml and the Procfile say what Cloud Foundry needs, and nothing it would misuse."""

import re

from cf_support import REPO, manifest_app, megabytes
from support import procfile_command

from streamhtml.settings import all_settings

KNOWN_SETTINGS = {spec.env: spec for spec in all_settings()}


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


def test_memory_is_stated_with_the_measurement_behind_it():
    app = manifest_app()
    assert 256 <= megabytes(app["memory"]) <= 2048
    text = (REPO / "manifest.yml").read_text()
    assert re.search(r"(?i)measured.*\n(.*\n)*.*\d+ MiB", text), "the comment states the figures"


def test_the_procfile_is_the_start_command():
    assert "command" not in manifest_app(), "a manifest command: would override the Procfile"
    # gunicorn is the process bash -c runs, so Cloud Foundry's SIGTERM reaches it directly.
    assert procfile_command().split()[0] == "gunicorn"


def test_env_entries_and_commented_examples_are_real_settings():
    env = manifest_app().get("env") or {}
    assert "WEB_CONCURRENCY" in env, "the buildpack does not set it: say how many workers"
    assert env.keys() <= KNOWN_SETTINGS.keys()
    text = (REPO / "manifest.yml").read_text()
    commented = dict(re.findall(r"^\s*#\s*([A-Z][A-Z0-9_]+):\s*(\S+)\s*$", text, re.M))
    assert {
        "GUNICORN_THREADS",
        "STREAMHTML_MAX_RESPONSE_BYTES",
        "STREAMHTML_MAX_STREAM_DURATION_S",
    } <= commented.keys()
    for name, value in commented.items():
        assert name in KNOWN_SETTINGS, name
        assert value == str(KNOWN_SETTINGS[name].default), f"{name}: the example shows the default"


def test_graceful_timeout_fits_inside_cloud_foundrys_10_s_before_sigkill():
    env = manifest_app().get("env") or {}
    spec = KNOWN_SETTINGS["GUNICORN_GRACEFUL_TIMEOUT"]
    assert int(env.get(spec.env, spec.default)) < 10
