"""Settings: defaults, refusal of bad values by name, and a README that tells the truth."""

import re

import pytest
from support import REPO

from streamhtml.settings import (
    Limits,
    SettingsError,
    all_specs,
    load_server_settings,
    load_settings,
)


def test_the_defaults_are_the_documented_limits():
    assert load_settings({}).limits == Limits(
        max_block_size=1 << 20,
        max_nblocks=1_048_576,
        max_response_bytes=1 << 30,
        max_sleep_ms=30_000,
        max_stream_duration_s=600,
        max_csv_rows=10_000_000,
    )


def test_graceful_timeout_defaults_below_cloud_foundrys_sigkill():
    assert load_server_settings({}).graceful_timeout_s < 10


def test_a_setting_is_read_from_the_environment():
    assert load_settings({"STREAMHTML_MAX_BLOCK_SIZE": "4096"}).limits.max_block_size == 4096
    assert load_server_settings({"PORT": "9000"}).port == 9000


@pytest.mark.parametrize("value", ["-1", "1e3", "0x10", " ", "1_000", "\u0663", "70000000"])
def test_a_bad_value_is_refused_naming_the_variable(value):
    with pytest.raises(SettingsError, match="STREAMHTML_MAX_BLOCK_SIZE"):
        load_settings({"STREAMHTML_MAX_BLOCK_SIZE": value})


def test_instance_and_app_name_come_from_cloud_foundrys_variables():
    settings = load_settings(
        {"CF_INSTANCE_INDEX": "3", "VCAP_APPLICATION": '{"name": "streams", "limits": {}}'}
    )
    assert settings.instance.instance_index == "3"
    assert settings.instance.app_name == "streams"


def test_a_malformed_vcap_application_does_not_stop_the_app():
    assert load_settings({"VCAP_APPLICATION": "{not json"}).instance.app_name == "streamhtml"


@pytest.mark.parametrize("spec", all_specs(), ids=lambda spec: spec.env)
def test_the_readme_lists_every_setting_with_its_default(spec):
    readme = (REPO / "README.md").read_text()
    row = re.search(rf"^\| `{spec.env}` \| `([^`]*)` \|", readme, re.MULTILINE)
    assert row, f"README's settings table has no row for {spec.env}"
    assert row.group(1) == str(spec.default)
