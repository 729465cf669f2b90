"""Query parsing: plain ASCII decimal digits within range, or a 400 that names the parameter."""

import pytest
from bad_input import BAD_NUMBERS
from werkzeug.datastructures import Headers, MultiDict

from streamhtml.numbers import parse_bounded
from streamhtml.params import (
    BadHeader,
    BadParameter,
    parse_csv_request,
    parse_last_event_id,
    parse_ndjson_request,
    parse_stream_request,
)
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


@pytest.mark.parametrize(
    "query, headers, expected",
    [
        ({}, {}, None),
        ({"last_event_id": "0"}, {}, 0),
        ({"last_event_id": "4"}, {}, 4),
        ({}, {"Last-Event-ID": "5"}, 5),
        # An EventSource reconnects to the URL it opened, with the newer id in the header.
        ({"last_event_id": "1"}, {"Last-Event-ID": "3"}, 3),
    ],
)
def test_the_last_event_id_comes_from_the_header_else_the_query(query, headers, expected):
    assert parse_last_event_id(MultiDict(query), Headers(headers), nblocks=5) == expected


@pytest.mark.parametrize(
    "query, headers, refused, named",
    [
        ({"last_event_id": "6"}, {}, BadParameter, "last_event_id"),
        ({"last_event_id": "-1"}, {}, BadParameter, "last_event_id"),
        ({}, {"Last-Event-ID": "6"}, BadHeader, "Last-Event-ID"),
        ({}, {"Last-Event-ID": "abc"}, BadHeader, "Last-Event-ID"),
        ({}, {"Last-Event-ID": ""}, BadHeader, "Last-Event-ID"),
        ({}, [("Last-Event-ID", "1"), ("Last-Event-ID", "2")], BadHeader, "Last-Event-ID"),
        # A bad query value is refused even when the header would win.
        ({"last_event_id": "x"}, {"Last-Event-ID": "2"}, BadParameter, "last_event_id"),
    ],
)
def test_a_last_event_id_out_of_0_to_nblocks_is_refused_naming_it(query, headers, refused, named):
    with pytest.raises(refused) as caught:
        parse_last_event_id(MultiDict(query), Headers(headers), nblocks=5)
    assert caught.value.parameter == named


# A header value cannot carry a line break; every other malformed number can come in one.
BAD_HEADER_NUMBERS = {case: text for case, text in BAD_NUMBERS.items() if "\n" not in text}


@pytest.mark.parametrize("text", BAD_HEADER_NUMBERS.values(), ids=BAD_HEADER_NUMBERS.keys())
def test_a_malformed_last_event_id_header_is_refused(text):
    with pytest.raises(BadHeader):
        parse_last_event_id(MultiDict(), Headers({"Last-Event-ID": text}), nblocks=10**6)


@pytest.mark.parametrize(
    "nblocks, shortest", [("1", 40), ("9", 40), ("10", 41), ("99", 41), ("100", 42), ("1000", 43)]
)
def test_an_ndjson_block_size_must_hold_the_widest_line(nblocks, shortest):
    wanted = parse_ndjson_request(
        MultiDict({"nblocks": nblocks, "block_size": str(shortest)}), SMALL_LIMITS
    )
    assert wanted.block_size == shortest
    with pytest.raises(BadParameter) as refused:
        parse_ndjson_request(
            MultiDict({"nblocks": nblocks, "block_size": str(shortest - 1)}), SMALL_LIMITS
        )
    assert refused.value.parameter == "block_size"
    assert f"at least {shortest} bytes for nblocks={nblocks}" in refused.value.detail


def test_ndjson_takes_the_limits_of_streamhtml():
    with pytest.raises(BadParameter) as refused:
        parse_ndjson_request(MultiDict({"nblocks": "3", "sleep_ms": "2000"}), SMALL_LIMITS)
    assert refused.value.parameter == "sleep_ms"
