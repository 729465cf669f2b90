"""Settings: each declared once, read from the environment, refused by name when bad."""

import pytest
from support import REPO

from streamhtml.settings import (
    GiB,
    Limits,
    MiB,
    SettingsError,
    all_settings,
    load_settings,
    markdown_table,
    parse_memory,
    small_limits,
)

OPERATIONS = REPO / "docs" / "operations.md"


def test_the_defaults_are_the_declared_limits():
    assert load_settings({}).limits == Limits()
    assert Limits().max_block_size == 1 * MiB and Limits().max_response_bytes == 1 * GiB


def test_graceful_timeout_defaults_below_cloud_foundrys_sigkill():
    assert load_settings({}).server.graceful_timeout_s < 10


def test_keepalive_outlasts_gorouters_90_s_idle_connections():
    assert load_settings({}).server.keepalive_s > 90


def test_a_setting_is_read_from_the_environment():
    assert load_settings({"STREAMHTML_MAX_BLOCK_SIZE": "4096"}).limits.max_block_size == 4096
    assert load_settings({"PORT": "9000"}).server.port == 9000
    assert load_settings({"LOG_FORMAT": "TEXT"}).server.log_format == "text"


@pytest.mark.parametrize("value", ["-1", "1e3", "0x10", " ", "1_000", "\u0663", "70000000"])
def test_a_bad_value_is_refused_naming_the_variable(value):
    with pytest.raises(SettingsError, match="STREAMHTML_MAX_BLOCK_SIZE"):
        load_settings({"STREAMHTML_MAX_BLOCK_SIZE": value})


def test_a_bad_choice_is_refused_naming_the_variable_and_the_choices():
    with pytest.raises(SettingsError, match="LOG_REQUESTS must be one of on, off"):
        load_settings({"LOG_REQUESTS": "maybe"})


def test_every_setting_is_declared_once_with_a_default_inside_its_bounds():
    names = [spec.env for spec in all_settings()]
    assert len(names) == len(set(names))
    for spec in all_settings():
        assert spec.read({}) == spec.default
        if spec.small is not None:
            assert spec.read({spec.env: str(spec.small)}) == spec.small, spec.env


def test_the_tests_small_limits_come_from_the_declarations():
    small = small_limits()
    assert small.max_block_size == 4096 and small.max_stream_duration_s == 5
    assert small.max_streams == Limits().max_streams, "undeclared small values keep the default"


def test_instance_and_app_name_come_from_cloud_foundrys_variables():
    settings = load_settings(
        {"CF_INSTANCE_INDEX": "3", "VCAP_APPLICATION": '{"name": "streams", "limits": {}}'}
    )
    assert settings.instance.instance_index == "3"
    assert settings.instance.app_name == "streams"


@pytest.mark.parametrize("vcap", ["{not json", "[]", '{"name": 7}', ""])
def test_a_malformed_vcap_application_does_not_stop_the_app(vcap):
    assert load_settings({"VCAP_APPLICATION": vcap}).instance.app_name == "streamhtml"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("768m", 768 * MiB),  # as Cloud Foundry writes it
        ("768M", 768 * MiB),
        ("1G", 1 * GiB),
        ("512MB", 512 * MiB),
        ("1024", 1024),
        ("", None),
        ("lots", None),
        ("-5m", None),
        ("0m", None),
    ],
)
def test_memory_limit_is_read_as_cloud_foundry_writes_it(text, expected):
    assert parse_memory(text) == expected


def test_streams_get_their_share_of_the_memory_limit_when_the_platform_sets_one():
    assert load_settings({}).stream_memory_budget_bytes is None
    settings = load_settings({"MEMORY_LIMIT": "768m", "STREAMHTML_STREAM_MEMORY_PERCENT": "50"})
    assert settings.stream_memory_budget_bytes == 384 * MiB


def test_the_operations_guide_shows_the_settings_table_as_declared():
    text = OPERATIONS.read_text()
    assert markdown_table() in text, "run `python -m streamhtml.settings` and paste its table"


def test_fewer_connections_than_threads_is_refused_naming_both():
    with pytest.raises(SettingsError, match="GUNICORN_WORKER_CONNECTIONS .* GUNICORN_THREADS"):
        load_settings({"GUNICORN_WORKER_CONNECTIONS": "100", "GUNICORN_THREADS": "512"})
