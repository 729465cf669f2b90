"""The one-pass parser of plain heads (streamhtml/heads.py) against gunicorn's own: for every
head, under every configuration tried, both give the same request or the same refusal."""

import random

import pytest
from gunicorn.config import Config
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader

from streamhtml import heads

GOROUTER_HEAD = (
    b"GET /streamhtml?nblocks=16&block_size=1024 HTTP/1.1\r\n"
    b"Host: streamhtml.apps.example.com\r\n"
    b"User-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n"
    b"B3: 1234567890abcdef1234567890abcdef-1234567890abcdef\r\n"
    b"X-B3-Spanid: 1234567890abcdef\r\n"
    b"X-Cf-Applicationid: 0f6b4d6e-2d3c-4c1a-9a0e-1b2c3d4e5f60\r\n"
    b"X-Cf-Instanceindex: 0\r\n"
    b"X-Forwarded-For: 203.0.113.9, 10.0.1.5\r\n"
    b"X-Forwarded-Proto: https\r\n"
    b"X-Request-Start: 1733389200123\r\n"
    b"X-Vcap-Request-Id: 5f0c5e2a-3b5c-4d4e-8f7a-0123456789ab\r\n"
    b"\r\n"
)

HEADS = {
    "ab": b"GET /streamhtml?nblocks=16&block_size=1024 HTTP/1.0\r\nHost: 127.0.0.1:8080\r\n"
    b"User-Agent: ApacheBench/2.3\r\nAccept: */*\r\n\r\n",
    "gorouter": GOROUTER_HEAD,
    "no fields": b"GET / HTTP/1.0\r\n\r\n",
    "HEAD": b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n",
    "empty value, spaces and tabs around values": b"GET / HTTP/1.1\r\nA:\r\nB: \t v w \t\r\n\r\n",
    "a body of known length": b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    "a chunked body": b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    "a pipelined second request": b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    "Expect: 100-continue": b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
    "Expect: 100-continue over HTTP/1.0": b"GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n",
    "another expectation": b"GET / HTTP/1.1\r\nExpect: sandwiches\r\n\r\n",
    "Connection: close": b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    "Host twice": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "Content-Length twice": b"GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    "a repeated list field": b"GET / HTTP/1.1\r\nAccept: a\r\nAccept: b\r\n\r\n",
    "conflicting scheme headers": b"GET / HTTP/1.1\r\nX-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Ssl: off\r\n\r\n",
    "an underscore in a name": b"GET / HTTP/1.1\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n",
    "SCRIPT_NAME from the client": b"GET /app/x HTTP/1.1\r\nSCRIPT_NAME: /app\r\n\r\n",
    # Every one below takes gunicorn's parser.
    "POST": b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    "a lower-case method": b"get / HTTP/1.1\r\n\r\n",
    "an invented method": b"BREW / HTTP/1.1\r\n\r\n",
    "OPTIONS *": b"OPTIONS * HTTP/1.1\r\n\r\n",
    "an absolute-form target": b"GET http://example.com/x?y HTTP/1.1\r\n\r\n",
    "an authority-form target": b"GET example.com:80 HTTP/1.1\r\n\r\n",
    "a target starting //": b"GET //evil.example/x HTTP/1.1\r\n\r\n",
    "a fragment": b"GET /x#frag HTTP/1.1\r\n\r\n",
    "an empty target": b"GET  HTTP/1.1\r\n\r\n",
    "a space in the target": b"GET /a b HTTP/1.1\r\n\r\n",
    "a non-ASCII target": b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",
    "HTTP/2.0": b"GET / HTTP/2.0\r\n\r\n",
    "HTTP/1.2": b"GET / HTTP/1.2\r\n\r\n",
    "a lower-case version": b"GET / http/1.1\r\n\r\n",
    "an empty line first": b"\r\nGET / HTTP/1.1\r\n\r\n",
    "bare LF line ends": b"GET / HTTP/1.1\nHost: x\n\n",
    "a bare LF inside a field": b"GET / HTTP/1.1\r\nHost: x\nY: z\r\n\r\n",
    "a bare CR inside a value": b"GET / HTTP/1.1\r\nHost: x\ry\r\n\r\n",
    "a NUL in a value": b"GET / HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
    "DEL in a value": b"GET / HTTP/1.1\r\nHost: x\x7fy\r\n\r\n",
    "obs-text in a value": b"GET / HTTP/1.1\r\nX-Name: caf\xe9\r\n\r\n",
    "a space before the colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "no colon": b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
    "an empty name": b"GET / HTTP/1.1\r\n: x\r\n\r\n",
    "a folded value": b"GET / HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n",
    "a head that has not ended": b"GET / HTTP/1.1\r\nHost: x\r\n",
    "only a request line, unfinished": b"GET / HTTP/1.1",
    "nothing": b"",
    "a long request line": b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n",
    "a long field": b"GET / HTTP/1.1\r\nX-Long: " + b"v" * 9000 + b"\r\n\r\n",
    "many fields": b"GET / HTTP/1.1\r\n"
    + b"".join(b"X-%d: v\r\n" % n for n in range(120))
    + b"\r\n",
}

# The settings that change what gunicorn's parser accepts or how it reads fields.
CONFIGS = {
    "defaults": {},
    "every peer trusted (Cloud Foundry)": {"forwarded_allow_ips": "*"},
    "no peer trusted": {"forwarded_allow_ips": "10.9.9.9"},
    "tight limits": {
        "limit_request_line": 40,
        "limit_request_fields": 3,
        "limit_request_field_size": 40,
    },
    "no line limit": {"limit_request_line": 0},
    "underscores dropped": {"header_map": "drop", "forwarded_allow_ips": "*"},
    "underscores passed": {"header_map": "dangerous"},
    "SCRIPT_NAME forwarded": {"forwarder_headers": "SCRIPT_NAME", "forwarded_allow_ips": "*"},
    "spaces before colons stripped": {"strip_header_spaces": True},
    "methods casefolded": {"casefold_http_method": True},
    "PROXY protocol": {"proxy_protocol": "v1", "proxy_allow_ips": "*"},
}
PEER = ("127.0.0.1", 40000)


def config(settings: dict) -> Config:
    cfg = Config()
    for name, value in settings.items():
        cfg.set(name, value)
    return cfg


class Counted(heads.PlainRequest):
    """PlainRequest, counting the heads it parsed itself."""

    plain = 0

    def _parse_plain(self, head):
        parsed = super()._parse_plain(head)
        Counted.plain += parsed
        return parsed


def outcome(request_class, cfg: Config, data: bytes) -> tuple:
    try:
        req = request_class(cfg, IterUnreader([data]), PEER, 1)
        body = req.body.read()
        rest = req.unreader.read()
    except Exception as error:
        return ("refused", type(error).__name__, str(error))
    return (
        "request",
        req.method,
        req.uri,
        req.path,
        req.query,
        req.fragment,
        req.version,
        req.headers,
        req.scheme,
        req._expected_100_continue,
        req.should_close(),
        body,
        rest,
    )


@pytest.mark.parametrize("settings", CONFIGS.values(), ids=CONFIGS.keys())
def test_every_head_gets_gunicorns_answer(settings):
    cfg = config(settings)
    Counted.plain = 0
    for case, data in HEADS.items():
        assert outcome(Counted, cfg, data) == outcome(Request, cfg, data), case
    if settings.get("proxy_protocol", "off") == "off":
        assert Counted.plain >= 12  # the plain heads did take the one pass


def mutants(seed: int, count: int):
    """Heads made from gorouter's by a few random edits, with the bytes parsers trip on."""
    rng = random.Random(seed)
    alphabet = b"\r\n\t :_#/?%\x00\x7f\x80\xffaZ9-"
    for _ in range(count):
        head = bytearray(GOROUTER_HEAD)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(head))
            byte = alphabet[rng.randrange(len(alphabet))]
            action = rng.randrange(3)
            if action == 0:
                head[at] = byte
            elif action == 1:
                head.insert(at, byte)
            else:
                del head[at]
        yield bytes(head)


@pytest.mark.parametrize(
    "settings", [CONFIGS["defaults"], CONFIGS["every peer trusted (Cloud Foundry)"]]
)
def test_edited_heads_get_gunicorns_answer(settings):
    cfg = config(settings)
    Counted.plain = 0
    tried = 0
    refused = 0
    for data in mutants(seed=20261205, count=3000):
        expected = outcome(Request, cfg, data)
        assert outcome(Counted, cfg, data) == expected, data
        tried += 1
        refused += expected[0] == "refused"
    # Both kinds were tried in numbers: heads the one pass parsed, and heads gunicorn refused.
    assert Counted.plain > 500 and refused > 500, (Counted.plain, refused, tried)
