"""Query parsing: plain ASCII decimal digits within range, or a 400 that names the parameter."""

import pytest
from bad_input import BAD_NUMBERS
from werkzeug.datastructures import MultiDict

from streamhtml.numbers import parse_bounded
from streamhtml.params import BadParameter, parse_csv_request, parse_stream_request
from streamhtml.settings import small_limits

SMALL_LIMITS = small_limits()


@pytest.mark.parametrize("text", BAD_NUMBERS.values(), ids=BAD_NUMBERS.keys())
def test_parse_bounded_rejects_malformed_numbers(text):
    assert parse_bounded(text, 0, 10**12) is None


@pytest.mark.parametrize(
    "text, expected",
    [("0", 0), ("7", 7), ("007", 7), ("100", 100), ("101", None), ("999999999999", None)],
)
def test_parse_bounded_accepts_plain_digits_in_range(text, expected):
    assert parse_bounded(text, 0, 100) == expected


def test_stream_defaults_match_the_sample():
    wanted = parse_stream_request(MultiDict(), SMALL_LIMITS)
    assert (wanted.nblocks, wanted.block_size, wanted.sleep_ms, wanted.static) == (
        10,
        1024,
        0,
        False,
    )


def test_unknown_parameters_are_ignored():
    wanted = parse_stream_request(MultiDict({"nblocks": "3", "colour": "-1"}), SMALL_LIMITS)
    assert wanted.nblocks == 3


@pytest.mark.parametrize(
    "args, parameter",
    [
        ({"nblocks": "1001"}, "nblocks"),
        ({"block_size": "0"}, "block_size"),
        ({"block_size": "4097"}, "block_size"),
        ({"sleep_ms": "2001"}, "sleep_ms"),
        ({"use_static_data": "2"}, "use_static_data"),
        ({"use_static_data": "true"}, "use_static_data"),
        # 1000 x 4096 bytes is over max_response_bytes (1,000,000).
        ({"nblocks": "1000", "block_size": "4096"}, "nblocks"),
        # 3 x 2000 ms is over max_stream_duration_s (5 s).
        ({"nblocks": "3", "sleep_ms": "2000"}, "sleep_ms"),
    ],
)
def test_limits_are_refused_naming_the_parameter(args, parameter):
    with pytest.raises(BadParameter) as refused:
        parse_stream_request(MultiDict(args), SMALL_LIMITS)
    assert refused.value.parameter == parameter


def test_a_parameter_given_twice_is_refused():
    with pytest.raises(BadParameter, match="given 2 times"):
        parse_stream_request(MultiDict([("nblocks", "1"), ("nblocks", "2")]), SMALL_LIMITS)


def test_csv_rows_and_seed_are_bounded():
    assert parse_csv_request(MultiDict({"rows": "5000", "seed": "4294967295"}), SMALL_LIMITS)
    for args in ({"rows": "5001"}, {"seed": "4294967296"}):
        with pytest.raises(BadParameter):
            parse_csv_request(MultiDict(args), SMALL_LIMITS)
