"""Bounded parsing of query parameters into requests, or a BadParameter that becomes a 400."""

from dataclasses import dataclass

from werkzeug.datastructures import MultiDict

from .generators import T_MS_DIGITS, ndjson_min_line_bytes
from .numbers import MAX_DIGITS, parse_bounded
from .settings import Limits

DEFAULT_NBLOCKS = 10
DEFAULT_BLOCK_SIZE = 1024
DEFAULT_SLEEP_MS = 0
DEFAULT_CSV_ROWS = 1000
DEFAULT_SEED = 0
MAX_SEED = 2**32 - 1
# What an EventSource sends when it reconnects: the id of the last event it received.
LAST_EVENT_ID_HEADER = "Last-Event-ID"


class BadParameter(ValueError):
    """A query value that is not accepted: a 400 that names it."""

    kind = "query parameter"
    field = "parameter"  # the key of the error body that names it

    def __init__(self, parameter: str, detail: str):
        super().__init__(detail)
        self.parameter = parameter
        self.detail = detail


class BadHeader(BadParameter):
    """A request header that is not accepted: the same 400, naming the header."""

    kind = "header"
    field = "header"


@dataclass(frozen=True)
class StreamRequest:
    nblocks: int
    block_size: int
    sleep_ms: int
    static: bool

    @property
    def total_bytes(self) -> int:
        return self.nblocks * self.block_size


@dataclass(frozen=True)
class ExportRequest:
    after_id: int  # resume after this id (keyset); 0 from the start
    limit: int | None  # at most this many rows; None for every row


# Ids are bigints in the table, but a query value has at most 12 digits (streamhtml/numbers.py).
MAX_AFTER_ID = 10**12 - 1
MAX_EXPORT_LIMIT = 10**12 - 1


@dataclass(frozen=True)
class CsvRequest:
    rows: int
    seed: int


def _single(args, name: str) -> str | None:
    """The one value given for `name`, None when absent; twice is an error, not a choice."""
    values = args.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadParameter(name, f"{name} was given {len(values)} times; give it once")
    return values[0]


def int_param(args: MultiDict, name: str, default: int, lowest: int, highest: int) -> int:
    raw = _single(args, name)
    if raw is None:
        return min(max(default, lowest), highest)
    return _bounded(raw, BadParameter, name, lowest, highest)


def _bounded(raw: str, refusal: type[BadParameter], name: str, lowest: int, highest: int) -> int:
    value = parse_bounded(raw, lowest, highest)
    if value is None:
        raise refusal(
            name,
            f"{name} must be plain decimal digits (at most {MAX_DIGITS}) "
            f"for a whole number from {lowest} to {highest}",
        )
    return value


def flag_param(args: MultiDict, name: str, default: bool) -> bool:
    raw = _single(args, name)
    if raw is None:
        return default
    if raw not in ("0", "1"):
        raise BadParameter(name, f"{name} must be 0 or 1")
    return raw == "1"


def parse_stream_request(args: MultiDict, limits: Limits) -> StreamRequest:
    request = StreamRequest(
        nblocks=int_param(args, "nblocks", DEFAULT_NBLOCKS, 0, limits.max_nblocks),
        block_size=int_param(args, "block_size", DEFAULT_BLOCK_SIZE, 1, limits.max_block_size),
        sleep_ms=int_param(args, "sleep_ms", DEFAULT_SLEEP_MS, 0, limits.max_sleep_ms),
        static=flag_param(args, "use_static_data", False),
    )
    if request.total_bytes > limits.max_response_bytes:
        raise BadParameter(
            "nblocks",
            f"nblocks x block_size must be at most {limits.max_response_bytes} bytes; "
            f"this request is {request.total_bytes} bytes",
        )
    if request.nblocks * request.sleep_ms > limits.max_stream_duration_s * 1000:
        raise BadParameter(
            "sleep_ms",
            f"nblocks x sleep_ms must be at most {limits.max_stream_duration_s * 1000} ms "
            f"(the max stream duration); this request is {request.nblocks * request.sleep_ms} ms",
        )
    return request


def parse_csv_request(args: MultiDict, limits: Limits) -> CsvRequest:
    return CsvRequest(
        rows=int_param(args, "rows", DEFAULT_CSV_ROWS, 0, limits.max_csv_rows),
        seed=int_param(args, "seed", DEFAULT_SEED, 0, MAX_SEED),
    )


def parse_export_request(args: MultiDict) -> ExportRequest:
    limit = None
    if _single(args, "limit") is not None:
        limit = int_param(args, "limit", 0, 1, MAX_EXPORT_LIMIT)
    return ExportRequest(after_id=int_param(args, "after_id", 0, 0, MAX_AFTER_ID), limit=limit)


def parse_ndjson_request(args: MultiDict, limits: Limits) -> StreamRequest:
    """As /streamhtml's, and block_size must hold the JSON of the widest line with no pad."""
    request = parse_stream_request(args, limits)
    shortest = ndjson_min_line_bytes(request.nblocks)
    if request.block_size < shortest:
        seq_digits = len(str(max(request.nblocks, 1)))
        raise BadParameter(
            "block_size",
            f"block_size must be at least {shortest} bytes for nblocks={request.nblocks}: "
            f'a line is {{"seq":…,"t_ms":…,"pad":"…"}} and a newline, {shortest} bytes with '
            f"no pad, a {seq_digits}-digit seq and a {T_MS_DIGITS}-digit t_ms",
        )
    return request


def parse_last_event_id(args: MultiDict, headers, nblocks: int) -> int | None:
    """The id of the last event the client has, from 0 to nblocks; None when it gave none.

    From the Last-Event-ID header (what an EventSource sends when it reconnects), else from
    `last_event_id` in the query. Both are checked; the header wins, being the newer: an
    EventSource reconnects to the URL it was opened with, query and all.
    """
    raw_query = _single(args, "last_event_id")
    in_query = None
    if raw_query is not None:
        in_query = _bounded(raw_query, BadParameter, "last_event_id", 0, nblocks)
    in_header = headers.getlist(LAST_EVENT_ID_HEADER)
    if len(in_header) > 1:
        raise BadHeader(
            LAST_EVENT_ID_HEADER,
            f"{LAST_EVENT_ID_HEADER} was given {len(in_header)} times; give it once",
        )
    if in_header:
        return _bounded(in_header[0], BadHeader, LAST_EVENT_ID_HEADER, 0, nblocks)
    return in_query
