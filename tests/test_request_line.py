"""The JSON request line is made by hand for speed: it must be what json.dumps would write."""

import json

from hypothesis import given
from hypothesis import strategies as st

from streamhtml import logs
from streamhtml.observe import RequestRecord

text = st.text(max_size=40)
maybe_text = st.none() | text
maybe_ms = st.none() | st.floats(min_value=-1e6, max_value=1e6).map(lambda v: round(v, 1))


@given(
    request_id=text,
    method=text,
    route=maybe_text,
    path=text,
    query=maybe_text,
    status=st.integers(0, 999),
    bytes_sent=st.integers(0, 1 << 40),
    duration_ms=st.floats(min_value=0, max_value=1e7).map(lambda v: round(v, 1)),
    outcome=text,
    streamed=st.booleans(),
    queue_ms=maybe_ms,
    error=maybe_text,
    peer_addr=maybe_text,
    forwarded_for=maybe_text,
    forwarded_trusted=st.booleans(),
    user_agent=maybe_text,
    instance_index=maybe_text,
)
def test_the_request_line_is_exactly_json_dumps_of_its_fields(instance_index, **fields):
    record = RequestRecord(**fields)
    when = "2026-11-25 01:02:03,456"
    expected = json.dumps(
        {
            "time": when,
            "level": "INFO",
            "logger": "gunicorn.access",
            "pid": 4242,
            "message": logs.summary(record),
            **{
                name: fields[name]
                for name in (
                    "request_id",
                    "method",
                    "route",
                    "path",
                    "query",
                    "status",
                    "bytes_sent",
                    "duration_ms",
                    "outcome",
                    "queue_ms",
                    "error",
                    "peer_addr",
                    "forwarded_for",
                    "forwarded_trusted",
                    "user_agent",
                )
            },  # fmt: skip
            "instance_index": instance_index,
        }
    )
    assert logs.json_line(record, when, 4242, instance_index) == expected


worst = st.text(alphabet=st.sampled_from('a"\\\n\x7fé\u2028\U0001f600'), max_size=2000)


@given(path=worst, query=worst, error=worst, forwarded_for=worst, user_agent=worst)
def test_one_request_line_takes_at_most_its_byte_limit_whatever_the_client_sent(**sent):
    from streamhtml.observe import clipped

    record = RequestRecord(
        request_id="f" * 64,
        method=clipped("M" * 20),
        route="/streamhtml",
        path=clipped(sent["path"]),
        query=clipped(sent["query"]),
        status=503,
        bytes_sent=1 << 40,
        duration_ms=1e12,
        outcome="client_gone",
        streamed=True,
        queue_ms=-1e12,
        error=clipped(sent["error"]),
        peer_addr="ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        forwarded_for=clipped(sent["forwarded_for"]),
        forwarded_trusted=True,
        user_agent=clipped(sent["user_agent"]),
    )
    when = "2026-11-25 01:02:03,456"
    json_bytes = len(logs.json_line(record, when, 4_194_304, "1000000").encode()) + 1
    assert json_bytes <= logs.MAX_REQUEST_LINE_BYTES
    message = logs.escape_controls(logs.summary(record))
    text_line = f"{when} [4194304] [INFO] gunicorn.access: {message}"
    assert len(text_line.encode("utf-8", "backslashreplace")) + 1 <= logs.MAX_REQUEST_LINE_BYTES
