"""Observability basics: request ids and the names of stream outcomes (see logs, metrics)."""

import logging
import re
import uuid

log = logging.getLogger("streamhtml")

# How a stream ended: every stream logs exactly one of these.
COMPLETE = "complete"
CLIENT_GONE = "client_gone"
SHUTDOWN = "cut_by_shutdown"
ERROR = "error"

REQUEST_ID_HEADER = "X-Vcap-Request-Id"
# gorouter sends a UUID; anything else a client sends is replaced, never echoed, so a request
# cannot put its own text into our headers or logs.
_REQUEST_ID = re.compile(r"[0-9A-Za-z-]{8,64}")


def request_id(incoming: str | None) -> str:
    if incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return str(uuid.uuid4())
