"""Request heads: the plainly valid common head parsed in one pass, every other by gunicorn.

gunicorn's parser checks a head line by line, each with regular expressions of its own, and
splits the target with urllib (12 µs for curl's or ab's three fields, 27 µs for gorouter's
dozen). A head that is a GET or HEAD for an origin-form path with no fragment, over HTTP/1.0
or 1.1, whose fields are tokens with values of visible characters, spaces and tabs, all
within gunicorn's limits, is checked here by one regular expression and split by str methods. Its
fields then pass through gunicorn's own policy (forwarded and scheme headers and who may send
them, repeated singleton fields, Expect, underscores), and gunicorn reads its body and serves
it as before. Anything else, a single odd byte included, is handed to gunicorn's parser
whole, which accepts or refuses it as it always has: this path refuses nothing itself.
tests/test_heads.py holds the two to the same answer for every head it tries.
"""

from __future__ import annotations

import re

from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser

# RFC 9110's token, as gunicorn's TOKEN_RE.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PLAIN_HEAD = re.compile(
    rb"(GET|HEAD) "
    # origin-form, not "//" (urllib would read an authority there), no "#" (a fragment)
    rb"(/(?!/)[!\"$-~]*)"
    rb" HTTP/1\.([01])\r\n"
    rb"((?:" + _TOKEN + rb":[\t -~\x80-\xff]*\r\n)*)"
    rb"\r\n"
)


class PlainRequest(Request):
    """gunicorn's Request, parsed here when its head is plain (see the module's doc)."""

    def parse(self, unreader):
        data = unreader.read()
        head = _PLAIN_HEAD.match(data)
        if head is None or not self._parse_plain(head):
            unreader.unread(data)
            return super().parse(unreader)
        return data[head.end() :]

    def _parse_plain(self, head: re.Match) -> bool:
        """Fill in the request from a plain head; False, with nothing kept, if it is over one
        of gunicorn's limits (gunicorn then refuses it as it would)."""
        method, target, minor, block = head.groups()
        line_limit = self.limit_request_line
        if line_limit > 0 and head.start(4) - 2 > line_limit:
            return False
        lines = block.decode("latin-1").split("\r\n")
        lines.pop()  # the block ends with a CRLF: nothing after the last split
        if len(lines) > self.limit_request_fields:
            return False
        field_limit = self.limit_request_field_size
        if field_limit > 0 and lines and max(map(len, lines)) + 2 > field_limit:
            return False
        self.version = (1, int(minor))  # before the fields: Expect asks it
        scheme_state = [False]
        seen: set[str] = set()
        secure_scheme_headers, forwarder_headers = self._peer_trusted_for_forwarded()
        headers = []
        for line in lines:
            name, _, value = line.partition(":")
            kept = self._apply_header_policy(
                name.upper(),
                value.strip(" \t"),
                scheme_state,
                seen,
                secure_scheme_headers,
                forwarder_headers,
            )
            if kept is not None:
                headers.append(kept)
        self.headers = headers
        self.method = method.decode("ascii")
        self.uri = target.decode("ascii")
        self.path, _, self.query = self.uri.partition("?")
        self.fragment = ""
        return True


class PlainFirstParser(RequestParser):
    """gunicorn's HTTP/1 request parser, trying PlainRequest's one pass first."""

    mesg_class = PlainRequest
